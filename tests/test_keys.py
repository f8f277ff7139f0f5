"""The key index: where the stored rows of a set of keys lie, never missing one."""

from __future__ import annotations

import shutil
from datetime import datetime, timedelta
from itertools import pairwise
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from procs.common import NOW, FakeClock
from sqlglot import exp

import engine
from engine.keys import INDEX_FOLDER, KeyIndex, _day_ranges, _merged, _sorted_distinct
from engine.queries import bind, snapshot_identity, table_ref
from engine.schema import STORED_EVENTS

BASE = NOW - timedelta(days=40)


def _event(key: str, at: datetime, customer: str = "acme") -> dict[str, object]:
    return {
        "idempotency_key": key,
        "event_name": "call",
        "timestamp": at.isoformat().replace("+00:00", "Z"),
        "external_customer_id": customer,
        "properties": {"n": 1},
    }


def _keys(*keys: str) -> exp.Expr:
    return exp.select("idempotency_key").from_(
        exp.Unnest(expressions=[exp.Array(expressions=[exp.convert(k) for k in keys])]).as_(
            "k", table=["idempotency_key"]
        )
    )


def _keyed_rows(*keys: str) -> exp.Expr:
    """Rows of ``keys`` (at one time, which a lookup by their entries ignores)."""
    query = _keys(*keys)
    assert isinstance(query, exp.Select)
    return query.select(
        exp.cast(exp.convert(BASE.replace(tzinfo=None)), "TIMESTAMP").as_("timestamp")
    )


def _condition(store: engine.Store, *keys: str) -> exp.Expr:
    with store._storage.read():
        return store._context.keys.stored_rows(_keys(*keys))


def _rows_kept(store: engine.Store, condition: exp.Expr, *keys: str) -> tuple[int, int]:
    """(stored rows of ``keys``, how many of them satisfy ``condition``)."""
    key_list = exp.column("idempotency_key").isin(*[exp.convert(k) for k in keys])
    query = (
        exp.select(
            exp.func("count", exp.Star()),
            exp.func("coalesce", exp.func("count_if", condition), exp.convert(0)),
        )
        .from_(table_ref(STORED_EVENTS))
        .where(key_list)
    )
    row = store._storage.one(query)
    assert row is not None
    return int(row[0]), int(row[1])


def _backfill(
    store: engine.Store, day: datetime, events: list[dict[str, object]], *, days: int = 1
) -> None:
    backfill = store.backfills.create(
        timeframe_start=day, timeframe_end=day + timedelta(days=days), replace_existing_events=False
    )
    store.ingest(events, backfill_id=backfill.id)
    store.backfills.close(backfill.id)


def _lookup(store: engine.Store, index: KeyIndex, *keys: str) -> exp.Expr:
    with store._storage.read():
        return index.stored_rows(_keys(*keys))


def _segments(folder: Path) -> list[tuple[int, int, Path]]:
    """(after, upto, path) of a store's saved index segments, in order."""
    named = ((path.stem.split("-"), path) for path in (folder / INDEX_FOLDER).glob("*.bin"))
    return sorted((int(after), int(upto), path) for (after, upto), path in named)


def _read(segment: Path) -> tuple[npt.NDArray[np.uint64], npt.NDArray[np.uint64]]:
    words = np.fromfile(segment, dtype="<u8").astype(np.uint64)
    return words[:9], words[9:]


def _rewrite(segment: Path, entries: list[int]) -> None:
    """Give a segment other entries, with the count and checksum to match."""
    header = _read(segment)[0].copy()
    run = np.array(sorted(entries), dtype=np.uint64)
    header[7], header[8] = len(run), np.add.reduce(run, dtype=np.uint64)
    np.concatenate([header, run]).astype("<u8").tofile(segment)


def _add_ghost(store: engine.Store, segment: Path, key: str, day: int) -> str:
    """Add to a segment an entry for ``key`` on ``day`` (days since 1970) that no stored row
    has: an index that then narrows ``key`` to that day read the segment. Returns how the
    condition spells the day's start."""
    (prefix,) = KeyIndex(store._storage)._prefixes(_keys(key))
    _rewrite(segment, [*map(int, _read(segment)[1]), int(prefix) | (day + (1 << 16))])
    return f"'{datetime(1970, 1, 1) + timedelta(days=day)}'"


def test_the_first_lookup_builds_the_index_and_a_small_one_stays_unsaved(
    store_path: Path, clock: FakeClock
) -> None:
    with engine.open(store_path, clock=clock) as fresh:
        fresh.ingest([_event("k", NOW - timedelta(hours=1))])  # the first lookup
        index = fresh._context.keys
        assert _lookup(fresh, index, "unknown") == exp.false()
        assert sum(len(run) for run in index._runs) == 1
    assert _segments(store_path) == []  # under SAVE_AT_LEAST entries


def test_a_later_process_starts_from_the_saved_segments_and_reads_only_newer_commits(
    store_path: Path, clock: FakeClock
) -> None:
    day = BASE.replace(hour=0, minute=0, second=0, microsecond=0)
    with engine.open(store_path, clock=clock) as store:
        store.ingest([_event(f"k{n}", NOW - timedelta(hours=1, minutes=n)) for n in range(24)])
        _backfill(store, day, [_event("old", day + timedelta(hours=3))])
        _lookup(store, KeyIndex(store._storage, save_at_least=1), "k0")
        ((after, first_upto, first),) = _segments(store_path)
        assert (after, len(_read(first)[1])) == (0, 25)
        ghost_day = _add_ghost(store, first, "ghost", 30)

        # one more row: fewer than the first segment holds, so a segment of its own
        store.ingest([_event("newer", NOW - timedelta(minutes=30))])
        _lookup(store, KeyIndex(store._storage, save_at_least=1), "k0")
        (_, (after, _, second)) = _segments(store_path)
        assert (after, len(_read(second)[1])) == (first_upto, 1)
        second_ghost_day = _add_ghost(store, second, "second-ghost", 31)

        store.ingest([_event("newest", NOW - timedelta(minutes=5))])
        later = KeyIndex(store._storage, save_at_least=10**9)
        assert ghost_day in _lookup(store, later, "ghost").sql(dialect="duckdb")
        assert second_ghost_day in _lookup(store, later, "second-ghost").sql(dialect="duckdb")
        for key in ("k0", "k23", "old", "newer", "newest"):
            assert _rows_kept(store, _lookup(store, later, key), key) == (1, 1), key

        # later segments reaching the first one's size: one segment of everything instead
        store.ingest([_event(f"m{n}", NOW - timedelta(minutes=4, seconds=n)) for n in range(24)])
        _lookup(store, KeyIndex(store._storage, save_at_least=1), "k0")
        ((after, _, whole),) = _segments(store_path)
        assert (after, len(_read(whole)[1])) == (0, 24 + 1 + 2 + 24 + 2)  # and the two ghosts


def test_an_index_from_another_history_is_never_used(tmp_path: Path, clock: FakeClock) -> None:
    """Two copies of one store written to apart reach the same versions and DuckLake snapshot
    ids; only the snapshots' commit times tell the histories apart."""
    ours, theirs = tmp_path / "ours", tmp_path / "theirs"
    with engine.open(ours, clock=clock) as store:
        store.ingest([_event("shared", NOW - timedelta(hours=2))])
    shutil.copytree(ours, theirs)
    day = BASE.replace(hour=0, minute=0, second=0, microsecond=0)
    with engine.open(theirs, clock=clock) as store:
        _backfill(store, day, [_event("theirs", day + timedelta(hours=1))])
        _lookup(store, KeyIndex(store._storage, save_at_least=1), "shared")
    with engine.open(ours, clock=clock) as store:
        _backfill(store, day + timedelta(days=3), [_event("ours", day + timedelta(days=3))])
        shutil.copytree(theirs / INDEX_FOLDER, ours / INDEX_FOLDER)
        ((_, _, segment),) = _segments(ours)
        snapshot, snapshot_us = map(int, _read(segment)[0][5:7])
        assert store._storage.one(snapshot_identity(snapshot)) not in (
            None,
            (snapshot, snapshot_us),
        )
        index = KeyIndex(store._storage)
        for key in ("shared", "ours"):
            assert _rows_kept(store, _lookup(store, index, key), key) == (1, 1), key
        assert _lookup(store, index, "theirs") == exp.false()


@pytest.mark.parametrize("damage", ["truncated", "altered", "rows deleted since"])
def test_a_damaged_or_outdated_segment_is_not_used(
    store_path: Path, clock: FakeClock, damage: str
) -> None:
    with engine.open(store_path, clock=clock) as store:
        for n in range(3):
            store.ingest([_event(f"k{n}", NOW - timedelta(hours=1 + n))])
        _lookup(store, KeyIndex(store._storage, save_at_least=1), "k0")
        ((_, _, segment),) = _segments(store_path)
        header, entries = _read(segment)
        if damage == "truncated":
            with segment.open("r+b") as file:
                file.truncate((len(header) + len(entries) - 1) * 8)
        elif damage == "altered":
            np.concatenate([header, np.zeros_like(entries)]).astype("<u8").tofile(segment)
        else:  # emptied (as the test fixture does) and written again past the segment's version
            storage = store._storage
            with storage.write():
                for table in ("stored_events", "commits"):
                    storage.execute(exp.delete(exp.table_(table, db="main", catalog="lake")))
            for n in range(4):
                store.ingest([_event(f"j{n}", NOW - timedelta(hours=1 + n))])
        index = KeyIndex(store._storage, save_at_least=10**9)
        for key in ["j0", "j3"] if damage == "rows deleted since" else ["k0", "k2"]:
            assert _rows_kept(store, _lookup(store, index, key), key) == (1, 1), key


def test_keys_never_stored_narrow_to_nothing(store: engine.Store) -> None:
    store.ingest([_event("known", NOW - timedelta(hours=1))])
    assert _condition(store, "unknown", "also-unknown") == exp.false()


def test_rows_of_a_key_on_several_days_are_all_kept(store: engine.Store) -> None:
    store.ingest([_event("k", NOW - timedelta(hours=1))])
    day = BASE.replace(hour=0, minute=0, second=0, microsecond=0)
    # the same key re-sent in backfills on other days: three stored rows on three days
    _backfill(store, day, [_event("k", day + timedelta(hours=3))])
    _backfill(store, day + timedelta(days=2), [_event("other", day + timedelta(days=2, hours=1))])
    _backfill(store, day + timedelta(days=5), [_event("k", day + timedelta(days=5, hours=1))])
    condition = _condition(store, "k")
    assert _rows_kept(store, condition, "k") == (3, 3)
    sql = condition.sql(dialect="duckdb")
    assert sql.count('timestamp" >=') == 3, sql  # one range per day, not one span
    # rows of other keys on other days are pruned away
    assert _rows_kept(store, condition, "other") == (1, 0)


def test_many_days_become_one_span(store: engine.Store) -> None:
    day = (NOW - timedelta(days=100)).replace(hour=0, minute=0, second=0, microsecond=0)
    keys = []
    for window in range(3):  # every other day of 90: 45 separate days
        start = day + timedelta(days=30 * window)
        events = [
            _event(f"k{window}-{n}", start + timedelta(days=n, hours=1)) for n in range(0, 30, 2)
        ]
        keys += [str(e["idempotency_key"]) for e in events]
        _backfill(store, start, events, days=30)
    condition = _condition(store, *keys)
    assert _rows_kept(store, condition, *keys) == (45, 45)
    assert condition.sql(dialect="duckdb").count('timestamp" >=') == 1


def test_an_emptied_store_is_read_again(store: engine.Store) -> None:
    store.ingest([_event("k", NOW - timedelta(hours=1))])
    assert _condition(store, "k") != exp.false()
    storage = store._storage
    with storage.write():
        for table in ("stored_events", "commits"):
            storage.execute(exp.delete(exp.table_(table, db="main", catalog="lake")))
    store.ingest([_event("j", NOW - timedelta(hours=1))])
    assert _condition(store, "k") == exp.false()
    assert _condition(store, "j") != exp.false()


@pytest.mark.parametrize(
    ("year", "every_day"), [(1700, True), (1800, False), (2140, False), (2200, True), (20000, True)]
)
def test_a_row_outside_the_representable_years_matches_every_day(
    store: engine.Store, year: int, every_day: bool
) -> None:
    store.ingest([_event("k", NOW - timedelta(hours=1))])
    storage = store._storage
    with storage.write():
        storage.execute(
            bind(
                "INSERT INTO lake.main.stored_events SELECT 'distant', 'call', "
                "CAST(:at AS TIMESTAMP), NULL, 'acme', '{}', 2, NULL, 'event'",
                at=f"{year}-06-01 00:00:00",
            )
        )
        storage.execute(bind("INSERT INTO lake.main.commits SELECT 2, 'ingest', NULL, now(), 1"))
    condition = _condition(store, "distant")
    assert (condition == exp.true()) is every_day
    assert _rows_kept(store, condition, "distant") == (1, 1)
    assert _condition(store, "k") != exp.true()


def test_a_rolled_back_write_leaves_no_trace(store: engine.Store) -> None:
    """A preview runs the close and rolls it back: its rows must not enter the index, and the
    versions it used must be read again once a real commit reuses them."""
    store.ingest([_event("live", NOW - timedelta(hours=1))])
    day = BASE.replace(hour=0, minute=0, second=0, microsecond=0)
    backfill = store.backfills.create(
        timeframe_start=day, timeframe_end=day + timedelta(days=1), replace_existing_events=False
    )
    store.ingest([_event("late", day + timedelta(hours=2))], backfill_id=backfill.id)
    store.backfills.preview(backfill.id)
    assert _condition(store, "late") == exp.false()
    store.backfills.close(backfill.id)
    assert _rows_kept(store, _condition(store, "late"), "late") == (1, 1)
    # the key is now stored: sent live it supersedes the backfill's row instead of duplicating
    result = store.ingest([_event("late", NOW - timedelta(hours=1))])
    assert result.ingested == ["late"]
    assert _rows_kept(store, _condition(store, "late"), "late") == (2, 2)


@settings(
    max_examples=25,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    batches=st.lists(
        st.lists(st.tuples(st.integers(0, 30), st.integers(0, 20)), min_size=1, max_size=12),
        min_size=1,
        max_size=5,
    ),
    asked=st.lists(st.integers(0, 40), min_size=1, max_size=8),
)
def test_no_stored_row_of_an_asked_key_is_ever_left_out(
    store: engine.Store, batches: list[list[tuple[int, int]]], asked: list[int]
) -> None:
    """Keys ingested in backfills on random days and live, read back after every commit, by the
    store's index (from the keys and from entries of rows) and by a new one starting from the
    file the previous new one saved: every stored row of the asked keys satisfies the
    condition, and none of an unknown key does."""
    storage = store._storage
    with storage.write():
        for table in ("stored_events", "staged_events", "backfills", "commits", "supersessions"):
            storage.execute(exp.delete(exp.table_(table, db="main", catalog="lake")))
    day = BASE.replace(hour=0, minute=0, second=0, microsecond=0) - timedelta(days=10)
    for batch in batches:
        first = min(d for _, d in batch)
        backfill = store.backfills.create(
            timeframe_start=day + timedelta(days=first),
            timeframe_end=day + timedelta(days=first + 21),
            replace_existing_events=False,
        )
        by_key = {key: d for d, key in ((d, f"k{k}") for k, d in batch)}
        store.ingest(
            [_event(key, day + timedelta(days=d, hours=3)) for key, d in by_key.items()],
            backfill_id=backfill.id,
        )
        store.backfills.close(backfill.id)
        keys = [f"k{n}" for n in asked]
        # live rows of some of the batch's keys and of a new one, which the index takes from
        # the writes (will_store) instead of reading them back
        live = [*list(by_key)[:2], f"k{31 + len(batch) % 10}"]
        store.ingest([_event(key, NOW - timedelta(hours=1)) for key in live])
        condition = _condition(store, *keys)
        total, kept = _rows_kept(store, condition, *keys)
        assert kept == total
        # the sorted entries of rows of those keys, which an ingest batch has, answer the same
        with storage.read():
            index = store._context.keys
            assert index.stored_rows(index.entries(_keyed_rows(*keys))) == condition
        # a process of its own, starting from the file the previous one saved
        later = _lookup(store, KeyIndex(storage, save_at_least=1), *keys)
        assert _rows_kept(store, later, *keys) == (total, total)
    assert _condition(store, "never-sent") == exp.false()


def test_entries_promised_by_a_write_that_rolled_back_are_not_taken(
    store: engine.Store,
) -> None:
    index = store._context.keys
    store.ingest([_event("a", NOW - timedelta(hours=1))])
    storage = store._storage
    with pytest.raises(RuntimeError, match="rolled back"), storage.write():
        version = store._context.next_version()
        assert index.stored_rows(_keys("a"), newest=version - 1) != exp.false()
        index.will_store(version, index.entries(_keyed_rows("ghost")))
        raise RuntimeError("rolled back")
    # nothing taken: the index still holds the versions before, without a rebuild
    assert index._seen_version == version - 1
    # the version the rolled-back write would have had goes to another batch
    store.ingest([_event("b", NOW - timedelta(hours=2))])
    assert _condition(store, "ghost") == exp.false()
    assert _rows_kept(store, _condition(store, "a", "b"), "a", "b") == (2, 2)


@pytest.mark.parametrize("keys", [["a"], ["a", "b", "c"]])
def test_the_answer_is_a_condition_duckdb_accepts(store: engine.Store, keys: list[str]) -> None:
    store.ingest([_event(k, NOW - timedelta(hours=1)) for k in keys])
    condition = _condition(store, *keys)
    assert _rows_kept(store, condition, *keys) == (len(keys), len(keys))


@given(
    older=st.lists(st.integers(0, 2**64 - 1), max_size=50),
    newer=st.lists(st.integers(0, 2**64 - 1), max_size=50),
)
def test_merging_two_sorted_runs_equals_sorting_them(older: list[int], newer: list[int]) -> None:
    first = np.array(sorted(older), dtype=np.uint64)
    second = np.array(sorted(newer), dtype=np.uint64)
    assert _merged(first, second).tolist() == sorted(older + newer)


@given(values=st.lists(st.integers(0, 2**64 - 1) | st.sampled_from([0, 7, 2**64 - 1]), max_size=60))
def test_sorted_distinct_values_are_the_sorted_set(values: list[int]) -> None:
    assert _sorted_distinct(np.array(values, dtype=np.uint64)).tolist() == sorted(set(values))
    days = np.array([v % 2000 - 1000 for v in values], dtype=np.int64)
    assert _sorted_distinct(days).tolist() == sorted(set(days.tolist()))


@given(days=st.sets(st.integers(-1000, 1000), max_size=40))
def test_day_ranges_cover_exactly_the_days(days: set[int]) -> None:
    ranges = _day_ranges(np.array(sorted(days), dtype=np.int64))
    covered = [day for first, last in ranges for day in range(first, last + 1)]
    assert covered == sorted(days)
    # maximal runs: no two ranges touch
    assert all(b[0] > a[1] + 1 for a, b in pairwise(ranges))
