"""Where the stored rows of an idempotency key lie in time: an in-memory index of the store's
keys, so that dedup and supersession lookups read a few day partitions instead of every key.

Idempotency is permanent (DESIGN section 2), so every write must learn which of its keys were
stored before, at any time in the past. Without help that is a scan of every stored key
(0.3-0.5 s of a close at 10M events, growing with the store). The index holds one 64-bit word
per stored row, a prefix of its key's hash and the UTC day of its timestamp, in sorted runs.
A lookup hashes the keys in question, finds the days their stored rows lie on, and returns a
condition on those days that DuckLake prunes partitions with; the exact key comparison then
runs on those partitions only.

The index may hold more than the store (two keys may share a hash prefix) but never less:
before answering it reads the rows of every commit newer than the last it saw, in the caller's
transaction and only up to the newest *committed* version, so a lookup inside a write sees
every commit before it and never the write's own rows. Stored rows are never deleted, so
entries never go stale. It holds 8 bytes per stored row (80 MB at 10M events).

Building it takes one scan of the keys and a sort (0.9-1.3 s at 10M events, 4.5-6.3 s at 50M),
more than the one scan of every key a write would make without it, so a process that writes
once would lose by building it. Hence the index is saved in the store folder
(:data:`INDEX_FILE`) and a process starts from that file, reading only the rows committed since;
the file names the DuckLake snapshot it was written at, so a file from another history (a copy
of the folder, a restored catalog) is never used.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from datetime import datetime, timedelta

import numpy as np
import numpy.typing as npt
from sqlglot import exp

from engine.queries import bind, newest_version, rows_removed_since, snapshot_identity
from engine.schema import STORED_EVENTS
from engine.storage import Storage

__all__ = ["INDEX_FILE", "SAVE_AT_LEAST", "KeyIndex"]

#: The index, saved in the store folder for the next process.
INDEX_FILE = "key_index.bin"
#: Entries not yet in the index file that make a process rewrite it (and never fewer than an
#: eighth of the file, so rewriting costs about what reading those entries from the store did).
SAVE_AT_LEAST = 1 << 20

_EPOCH = datetime(1970, 1, 1)

#: Above this many separate day ranges a lookup asks for one span from the first to the last
#: day instead: a long OR is costly to plan and DuckLake prunes a span just as well.
_MAX_RANGES = 32

# An entry is one 64-bit word: the top 47 bits of the key's hash, then the row's day (days
# since 1970 plus an offset, which covers mid-1790 to mid-2149; a row outside them matches
# every day). One word sorts 3x faster than a hash with a separate day array, and sorting is most
# of building the index. A key that meets another key's prefix costs a scan of that key's days
# for nothing (1.3-4 s per close at 50-100M events with 41-bit prefixes, where a 100k-key close
# meets 2-5 of them on average). At 100M entries a key meets one with odds of 1 in 1.4 million.
_DAY_BITS = 17
_DAY_MASK = np.uint64((1 << _DAY_BITS) - 1)
_PREFIX_MASK = ~_DAY_MASK
_DAY_OFFSET = 1 << (_DAY_BITS - 1)
#: The day field of a row outside the representable years: its key matches every day.
_ANY_DAY = (1 << _DAY_BITS) - 1

# The entries of the rows written after version :seen up to :newest, sorted. DuckDB computes and
# sorts them (a parallel sort, on both cores): 4.5-6.3 s at 50M rows, where fetching hashes and
# days and sorting in numpy took 9.5 s.
_NEW_ENTRIES = """
SELECT ((hash(idempotency_key) >> :day_bits) << :day_bits)
       | CAST(CASE WHEN day >= 0 AND day < :any_day THEN day ELSE :any_day END AS UBIGINT) AS entry
FROM (SELECT idempotency_key, CAST("timestamp" AS DATE) - DATE '1970-01-01' + :day_offset AS day
      FROM lake.main.stored_events WHERE version > :seen AND version <= :newest)
ORDER BY entry
"""

# The index file: eight little-endian 64-bit words (magic, layout, hash probe, version covered,
# DuckLake snapshot and its commit time in microseconds, entry count, checksum), then the
# entries in one sorted run.
_HEADER_WORDS = 8
_MAGIC = int.from_bytes(b"EKEYIDX1", "little")
_LAYOUT = (_DAY_BITS << 32) | _DAY_OFFSET
_PROBE = "engine key index"
_ON_DISK = np.dtype("<u8")

Entries = npt.NDArray[np.uint64]
Days = npt.NDArray[np.int64]


class KeyIndex:
    """The days on which the stored rows of any set of keys lie. Use inside a transaction
    (``storage.write()`` or ``storage.read()``) and before the transaction writes stored rows."""

    def __init__(self, storage: Storage, *, save_at_least: int = SAVE_AT_LEAST) -> None:
        self._storage = storage
        self._file = storage.path / INDEX_FILE
        self._save_at_least = save_at_least
        # Sorted runs whose sizes shrink geometrically: a lookup visits O(log n) of them and
        # each entry is merged O(log n) times (a log-structured merge of sorted arrays).
        self._runs: list[Entries] = []
        self._seen_version = 0
        self._opened = False
        #: entries in the store's index file as this process last read or wrote it
        self._saved_entries = 0

    def stored_rows(self, keys: exp.Expr, *, table: str | None = None) -> exp.Expr:
        """A condition on ``stored_events`` rows (under alias ``table``) that holds for every
        stored row of the keys ``keys`` selects (a query with an ``idempotency_key`` column):
        timestamp ranges of whole UTC days, or FALSE when none of the keys was ever stored.

        The first lookup of a process starts from the store's index file when it is usable
        (see :meth:`_open`).
        """
        if not self._opened:
            self._opened = True
            self._open()
        self._catch_up()
        days = self._days_of(self._prefixes(keys))
        if len(days) and days[-1] == _ANY_DAY:
            return exp.true()
        timestamp = exp.column("timestamp", table=table, quoted=True)
        ranges = _day_ranges(days - _DAY_OFFSET)
        if not ranges:
            return exp.false()
        if len(ranges) > _MAX_RANGES:
            ranges = [(ranges[0][0], ranges[-1][1])]
        conditions = [
            exp.and_(
                timestamp >= exp.convert(_EPOCH + timedelta(days=first)),
                timestamp < exp.convert(_EPOCH + timedelta(days=last + 1)),
            )
            for first, last in ranges
        ]
        return exp.paren(exp.or_(*conditions) if len(conditions) > 1 else conditions[0])

    # -- internals ----------------------------------------------------------------------------

    def _catch_up(self) -> None:
        """Add the rows of every commit after the last one seen, up to the newest committed in
        the caller's transaction (its own commit is recorded last, so never included)."""
        committed = self._storage.one(newest_version())
        assert committed is not None
        newest = int(committed[0])
        if newest < self._seen_version:
            # the version log went back: the store was emptied or restored from a copy
            self._runs, self._seen_version, self._saved_entries = [], 0, 0
        if newest == self._seen_version:
            return
        entries = self._storage.arrow(
            bind(
                _NEW_ENTRIES,
                day_bits=_DAY_BITS,
                day_offset=_DAY_OFFSET,
                any_day=_ANY_DAY,
                seen=self._seen_version,
                newest=newest,
            )
        ).column("entry")
        if len(entries):
            self._add(entries.to_numpy())
        self._seen_version = newest
        unsaved = sum(len(run) for run in self._runs) - self._saved_entries
        if unsaved >= max(self._save_at_least, self._saved_entries // 8):
            self._save()

    def _open(self) -> None:
        """Start from the store's index file if it describes this store's history: written at a
        DuckLake snapshot the store still has (same id, same commit time), after which no
        stored row was removed, for a version the caller's transaction sees, by this layout
        and this DuckDB hash, and whole. Anything else (no file, a copy from another history,
        an emptied store, a torn file) is ignored: the index is then built from the stored
        rows, which is always correct, only slower."""
        try:
            words = np.fromfile(self._file, dtype=_ON_DISK).astype(np.uint64, copy=False)
        except (OSError, ValueError):
            return
        if len(words) < _HEADER_WORDS:
            return
        header, entries = words[:_HEADER_WORDS], words[_HEADER_WORDS:]
        magic, layout, probe, version, snapshot, snapshot_us, count, checksum = (
            int(word) for word in header
        )
        if (
            (magic, layout, probe) != (_MAGIC, _LAYOUT, self._hash_probe())
            or count != len(entries)
            or checksum != _checksum(entries)
            or self._storage.one(snapshot_identity(snapshot)) != (snapshot, snapshot_us)
            or self._storage.one(rows_removed_since(STORED_EVENTS, snapshot)) != (0,)
        ):
            return
        committed = self._storage.one(newest_version())
        if committed is None or version > int(committed[0]):
            return  # written by a process that saw commits this transaction does not
        self._runs, self._seen_version, self._saved_entries = [entries], version, count

    def _save(self) -> None:
        """Write the index, as one sorted run, to the store's index file (atomically: another
        process sees the old file or the new one). A cache: if it cannot be written, the next
        process builds the index again."""
        identity = self._storage.one(snapshot_identity())
        if identity is None:
            return
        while len(self._runs) > 1:
            newer = self._runs.pop()
            self._runs.append(_merged(self._runs.pop(), newer))
        entries = self._runs[0] if self._runs else np.empty(0, dtype=np.uint64)
        header = np.array(
            [
                _MAGIC,
                _LAYOUT,
                self._hash_probe(),
                self._seen_version,
                identity[0],
                identity[1],
                len(entries),
                _checksum(entries),
            ],
            dtype=np.uint64,
        )
        try:
            handle, scratch = tempfile.mkstemp(dir=self._storage.path / "tmp", prefix=INDEX_FILE)
        except OSError:
            return
        try:
            with os.fdopen(handle, "wb") as out:
                header.astype(_ON_DISK).tofile(out)
                entries.astype(_ON_DISK, copy=False).tofile(out)
            os.replace(scratch, self._file)
        except OSError:
            with contextlib.suppress(OSError):
                os.unlink(scratch)
            return
        self._saved_entries = len(entries)

    def _hash_probe(self) -> int:
        """DuckDB's hash of a fixed string: a file written by a DuckDB whose ``hash()`` differs
        would give wrong prefixes."""
        row = self._storage.one(exp.select(exp.func("hash", exp.Literal.string(_PROBE))))
        assert row is not None
        return int(row[0])

    def _add(self, run: Entries) -> None:
        self._runs.append(run)
        while len(self._runs) > 1 and len(self._runs[-2]) <= 2 * len(self._runs[-1]):
            newer = self._runs.pop()
            older = self._runs.pop()
            self._runs.append(_merged(older, newer))

    def _prefixes(self, keys: exp.Expr) -> Entries:
        """The distinct hash prefixes of the keys ``keys`` selects, sorted."""
        assert isinstance(keys, exp.Query)
        query = exp.select(exp.func("hash", exp.column("idempotency_key", table="k"))).from_(
            keys.subquery("k")
        )
        hashes = self._storage.arrow(query).column(0).to_numpy().astype(np.uint64, copy=False)
        prefixes: Entries = np.unique(hashes & _PREFIX_MASK)
        return prefixes

    def _days_of(self, prefixes: Entries) -> Days:
        """The distinct day fields of the entries with these (sorted) prefixes, sorted."""
        found: list[Days] = []
        for run in self._runs:
            # sorted needles: each search starts where the last ended (3x faster at 10M)
            first = np.searchsorted(run, prefixes, side="left")
            last = np.searchsorted(run, prefixes | _DAY_MASK, side="right")
            counts = last - first
            hits = counts > 0
            if not hits.any():
                continue
            first, counts = first[hits], counts[hits]
            # every position first[i] .. first[i] + counts[i] - 1, without a Python loop
            offsets = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)
            found.append((run[np.repeat(first, counts) + offsets] & _DAY_MASK).astype(np.int64))
        if not found:
            return np.empty(0, dtype=np.int64)
        return np.unique(np.concatenate(found))


def _checksum(entries: Entries) -> int:
    """The entries' sum modulo 2**64: a torn or damaged file fails it."""
    return int(np.add.reduce(entries, dtype=np.uint64)) if len(entries) else 0


def _merged(older: Entries, newer: Entries) -> Entries:
    """Two sorted runs as one, in linear time (a sort of the two would cost 10x more)."""
    # where each newer entry lands: after the older entries not above it, and its own rank
    landing = np.searchsorted(older, newer, side="right") + np.arange(len(newer))
    merged = np.empty(len(older) + len(newer), dtype=np.uint64)
    merged[landing] = newer
    from_older = np.ones(len(merged), dtype=bool)
    from_older[landing] = False
    merged[from_older] = older
    return merged


def _day_ranges(days: Days) -> list[tuple[int, int]]:
    """Sorted distinct days as runs of consecutive days ``(first, last)``."""
    if not len(days):
        return []
    breaks = np.flatnonzero(np.diff(days) != 1) + 1
    starts = np.concatenate([[0], breaks])
    ends = np.concatenate([breaks - 1, [len(days) - 1]])
    return [(int(days[s]), int(days[e])) for s, e in zip(starts, ends, strict=True)]
