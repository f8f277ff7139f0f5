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
every commit before it and never the write's own rows. A live ingest hands over the entries
of its batch instead, a superset of the rows it stores, which the index takes only once that
commit has succeeded. Stored rows are never deleted, so entries never go stale. It holds 8
bytes per stored row (80 MB at 10M events).

Building it takes one scan of the keys and a sort (0.9-1.3 s at 10M events, 4.5-6.3 s at 50M),
more than the one scan of every key a write would make without it, so a process that writes
once would lose by building it. Hence the index is saved in the store folder
(:data:`INDEX_FOLDER`) as segments, sorted runs each covering the rows of a range of versions: a
process starts from them and reads only the rows of the commits since the last segment, at
most :data:`SAVE_AT_LEAST` of them. Each segment names the DuckLake snapshot it was written at,
so a segment from another history (a copy of the folder, a restored catalog) is never used.
"""

from __future__ import annotations

import contextlib
import os
import re
import tempfile
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import TypeVar

import numpy as np
import numpy.typing as npt
from sqlglot import exp

from engine.queries import bind, newest_version, rows_removed_since, snapshot_identity
from engine.schema import STORED_EVENTS
from engine.storage import Storage

__all__ = ["INDEX_FOLDER", "SAVE_AT_LEAST", "KeyIndex", "prefixes_repeat"]

#: The saved index: a folder of the store holding its segments.
INDEX_FOLDER = "key_index"
#: Entries not yet saved that make a process write a segment. When the segments after the first
#: would hold as many entries as the first, the process writes one segment of everything instead
#: and removes the others: that merge and write take time in the order of the whole index (the
#: 100M-event write that did it spent 9.4 s outside DuckDB, in a process near the machine's
#: memory limit), so they happen only each time the store doubles, and the bytes written over a
#: store's life stay about twice the index.
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

# The entries of the rows of `keyed_rows` (idempotency_key, timestamp), sorted. DuckDB computes
# and sorts them (a parallel sort, on both cores): 4.5-6.3 s at 50M rows, where fetching hashes
# and days and sorting in numpy took 9.5 s.
_ENTRIES = """
SELECT ((hash(idempotency_key) >> :day_bits) << :day_bits)
       | CAST(CASE WHEN day >= 0 AND day < :any_day THEN day ELSE :any_day END AS UBIGINT) AS entry
FROM (SELECT idempotency_key, CAST("timestamp" AS DATE) - DATE '1970-01-01' + :day_offset AS day
      FROM keyed_rows)
ORDER BY entry
"""

# The stored rows written after version :seen up to :newest.
_NEW_ROWS = """
SELECT idempotency_key, "timestamp" FROM lake.main.stored_events
WHERE version > :seen AND version <= :newest
"""

# A segment file, named "<after>-<upto>.bin" for the versions whose rows it covers (after < version
# <= upto): nine little-endian 64-bit words (magic, layout, hash probe, after, upto, DuckLake
# snapshot and its commit time in microseconds, entry count, checksum), then the entries in one
# sorted run.
_HEADER_WORDS = 9
_MAGIC = int.from_bytes(b"EKEYIDX2", "little")
_LAYOUT = (_DAY_BITS << 32) | _DAY_OFFSET
_PROBE = "engine key index"
_ON_DISK = np.dtype("<u8")
_SEGMENT_NAME = re.compile(r"(\d+)-(\d+)\.bin")

Entries = npt.NDArray[np.uint64]
Days = npt.NDArray[np.int64]
_Words = TypeVar("_Words", Entries, Days)


class KeyIndex:
    """The days on which the stored rows of any set of keys lie. Use inside a transaction
    (``storage.write()`` or ``storage.read()``) and before the transaction writes stored rows."""

    def __init__(self, storage: Storage, *, save_at_least: int = SAVE_AT_LEAST) -> None:
        self._storage = storage
        self._saved = _Segments(storage)
        self._save_at_least = save_at_least
        # Sorted runs whose sizes shrink geometrically: a lookup visits O(log n) of them and
        # each entry is merged O(log n) times (a log-structured merge of sorted arrays).
        self._runs: list[Entries] = []
        self._seen_version = 0
        self._opened = False
        # what this process knows of the saved segments, and the entries added since
        self._saved_upto = 0
        self._saved_first = 0
        self._saved_later = 0
        self._unsaved: list[Entries] = []

    def entries(self, rows: exp.Expr) -> Entries:
        """The index entries of the rows ``rows`` selects (a query with ``idempotency_key`` and
        ``timestamp`` columns), sorted. A writer that has them can look its keys up with them
        (:meth:`stored_rows`), tell that no key repeats among them (no two neighbours share a
        prefix, see :func:`prefixes_repeat`) and spare the index reading its rows back
        (:meth:`will_store`)."""
        entries: Entries = self._storage.arrow(self._entries_query(rows)).column("entry").to_numpy()
        return entries

    def will_store(self, version: int, entries: Entries) -> None:
        """``entries`` (from :meth:`entries`) cover every row that the caller's write
        transaction stores as version ``version``: if it commits, the index takes them instead
        of reading that version's rows back on its next lookup (0.1 s per 1M rows)."""
        self._up_to(version - 1)
        self._storage.after_commit(lambda: self._committed(version, entries))

    def stored_rows(
        self, keys: exp.Expr | Entries, *, table: str | None = None, newest: int | None = None
    ) -> exp.Expr:
        """A condition on ``stored_events`` rows (under alias ``table``) that holds for every
        stored row of the keys ``keys`` selects (a query with an ``idempotency_key`` column, or
        the sorted entries of rows from :meth:`entries`): timestamp ranges of whole UTC days,
        or FALSE when none of the keys was ever stored.

        ``newest`` is the newest version committed in the caller's transaction, when the
        caller has read it already (a writer, from ``Context.next_version``).

        The first lookup of a process starts from the store's saved segments that are usable
        (see :meth:`_Segments.chain`).
        """
        self._up_to(newest)
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

    def _up_to(self, newest: int | None) -> None:
        """Hold the rows of every version up to ``newest`` (the newest committed, if None)."""
        if newest is None:
            committed = self._storage.one(newest_version())
            assert committed is not None
            newest = int(committed[0])
        if not self._opened:
            self._opened = True
            self._open(newest)
        self._catch_up(newest)

    def _catch_up(self, newest: int) -> None:
        """Add the rows of every commit after the last one seen, up to ``newest``, the newest
        committed in the caller's transaction (its own commit is recorded last, so never
        included)."""
        if newest < self._seen_version:
            # the version log went back: the store was emptied or restored from a copy
            self._runs, self._seen_version, self._unsaved = [], 0, []
            self._saved_upto = self._saved_first = self._saved_later = 0
        if newest != self._seen_version:
            rows = bind(_NEW_ROWS, seen=self._seen_version, newest=newest)
            self._add_committed(self.entries(rows))
            self._seen_version = newest
        # also entries a commit handed over (will_store), saved here, inside a transaction
        unsaved = sum(len(run) for run in self._unsaved)
        if unsaved and unsaved >= self._save_at_least:
            self._save(unsaved)

    def _committed(self, version: int, entries: Entries) -> None:
        """The write that promised ``entries`` for ``version`` committed. The index had every
        version before it (:meth:`will_store` caught up, and nothing else commits while a
        write holds the store's lock)."""
        self._add_committed(entries)
        self._seen_version = version

    def _add_committed(self, run: Entries) -> None:
        if len(run):
            self._add(run)
            self._unsaved.append(run)

    def _entries_query(self, rows: exp.Expr) -> exp.Expr:
        return bind(
            _ENTRIES,
            day_bits=_DAY_BITS,
            day_offset=_DAY_OFFSET,
            any_day=_ANY_DAY,
            ctes={"keyed_rows": rows},
        )

    def _open(self, newest: int) -> None:
        chain = self._saved.chain(newest=newest)
        for segment in chain:
            self._add(segment.entries)
        if chain:
            self._seen_version = self._saved_upto = chain[-1].upto
            self._saved_first = len(chain[0].entries)
            self._saved_later = sum(len(segment.entries) for segment in chain[1:])

    def _save(self, unsaved: int) -> None:
        """Save the ``unsaved`` entries added since the last segment as a segment of their own,
        or, when the later segments would hold as many entries as the first, everything as one
        segment."""
        if self._saved_later + unsaved >= self._saved_first:
            while len(self._runs) > 1:
                newer = self._runs.pop()
                self._runs.append(_merged(self._runs.pop(), newer))
            if not self._saved.write(0, self._seen_version, self._runs[0], replace_all=True):
                return
            self._saved_first, self._saved_later = len(self._runs[0]), 0
        else:
            run = np.sort(np.concatenate(self._unsaved))
            if not self._saved.write(self._saved_upto, self._seen_version, run):
                return
            self._saved_later += len(run)
        self._saved_upto, self._unsaved = self._seen_version, []

    def _add(self, run: Entries) -> None:
        self._runs.append(run)
        while len(self._runs) > 1 and len(self._runs[-2]) <= 2 * len(self._runs[-1]):
            newer = self._runs.pop()
            older = self._runs.pop()
            self._runs.append(_merged(older, newer))

    def _prefixes(self, keys: exp.Expr | Entries) -> Entries:
        """The distinct hash prefixes of the keys ``keys`` selects (or of these sorted
        entries), sorted."""
        if isinstance(keys, np.ndarray):
            # the prefix is an entry's high bits: sorted entries have sorted prefixes
            return _distinct_of_sorted(keys & _PREFIX_MASK)
        assert isinstance(keys, exp.Query)
        query = exp.select(exp.func("hash", exp.column("idempotency_key", table="k"))).from_(
            keys.subquery("k")
        )
        hashes = self._storage.arrow(query).column(0).to_numpy().astype(np.uint64, copy=False)
        return _sorted_distinct(hashes & _PREFIX_MASK)

    def _days_of(self, prefixes: Entries) -> Days:
        """The distinct day fields of the entries with these (sorted) prefixes, sorted."""
        found: list[Days] = []
        for run in self._runs:
            # sorted needles: each search starts where the last ended (3x faster at 10M)
            first = np.searchsorted(run, prefixes, side="left")
            # A key is found when the entry it would precede has its prefix. Most looked-up keys
            # are new, so only the found ones are searched for the end of their entries.
            hits = np.zeros(len(prefixes), dtype=bool)
            inside = first < len(run)
            hits[inside] = (run[first[inside]] & _PREFIX_MASK) == prefixes[inside]
            if not hits.any():
                continue
            first = first[hits]
            counts = np.searchsorted(run, prefixes[hits] | _DAY_MASK, side="right") - first
            # every position first[i] .. first[i] + counts[i] - 1, without a Python loop
            offsets = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)
            found.append((run[np.repeat(first, counts) + offsets] & _DAY_MASK).astype(np.int64))
        if not found:
            return np.empty(0, dtype=np.int64)
        return _sorted_distinct(np.concatenate(found))


@dataclass(frozen=True)
class _Segment:
    after: int
    upto: int
    entries: Entries
    snapshot: int


class _Segments:
    """The saved segments of a store's index. A cache: what cannot be read or written is
    ignored, and the index is then read from the stored rows, which is always correct."""

    def __init__(self, storage: Storage) -> None:
        self._storage = storage
        self._folder = storage.path / INDEX_FOLDER
        self._probe: int | None = None

    def chain(self, *, newest: int) -> list[_Segment]:
        """The longest run of usable segments from version 0 on, each starting where the last
        ended (the widest first). A segment is usable if it was written at a DuckLake snapshot
        the store still has (same id, same commit time), for versions the caller's transaction
        sees, by this layout and this DuckDB hash, and is whole; and only if no stored row was
        removed after any of them was written (an emptied store)."""
        starting: dict[int, list[tuple[int, Path]]] = {}
        with contextlib.suppress(OSError):
            for path in self._folder.iterdir():
                name = _SEGMENT_NAME.fullmatch(path.name)
                if name and int(name[1]) < int(name[2]) <= newest:
                    starting.setdefault(int(name[1]), []).append((int(name[2]), path))
        chain: list[_Segment] = []
        after = 0
        while after in starting:
            for upto, path in sorted(starting[after], reverse=True):
                segment = self._read(path, after, upto)
                if segment is not None:
                    chain.append(segment)
                    after = upto
                    break
            else:
                break
        if chain:
            earliest = min(segment.snapshot for segment in chain)
            if self._storage.one(rows_removed_since(STORED_EVENTS, earliest)) != (0,):
                return []
        return chain

    def write(self, after: int, upto: int, entries: Entries, *, replace_all: bool = False) -> bool:
        """Save ``entries`` as the segment of versions ``after`` < v <= ``upto``, atomically
        (another process sees the whole file or none); with ``replace_all``, remove every other
        segment. False if it could not be written."""
        identity = self._storage.one(snapshot_identity())
        if identity is None:
            return False
        words = [_MAGIC, _LAYOUT, self._hash_probe(), after, upto, *identity, len(entries)]
        header = np.array([*words, _checksum(entries)], dtype=np.uint64)
        target = self._folder / f"{after}-{upto}.bin"
        try:
            self._folder.mkdir(exist_ok=True)
            handle, scratch = tempfile.mkstemp(dir=self._storage.path / "tmp", prefix="key_index")
        except OSError:
            return False
        try:
            with os.fdopen(handle, "wb") as out:
                header.astype(_ON_DISK).tofile(out)
                entries.astype(_ON_DISK, copy=False).tofile(out)
            os.replace(scratch, target)
        except OSError:
            with contextlib.suppress(OSError):
                os.unlink(scratch)
            return False
        if replace_all:
            with contextlib.suppress(OSError):
                for path in self._folder.iterdir():
                    if path != target and _SEGMENT_NAME.fullmatch(path.name):
                        path.unlink(missing_ok=True)
        return True

    def _read(self, path: Path, after: int, upto: int) -> _Segment | None:
        try:
            words = np.fromfile(path, dtype=_ON_DISK).astype(np.uint64, copy=False)
        except (OSError, ValueError):
            return None
        if len(words) < _HEADER_WORDS:
            return None
        header, entries = words[:_HEADER_WORDS], words[_HEADER_WORDS:]
        expected = (_MAGIC, _LAYOUT, self._hash_probe(), after, upto)
        magic, layout, probe, first, last, snapshot, snapshot_us, count, checksum = map(int, header)
        if (
            (magic, layout, probe, first, last) != expected
            or count != len(entries)
            or checksum != _checksum(entries)
            or self._storage.one(snapshot_identity(snapshot)) != (snapshot, snapshot_us)
        ):
            return None
        return _Segment(after, upto, entries, snapshot)

    def _hash_probe(self) -> int:
        """DuckDB's hash of a fixed string: a segment written by a DuckDB whose ``hash()``
        differs would give wrong prefixes."""
        if self._probe is None:
            row = self._storage.one(exp.select(exp.func("hash", exp.Literal.string(_PROBE))))
            assert row is not None
            self._probe = int(row[0])
        return self._probe


def prefixes_repeat(entries: Entries) -> bool:
    """Whether two of these sorted entries share a key hash prefix, as two rows of one key do
    (two keys do with odds of 1 in 280 for 1M keys)."""
    prefixes = entries & _PREFIX_MASK
    return bool(np.any(prefixes[1:] == prefixes[:-1]))


def _checksum(entries: Entries) -> int:
    """The entries' sum modulo 2**64: a torn or damaged file fails it."""
    return int(np.add.reduce(entries, dtype=np.uint64)) if len(entries) else 0


def _sorted_distinct(values: _Words) -> _Words:
    """The distinct values, sorted. ``np.unique`` took 0.65-1.0 s for the hashes of a
    1M-row ingest batch (NumPy 2.4 dedups by hashing first); a sort and a neighbour
    comparison take 0.06 s."""
    return _distinct_of_sorted(np.sort(values))


def _distinct_of_sorted(ordered: _Words) -> _Words:
    """The distinct values of a sorted array."""
    keep = np.ones(len(ordered), dtype=bool)
    np.not_equal(ordered[1:], ordered[:-1], out=keep[1:])
    return ordered[keep]


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
