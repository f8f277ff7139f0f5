"""Peer: ClickHouse, embedded through ``chdb`` (what OpenMeter and Lago run their events on).

A plain ClickHouse design: an ``events`` MergeTree partitioned by day and ordered by (customer,
time), with the properties as a JSON string read by ``JSONExtract*``; an hourly ``rollup``
MergeTree that holds partial aggregates (live batches append theirs; queries sum over them).
Live ingest drops keys already stored (a ``NOT IN`` over the key column) and repeats inside the
batch (``LIMIT 1 BY``). A replace backfill copies the replaced rows to ``archive``, then rewrites
the touched day partitions (kept rows + staged rows, and their rollup) in scratch tables and
swaps them in with ``ALTER TABLE ... REPLACE PARTITION``, ClickHouse's idiom for correcting a
partition. (A lightweight ``DELETE`` is the plainer spelling, but in chdb each one waits 4-5 s
for the mutation to be scheduled, even on 20k rows.) ClickHouse has no multi-statement
transactions, so none of this is atomic.
"""

from __future__ import annotations

import shutil
import uuid
from datetime import datetime
from pathlib import Path
from typing import Any

import chdb
import pyarrow as pa
from chdb import session

from .base import (
    DEPRECATED_MODEL,
    Scope,
    UsageRow,
    as_usage_rows,
    folder_bytes,
    rollup_usage_sql,
    timestamp_literal,
)

_EVENTS_DDL = """
CREATE TABLE {name} (
    {extra}
    idempotency_key String,
    event_name LowCardinality(String),
    timestamp DateTime64(6, 'UTC'),
    customer_id Nullable(String),
    external_customer_id String,
    properties String,
    backfill_id Nullable(String)
) ENGINE = MergeTree
PARTITION BY toDate(timestamp)
ORDER BY (external_customer_id, timestamp)
"""

_ROLLUP_DDL = """
CREATE TABLE rollup (
    external_customer_id String,
    hour DateTime('UTC'),
    region Nullable(String),
    model Nullable(String),
    events UInt64,
    completion_events UInt64,
    completion_tokens Nullable(Float64),
    completion_max Nullable(Float64)
) ENGINE = MergeTree
PARTITION BY toDate(hour)
ORDER BY (external_customer_id, hour)
SETTINGS allow_nullable_key = 1
"""

# Hourly partial aggregates of the events matching {where}, from {source}.
_ROLLUP_INSERT = """
INSERT INTO rollup
SELECT external_customer_id, toStartOfHour(timestamp) AS hour,
       JSONExtract(properties, 'region', 'Nullable(String)') AS region,
       JSONExtract(properties, 'model', 'Nullable(String)') AS model,
       count() AS events,
       countIf(event_name = 'completion') AS completion_events,
       sumIf(JSONExtract(properties, 'tokens', 'Nullable(Float64)'), event_name = 'completion'),
       maxIf(JSONExtract(properties, 'tokens', 'Nullable(Float64)'), event_name = 'completion')
FROM {source}
WHERE {where}
GROUP BY external_customer_id, hour, region, model
"""

_COLUMNS = (
    "idempotency_key, event_name, timestamp, customer_id, external_customer_id, properties, "
    "backfill_id"
)


class ClickHousePeer:
    name = "clickhouse"

    def __init__(self, workdir: Path, *, memory_limit_gib: float | None = None) -> None:
        self.path = workdir / "clickhouse"
        if self.path.exists():
            shutil.rmtree(self.path)
        self.session = session.Session(str(self.path))
        if memory_limit_gib:
            self.query(f"SET max_memory_usage = {int(memory_limit_gib * 2**30)}")
        self.query("CREATE DATABASE IF NOT EXISTS bench")
        self.query("USE bench")
        self.query(_EVENTS_DDL.format(name="events", extra=""))
        self.query(_EVENTS_DDL.format(name="staging", extra=""))
        self.query(_EVENTS_DDL.format(name="archive", extra="archived_by String,"))
        self.query(_ROLLUP_DDL)
        self.scopes: dict[str, Scope] = {}

    def query(self, sql: str, fmt: str = "CSV") -> Any:
        return self.session.query(sql, fmt)

    def rows(self, sql: str) -> list[tuple[Any, ...]]:
        result = self.query(sql, "Arrow")
        table = pa.ipc.open_file(pa.BufferReader(result.bytes())).read_all()
        return [tuple(row.values()) for row in table.to_pylist()]

    def count(self, sql: str) -> int:
        return int(self.rows(sql)[0][0])

    def version(self) -> str:
        return f"ClickHouse {self.rows('SELECT version()')[0][0]} (chdb {chdb.__version__})"

    # -- System -------------------------------------------------------------------------------

    def bulk_load(self, parquet: Path) -> int:
        self.query(
            f"INSERT INTO events SELECT idempotency_key, event_name, timestamp, customer_id, "
            f"external_customer_id, properties, NULL FROM file('{parquet}', Parquet)"
        )
        return self.count("SELECT count() FROM events")

    def materialize(self) -> None:
        self.query(_ROLLUP_INSERT.format(source="events", where="1"))

    def _insert_batch(self, table: str, batch: pa.Table, backfill_id: str | None) -> None:
        # chdb reads a pyarrow Table held in a local variable through the Python() function.
        incoming = batch  # noqa: F841 - read by name by chdb
        label = "NULL" if backfill_id is None else f"'{backfill_id}'"
        self.session.query(
            f"INSERT INTO {table} SELECT idempotency_key, event_name, timestamp, customer_id, "
            f"external_customer_id, properties, {label} FROM Python(incoming)"
        )

    def ingest_live(self, batch: pa.Table) -> int:
        incoming = batch  # noqa: F841 - read by name by chdb
        # Fresh rows go through a temporary table, then to events and (aggregated) the rollup.
        self.query("DROP TABLE IF EXISTS fresh")
        self.session.query(
            "CREATE TABLE fresh ENGINE = Memory AS "
            f"SELECT {_COLUMNS} FROM ("
            "  SELECT idempotency_key, event_name, timestamp, customer_id, external_customer_id,"
            "         properties, CAST(NULL AS Nullable(String)) AS backfill_id"
            "  FROM Python(incoming)"
            "  WHERE idempotency_key NOT IN (SELECT idempotency_key FROM events"
            "        WHERE idempotency_key IN (SELECT idempotency_key FROM Python(incoming)))"
            "  LIMIT 1 BY idempotency_key)"
        )
        fresh = self.count("SELECT count() FROM fresh")
        if fresh:
            self.query(f"INSERT INTO events SELECT {_COLUMNS} FROM fresh")
            self.query(_ROLLUP_INSERT.format(source="fresh", where="1"))
        self.query("DROP TABLE fresh")
        return fresh

    def stage_backfill(self, scope: Scope, events: pa.Table) -> str:
        backfill_id = uuid.uuid4().hex
        self._insert_batch("staging", events, backfill_id)
        self.scopes[backfill_id] = scope
        return backfill_id

    def _replaced_where(self, scope: Scope) -> str:
        condition = [
            f"timestamp >= toDateTime64('{timestamp_literal(scope.start)}', 6, 'UTC')",
            f"timestamp < toDateTime64('{timestamp_literal(scope.end)}', 6, 'UTC')",
        ]
        if scope.customer is not None:
            condition.append(f"external_customer_id = '{scope.customer}'")
        if scope.deprecated_only:
            condition.append(f"JSONExtractString(properties, 'model') = '{DEPRECATED_MODEL}'")
        return " AND ".join(condition)

    def _rewrite_days(self, days: list[datetime], keep: str, add: str | None) -> None:
        """Rewrite the touched day partitions (events, then their rollup): build each day's
        new content in a scratch table and swap it in with REPLACE PARTITION."""
        in_days = "toDate(timestamp) IN ({})".format(", ".join(f"'{day:%Y-%m-%d}'" for day in days))
        self.query("DROP TABLE IF EXISTS rewrite")
        self.query("CREATE TABLE rewrite AS events")
        self.query(f"INSERT INTO rewrite SELECT {_COLUMNS} FROM events WHERE {in_days} AND {keep}")
        if add is not None:
            self.query(f"INSERT INTO rewrite SELECT {_COLUMNS} FROM {add} WHERE {in_days}")
        self.query("DROP TABLE IF EXISTS rewrite_rollup")
        self.query("CREATE TABLE rewrite_rollup AS rollup")
        self.query(
            _ROLLUP_INSERT.replace("INSERT INTO rollup", "INSERT INTO rewrite_rollup").format(
                source="rewrite", where="1"
            )
        )
        for day in days:
            self.query(f"ALTER TABLE events REPLACE PARTITION '{day:%Y-%m-%d}' FROM rewrite")
            self.query(f"ALTER TABLE rollup REPLACE PARTITION '{day:%Y-%m-%d}' FROM rewrite_rollup")
        self.query("DROP TABLE rewrite")
        self.query("DROP TABLE rewrite_rollup")

    def close_backfill(self, backfill_id: str) -> None:
        scope = self.scopes[backfill_id]
        replaced = self._replaced_where(scope)
        self.query(
            f"INSERT INTO archive SELECT '{backfill_id}', {_COLUMNS} FROM events WHERE {replaced}"
        )
        staged = f"(SELECT * FROM staging WHERE backfill_id = '{backfill_id}')"
        # JSONExtractString gives "" for a missing property, never NULL: NOT is safe here.
        self._rewrite_days(scope.days(), f"NOT ({replaced})", staged)

    def revert_backfill(self, backfill_id: str) -> None:
        scope = self.scopes[backfill_id]
        archived = f"(SELECT * EXCEPT archived_by FROM archive WHERE archived_by = '{backfill_id}')"
        self._rewrite_days(scope.days(), f"ifNull(backfill_id, '') != '{backfill_id}'", archived)

    def usage(
        self, metric: str, *, start: datetime, end: datetime, customer: str | None, by_day: bool
    ) -> list[UsageRow]:
        sql = rollup_usage_sql(
            metric,
            rollup="rollup",
            start=start,
            end=end,
            customer=customer,
            by_day=by_day,
            day_of="toDateTime64(toStartOfDay(hour), 0, 'UTC')",
        )
        return as_usage_rows(self.rows(sql))

    def recompute(self) -> None:
        self.query("TRUNCATE TABLE rollup")
        self.materialize()

    def disk_bytes(self) -> int:
        return folder_bytes(self.path)

    def close(self) -> None:
        self.session.close()
