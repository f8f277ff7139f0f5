"""The ``Store`` facade: one object for a store folder, with namespaces per resource."""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path
from types import TracebackType
from typing import Any

import polars as pl
import sqlglot
from sqlglot import exp

from engine.backfills import Backfills
from engine.context import Clock, Context, Settings, system_clock
from engine.customers import Customers
from engine.errors import ConstraintViolation
from engine.events import Events
from engine.ingest import Ingestor
from engine.keys import KeyIndex
from engine.maintenance import DEFAULT_FILE_GRACE, DEFAULT_RETENTION, compact
from engine.models import CompactResult, IngestResult
from engine.queries import all_events, effective_events, table_ref
from engine.schema import BACKFILLS, CUSTOMERS
from engine.storage import Relation, Storage
from engine.usage import Granularity, Metrics, Progress, Usage

__all__ = ["Store", "open"]

_READ_STATEMENTS = (exp.Select, exp.Union, exp.Intersect, exp.Except, exp.Describe)

# DuckLake's maintenance functions run inside a SELECT and change the catalog or delete files
# (without the store's write lock); exploration must not reach them.
_MAINTENANCE_WORDS = (
    "add_data_files",
    "expire",
    "cleanup",
    "merge_adjacent",
    "rewrite",
    "flush",
    "set_option",
    "set_commit_message",
    "checkpoint",
    "delete_orphaned",
)


class Store:
    """An open store. Use as a context manager, or call :meth:`close`.

    >>> import engine
    >>> with engine.open("data/store") as store:  # doctest: +SKIP
    ...     store.customers.create(external_customer_id="acme")
    """

    def __init__(self, storage: Storage, context: Context) -> None:
        self._storage = storage
        self._context = context
        self._usage = Usage(context)
        self.customers = Customers(context)
        self.metrics = Metrics(context, self._usage)
        self._ingestor = Ingestor(context, self._usage)
        self.backfills = Backfills(context, self.customers, self._ingestor, self._usage)
        self.events = Events(context, self._usage)
        self._create_views()
        self.backfills.recover()

    @property
    def path(self) -> Path:
        return self._storage.path

    def ingest(self, events: Any, *, backfill_id: str | None = None) -> IngestResult:
        """Ingest a batch, all or nothing.

        ``events`` is a list of Orb-shaped dicts, a pyarrow Table, a Polars DataFrame, or a
        path to a ``.jsonl`` / ``.parquet`` / ``.csv`` file. Without ``backfill_id`` the batch
        is live (one commit, visible at once); with it, the events are staged in that pending
        backfill until it closes. Keys seen before are reported in ``duplicates``.

        >>> store.ingest([{"idempotency_key": "k1", "event_name": "api_call",  # doctest: +SKIP
        ...     "timestamp": "2026-12-04T10:00:00Z", "external_customer_id": "acme",
        ...     "properties": {"tokens": 12}}])
        IngestResult(ingested=['k1'], duplicates=[])
        """
        if backfill_id is not None:
            return self.backfills.ingest(backfill_id, events)
        with self._storage.write():
            return self._ingestor.ingest(events, backfill=None)

    def usage(
        self,
        metric_id: str,
        *,
        timeframe_start: datetime | str,
        timeframe_end: datetime | str,
        customer_id: str | None = None,
        external_customer_id: str | None = None,
        granularity: Granularity = "day",
        group_by: str | None = None,
        as_of: datetime | str | int | None = None,
    ) -> pl.DataFrame:
        """Usage of a metric per customer and time bucket, as a Polars frame with columns
        ``customer_id, external_customer_id, timeframe_start, timeframe_end, value`` (and the
        group column for a grouped metric). ``granularity`` is ``"hour"``, ``"day"``,
        ``"month"`` or ``None`` (one row per customer for the whole timeframe); buckets with
        no events are absent. ``as_of`` (an aware datetime or a version number) answers with
        usage as it was known then.

        >>> store.usage(metric.id, timeframe_start="2026-11-01T00:00:00Z",  # doctest: +SKIP
        ...     timeframe_end="2026-12-01T00:00:00Z", external_customer_id="acme")
        """
        return self._usage.usage(
            metric_id,
            timeframe_start=timeframe_start,
            timeframe_end=timeframe_end,
            customer_id=customer_id,
            external_customer_id=external_customer_id,
            granularity=granularity,
            group_by=group_by,
            as_of=as_of,
        )

    def recompute(self, metric_id: str | None = None, *, progress: Progress | None = None) -> None:
        """Rebuild materialized usage (of one metric, or all) from the effective events."""
        if metric_id is not None:
            self.metrics.get(metric_id)
        self._usage.rebuild([metric_id] if metric_id is not None else None, progress=progress)

    def verify(self) -> list[dict[str, Any]]:
        """Every usage cell whose materialized value differs from a from-scratch computation;
        empty when all is well."""
        return self._usage.verify()

    def compact(
        self,
        *,
        retention: timedelta = DEFAULT_RETENTION,
        file_grace: timedelta = DEFAULT_FILE_GRACE,
    ) -> CompactResult:
        """Merge small Parquet files, expire DuckLake snapshots older than ``retention`` and
        delete files unused for longer than ``file_grace``. Answers (usage, events, ``as_of``)
        are unchanged: they come from the store's version log, not from DuckLake snapshots.
        Writers in other processes wait while it runs; readers do not."""
        return compact(self._context, retention=retention, file_grace=file_grace)

    def sql(self, query: str) -> Relation:
        """Explore the store with DuckDB SQL (read only) over the views ``events`` (effective
        events), ``all_events`` (every stored version with source, version and ``effective``),
        ``backfills`` and ``customers``.

        >>> store.sql("SELECT event_name, count(*) FROM events GROUP BY 1").pl()  # doctest: +SKIP
        """
        try:
            statements = [s for s in sqlglot.parse(query, dialect="duckdb") if s is not None]
        except sqlglot.errors.ParseError as error:
            raise ConstraintViolation(f"query does not parse: {error}") from None
        if len(statements) != 1 or not isinstance(statements[0], _READ_STATEMENTS):
            raise ConstraintViolation("store.sql runs exactly one read-only query (SELECT ...)")
        for function in statements[0].find_all(exp.Func):
            name = (
                function.sql_name().lower()
                if not isinstance(function, exp.Anonymous)
                else str(function.this).lower()
            )
            if any(word in name for word in _MAINTENANCE_WORDS):
                raise ConstraintViolation(
                    f"store.sql is read only; {name}() changes the store",
                    construct=name,
                )
        return self._storage.relation(query)

    def close(self) -> None:
        """Release the store's connection and files."""
        self._storage.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def _create_views(self) -> None:
        # Not temporary: store.sql() reads them from a cursor of its own (see Storage.relation).
        views = {
            "events": effective_events(),
            "all_events": all_events(),
            "backfills": exp.select("*").from_(table_ref(BACKFILLS)),
            "customers": exp.select("*").from_(table_ref(CUSTOMERS)),
        }
        for name, query in views.items():
            self._storage.execute(
                exp.Create(this=exp.to_table(name), kind="VIEW", expression=query, replace=True)
            )


def open(  # noqa: A001 - mirrors the builtin on purpose: engine.open(path)
    path: str | Path,
    *,
    clock: Clock | None = None,
    grace_period: timedelta = timedelta(hours=12),
    future_tolerance: timedelta = timedelta(minutes=5),
    max_backfill_duration: timedelta = timedelta(days=31),
    memory_limit: str | None = None,
) -> Store:
    """Open the store at ``path``, creating it if missing.

    ``clock`` returns the current aware UTC time (inject one in tests). Other processes may
    open the same path: readers see consistent snapshots while one process writes.
    ``memory_limit`` caps DuckDB's memory (such as ``"8GB"``; DuckDB's default is 80% of RAM,
    which it keeps as cache once used); what does not fit spills to the store's ``tmp/``.
    """
    settings = Settings(
        grace_period=grace_period,
        future_tolerance=future_tolerance,
        max_backfill_duration=max_backfill_duration,
    )
    storage = Storage(Path(path), memory_limit=memory_limit)
    context = Context(
        storage=storage, clock=clock or system_clock, settings=settings, keys=KeyIndex(storage)
    )
    return Store(storage, context)
