"""This engine behind the benchmark's ``System`` interface: its public API, nothing else."""

from __future__ import annotations

import sys
from collections.abc import Callable
from datetime import datetime, timedelta
from importlib.metadata import version
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import engine  # noqa: E402
from engine.sample import SAMPLE_METRICS  # noqa: E402

from .base import DEPRECATION_FILTER, METRIC_NAMES, Scope, UsageRow, folder_bytes  # noqa: E402

#: The history is months older than "now": it goes in with a grace period that covers it.
HISTORY_GRACE = timedelta(days=400)

#: Rows per commit of the bulk load.
LOAD_CHUNK = 1_000_000


class EngineSystem:
    name = "engine"

    def __init__(
        self,
        workdir: Path,
        clock: Callable[[], datetime],
        grace: timedelta,
        *,
        memory_limit: str | None = None,
    ) -> None:
        self.path = workdir / "engine-store"
        self.clock = clock
        self.grace = grace
        self.memory_limit = memory_limit
        self.store: engine.Store | None = None
        self.metric_ids: dict[str, str] = {}

    def version(self) -> str:
        return f"usage-engine (duckdb {version('duckdb')})"

    def _store(self) -> engine.Store:
        # Opened with the run's grace period once the history is in: replace backfills must
        # end before now - grace, live events may be up to grace old.
        if self.store is None:
            self.store = engine.open(
                self.path,
                clock=self.clock,
                grace_period=self.grace,
                memory_limit=self.memory_limit,
            )
        return self.store

    def bulk_load(self, parquet: Path) -> int:
        """In chunks of LOAD_CHUNK rows, one commit each, as ``engine ingest --batch-size``
        loads a Parquet file: one commit of 100M events grew the process past this machine's
        24 GB, and it was killed."""
        loaded = 0
        with engine.open(
            self.path,
            clock=self.clock,
            grace_period=HISTORY_GRACE,
            memory_limit=self.memory_limit,
        ) as store:
            for batch in pq.ParquetFile(parquet).iter_batches(batch_size=LOAD_CHUNK):
                loaded += len(store.ingest(pa.Table.from_batches([batch])).ingested)
        return loaded

    def materialize(self) -> None:
        store = self._store()
        sql = {m["name"]: m["sql"] for m in SAMPLE_METRICS}
        for name in METRIC_NAMES:
            self.metric_ids[name] = store.metrics.create(name=name, sql=sql[name]).id

    def ingest_live(self, batch: pa.Table) -> int:
        return len(self._store().ingest(batch).ingested)

    def stage_backfill(self, scope: Scope, events: pa.Table) -> str:
        store = self._store()
        backfill = store.backfills.create(
            timeframe_start=scope.start,
            timeframe_end=scope.end,
            external_customer_id=scope.customer,
            replace_existing_events=True,
            deprecation_filter=DEPRECATION_FILTER if scope.deprecated_only else None,
        )
        store.ingest(events, backfill_id=backfill.id)
        return backfill.id

    def close_backfill(self, backfill_id: str) -> None:
        self._store().backfills.close(backfill_id)

    def revert_backfill(self, backfill_id: str) -> None:
        self._store().backfills.revert(backfill_id)

    def usage(
        self, metric: str, *, start: datetime, end: datetime, customer: str | None, by_day: bool
    ) -> list[UsageRow]:
        frame = self._store().usage(
            self.metric_ids[metric],
            timeframe_start=start,
            timeframe_end=end,
            external_customer_id=customer,
            granularity="day" if by_day else None,
        )
        group = "region" if metric == "events_by_region" else None
        return [
            (
                row["external_customer_id"],
                row["timeframe_start"] if by_day else None,
                row[group] if group else None,
                float(row["value"]) if row["value"] is not None else 0.0,
            )
            for row in frame.iter_rows(named=True)
        ]

    def recompute(self) -> None:
        self._store().recompute()

    def disk_bytes(self) -> int:
        """The store without ``tmp/``: DuckDB's spill files, which outlive the statement that
        spilled (9.3 GB after creating the metrics over 100M events) and are no store data.
        The saved key index (``key_index/``) counts."""
        return folder_bytes(self.path) - folder_bytes(self.path / "tmp")

    def close(self) -> None:
        if self.store is not None:
            self.store.close()
            self.store = None
