"""Peer: a hand-written DuckDB script over a folder of Parquet files.

What a team that "just uses DuckDB" would write: events in day-partitioned Parquet
(``events/day=YYYY-MM-DD/*.parquet``), an hourly rollup beside them (``rollup/day=.../``).
Live batches append one events file and one rollup file of the batch's partial aggregates
(the rollup is additive, so usage sums over the files). A replace backfill rewrites the day
partitions it touches (old rows minus the replaced ones, plus the new ones), saves the replaced
rows to ``archive/<id>.parquet`` so a revert can put them back, and rebuilds those days'
rollup. Not atomic and not safe for two writers: users of such scripts accept that.
"""

from __future__ import annotations

import shutil
import uuid
from datetime import datetime
from pathlib import Path

import duckdb
import pyarrow as pa

from .base import (
    DEPRECATED_MODEL,
    Scope,
    UsageRow,
    as_usage_rows,
    folder_bytes,
    rollup_usage_sql,
    timestamp_literal,
)

_EVENT_COLUMNS = (
    'idempotency_key, event_name, "timestamp", customer_id, external_customer_id, properties, '
    "backfill_id"
)

# Hourly partial aggregates of the events in the relation named {source}.
_ROLLUP_SELECT = """
SELECT external_customer_id, date_trunc('hour', "timestamp") AS hour,
       json_extract_string(properties, '$.region') AS region,
       json_extract_string(properties, '$.model') AS model,
       count(*) AS events,
       count(*) FILTER (WHERE event_name = 'completion') AS completion_events,
       sum(TRY_CAST(json_extract_string(properties, '$.tokens') AS DOUBLE))
           FILTER (WHERE event_name = 'completion') AS completion_tokens,
       max(TRY_CAST(json_extract_string(properties, '$.tokens') AS DOUBLE))
           FILTER (WHERE event_name = 'completion') AS completion_max,
       CAST("timestamp" AS DATE) AS day
FROM {source}
GROUP BY ALL
"""


def _day_name(day: datetime) -> str:
    return f"day={day:%Y-%m-%d}"


class DuckDBScript:
    name = "duckdb_script"

    def __init__(self, workdir: Path, *, memory_limit_gib: float | None = None) -> None:
        self.root = workdir / "duckdb-script"
        self.events = self.root / "events"
        self.rollup = self.root / "rollup"
        self.staging = self.root / "staging"
        self.archive = self.root / "archive"
        for folder in (self.events, self.rollup, self.staging, self.archive):
            folder.mkdir(parents=True, exist_ok=True)
        self.con = duckdb.connect()
        self.con.execute("SET TimeZone = 'UTC'")
        if memory_limit_gib:
            self.con.execute(f"SET memory_limit = '{memory_limit_gib}GiB'")
        self.scopes: dict[str, Scope] = {}

    def version(self) -> str:
        return f"duckdb {duckdb.__version__}"

    # -- helpers ------------------------------------------------------------------------------

    def _glob(self, folder: Path) -> str:
        return f"read_parquet('{folder}/*/*.parquet', hive_partitioning = false)"

    def _files(self, folder: Path, day: datetime) -> list[Path]:
        return sorted((folder / _day_name(day)).glob("*.parquet"))

    def _append(self, select: str, folder: Path) -> None:
        """Write ``select`` (which has a ``day`` column) as new files, one per day."""
        self.con.execute(
            f"COPY ({select}) TO '{folder}' (FORMAT parquet, PARTITION_BY (day), APPEND, "
            "WRITE_PARTITION_COLUMNS false)"
        )

    def _events_of(self, source: str) -> str:
        return (
            f'SELECT idempotency_key, event_name, CAST("timestamp" AS TIMESTAMP) AS "timestamp", '
            "customer_id, external_customer_id, properties, "
            f'backfill_id, CAST("timestamp" AS DATE) AS day FROM {source}'
        )

    def _rebuild_rollup_days(self, days: list[datetime]) -> None:
        for day in days:
            old = self._files(self.rollup, day)
            files = [str(p) for p in self._files(self.events, day)]
            if files:
                self._append(
                    _ROLLUP_SELECT.format(
                        source=f"read_parquet({files!r}, hive_partitioning = false)"
                    ),
                    self.rollup,
                )
            for path in old:
                path.unlink()

    # -- System -------------------------------------------------------------------------------

    def bulk_load(self, parquet: Path) -> int:
        source = f"(SELECT *, CAST(NULL AS VARCHAR) AS backfill_id FROM read_parquet('{parquet}'))"
        self._append(self._events_of(source), self.events)
        row = self.con.execute(f"SELECT count(*) FROM {self._glob(self.events)}").fetchone()
        return int(row[0]) if row else 0

    def materialize(self) -> None:
        shutil.rmtree(self.rollup)
        self.rollup.mkdir()
        self._append(_ROLLUP_SELECT.format(source=self._glob(self.events)), self.rollup)

    def ingest_live(self, batch: pa.Table) -> int:
        self.con.register("batch", batch)
        try:
            # Keys seen before: every events file's key column (keys are random, so Parquet
            # statistics prune nothing); then the first copy of each key within the batch.
            self.con.execute(
                f"""CREATE OR REPLACE TEMP TABLE fresh AS
                SELECT *, CAST(NULL AS VARCHAR) AS backfill_id FROM batch
                WHERE idempotency_key NOT IN (
                    SELECT idempotency_key FROM {self._glob(self.events)}
                    WHERE idempotency_key IN (SELECT idempotency_key FROM batch))
                QUALIFY row_number() OVER (PARTITION BY idempotency_key) = 1"""
            )
        finally:
            self.con.unregister("batch")
        row = self.con.execute("SELECT count(*) FROM fresh").fetchone()
        fresh = int(row[0]) if row else 0
        if fresh:
            self._append(self._events_of("fresh"), self.events)
            self._append(_ROLLUP_SELECT.format(source=f"({self._events_of('fresh')})"), self.rollup)
        return fresh

    def stage_backfill(self, scope: Scope, events: pa.Table) -> str:
        backfill_id = uuid.uuid4().hex
        self.con.register("staged", events)
        try:
            self.con.execute(
                f"COPY (SELECT * FROM staged) TO '{self.staging / backfill_id}.parquet' "
                "(FORMAT parquet)"
            )
        finally:
            self.con.unregister("staged")
        self.scopes[backfill_id] = scope
        return backfill_id

    def _replaced(self, scope: Scope) -> str:
        condition = [
            f"\"timestamp\" >= TIMESTAMP '{timestamp_literal(scope.start)}'",
            f"\"timestamp\" < TIMESTAMP '{timestamp_literal(scope.end)}'",
        ]
        if scope.customer is not None:
            condition.append(f"external_customer_id = '{scope.customer}'")
        if scope.deprecated_only:
            condition.append(f"json_extract_string(properties, '$.model') = '{DEPRECATED_MODEL}'")
        return " AND ".join(condition)

    def _rewrite_days(self, days: list[datetime], keep: str, add: str | None) -> None:
        """Rewrite each day partition as its rows matching ``keep`` plus ``add``'s rows."""
        for day in days:
            old = self._files(self.events, day)
            files = [str(p) for p in old]
            parts = []
            if files:
                parts.append(
                    f"SELECT {_EVENT_COLUMNS} FROM read_parquet({files!r}, "
                    f"hive_partitioning = false) WHERE {keep}"
                )
            if add is not None:
                parts.append(
                    f"SELECT {_EVENT_COLUMNS} FROM {add} "
                    f"WHERE CAST(\"timestamp\" AS DATE) = DATE '{day:%Y-%m-%d}'"
                )
            if parts:
                self._append(self._events_of(f"({' UNION ALL '.join(parts)})"), self.events)
            for path in old:
                path.unlink()

    def close_backfill(self, backfill_id: str) -> None:
        scope = self.scopes[backfill_id]
        days = scope.days()
        files = [str(p) for day in days for p in self._files(self.events, day)]
        replaced = self._replaced(scope)
        # Keep what is replaced, for a revert.
        self.con.execute(
            f"COPY (SELECT {_EVENT_COLUMNS} FROM read_parquet({files!r}, hive_partitioning = "
            f"false) WHERE {replaced}) TO '{self.archive / backfill_id}.parquet' (FORMAT parquet)"
        )
        staged = (
            f'(SELECT idempotency_key, event_name, "timestamp", customer_id, '
            f"external_customer_id, properties, '{backfill_id}' AS backfill_id "
            f"FROM read_parquet('{self.staging / backfill_id}.parquet'))"
        )
        # IS NOT TRUE, not NOT: a missing property makes the filter NULL, and NOT NULL
        # would drop the row.
        self._rewrite_days(days, f"({replaced}) IS NOT TRUE", staged)
        self._rebuild_rollup_days(days)

    def revert_backfill(self, backfill_id: str) -> None:
        days = self.scopes[backfill_id].days()
        archived = f"read_parquet('{self.archive / backfill_id}.parquet')"
        self._rewrite_days(days, f"backfill_id IS DISTINCT FROM '{backfill_id}'", archived)
        self._rebuild_rollup_days(days)

    def usage(
        self, metric: str, *, start: datetime, end: datetime, customer: str | None, by_day: bool
    ) -> list[UsageRow]:
        sql = rollup_usage_sql(
            metric,
            rollup=self._glob(self.rollup),
            start=start,
            end=end,
            customer=customer,
            by_day=by_day,
        )
        return as_usage_rows(self.con.execute(sql).fetchall())

    def recompute(self) -> None:
        self.materialize()

    def disk_bytes(self) -> int:
        return folder_bytes(self.root)

    def close(self) -> None:
        self.con.close()
