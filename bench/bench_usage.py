"""Usage benchmarks: incremental backfill close / revert against a full recompute, usage query
latency, and full recompute throughput beside hand-written DuckDB and Polars aggregations.

Not a test: it prints tables of figures and (with ``--out``) writes them as JSON. See
``bench/README.md`` for how to run it and the latest figures.

For each store size (``--events``, or several with ``--sizes``) one run builds a store of
generated events (``engine.sample``, loaded as live events with a 400-day grace period) whose
history grows with the store at a fixed density (``--events-per-day``, 10M events over 30 days),
so that a day, and one customer's week, hold the same events at every size, as when a store grows
by living longer: the backfills below then do the same work at every N, and only the store
around them grows (``--days`` fixes the history's length instead),
creates five metrics from ``SAMPLE_METRICS`` (a sum, a count, a count(DISTINCT), a max and a
GROUP BY), reopens it with the default grace period and measures, ``--repeat`` times each:

c1. close of a 1-day account-wide replace backfill of 100k events (N / 10 below 1M events),
    without and with a deprecation filter (``model = 'gpt-4o'``), alternating with a full
    ``store.recompute()`` of the same metrics (A B A B): ratio = recompute seconds / close
    seconds;
c2. close, then revert, of a 7-day one-customer replace backfill (the customer whose week
    holds about ``--scoped-events`` events, re-sent): compared across store sizes;
u.  ``store.usage()`` of one customer over the last 30 days of history at day granularity, ~200
    calls in a warm process (the five metrics in turn): p50 and p99;
r.  full ``store.recompute()`` beside a hand-written DuckDB GROUP BY and a Polars
    ``scan_parquet().group_by()`` over the store's event Parquet files, in events/s.

Every timed close and revert also records the time of each DuckDB statement it ran (the
store's connection is wrapped by this script, a measurement aid). Unless ``--no-profile``, one
more close of each kind, a revert, a recompute and a usage call run untimed with DuckDB's
operator profiler on, and 50 usage calls under cProfile.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import os
import pstats
import shutil
import statistics
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import duckdb
import polars as pl

BENCH = Path(__file__).resolve().parent
if str(BENCH) not in sys.path:
    sys.path.insert(0, str(BENCH))

# bench_core puts the project root on sys.path, so `engine` imports after it.
from bench_core import START, log, machine, replacement, summary, timed, workdir  # noqa: E402

import engine  # noqa: E402
from engine.sample import SAMPLE_METRICS, generate_events, sample_customers  # noqa: E402

SEED_HISTORY = 1
SEED_BACKFILL = 300  # + variant offset + repeat index: keys the store has never seen
METRIC_NAMES = (
    "completion_tokens",  # sum(tokens) WHERE event_name = 'completion'
    "event_count",  # count(*)
    "distinct_models",  # count(DISTINCT model)
    "max_completion_tokens",  # max(tokens) WHERE event_name = 'completion'
    "events_by_region",  # count(*) GROUP BY region
)
DEPRECATION_FILTER = "model = 'gpt-4o'"
HISTORY_GRACE = timedelta(days=400)
USAGE_WINDOW_DAYS = 30


# -- parameters -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Params:
    customers: int
    days: int
    repeat: int
    batch: int
    backfill_events: int | None  # None: min(100 000, N / 10)
    scoped_events: int
    usage_calls: int
    profile: bool
    workdir: Path

    @property
    def now(self) -> datetime:
        # One day after the history, so every day of it is older than the 12 h grace period.
        return START + timedelta(days=self.days + 1)

    def clock(self) -> datetime:
        return self.now

    def day(self, index: int) -> datetime:
        return START + timedelta(days=index % self.days)

    def week(self, index: int) -> datetime:
        # 7-day windows after the 1-day ones (2 per repeat), wrapping inside the history.
        first = 2 * self.repeat + 7 * index
        return START + timedelta(days=first % max(self.days - 6, 1))

    def one_day_events(self, size: int) -> int:
        if self.backfill_events is not None:
            return self.backfill_events
        return max(min(100_000, size // 10), 1)


# -- statement timing (a measurement aid: wraps the store's DuckDB connection) -----------------


def _label(sql: str, width: int = 150) -> str:
    text = " ".join(sql.split())
    return text if len(text) <= width else text[: width - 3] + "..."


def measure(action: Callable[..., Any], *args: Any, **kwargs: Any) -> tuple[float, float]:
    """Wall and CPU seconds of ``action(*args, **kwargs)``. CPU is this process's, all threads
    (DuckDB's and Polars' workers included): on a shared machine it moves much less than wall
    time, so it is the better guide to what a quiet machine would show."""
    wall, cpu = time.perf_counter(), time.process_time()
    action(*args, **kwargs)
    return time.perf_counter() - wall, time.process_time() - cpu


@dataclass
class StatementLog:
    """Every statement one timed operation sent to DuckDB, with its wall seconds."""

    statements: list[tuple[str, float]] = field(default_factory=list)
    profiles: list[dict[str, Any]] = field(default_factory=list)
    total: float = 0.0
    cpu: float = 0.0

    def summary(self, top: int = 6) -> dict[str, Any]:
        in_duckdb = sum(seconds for _, seconds in self.statements)
        ranked = sorted(self.statements, key=lambda item: -item[1])
        return {
            "total_seconds": self.total,
            "cpu_seconds": self.cpu,
            "statements": len(self.statements),
            "in_duckdb_seconds": in_duckdb,
            # sqlglot building and rendering, Python glue, the write lock
            "outside_duckdb_seconds": self.total - in_duckdb,
            "top": [{"seconds": s, "sql": _label(sql)} for sql, s in ranked[:top]],
            # every statement in order, as [seconds, its first words]
            "all": [[round(s, 6), _label(sql, 70)] for sql, s in self.statements],
        }


class _TimedConnection:
    """Stands in for the store's DuckDB connection: times each statement (``execute`` and the
    fetch of its result, where DuckDB finishes a query that returns rows) and, when profiling,
    keeps the operator profile of the slow ones."""

    def __init__(
        self, connection: Any, record: StatementLog, profile: Path | None, min_seconds: float
    ) -> None:
        self._connection = connection
        self._record = record
        self._profile = profile
        self._min_seconds = min_seconds
        self._profiled: set[int] = set()

    def execute(self, sql: str, parameters: Any = None) -> Any:
        if self._profile is not None:
            self._profile.unlink(missing_ok=True)  # statements that write none leave none
        started = time.perf_counter()
        try:
            result = self._connection.execute(sql, parameters)
        finally:
            self._record.statements.append((sql, time.perf_counter() - started))
        index = len(self._record.statements) - 1
        if self._profile is not None and self._profile.exists():
            self.finished(index, 0.0)  # done already (a statement without rows to fetch)
        if result is self._connection:  # DuckDB returns the connection itself
            return _TimedResult(self, index)
        return result

    def finished(self, index: int, seconds: float) -> None:
        """Statement ``index`` took ``seconds`` more (its fetch); keep its profile if slow."""
        sql, before = self._record.statements[index]
        self._record.statements[index] = (sql, before + seconds)
        if self._profile is None or index in self._profiled:
            return
        self._profiled.add(index)
        if before + seconds < self._min_seconds:
            return
        try:
            tree = json.loads(self._profile.read_text())
        except (OSError, ValueError):
            return
        if _label(tree.get("query_name") or "", 60) != _label(sql, 60):
            return
        self._record.profiles.append(
            {"seconds": before + seconds, "sql": _label(sql, 400), **operators(tree)}
        )

    def __getattr__(self, name: str) -> Any:
        return getattr(self._connection, name)


class _TimedResult:
    """The pending result of one statement: fetching it counts toward the statement."""

    _FETCHES = ("fetchall", "fetchone", "fetchmany", "to_arrow_table", "arrow", "pl", "df")

    def __init__(self, connection: _TimedConnection, index: int) -> None:
        self._owner = connection
        self._index = index
        self._done = False

    def __getattr__(self, name: str) -> Any:
        target = getattr(self._owner._connection, name)
        if name not in self._FETCHES or self._done:
            return target

        def fetch(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                return target(*args, **kwargs)
            finally:
                self._done = True
                self._owner.finished(self._index, time.perf_counter() - started)

        return fetch


@contextmanager
def statements(
    store: engine.Store, *, profile: Path | None = None, min_seconds: float = 0.02
) -> Iterator[StatementLog]:
    """Record the statements ``store`` runs inside the block, and with ``profile`` (a scratch
    file for DuckDB's JSON profiler) the operator profile of those taking ``min_seconds``."""
    storage = store._storage
    connection = storage._connection
    record = StatementLog()
    if profile is not None:
        connection.execute("PRAGMA enable_profiling = 'json'")
        connection.execute(f"PRAGMA profiling_output = '{profile}'")
    storage._connection = _TimedConnection(  # type: ignore[assignment]
        connection, record, profile, min_seconds
    )
    wall, cpu = time.perf_counter(), time.process_time()
    try:
        yield record
    finally:
        record.total = time.perf_counter() - wall
        record.cpu = time.process_time() - cpu
        storage._connection = connection
        if profile is not None:
            connection.execute("PRAGMA disable_profiling")


def operators(tree: dict[str, Any], top: int = 8) -> dict[str, Any]:
    """The costliest operators of one DuckDB JSON profile (``operator_timing`` is the
    operator's own time, summed over threads)."""
    found: list[dict[str, Any]] = []

    def walk(node: dict[str, Any]) -> None:
        if "operator_type" in node:
            info = node.get("extra_info") or {}
            detail = info.get("Table") or info.get("Conditions") or info.get("Aggregates") or ""
            if info.get("Join Type"):
                detail = f"{info['Join Type']} {detail}"
            found.append(
                {
                    "operator": node.get("operator_name") or node["operator_type"],
                    "detail": _label(str(detail), 120),
                    "seconds": float(node.get("operator_timing") or 0.0),
                    "rows": int(node.get("operator_cardinality") or 0),
                    "rows_scanned": int(node.get("operator_rows_scanned") or 0),
                }
            )
        for child in node.get("children") or []:
            walk(child)

    walk(tree)
    found.sort(key=lambda item: -item["seconds"])
    return {
        "latency": float(tree.get("latency") or 0.0),
        "cpu_time": float(tree.get("cpu_time") or 0.0),
        "rows_scanned": int(tree.get("cumulative_rows_scanned") or 0),
        "operators": found[:top],
    }


# -- the store ------------------------------------------------------------------------------


def build_store(path: Path, params: Params, size: int) -> dict[str, Any]:
    """Load ``size`` generated events as live events, then create the five metrics."""
    load_seconds = 0.0
    load_cpu = 0.0
    loaded = 0
    metric_seconds: dict[str, float] = {}
    by_name = {m["name"]: m for m in SAMPLE_METRICS}
    with engine.open(path, clock=params.clock, grace_period=HISTORY_GRACE) as store:
        for rank, external_id in enumerate(sample_customers(params.customers), start=1):
            store.customers.create(external_customer_id=external_id, name=f"Customer {rank}")
        for batch in generate_events(
            events=size,
            customers=params.customers,
            days=params.days,
            seed=SEED_HISTORY,
            start=START,
            batch_size=params.batch,
        ):
            wall, cpu = measure(store.ingest, batch)
            load_seconds += wall
            load_cpu += cpu
            loaded += batch.num_rows
            log(f"  loaded {loaded:>12,} events  {loaded / load_seconds:>10,.0f}/s")
        for name in METRIC_NAMES:
            seconds = timed(store.metrics.create, name=name, sql=by_name[name]["sql"])
            metric_seconds[name] = seconds
            log(f"  metric {name}: materialized over history in {seconds:.2f} s")
    return {
        "events": loaded,
        "load_seconds": load_seconds,
        "load_cpu_seconds": load_cpu,
        "load_events_per_s": loaded / load_seconds,
        "metric_create_seconds": metric_seconds,
        "metrics": {name: by_name[name]["sql"] for name in METRIC_NAMES},
    }


def scalar(store: engine.Store, sql: str) -> int:
    row = store.sql(sql).fetchone()
    return int(row[0]) if row and row[0] is not None else 0


def deprecated_by(store: engine.Store, backfill_id: str) -> int:
    return scalar(
        store, f"SELECT count(*) FROM lake.main.deprecations WHERE backfill_id = '{backfill_id}'"
    )


def stage(
    store: engine.Store,
    *,
    events: Any,
    start: Any,
    end: Any,
    customer: str | None,
    deprecation_filter: str | None,
) -> tuple[str, float]:
    backfill = store.backfills.create(
        timeframe_start=start,
        timeframe_end=end,
        external_customer_id=customer,
        replace_existing_events=True,
        deprecation_filter=deprecation_filter,
    )
    return backfill.id, timed(store.ingest, events, backfill_id=backfill.id)


# -- c1: 1-day account-wide close against a full recompute ----------------------------------


def close_vs_recompute(store: engine.Store, params: Params, size: int) -> dict[str, Any]:
    count = params.one_day_events(size)
    variants: dict[str, dict[str, Any]] = {
        name: {"close": [], "close_cpu": [], "staging": [], "replaced": [], "statements": []}
        for name in ("no filter", "filter")
    }
    recompute: list[float] = []
    recompute_cpu: list[float] = []
    for repeat in range(params.repeat):
        # A B A: close (no filter), recompute, close (filter); each close on a day of its own.
        for offset, name in enumerate(("no filter", None, "filter")):
            if name is None:
                wall, cpu = measure(store.recompute)
                recompute.append(wall)
                recompute_cpu.append(cpu)
                log(f"  c1 #{repeat + 1}: recompute {wall:.3f} s (cpu {cpu:.3f} s)")
                continue
            start = params.day(2 * repeat + (0 if offset == 0 else 1))
            new = replacement(
                count, params.customers, 1, SEED_BACKFILL + 10 * offset + repeat, start, None
            )
            backfill_id, staging = stage(
                store,
                events=new,
                start=start,
                end=start + timedelta(days=1),
                customer=None,
                deprecation_filter=DEPRECATION_FILTER if name == "filter" else None,
            )
            with statements(store) as record:
                store.backfills.close(backfill_id)
            variant = variants[name]
            variant["close"].append(record.total)
            variant["close_cpu"].append(record.cpu)
            variant["staging"].append(staging)
            variant["replaced"].append(deprecated_by(store, backfill_id))
            variant["statements"].append(record.summary())
            log(
                f"  c1 #{repeat + 1}: close ({name}) {record.total:.3f} s (cpu {record.cpu:.3f} s),"
                f" {new.num_rows:,} new, {variant['replaced'][-1]:,} replaced; staging "
                f"{staging:.2f} s; {len(record.statements)} statements, "
                f"{record.summary()['in_duckdb_seconds']:.3f} s in DuckDB"
            )
    result: dict[str, Any] = {
        "backfill_events": count,
        "deprecation_filter": DEPRECATION_FILTER,
        "recompute_seconds": recompute,
        "recompute_cpu_seconds": recompute_cpu,
    }
    for name, variant in variants.items():
        ratios = [r / c for r, c in zip(recompute, variant["close"], strict=True)]
        cpu_ratios = [r / c for r, c in zip(recompute_cpu, variant["close_cpu"], strict=True)]
        result[name] = {
            **variant,
            "ratio_recompute_over_close": ratios,
            "cpu_ratio_recompute_over_close": cpu_ratios,
            "summary": {
                "close": summary(variant["close"]),
                "close_cpu": summary(variant["close_cpu"]),
                "ratio": summary(ratios),
                "cpu_ratio": summary(cpu_ratios),
                "staging": summary(variant["staging"]),
            },
        }
    result["summary"] = {"recompute": summary(recompute), "recompute_cpu": summary(recompute_cpu)}
    return result


# -- c2: 7-day one-customer close and revert ------------------------------------------------


def week_filter(start: datetime, customer: str | None = None) -> str:
    end = start + timedelta(days=7)
    scope = f"external_customer_id = '{customer}' AND " if customer else ""
    return (
        f"{scope}\"timestamp\" >= TIMESTAMP '{start:%Y-%m-%d}' "
        f"AND \"timestamp\" < TIMESTAMP '{end:%Y-%m-%d}'"
    )


def scoped_customer(store: engine.Store, params: Params) -> tuple[str, int]:
    """The customer whose first measured week holds closest to ``scoped_events`` events."""
    rows = store.sql(
        "SELECT external_customer_id, count(*) FROM lake.main.stored_events "
        f"WHERE {week_filter(params.week(0))} GROUP BY 1"
    ).fetchall()
    customer, events = min(rows, key=lambda row: (abs(row[1] - params.scoped_events), row[0]))
    return str(customer), int(events)


def scoped_backfill(
    store: engine.Store, params: Params, customer: str, start: datetime, seed: int
) -> tuple[str, float, int]:
    """Stage a re-send of ``customer``'s week (as many new events as it has effective ones)."""
    in_scope = scalar(store, f"SELECT count(*) FROM events WHERE {week_filter(start, customer)}")
    new = replacement(max(in_scope, 1), params.customers, 7, seed, start, customer)
    backfill_id, staging = stage(
        store,
        events=new,
        start=start,
        end=start + timedelta(days=7),
        customer=customer,
        deprecation_filter=None,
    )
    return backfill_id, staging, new.num_rows


def scoped_close_revert(store: engine.Store, params: Params) -> dict[str, Any]:
    customer, _ = scoped_customer(store, params)
    result: dict[str, Any] = {"customer": customer}
    for key in ("close", "close_cpu", "revert", "revert_cpu", "staging", "new", "replaced"):
        result[key] = []
    result["close_statements"] = []
    result["revert_statements"] = []
    for repeat in range(params.repeat):
        start = params.week(repeat)
        backfill_id, staging, new = scoped_backfill(
            store, params, customer, start, SEED_BACKFILL + 50 + repeat
        )
        with statements(store) as closing:
            store.backfills.close(backfill_id)
        replaced = deprecated_by(store, backfill_id)
        with statements(store) as reverting:
            store.backfills.revert(backfill_id)
        for key, value in (
            ("close", closing.total),
            ("close_cpu", closing.cpu),
            ("revert", reverting.total),
            ("revert_cpu", reverting.cpu),
            ("staging", staging),
            ("new", new),
            ("replaced", replaced),
            ("close_statements", closing.summary()),
            ("revert_statements", reverting.summary()),
        ):
            result[key].append(value)
        log(
            f"  c2 #{repeat + 1}: {customer} from {start:%m-%d}, {new:,} new, {replaced:,} "
            f"replaced: close {closing.total:.3f} s (cpu {closing.cpu:.3f}), revert "
            f"{reverting.total:.3f} s (cpu {reverting.cpu:.3f}); staging {staging:.2f} s"
        )
    result["summary"] = {
        key: summary(result[key])
        for key in ("close", "close_cpu", "revert", "revert_cpu", "staging")
    }
    return result


# -- u: usage query latency -------------------------------------------------------------------


def percentile(values: Sequence[float], fraction: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    rank = fraction * (len(ordered) - 1)
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def usage_customer(params: Params) -> str:
    """A mid-sized customer (the 10th heaviest) for the usage queries."""
    return sample_customers(params.customers)[min(9, params.customers - 1)]


def usage_window(params: Params) -> tuple[datetime, datetime]:
    """The last 30 days of history (all of it when shorter)."""
    end = START + timedelta(days=params.days)
    return max(START, end - timedelta(days=USAGE_WINDOW_DAYS)), end


def customer_usage(store: engine.Store, params: Params, metric_id: str) -> pl.DataFrame:
    """Usage of one customer over the last 30 days of history, by day."""
    start, end = usage_window(params)
    return store.usage(
        metric_id,
        timeframe_start=start,
        timeframe_end=end,
        external_customer_id=usage_customer(params),
        granularity="day",
    )


def usage_latency(store: engine.Store, params: Params) -> dict[str, Any]:
    metrics = {m.name: m.id for m in store.metrics.list() if m.name in METRIC_NAMES}
    customer = usage_customer(params)
    # in METRIC_NAMES order: the metrics share a creation time, so the store lists them in no
    # fixed order, and the first call (below) would time a different metric from run to run
    names = [name for name in METRIC_NAMES if name in metrics]

    def call(index: int) -> pl.DataFrame:
        return customer_usage(store, params, metrics[names[index % len(names)]])

    # The first call after a commit reloads the in-memory copies of the cells.
    first_wall, first_cpu = measure(call, 0)
    rows = {name: call(i).height for i, name in enumerate(names)}
    rounds: list[dict[str, Any]] = []
    pooled: list[float] = []
    pooled_cpu: list[float] = []
    per_metric: dict[str, list[float]] = {name: [] for name in names}
    for repeat in range(params.repeat):
        walls: list[float] = []
        cpus: list[float] = []
        for index in range(params.usage_calls):
            wall, cpu = measure(call, index)
            walls.append(wall)
            cpus.append(cpu)
            per_metric[names[index % len(names)]].append(wall)
        pooled += walls
        pooled_cpu += cpus
        rounds.append(
            {
                "p50": percentile(walls, 0.5),
                "p99": percentile(walls, 0.99),
                "max": max(walls),
                "cpu_p50": percentile(cpus, 0.5),
                "cpu_p99": percentile(cpus, 0.99),
            }
        )
        log(
            f"  u #{repeat + 1}: {len(walls)} calls, p50 {rounds[-1]['p50'] * 1e3:.2f} ms, "
            f"p99 {rounds[-1]['p99'] * 1e3:.2f} ms (cpu p50 {rounds[-1]['cpu_p50'] * 1e3:.2f} ms)"
        )
    # Where a call's time goes (not part of the figures above).
    profiler = cProfile.Profile()
    profiler.enable()
    for index in range(50):
        call(index)
    profiler.disable()
    text = io.StringIO()
    pstats.Stats(profiler, stream=text).sort_stats("tottime").print_stats(15)
    window_start, window_end = usage_window(params)
    window_days = (window_end - window_start).days
    return {
        "customer": customer,
        "window_days": window_days,
        "calls_per_round": params.usage_calls,
        "first_call_seconds": first_wall,
        "first_call_cpu_seconds": first_cpu,
        "rows_per_metric": rows,
        "rounds": rounds,
        "summary": {
            key: summary([r[key] for r in rounds]) for key in ("p50", "p99", "cpu_p50", "cpu_p99")
        },
        "pooled": {
            "p50": percentile(pooled, 0.5),
            "p99": percentile(pooled, 0.99),
            "cpu_p50": percentile(pooled_cpu, 0.5),
            "cpu_p99": percentile(pooled_cpu, 0.99),
        },
        "p50_per_metric": {name: percentile(values, 0.5) for name, values in per_metric.items()},
        "cprofile_50_calls_by_tottime": [
            line.rstrip() for line in text.getvalue().splitlines() if line.strip()
        ][:30],
    }


# -- r: recompute throughput beside hand-written aggregations ----------------------------------

# The five metrics' hour cells in one pass, as an analyst would write them: per customer, hour
# and region (which refines the ungrouped cells), the counts, the tokens' sum / min / max and the
# distinct models. Same JSON extraction as the engine (a JSON Pointer, then TRY_CAST).
_DUCKDB_CELLS = """
COPY (
  SELECT external_customer_id AS customer, date_trunc('hour', "timestamp") AS bucket,
         json_extract_string(properties, '/region') AS region,
         count(*) AS events,
         count(tokens) FILTER (WHERE event_name = 'completion') AS completion_events,
         sum(tokens) FILTER (WHERE event_name = 'completion') AS completion_tokens,
         min(tokens) FILTER (WHERE event_name = 'completion') AS min_completion_tokens,
         max(tokens) FILTER (WHERE event_name = 'completion') AS max_completion_tokens,
         list(DISTINCT model) AS models
  FROM (
    SELECT external_customer_id, "timestamp", event_name, properties,
           TRY_CAST(CAST(json_extract(properties, '/tokens') AS VARCHAR) AS DOUBLE) AS tokens,
           CAST(json_extract(properties, '/model') AS VARCHAR) AS model
    FROM read_parquet({files}, hive_partitioning = false))
  GROUP BY 1, 2, 3
) TO '{target}' (FORMAT parquet)
"""


def duckdb_cells(files: str, target: Path) -> None:
    connection = duckdb.connect()
    try:
        connection.execute(
            _DUCKDB_CELLS.format(files=f"'{files}'", target=target)  # our own paths
        )
    finally:
        connection.close()


def polars_cells(files: str, target: Path) -> None:
    # DuckDB writes the JSON column as Parquet binary: Polars needs it as text.
    properties = pl.col("properties").cast(pl.String)
    tokens = properties.str.json_path_match("$.tokens").cast(pl.Float64, strict=False)
    completion = pl.col("event_name") == "completion"
    frame = (
        pl.scan_parquet(files, hive_partitioning=False)
        .select(
            pl.col("external_customer_id").alias("customer"),
            pl.col("timestamp").dt.truncate("1h").alias("bucket"),
            properties.str.json_path_match("$.region").alias("region"),
            pl.col("event_name"),
            tokens.alias("tokens"),
            properties.str.json_path_match("$.model").alias("model"),
        )
        .group_by("customer", "bucket", "region")
        .agg(
            pl.len().alias("events"),
            pl.col("tokens").filter(completion).count().alias("completion_events"),
            pl.col("tokens").filter(completion).sum().alias("completion_tokens"),
            pl.col("tokens").filter(completion).min().alias("min_completion_tokens"),
            pl.col("tokens").filter(completion).max().alias("max_completion_tokens"),
            pl.col("model").drop_nulls().unique().alias("models"),
        )
        # streaming, as a Polars user would at this size: in memory it ran out of RAM at 100M
        .collect(engine="streaming")
    )
    frame.write_parquet(target)


def recompute_throughput(store: engine.Store, params: Params, scratch: Path) -> dict[str, Any]:
    scratch.mkdir(parents=True, exist_ok=True)
    files = str(store.path / "data" / "main" / "stored_events" / "**" / "*.parquet")
    stored = scalar(store, "SELECT count(*) FROM lake.main.stored_events")
    effective = scalar(store, "SELECT count(*) FROM events")
    names = ("engine", "duckdb", "polars")
    walls: dict[str, list[float]] = {name: [] for name in names}
    cpus: dict[str, list[float]] = {name: [] for name in names}
    actions: dict[str, Callable[[], None]] = {
        "engine": store.recompute,
        "duckdb": lambda: duckdb_cells(files, scratch / "duckdb_cells.parquet"),
        "polars": lambda: polars_cells(files, scratch / "polars_cells.parquet"),
    }
    for repeat in range(params.repeat):
        for name in names:  # A B C A B C
            wall, cpu = measure(actions[name])
            walls[name].append(wall)
            cpus[name].append(cpu)
        log(
            f"  r #{repeat + 1}: "
            + ", ".join(f"{n} {walls[n][-1]:.2f} s (cpu {cpus[n][-1]:.2f})" for n in names)
        )
    # Both baselines aggregate every stored row: live, backfilled and replaced alike.
    check = duckdb.connect()
    try:
        counted = {
            name: check.execute(
                "SELECT sum(events) FROM read_parquet(?)", [str(scratch / f"{name}_cells.parquet")]
            ).fetchone()
            for name in ("duckdb", "polars")
        }
    finally:
        check.close()
    rates = {name: [stored / s for s in values] for name, values in walls.items()}

    def cost(values: dict[str, list[float]], name: str) -> list[float]:
        return [e / b for e, b in zip(values["engine"], values[name], strict=True)]

    return {
        "stored_rows": stored,
        "effective_events": effective,
        "rows_aggregated": {n: int(r[0]) if r and r[0] else 0 for n, r in counted.items()},
        "seconds": walls,
        "cpu_seconds": cpus,
        "events_per_s": rates,
        "ratio_engine_cost_over": {name: cost(walls, name) for name in ("duckdb", "polars")},
        "cpu_ratio_engine_cost_over": {name: cost(cpus, name) for name in ("duckdb", "polars")},
        "summary": {
            **{f"{name}_events_per_s": summary(values) for name, values in rates.items()},
            **{f"{name}_cpu_seconds": summary(values) for name, values in cpus.items()},
            **{f"engine_over_{name}": summary(cost(walls, name)) for name in ("duckdb", "polars")},
            **{
                f"engine_over_{name}_cpu": summary(cost(cpus, name))
                for name in ("duckdb", "polars")
            },
        },
    }


# -- profiles (untimed) -----------------------------------------------------------------------


def profiles(store: engine.Store, params: Params, size: int, scratch: Path) -> dict[str, Any]:
    """One more close of each kind, a revert, a recompute and a usage call, with DuckDB's
    operator profiler on (slower than the timed runs; for where the time goes, not how much)."""
    scratch.mkdir(parents=True, exist_ok=True)
    target = scratch / "profile.json"
    out: dict[str, Any] = {}

    def profiled(name: str, action: Callable[[], Any], min_seconds: float = 0.02) -> None:
        with statements(store, profile=target, min_seconds=min_seconds) as record:
            action()
        out[name] = {**record.summary(), "profiles": record.profiles}

    start = params.day(2 * params.repeat + 7 * params.repeat)
    new = replacement(
        params.one_day_events(size), params.customers, 1, SEED_BACKFILL + 90, start, None
    )
    backfill_id, _ = stage(
        store,
        events=new,
        start=start,
        end=start + timedelta(days=1),
        customer=None,
        deprecation_filter=DEPRECATION_FILTER,
    )
    profiled("close 1-day account-wide, filter", lambda: store.backfills.close(backfill_id))
    customer, _ = scoped_customer(store, params)
    scoped_id, _, _ = scoped_backfill(store, params, customer, params.week(0), SEED_BACKFILL + 91)
    profiled("close 7-day one customer", lambda: store.backfills.close(scoped_id))
    profiled("revert 7-day one customer", lambda: store.backfills.revert(scoped_id))
    profiled("recompute", store.recompute)
    metric = next(m.id for m in store.metrics.list() if m.name == "events_by_region")
    customer_usage(store, params, metric)  # reload the cached cells first
    profiled("usage (warm)", lambda: customer_usage(store, params, metric), min_seconds=0.0)
    for name, profile in out.items():
        log(f"  profile {name}: {profile['total_seconds']:.3f} s")
        for item in sorted(profile["profiles"], key=lambda p: -p["seconds"])[:3]:
            ops = ", ".join(
                f"{op['operator']} {op['seconds']:.3f}s ({op['rows']:,} rows)"
                for op in item["operators"][:3]
            )
            log(f"    {item['seconds']:.3f} s  {item['sql'][:70]}  | {ops}")
    return out


# -- one store size ----------------------------------------------------------------------------


def run_size(params: Params, size: int, keep: bool) -> dict[str, Any]:
    path = params.workdir / f"store-{size}"
    log(f"building the {size:,}-event store over {params.days} days in {path}")
    started = time.perf_counter()
    result: dict[str, Any] = {
        "events": size,
        "days": params.days,
        "build": build_store(path, params, size),
    }
    result["build"]["wall_seconds"] = time.perf_counter() - started
    # Default grace period from here on: replace backfills must end 12 h before now.
    with engine.open(path, clock=params.clock) as store:
        log(f"c1. 1-day account-wide close vs full recompute ({size:,} events)")
        result["close_vs_recompute"] = close_vs_recompute(store, params, size)
        log(f"c2. 7-day one-customer close and revert ({size:,} events)")
        result["scoped_close_revert"] = scoped_close_revert(store, params)
        log(f"u.  usage latency ({size:,} events)")
        result["usage_latency"] = usage_latency(store, params)
        log(f"r.  recompute throughput ({size:,} events)")
        result["recompute_throughput"] = recompute_throughput(
            store, params, params.workdir / f"scratch-{size}"
        )
        if params.profile:
            log(f"profiles ({size:,} events)")
            result["profiles"] = profiles(store, params, size, params.workdir / f"scratch-{size}")
    result["wall_seconds"] = time.perf_counter() - started
    if not keep:
        shutil.rmtree(path, ignore_errors=True)
        shutil.rmtree(params.workdir / f"scratch-{size}", ignore_errors=True)
    return result


# -- report ---------------------------------------------------------------------------------


def _s(values: Sequence[float], scale: float = 1.0, digits: int = 3) -> str:
    s = summary([v * scale for v in values])
    if not s:
        return "-"
    return f"{s['median']:.{digits}f} [{s['min']:.{digits}f}-{s['max']:.{digits}f}]"


def _median(values: Sequence[float], scale: float = 1.0, digits: int = 3) -> str:
    return f"{statistics.median(values) * scale:.{digits}f}" if values else "-"


def _rate(values: Sequence[float]) -> str:
    s = summary(values)
    return f"{s['median']:,.0f} [{s['min']:,.0f}-{s['max']:,.0f}]" if s else "-"


def _count(values: Sequence[int]) -> str:
    low, high = min(values), max(values)
    return f"{low:,}" if low == high else f"{low:,}-{high:,}"


def _table(rows: list[list[str]]) -> list[str]:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = []
    for index, row in enumerate(rows):
        lines.append(
            "  ".join(
                cell.ljust(width) if column == 0 else cell.rjust(width)
                for column, (cell, width) in enumerate(zip(row, widths, strict=True))
            )
        )
        if index == 0:
            lines.append("  ".join("-" * width for width in widths))
    return lines


def size_rows(result: dict[str, Any]) -> list[list[str]]:
    """One store size: figure, unit, wall median [min-max], CPU median, ratio (wall / CPU)."""
    c1 = result["close_vs_recompute"]
    c2 = result["scoped_close_revert"]
    u = result["usage_latency"]
    r = result["recompute_throughput"]
    build = result["build"]
    rows = [
        [
            f"N = {result['events']:,}",
            "unit",
            "wall median [min-max]",
            "cpu median",
            "recompute/close (wall | cpu)",
        ],
        [
            "load (once, live events, 1M batches)",
            "events/s",
            f"{build['load_events_per_s']:,.0f}",
            f"{build['events'] / build['load_cpu_seconds']:,.0f}",
            "",
        ],
        [
            "create the 5 metrics (once, each over history)",
            "s",
            f"{sum(build['metric_create_seconds'].values()):.2f}",
            "",
            "",
        ],
        [
            "full store.recompute(), 5 metrics",
            "s",
            _s(c1["recompute_seconds"]),
            _median(c1["recompute_cpu_seconds"]),
            "",
        ],
    ]
    for name in ("no filter", "filter"):
        variant = c1[name]
        label = (
            f"c1. close 1-day account-wide: {c1['backfill_events']:,} new, "
            f"{_count(variant['replaced'])} replaced"
        )
        if name == "filter":
            label += f" ({DEPRECATION_FILTER})"
        rows.append(
            [
                label,
                "s",
                _s(variant["close"]),
                _median(variant["close_cpu"]),
                f"{_median(variant['ratio_recompute_over_close'], digits=1)} | "
                f"{_median(variant['cpu_ratio_recompute_over_close'], digits=1)}",
            ]
        )
        rows.append(["    (staging those events)", "s", _s(variant["staging"]), "", ""])
    rows += [
        [
            f"c2. close 7-day {c2['customer']}: {_count(c2['new'])} new, "
            f"{_count(c2['replaced'])} replaced",
            "s",
            _s(c2["close"]),
            _median(c2["close_cpu"]),
            "",
        ],
        ["c2. revert it", "s", _s(c2["revert"]), _median(c2["revert_cpu"]), ""],
        ["    (staging those events)", "s", _s(c2["staging"]), "", ""],
        [
            f"u.  usage(), {u['customer']}, {u['window_days']} days by day: p50",
            "ms",
            _s([x["p50"] for x in u["rounds"]], 1e3, 2),
            _median([x["cpu_p50"] for x in u["rounds"]], 1e3, 2),
            "",
        ],
        [
            "u.  usage(): p99",
            "ms",
            _s([x["p99"] for x in u["rounds"]], 1e3, 2),
            _median([x["cpu_p99"] for x in u["rounds"]], 1e3, 2),
            "",
        ],
        [
            f"u.  usage(): first call after a commit (reloads {METRIC_NAMES[0]}'s cells)",
            "ms",
            f"{u['first_call_seconds'] * 1e3:.1f}",
            f"{u['first_call_cpu_seconds'] * 1e3:.1f}",
            "",
        ],
    ]
    for name, label in (
        ("engine", "store.recompute()"),
        ("duckdb", "DuckDB GROUP BY over the Parquet files"),
        ("polars", "Polars scan_parquet().group_by()"),
    ):
        rows.append(
            [
                f"r.  {label}, {r['stored_rows']:,} rows",
                "events/s",
                _rate(r["events_per_s"][name]),
                f"{r['stored_rows'] / statistics.median(r['cpu_seconds'][name]):,.0f}",
                "",
            ]
        )
    for name in ("duckdb", "polars"):
        rows.append(
            [
                f"r.  recompute cost / {name} cost",
                "x",
                _s(r["ratio_engine_cost_over"][name], digits=1),
                _median(r["cpu_ratio_engine_cost_over"][name], digits=1),
                "",
            ]
        )
    return rows


def report(results: list[dict[str, Any]], params: Params) -> str:
    lines = [
        f"{params.customers} customers, {', '.join(str(r['days']) for r in results)} days of "
        f"history, {params.repeat} repeats, A/B alternating; median [min-max] of wall time, "
        "median of process CPU time"
    ]
    for result in results:
        lines += ["", *_table(size_rows(result))]
    if len(results) > 1:
        rows = [["medians by store size", *(f"N = {r['events']:,}" for r in results)]]
        picks: list[tuple[str, Callable[[dict[str, Any]], list[float]]]] = [
            ("c1 close, no filter (s)", lambda r: r["close_vs_recompute"]["no filter"]["close"]),
            ("c1 close, filter (s)", lambda r: r["close_vs_recompute"]["filter"]["close"]),
            ("full recompute (s)", lambda r: r["close_vs_recompute"]["recompute_seconds"]),
            (
                "c1 ratio recompute/close, no filter",
                lambda r: r["close_vs_recompute"]["no filter"]["ratio_recompute_over_close"],
            ),
            ("c2 close 7-day (s)", lambda r: r["scoped_close_revert"]["close"]),
            ("c2 revert 7-day (s)", lambda r: r["scoped_close_revert"]["revert"]),
            (
                "c2 events touched (new + replaced)",
                lambda r: [
                    float(n + d)
                    for n, d in zip(
                        r["scoped_close_revert"]["new"],
                        r["scoped_close_revert"]["replaced"],
                        strict=True,
                    )
                ],
            ),
            (
                "usage p50 (ms)",
                lambda r: [x["p50"] * 1e3 for x in r["usage_latency"]["rounds"]],
            ),
        ]
        for label, pick in picks:
            digits = 0 if label.startswith("c2 events") else 3
            rows.append([label, *(_median(pick(r), digits=digits) for r in results)])
        lines += ["", *_table(rows)]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--events", type=int, default=10_000_000, help="N, events in the store")
    parser.add_argument(
        "--sizes", help="several store sizes, comma-separated (10000000,50000000); overrides N"
    )
    parser.add_argument("--customers", type=int, default=50)
    parser.add_argument(
        "--days", type=int, help="days of history at every size (default: N / --events-per-day)"
    )
    parser.add_argument(
        "--events-per-day",
        type=int,
        default=333_334,
        help="history density when --days is not given (10M events over 30 days)",
    )
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--batch", type=int, default=1_000_000, help="load batch size")
    parser.add_argument(
        "--backfill-events", type=int, help="events of the 1-day backfill (min(100k, N/10))"
    )
    parser.add_argument(
        "--scoped-events", type=int, default=10_000, help="aim of the 7-day customer's volume"
    )
    parser.add_argument("--usage-calls", type=int, default=200)
    parser.add_argument("--no-profile", action="store_true", help="skip the profiled runs")
    parser.add_argument("--out", type=Path, help="write the results as JSON here")
    parser.add_argument("--workdir", type=Path, help="empty folder for the stores (kept)")
    parser.add_argument("--keep", action="store_true", help="keep the stores")
    args = parser.parse_args(argv)
    sizes = (
        [int(s.replace("_", "")) for s in args.sizes.split(",")] if args.sizes else [args.events]
    )
    room: int = 2 * args.repeat + 7  # the 1-day backfills' days, then a week

    def history_days(size: int) -> int:
        if args.days is not None:
            return int(args.days)
        return max(-(-size // int(args.events_per_day)), room)

    if args.days is not None and args.days < room:
        parser.error("--days must be at least 2 * --repeat + 7 (room for the backfills)")
    started = time.perf_counter()
    load_at_start = os.getloadavg()
    results: list[dict[str, Any]] = []
    with workdir(args.workdir, args.keep) as folder:
        params = Params(
            customers=args.customers,
            days=history_days(sizes[0]),
            repeat=args.repeat,
            batch=args.batch,
            backfill_events=args.backfill_events,
            scoped_events=args.scoped_events,
            usage_calls=args.usage_calls,
            profile=not args.no_profile,
            workdir=folder,
        )

        def save() -> dict[str, Any]:
            """The results so far as JSON (after every size: a later size may not finish)."""
            about = machine(load_at_start)
            about["polars"] = pl.__version__
            output = {
                "benchmark": "bench_usage",
                "params": {
                    "sizes": sizes,
                    "customers": args.customers,
                    "days": [history_days(size) for size in sizes],
                    "events_per_day": None if args.days is not None else args.events_per_day,
                    "repeat": args.repeat,
                    "batch": args.batch,
                    "backfill_events": args.backfill_events,
                    "scoped_events": args.scoped_events,
                    "usage_calls": args.usage_calls,
                    "deprecation_filter": DEPRECATION_FILTER,
                },
                "machine": about,
                "sizes": {str(r["events"]): r for r in results},
                "wall_seconds": time.perf_counter() - started,
            }
            if args.out is not None:
                args.out.parent.mkdir(parents=True, exist_ok=True)
                args.out.write_text(json.dumps(output, indent=2, default=str) + "\n")
            return output

        for size in sizes:
            sized = replace(params, days=history_days(size))
            results.append(run_size(sized, size, keep=args.keep or args.workdir is not None))
            log(f"N = {size:,} done in {results[-1]['wall_seconds']:.0f} s")
            output = save()
    print(report(results, params))
    log(
        f"total {output['wall_seconds']:.1f} s, load average "
        f"{output['machine']['load_average_at_end']}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
