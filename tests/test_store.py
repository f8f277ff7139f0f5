"""The ``Store`` facade: the folder, versions, ``store.sql`` (views, read only) and the error
bodies every layer shares."""

from __future__ import annotations

import gc
import shutil
import warnings
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from procs.common import DAY, HOUR, NOW, OLD, FakeClock, effective, event, fingerprint
from sqlglot import exp

import engine
from engine.errors import (
    ConstraintViolation,
    DuplicateResourceCreation,
    EngineError,
    RequestValidationError,
    ResourceConflict,
    ResourceNotFound,
)
from engine.queries import maintenance_call, seconds_ago, table_ref
from engine.schema import BACKFILLS, STORED_EVENTS
from engine.storage import render

ORB = "https://docs.withorb.com/reference/error-responses#"

# -- the folder and reopening ---------------------------------------------------------------------


def test_open_creates_the_folder_and_reopen_keeps_everything(
    store_path: Path, clock: FakeClock
) -> None:
    with engine.open(store_path, clock=clock) as store:
        customer = store.customers.create(external_customer_id="acme")
        store.ingest([event("k1", NOW)])
        backfill = store.backfills.create(timeframe_start=OLD, timeframe_end=OLD + DAY)
        store.ingest([event("b1", OLD)], backfill_id=backfill.id)
        backfill = store.backfills.get(backfill.id)
        visible = effective(store)
    assert backfill.events_ingested == 1
    assert {p.name for p in store_path.iterdir()} >= {"catalog.sqlite", "data", "tmp", "write.lock"}
    with engine.open(store_path, clock=clock) as reopened:
        assert effective(reopened) == visible
        assert reopened.customers.get(customer.id) == customer
        assert reopened.backfills.get(backfill.id) == backfill
        reopened.backfills.close(backfill.id)
        assert [row[0] for row in effective(reopened)] == ["b1", "k1"]
        assert reopened.path == store_path


def test_two_stores_on_one_folder_see_each_others_commits(
    store_path: Path, clock: FakeClock
) -> None:
    with (
        engine.open(store_path, clock=clock) as first,
        engine.open(store_path, clock=clock) as second,
    ):
        first.ingest([event("k1", NOW)])
        assert [row[0] for row in effective(second)] == ["k1"]
        second.ingest([event("k2", NOW)])
        assert [row[0] for row in effective(first)] == ["k1", "k2"]
        # versions stay strictly increasing across both connections
        versions = first.sql("SELECT version FROM lake.main.commits ORDER BY 1").fetchall()
        assert versions == [(1,), (2,)]


def _open_or_fail(path: Path, clock: FakeClock) -> engine.Store:
    """``engine.open``, turning a failure into a test failure here and now: a failed open
    leaks its lock file (see the next test), so collect it inside this test."""
    try:
        return engine.open(path, clock=clock)
    except Exception as error:
        message = f"{type(error).__name__}: {error}"
    gc.collect()
    pytest.fail(message)


def test_a_moved_store_folder_opens(store_path: Path, clock: FakeClock, tmp_path: Path) -> None:
    with engine.open(store_path, clock=clock) as store:
        store.ingest([event("k1", NOW)])
    moved = tmp_path / "moved"
    shutil.move(store_path, moved)
    with _open_or_fail(moved, clock) as reopened:
        assert [row[0] for row in effective(reopened)] == ["k1"]


def test_a_new_store_writes_zstd_parquet(store_path: Path, clock: FakeClock) -> None:
    """The store's DuckLake options (schema.OPTIONS) are set when it is created."""
    with engine.open(store_path, clock=clock) as store:
        store.ingest([event(f"k{n}", NOW) for n in range(50)])
    files = list((store_path / "data").rglob("*.parquet"))
    assert files
    codecs = set()
    for path in files:
        metadata = pq.ParquetFile(path).metadata
        for group in range(metadata.num_row_groups):
            row_group = metadata.row_group(group)
            codecs |= {row_group.column(i).compression for i in range(metadata.num_columns)}
    assert codecs == {"ZSTD"}


def test_changed_at_names_the_last_commit_that_changed_a_table(store: engine.Store) -> None:
    """Caches of small lake tables (the filtered backfills of late deprecations) rest on it."""
    storage = store._storage
    first = storage.changed_at(BACKFILLS)
    store.ingest([event("k1", NOW - HOUR)])
    assert storage.changed_at(BACKFILLS) == first  # a live commit leaves backfills alone
    assert storage.changed_at(STORED_EVENTS) > first
    backfill = store.backfills.create(
        timeframe_start=OLD, timeframe_end=OLD + DAY, replace_existing_events=False
    )
    created = storage.changed_at(BACKFILLS)
    assert created > first
    store.backfills.revert(backfill.id)
    assert storage.changed_at(BACKFILLS) > created


def test_changed_at_follows_other_processes_and_expired_snapshots(
    store_path: Path, clock: FakeClock
) -> None:
    """Each call reads only the change log's new entries; a change whose entry expired before
    this store read it still counts as a change."""
    with (
        engine.open(store_path, clock=clock) as reader,
        engine.open(store_path, clock=clock) as writer,
    ):
        storage = reader._storage
        first = storage.changed_at(BACKFILLS)
        writer.backfills.create(
            timeframe_start=OLD, timeframe_end=OLD + DAY, replace_existing_events=False
        )
        created = storage.changed_at(BACKFILLS)
        assert created > first
        writer.backfills.create(
            timeframe_start=OLD + DAY, timeframe_end=OLD + 2 * DAY, replace_existing_events=False
        )
        writer.ingest([event("k1", NOW - HOUR)])
        with writer._storage.write():
            writer._storage.one(maintenance_call("expire_snapshots", older_than=seconds_ago(0)))
        assert storage.changed_at(BACKFILLS) > created
        # the next call starts from there, and a commit that leaves backfills alone is no change
        settled = storage.changed_at(BACKFILLS)
        writer.ingest([event("k2", NOW - HOUR)])
        assert storage.changed_at(BACKFILLS) == settled


def test_small_table_rows_are_read_again_only_after_a_change(
    store_path: Path, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    with (
        engine.open(store_path, clock=clock) as mine,
        engine.open(store_path, clock=clock) as other,
    ):
        storage = mine._storage
        reads: list[str] = []
        read = storage.rows
        monkeypatch.setattr(storage, "rows", lambda tree: reads.append(render(tree)) or read(tree))
        ids = exp.select("id").from_(table_ref(BACKFILLS)).order_by("id")
        with pytest.raises(RuntimeError, match="inside write"):
            storage.small_table_rows(BACKFILLS, ids)
        with storage.write():
            assert storage.small_table_rows(BACKFILLS, ids) == []
        mine.ingest([event("k1", NOW - HOUR)])
        with storage.write():
            assert storage.small_table_rows(BACKFILLS, ids) == []
        assert reads.count(render(ids)) == 1  # the live commit left backfills alone
        backfill = other.backfills.create(
            timeframe_start=OLD, timeframe_end=OLD + DAY, replace_existing_events=False
        )
        with storage.write():
            assert storage.small_table_rows(BACKFILLS, ids) == [(backfill.id,)]
            # this transaction's own writes are seen, never a copy from before them
            storage.execute(exp.delete(table_ref(BACKFILLS)))
            assert storage.small_table_rows(BACKFILLS, ids) == []
        assert reads.count(render(ids)) == 3


def test_memory_limit_caps_duckdb_and_a_bad_one_creates_nothing(
    store_path: Path, clock: FakeClock
) -> None:
    with pytest.raises(ConstraintViolation, match="'lots' is not a size") as caught:
        engine.open(store_path, clock=clock, memory_limit="lots")
    assert caught.value.fields == {"field": "memory_limit"}
    assert not store_path.exists()
    with engine.open(store_path, clock=clock, memory_limit="256MB") as store:
        (limit,) = store.sql("SELECT current_setting('memory_limit')").fetchone()
    assert limit == "244.1 MiB"


def test_a_failed_open_releases_its_files(store_path: Path, clock: FakeClock) -> None:
    store_path.mkdir()
    (store_path / "catalog.sqlite").write_text("this is not a SQLite database\n" * 100)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(Exception, match=r"(?i)database|file"):
            engine.open(store_path, clock=clock)
        gc.collect()
    leaks = [str(w.message) for w in caught if issubclass(w.category, ResourceWarning)]
    assert leaks == []


def test_every_change_to_usage_takes_the_next_version(
    store: engine.Store, clock: FakeClock
) -> None:
    store.ingest([event("k1", NOW), event("k2", NOW)])
    backfill = store.backfills.create(timeframe_start=OLD, timeframe_end=OLD + DAY)
    store.ingest([event("b1", OLD)], backfill_id=backfill.id)  # staging changes no usage
    store.customers.create(external_customer_id="acme")  # nor does a customer
    store.backfills.close(backfill.id)
    store.events.amend(
        "k1",
        event_name="api_call",
        timestamp=NOW,
        properties={"tokens": 5},
        external_customer_id="acme",
    )
    store.events.deprecate("k2")
    store.backfills.revert(backfill.id)
    rows = store.sql(
        "SELECT version, operation, backfill_id FROM lake.main.commits ORDER BY version"
    ).fetchall()
    assert rows == [
        (1, "ingest", None),
        (2, "close", backfill.id),
        (3, "amendment", None),
        (4, "deprecate", None),
        (5, "revert", backfill.id),
    ]


# -- store.sql ------------------------------------------------------------------------------------


def test_sql_views(store: engine.Store, clock: FakeClock) -> None:
    customer = store.customers.create(external_customer_id="acme")
    clock.now = OLD + HOUR
    store.ingest([event("old", OLD, tokens=1)])
    clock.now = NOW
    store.ingest([event("new", NOW, tokens=2)])
    backfill = store.backfills.create(timeframe_start=OLD, timeframe_end=OLD + DAY)
    store.ingest([event("fix", OLD, tokens=3)], backfill_id=backfill.id)
    store.backfills.close(backfill.id)
    events = store.sql(
        "SELECT idempotency_key, CAST(properties->>'tokens' AS INT), version, backfill_id "
        "FROM events ORDER BY 1"
    ).fetchall()
    assert events == [("fix", 3, 3, backfill.id), ("new", 2, 2, None)]
    everything = store.sql(
        "SELECT idempotency_key, version, source, kind, effective FROM all_events ORDER BY 2, 1"
    ).fetchall()
    assert everything == [
        ("old", 1, "live", "event", False),
        ("new", 2, "live", "event", True),
        ("fix", 3, "backfill", "event", True),
    ]
    assert store.sql("SELECT id, status FROM backfills").fetchall() == [(backfill.id, "reflected")]
    assert store.sql("SELECT id FROM customers").fetchall() == [(customer.id,)]
    frame = store.sql("SELECT count(*) AS n FROM events").pl()
    assert frame["n"].to_list() == [2]


REFUSED_QUERIES = [
    "DELETE FROM lake.main.stored_events",
    "UPDATE lake.main.backfills SET status = 'reflected'",
    "INSERT INTO lake.main.customers (id) VALUES ('x')",
    "CREATE TABLE lake.main.extra AS SELECT 1 AS a",
    "DROP VIEW events",
    "CREATE OR REPLACE TEMP VIEW events AS SELECT 1 AS a",
    "ALTER TABLE lake.main.customers ADD COLUMN x INTEGER",
    "COPY (SELECT 1) TO 'out.csv'",
    "ATTACH 'other.db' AS other",
    "DETACH lake",
    "CALL ducklake_expire_snapshots('lake', older_than => now())",
    "SET threads = 1",
    "PRAGMA database_list",
    "BEGIN TRANSACTION",
    "SELECT 1; DELETE FROM lake.main.stored_events",
    "SELECT * FROM events; SELECT 1",
    "",
    "SELEC * FROM events",
]


def test_sql_refuses_anything_but_one_read(store: engine.Store, subtests: pytest.Subtests) -> None:
    store.ingest([event("k1", NOW)])
    before = fingerprint(store)
    for query in REFUSED_QUERIES:
        with subtests.test(query=query):
            with pytest.raises(ConstraintViolation, match=r"read-only|does not parse") as info:
                relation = store.sql(query)
                relation.fetchall()
            assert info.value.status == 400
            assert fingerprint(store) == before


def _evil_customer_file(path: Path) -> Path:
    table = pa.table(
        {
            "id": ["cus_evil"],
            "external_customer_id": ["evil"],
            "name": pa.array([None], type=pa.string()),
            "email": pa.array([None], type=pa.string()),
            "created_at": pa.array([NOW.replace(tzinfo=None)], type=pa.timestamp("us")),
        }
    )
    pq.write_table(table, path)
    return path


def test_sql_select_cannot_write_through_table_functions(
    store: engine.Store, tmp_path: Path
) -> None:
    path = _evil_customer_file(tmp_path / "evil.parquet")
    with pytest.raises(ConstraintViolation):
        store.sql(
            f"SELECT * FROM ducklake_add_data_files('lake', 'customers', '{path}')"
        ).fetchall()
    assert store.customers.list() == []


def test_sql_select_cannot_expire_snapshots(store: engine.Store) -> None:
    store.ingest([event("k1", NOW)])
    store.ingest([event("k2", NOW)])
    count = "SELECT count(*) FROM ducklake_snapshots('lake')"
    (before,) = store.sql(count).fetchone()
    with pytest.raises(ConstraintViolation):
        store.sql(
            "SELECT count(*) FROM ducklake_expire_snapshots('lake', versions => [1, 2])"
        ).fetchall()
    assert store.sql(count).fetchone() == (before,)


# -- errors ---------------------------------------------------------------------------------------

ERROR_CLASSES: list[tuple[type[EngineError], int, str, str, type[Exception] | None]] = [
    (ConstraintViolation, 400, "400-constraint-violation", "Constraint violation", ValueError),
    (
        DuplicateResourceCreation,
        400,
        "400-duplicate-resource-creation",
        "Duplicate resource creation",
        ValueError,
    ),
    (ResourceNotFound, 404, "404-resource-not-found", "Resource not found", LookupError),
    (ResourceConflict, 409, "409-resource-conflict", "Resource conflict", None),
]


@pytest.mark.parametrize(
    ("cls", "status", "anchor", "title", "builtin"),
    ERROR_CLASSES,
    ids=[c[0].__name__ for c in ERROR_CLASSES],
)
def test_error_bodies(
    cls: type[EngineError], status: int, anchor: str, title: str, builtin: type[Exception] | None
) -> None:
    error = cls("backfill 'x' is reverted", backfill_id="x")
    assert isinstance(error, EngineError)
    if builtin is not None:
        assert isinstance(error, builtin)
    assert (error.status, error.type, error.title) == (status, ORB + anchor, title)
    assert error.detail == str(error) == "backfill 'x' is reverted"
    assert error.fields == {"backfill_id": "x"}
    assert error.to_dict() == {
        "type": ORB + anchor,
        "status": status,
        "title": title,
        "detail": "backfill 'x' is reverted",
    }


def test_request_validation_error_body() -> None:
    problems: list[dict[str, Any]] = [
        {"idempotency_key": "k1", "validation_errors": ["event_name is required"]}
    ]
    error = RequestValidationError("1 event failed validation", validation_errors=problems)
    assert isinstance(error, ValueError) and isinstance(error, EngineError)
    assert error.to_dict() == {
        "type": ORB + "400-request-validation-errors",
        "status": 400,
        "title": "Request validation error",
        "detail": "1 event failed validation",
        "validation_errors": problems,
    }


def test_errors_raised_by_the_engine_carry_their_body(store: engine.Store) -> None:
    with pytest.raises(RequestValidationError) as info:
        store.ingest([event("k1", NOW - 2 * DAY)])
    body = info.value.to_dict()
    assert body["status"] == 400 and body["type"] == ORB + "400-request-validation-errors"
    assert body["validation_errors"][0]["idempotency_key"] == "k1"
    assert "use a backfill" in body["validation_errors"][0]["validation_errors"][0]
    with pytest.raises(ResourceNotFound) as missing:
        store.backfills.get("bf_missing")
    assert missing.value.to_dict()["detail"] == "backfill 'bf_missing' does not exist"
