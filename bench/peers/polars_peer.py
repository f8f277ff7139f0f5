"""Peer: Polars over a folder of Parquet files.

The same layout and plan as the DuckDB script (day-partitioned events, an additive hourly
rollup, replace = rewrite the touched days and archive the replaced rows), written with the
Polars API as a Polars user would: lazy scans, anti-joins, ``write_parquet`` per day, and a
streaming sink for the bulk load.
"""

from __future__ import annotations

import shutil
import uuid
from datetime import UTC, date, datetime
from pathlib import Path

import polars as pl
import pyarrow as pa

from .base import DEPRECATED_MODEL, Scope, UsageRow, folder_bytes

_EVENT_COLUMNS = [
    "idempotency_key",
    "event_name",
    "timestamp",
    "customer_id",
    "external_customer_id",
    "properties",
    "backfill_id",
]


def _day_name(day: date | datetime) -> str:
    return f"day={day:%Y-%m-%d}"


def _rollup(events: pl.LazyFrame) -> pl.LazyFrame:
    """Hourly partial aggregates per (customer, hour, region, model), with their day."""
    tokens = pl.col("properties").str.json_path_match("$.tokens").cast(pl.Float64, strict=False)
    completion = pl.col("event_name") == "completion"
    return (
        events.with_columns(
            pl.col("timestamp").dt.truncate("1h").alias("hour"),
            pl.col("properties").str.json_path_match("$.region").alias("region"),
            pl.col("properties").str.json_path_match("$.model").alias("model"),
            tokens.alias("tokens"),
        )
        .group_by("external_customer_id", "hour", "region", "model")
        .agg(
            pl.len().alias("events"),
            completion.sum().alias("completion_events"),
            pl.col("tokens").filter(completion).sum().alias("completion_tokens"),
            pl.col("tokens").filter(completion).max().alias("completion_max"),
        )
        .with_columns(pl.col("hour").dt.date().alias("day"))
    )


class PolarsPeer:
    name = "polars"

    def __init__(self, workdir: Path) -> None:
        self.root = workdir / "polars"
        self.events = self.root / "events"
        self.rollup = self.root / "rollup"
        self.staging = self.root / "staging"
        self.archive = self.root / "archive"
        for folder in (self.events, self.rollup, self.staging, self.archive):
            folder.mkdir(parents=True, exist_ok=True)
        self.scopes: dict[str, Scope] = {}

    def version(self) -> str:
        return f"polars {pl.__version__}"

    # -- helpers ------------------------------------------------------------------------------

    def _scan(self, folder: Path) -> pl.LazyFrame:
        if not any(folder.glob("*/*.parquet")):
            raise LookupError(f"no Parquet files under {folder}")
        return pl.scan_parquet(folder / "*" / "*.parquet", hive_partitioning=False)

    def _files(self, folder: Path, day: datetime | date) -> list[Path]:
        return sorted((folder / _day_name(day)).glob("*.parquet"))

    def _append(self, frame: pl.DataFrame, folder: Path) -> None:
        """Write ``frame`` (which has a ``day`` column) as one new file per day."""
        for (day,), part in frame.partition_by("day", as_dict=True).items():
            target = folder / _day_name(day)  # type: ignore[arg-type]
            target.mkdir(exist_ok=True)
            part.drop("day").write_parquet(target / f"{uuid.uuid4().hex}.parquet")

    def _with_day(self, events: pl.LazyFrame) -> pl.LazyFrame:
        return events.select(_EVENT_COLUMNS).with_columns(
            pl.col("timestamp").dt.date().alias("day")
        )

    def _normalize(self, table: pa.Table, backfill_id: str | None) -> pl.LazyFrame:
        frame = pl.from_arrow(table)
        assert isinstance(frame, pl.DataFrame)
        return frame.lazy().with_columns(
            pl.col("timestamp").dt.convert_time_zone("UTC"),
            pl.lit(backfill_id, pl.String).alias("backfill_id"),
        )

    def _rebuild_rollup_days(self, days: list[datetime]) -> None:
        for day in days:
            old = self._files(self.rollup, day)
            files = self._files(self.events, day)
            if files:
                self._append(_rollup(pl.scan_parquet(files)).collect(), self.rollup)
            for path in old:
                path.unlink()

    # -- System -------------------------------------------------------------------------------

    def bulk_load(self, parquet: Path) -> int:
        """Streamed into the day folders: collecting the file first held 100M events in
        memory, and the kernel killed the process at 17 GB on this 24 GB machine."""
        (
            pl.scan_parquet(parquet)
            .with_columns(
                pl.col("timestamp").dt.convert_time_zone("UTC"),
                pl.lit(None, pl.String).alias("backfill_id"),
            )
            .pipe(self._with_day)
            .sink_parquet(pl.PartitionBy(self.events, key="day", include_key=False), mkdir=True)
        )
        loaded: int = self._scan(self.events).select(pl.len()).collect().item()
        return loaded

    def materialize(self) -> None:
        shutil.rmtree(self.rollup)
        self.rollup.mkdir()
        self._append(_rollup(self._scan(self.events)).collect(), self.rollup)

    def ingest_live(self, batch: pa.Table) -> int:
        incoming = self._normalize(batch, None).unique("idempotency_key", keep="first")
        keys = incoming.select("idempotency_key")
        # Keys seen before: the key column of every events file, semi-joined to the batch.
        seen = self._scan(self.events).select("idempotency_key").join(keys, on="idempotency_key")
        fresh = self._with_day(incoming.join(seen, on="idempotency_key", how="anti")).collect()
        if fresh.height:
            self._append(fresh, self.events)
            self._append(_rollup(fresh.lazy()).collect(), self.rollup)
        return fresh.height

    def stage_backfill(self, scope: Scope, events: pa.Table) -> str:
        backfill_id = uuid.uuid4().hex
        self._normalize(events, backfill_id).collect().write_parquet(
            self.staging / f"{backfill_id}.parquet"
        )
        self.scopes[backfill_id] = scope
        return backfill_id

    def _replaced(self, scope: Scope) -> pl.Expr:
        condition = (pl.col("timestamp") >= scope.start) & (pl.col("timestamp") < scope.end)
        if scope.customer is not None:
            condition &= pl.col("external_customer_id") == scope.customer
        if scope.deprecated_only:
            model = pl.col("properties").str.json_path_match("$.model")
            condition &= model.eq(DEPRECATED_MODEL).fill_null(False)
        return condition

    def _rewrite_days(self, days: list[datetime], keep: pl.Expr, add: pl.LazyFrame | None) -> None:
        for day in days:
            old = self._files(self.events, day)
            parts = [pl.scan_parquet(old).filter(keep).pipe(self._with_day)] if old else []
            if add is not None:
                parts.append(self._with_day(add).filter(pl.col("day") == day.date()))
            if parts:
                self._append(pl.concat(parts).collect(), self.events)
            for path in old:
                path.unlink()

    def close_backfill(self, backfill_id: str) -> None:
        scope = self.scopes[backfill_id]
        days = scope.days()
        files = [p for day in days for p in self._files(self.events, day)]
        replaced = self._replaced(scope)
        pl.scan_parquet(files).filter(replaced).select(_EVENT_COLUMNS).collect().write_parquet(
            self.archive / f"{backfill_id}.parquet"
        )
        staged = pl.scan_parquet(self.staging / f"{backfill_id}.parquet")
        self._rewrite_days(days, ~replaced, staged)
        self._rebuild_rollup_days(days)

    def revert_backfill(self, backfill_id: str) -> None:
        days = self.scopes[backfill_id].days()
        archived = pl.scan_parquet(self.archive / f"{backfill_id}.parquet")
        self._rewrite_days(days, pl.col("backfill_id").ne_missing(backfill_id), archived)
        self._rebuild_rollup_days(days)

    def usage(
        self, metric: str, *, start: datetime, end: datetime, customer: str | None, by_day: bool
    ) -> list[UsageRow]:
        frame = self._scan(self.rollup).filter((pl.col("hour") >= start) & (pl.col("hour") < end))
        if customer is not None:
            frame = frame.filter(pl.col("external_customer_id") == customer)
        keys = ["external_customer_id"]
        if by_day:
            frame = frame.with_columns(pl.col("hour").dt.truncate("1d").alias("bucket"))
            keys.append("bucket")
        if metric == "events_by_region":
            keys.append("region")
        value = {
            "completion_tokens": pl.col("completion_tokens").sum(),
            "event_count": pl.col("events").sum(),
            "distinct_models": pl.col("model").drop_nulls().n_unique(),
            "max_completion_tokens": pl.col("completion_max").max(),
            "events_by_region": pl.col("events").sum(),
        }[metric]
        present = {
            "completion_tokens": pl.col("completion_events").sum() > 0,
            "max_completion_tokens": pl.col("completion_events").sum() > 0,
        }.get(metric, pl.col("events").sum() > 0)
        result = (
            frame.group_by(keys)
            .agg(value.alias("value"), present.alias("present"))
            .filter(pl.col("present"))
            .collect()
        )
        rows: list[UsageRow] = []
        for row in result.iter_rows(named=True):
            bucket = row.get("bucket")
            rows.append(
                (
                    row["external_customer_id"],
                    bucket.astimezone(UTC) if bucket is not None else None,
                    row.get("region"),
                    float(row["value"]) if row["value"] is not None else 0.0,
                )
            )
        return rows

    def recompute(self) -> None:
        self.materialize()

    def disk_bytes(self) -> int:
        return folder_bytes(self.root)

    def close(self) -> None:
        pass
