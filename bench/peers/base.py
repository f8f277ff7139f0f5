"""What every benchmarked system implements, and the workload they share.

Each system (this engine and its peers) stores the same generated events and keeps the same
five metrics current (``engine.sample.SAMPLE_METRICS``: ``completion_tokens`` sum,
``event_count`` count, ``distinct_models`` count distinct, ``max_completion_tokens`` max,
``events_by_region`` count by region). The peers do it the way their users would: raw events in
one table (or Parquet folder), plus an hourly rollup per (customer, hour, region, model) from
which all five metrics are read. A replace backfill is "delete the scoped rows of the timeframe
(those matching the deprecation filter, if any), insert the new ones, re-aggregate the rollup of
that scope"; the deleted rows are kept in an archive table so that a revert can put them back.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Protocol

import pyarrow as pa

#: The history starts here and lasts ``DAYS`` days; live events land on the day after it.
START = datetime(2026, 10, 1, tzinfo=UTC)
DAYS = 30
#: The model the deprecation filter matches (the engine's filter is ``model = 'gpt-4o'``).
DEPRECATED_MODEL = "gpt-4o"
DEPRECATION_FILTER = f"model = '{DEPRECATED_MODEL}'"

#: The five metrics every system serves (names from ``engine.sample.SAMPLE_METRICS``).
METRIC_NAMES: tuple[str, ...] = (
    "completion_tokens",  # sum(tokens) WHERE event_name = 'completion'
    "event_count",  # count(*)
    "distinct_models",  # count(DISTINCT model)
    "max_completion_tokens",  # max(tokens) WHERE event_name = 'completion'
    "events_by_region",  # count(*) GROUP BY region
)

#: One usage row: (external customer id, bucket start or None for the whole timeframe,
#: group value or None, value).
UsageRow = tuple[str, datetime | None, str | None, float]


@dataclass(frozen=True)
class Scope:
    """What a replace backfill covers: a timeframe, optionally one customer, optionally only
    the events whose ``model`` property is ``DEPRECATED_MODEL``."""

    start: datetime
    end: datetime
    customer: str | None = None
    deprecated_only: bool = False

    def days(self) -> list[datetime]:
        """The UTC days the timeframe touches (the peers' partitions)."""
        first = self.start.replace(hour=0, minute=0, second=0, microsecond=0)
        count = (self.end - first + timedelta(days=1) - timedelta(microseconds=1)).days
        return [first + timedelta(days=offset) for offset in range(count)]


class System(Protocol):
    """One benchmarked system. Every method is timed by the runner; none prints."""

    name: str

    def version(self) -> str:
        """The version of the underlying database or library."""
        ...

    def bulk_load(self, parquet: Path) -> int:
        """Load the history from a Parquet file; return the events loaded."""
        ...

    def materialize(self) -> None:
        """Create the five metrics (or the rollup) over what is loaded."""
        ...

    def ingest_live(self, batch: pa.Table) -> int:
        """Ingest a live batch, skipping idempotency keys seen before (in the store or earlier
        in the batch), and keep usage current; return how many events were new."""
        ...

    def stage_backfill(self, scope: Scope, events: pa.Table) -> str:
        """Stage a replace backfill's events (not visible yet); return its id."""
        ...

    def close_backfill(self, backfill_id: str) -> None:
        """Apply the staged backfill: replace the scoped events and re-aggregate."""
        ...

    def revert_backfill(self, backfill_id: str) -> None:
        """Undo a closed backfill exactly."""
        ...

    def usage(
        self,
        metric: str,
        *,
        start: datetime,
        end: datetime,
        customer: str | None,
        by_day: bool,
    ) -> list[UsageRow]:
        """Usage of ``metric`` per customer (and group), per UTC day or for the whole
        timeframe; buckets without events are absent."""
        ...

    def recompute(self) -> None:
        """Rebuild every metric's usage from all events."""
        ...

    def disk_bytes(self) -> int:
        """Bytes on disk of everything the system stores."""
        ...

    def close(self) -> None:
        """Release connections and stop servers (files stay until the workdir is removed)."""
        ...


def folder_bytes(path: Path) -> int:
    """Total size of the files under ``path``. Files and folders that vanish during the walk
    (ClickHouse merges parts in the background) are not counted."""
    total = 0
    for folder, _, files in os.walk(path):
        for name in files:
            with contextlib.suppress(FileNotFoundError):
                total += os.stat(os.path.join(folder, name)).st_size
    return total


def normalized(rows: Sequence[UsageRow]) -> list[UsageRow]:
    """Rows sorted, with empty values dropped (a count distinct of no models may come back as
    0 or as no row) and values rounded to absorb summation order."""
    kept = [
        (customer, bucket, group, round(float(value), 6))
        for customer, bucket, group, value in rows
        if value is not None and float(value) != 0.0
    ]
    return sorted(kept, key=lambda r: (r[0], r[1] or START, r[2] or "", r[3]))


def timestamp_literal(moment: datetime) -> str:
    """A UTC instant as ``YYYY-MM-DD HH:MM:SS`` (every peer stores UTC)."""
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")


# The rollup every SQL peer keeps, and how each metric reads from it. Columns: customer, hour,
# region, model (NULL when the event has none), events, completion_events, completion_tokens,
# completion_max. Written once here because the three SQL dialects agree on this much.
ROLLUP_COLUMNS = (
    "external_customer_id, hour, region, model, events, completion_events, completion_tokens, "
    "completion_max"
)

_METRIC_VALUE = {
    "completion_tokens": "sum(completion_tokens)",
    "event_count": "sum(events)",
    "distinct_models": "count(DISTINCT model)",
    "max_completion_tokens": "max(completion_max)",
    "events_by_region": "sum(events)",
}
# Buckets where the metric has no events are absent, as in the engine.
_METRIC_HAVING = {
    "completion_tokens": "sum(completion_events) > 0",
    "event_count": "sum(events) > 0",
    "distinct_models": "count(DISTINCT model) > 0",
    "max_completion_tokens": "sum(completion_events) > 0",
    "events_by_region": "sum(events) > 0",
}


def rollup_usage_sql(
    metric: str,
    *,
    rollup: str,
    start: datetime,
    end: datetime,
    customer: str | None,
    by_day: bool,
    day_of: str = "date_trunc('day', hour)",
) -> str:
    """The usage query over a rollup table (DuckDB, ClickHouse and PostgreSQL all accept it)."""
    bucket = day_of if by_day else "NULL"
    group = "region" if metric == "events_by_region" else "NULL"
    where = [f"hour >= '{timestamp_literal(start)}'", f"hour < '{timestamp_literal(end)}'"]
    if customer is not None:
        where.append(f"external_customer_id = '{customer}'")
    keys = ["external_customer_id"] + (["bucket"] if by_day else [])
    keys += ["grp"] if metric == "events_by_region" else []
    return (
        f"SELECT external_customer_id, {bucket} AS bucket, {group} AS grp, "
        f"{_METRIC_VALUE[metric]} AS value FROM {rollup} WHERE {' AND '.join(where)} "
        f"GROUP BY {', '.join(keys)} HAVING {_METRIC_HAVING[metric]}"
    )


def as_usage_rows(rows: Sequence[Sequence[object]]) -> list[UsageRow]:
    """Rows of (customer, bucket, group, value) from a driver, with UTC-aware buckets."""
    result: list[UsageRow] = []
    for customer, bucket, group, value in rows:
        moment: datetime | None = None
        if isinstance(bucket, datetime):
            moment = bucket.replace(tzinfo=UTC) if bucket.tzinfo is None else bucket
            moment = moment.astimezone(UTC)
        elif bucket is not None:  # a date
            moment = datetime(bucket.year, bucket.month, bucket.day, tzinfo=UTC)  # type: ignore[attr-defined]
        result.append(
            (str(customer), moment, None if group is None else str(group), float(value))  # type: ignore[arg-type]
        )
    return result
