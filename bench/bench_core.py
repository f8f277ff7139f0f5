"""Core benchmarks: live ingest throughput and backfill close latency, each beside a baseline.

Not a test: it prints a table of figures and (with ``--out``) writes them as JSON. See
``bench/README.md`` for how to run it and the latest figures.

One run builds a store of ``--events`` generated events (``engine.sample``) and, beside it, a
baseline DuckLake table with the same columns and day partitioning, written with plain DuckDB
``INSERT ... SELECT`` from the same Arrow batches. Then, ``--repeat`` times each, alternating
engine and baseline (A B A B) so that drift on a shared machine hits both alike:

a. live ingest of a batch of fresh events (1M by default) into the store already holding N
   events; baseline: the same batch inserted into the baseline DuckLake table;
b1. close of a 1-day account-wide replace backfill of 100k events; baseline: a plain DuckDB
   rewrite of that day partition (read its Parquet files, drop the replaced rows, append the
   new ones, write a new file);
b2. close of a 7-day one-customer replace backfill (the customer's week, re-sent); baseline:
   the same rewrite over the 7 day partitions.

Ratios are engine / baseline (time over time, so > 1 means the engine is slower).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import duckdb
import duckdb_extension_ducklake
import duckdb_extension_sqlite_scanner
import pyarrow as pa

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import engine  # noqa: E402
from engine.sample import generate_events, sample_customers  # noqa: E402

START = datetime(2026, 10, 1, tzinfo=UTC)
SEED_HISTORY = 1
SEED_FRESH = 100  # + repeat index: fresh keys, never seen by the store
SEED_BACKFILL = 200  # + scenario offset + repeat index


# -- measurements ---------------------------------------------------------------------------


@dataclass
class Scenario:
    """One scenario's paired measurements (one engine and one baseline figure per repeat)."""

    name: str
    unit: str  # "events/s" or "s"
    engine: list[float] = field(default_factory=list)
    baseline: list[float] = field(default_factory=list)
    events: list[int] = field(default_factory=list)
    notes: dict[str, Any] = field(default_factory=dict)

    def ratios(self) -> list[float]:
        # Always "engine cost / baseline cost": for a rate that is baseline rate / engine rate.
        if self.unit == "events/s":
            return [b / e for e, b in zip(self.engine, self.baseline, strict=True)]
        return [e / b for e, b in zip(self.engine, self.baseline, strict=True)]

    def to_json(self) -> dict[str, Any]:
        return {
            "unit": self.unit,
            "events": self.events,
            "engine": self.engine,
            "baseline": self.baseline,
            "ratio_engine_over_baseline_cost": self.ratios(),
            "summary": {
                "engine": summary(self.engine),
                "baseline": summary(self.baseline),
                "ratio": summary(self.ratios()),
            },
            **({"notes": self.notes} if self.notes else {}),
        }


def summary(values: Sequence[float]) -> dict[str, float]:
    if not values:
        return {}
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def timed(action: Callable[..., Any], *args: Any, **kwargs: Any) -> float:
    """Wall seconds of ``action(*args, **kwargs)``."""
    started = time.perf_counter()
    action(*args, **kwargs)
    return time.perf_counter() - started


def log(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


# -- the baseline: plain DuckDB on a DuckLake table ---------------------------------------------


def _extension(module: Any, name: str) -> str:
    root = Path(module.__file__).parent / "extensions"
    return str(root / f"v{duckdb.__version__}" / f"{name}.duckdb_extension")


class Baseline:
    """A DuckLake table with the engine's stored-event columns and day partitioning, written
    with nothing but ``INSERT ... SELECT`` (no validation, no dedup, no versions)."""

    def __init__(self, path: Path) -> None:
        (path / "data").mkdir(parents=True, exist_ok=True)
        self.scratch = path / "rewrites"
        self.scratch.mkdir(exist_ok=True)
        self.connection = duckdb.connect(
            config={"autoinstall_known_extensions": False, "autoload_known_extensions": False}
        )
        con = self.connection
        con.execute(f"LOAD '{_extension(duckdb_extension_ducklake, 'ducklake')}'")
        con.execute(f"LOAD '{_extension(duckdb_extension_sqlite_scanner, 'sqlite_scanner')}'")
        con.execute("SET TimeZone = 'UTC'")
        con.execute(
            f"ATTACH 'ducklake:sqlite:{path / 'catalog.sqlite'}' AS base "
            f"(DATA_PATH '{path / 'data'}{os.sep}')"
        )
        con.execute(
            """CREATE TABLE base.main.events (
                 idempotency_key VARCHAR, event_name VARCHAR, "timestamp" TIMESTAMP,
                 customer_id VARCHAR, external_customer_id VARCHAR, properties JSON,
                 version BIGINT, backfill_id VARCHAR, kind VARCHAR)"""
        )
        con.execute(
            'ALTER TABLE base.main.events SET PARTITIONED BY (year("timestamp"), '
            'month("timestamp"), day("timestamp"))'
        )
        self.version = 0

    def insert(self, table: pa.Table) -> None:
        self.version += 1
        self.connection.register("batch", table)
        try:
            self.connection.execute(
                f"""INSERT INTO base.main.events
                SELECT idempotency_key, event_name, CAST("timestamp" AS TIMESTAMP), customer_id,
                       external_customer_id, CAST(properties AS JSON), {self.version}, NULL,
                       'event'
                FROM batch"""
            )
        finally:
            self.connection.unregister("batch")

    def rewrite(
        self,
        files: list[str],
        new: pa.Table,
        *,
        start: datetime,
        end: datetime,
        customer: str | None,
        target: Path,
    ) -> None:
        """What a store without history would do: rewrite the touched day partitions without
        the replaced rows and with the new ones."""
        scope = f"external_customer_id = '{customer}'" if customer else "TRUE"
        self.connection.register("new_events", new)
        try:
            self.connection.execute(
                f"""COPY (
                  SELECT *, day("timestamp") AS part_day FROM (
                    SELECT idempotency_key, event_name, "timestamp", customer_id,
                           external_customer_id, properties, version, backfill_id, kind
                    FROM read_parquet({files!r}, hive_partitioning = false)
                    WHERE NOT ("timestamp" >= TIMESTAMP '{start:%Y-%m-%d %H:%M:%S}'
                               AND "timestamp" < TIMESTAMP '{end:%Y-%m-%d %H:%M:%S}'
                               AND {scope})
                    UNION ALL
                    SELECT idempotency_key, event_name, CAST("timestamp" AS TIMESTAMP),
                           customer_id, external_customer_id, CAST(properties AS JSON), 0,
                           'rewrite', 'event'
                    FROM new_events)
                ) TO '{target}' (FORMAT parquet, PARTITION_BY (part_day))"""
            )
        finally:
            self.connection.unregister("new_events")

    def count(self, sql: str) -> int:
        row = self.connection.execute(sql).fetchone()
        return int(row[0]) if row else 0

    def close(self) -> None:
        self.connection.close()


def day_files(store: Path, start: datetime, days: int) -> list[str]:
    """The engine store's Parquet files of the day partitions ``start .. start + days``."""
    files: list[str] = []
    for offset in range(days):
        day = start + timedelta(days=offset)
        folder = (
            store / "data" / "main" / "stored_events" / f"year={day.year}" / f"month={day.month}"
            / f"day={day.day}"
        )  # fmt: skip
        files += sorted(str(p) for p in folder.glob("*.parquet"))
    return files


# -- the run --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Params:
    events: int
    customers: int
    days: int
    repeat: int
    batch: int
    backfill_events: int
    workdir: Path

    @property
    def now(self) -> datetime:
        # One day after the history: fresh live events land there, and every day of the
        # history is older than the default grace period, as replace backfills require.
        return START + timedelta(days=self.days + 1)


def build(params: Params, engine_path: Path, baseline: Baseline) -> dict[str, Any]:
    """Load the N-event history into both stores, batch by batch (engine, then baseline)."""
    engine_seconds = 0.0
    baseline_seconds = 0.0
    loaded = 0
    history_grace = timedelta(days=params.days + 2)
    with engine.open(engine_path, clock=lambda: params.now, grace_period=history_grace) as store:
        for batch in generate_events(
            events=params.events,
            customers=params.customers,
            days=params.days,
            seed=SEED_HISTORY,
            start=START,
            batch_size=params.batch,
        ):
            engine_seconds += timed(store.ingest, batch)
            baseline_seconds += timed(baseline.insert, batch)
            loaded += batch.num_rows
            log(
                f"  loaded {loaded:>12,} events  engine {loaded / engine_seconds:>10,.0f}/s"
                f"  baseline {loaded / baseline_seconds:>10,.0f}/s"
            )
    return {
        "events": loaded,
        "engine_seconds": engine_seconds,
        "baseline_seconds": baseline_seconds,
        "engine_events_per_s": loaded / engine_seconds,
        "baseline_events_per_s": loaded / baseline_seconds,
    }


def live_ingest(params: Params, engine_path: Path, baseline: Baseline) -> Scenario:
    scenario = Scenario("a. live ingest", "events/s")
    size = min(params.batch, params.events)
    with engine.open(
        engine_path, clock=lambda: params.now, grace_period=timedelta(days=params.days + 2)
    ) as store:
        for repeat in range(params.repeat):
            batch = next(
                generate_events(
                    events=size,
                    customers=params.customers,
                    days=1,
                    seed=SEED_FRESH + repeat,
                    start=params.now - timedelta(days=1),
                    batch_size=size,
                )
            )
            seconds = timed(store.ingest, batch)
            base = timed(baseline.insert, batch)
            scenario.engine.append(size / seconds)
            scenario.baseline.append(size / base)
            scenario.events.append(size)
            log(f"  a #{repeat + 1}: engine {size / seconds:,.0f}/s  baseline {size / base:,.0f}/s")
    return scenario


def replacement(
    events: int, customers: int, days: int, seed: int, start: datetime, customer: str | None
) -> pa.Table:
    table = pa.concat_tables(
        generate_events(
            events=events, customers=customers, days=days, seed=seed, start=start,
            batch_size=max(events, 1),
        )
    )  # fmt: skip
    if customer is not None:
        index = table.schema.get_field_index("external_customer_id")
        table = table.set_column(
            index, "external_customer_id", pa.array([customer] * table.num_rows, pa.string())
        )
    return table


def backfill_close(
    params: Params, engine_path: Path, baseline: Baseline, *, scoped: bool
) -> Scenario:
    days = 7 if scoped else 1
    name = "b2. close 7-day one-customer backfill" if scoped else "b1. close 1-day backfill"
    scenario = Scenario(name, "s")
    customers = sample_customers(params.customers)
    customer = customers[min(9, len(customers) - 1)] if scoped else None
    staging: list[float] = []
    replaced: list[int] = []
    # Default grace period: the replace backfills end long before now - 12 h, as Orb requires.
    with engine.open(engine_path, clock=lambda: params.now) as store:
        for repeat in range(params.repeat):
            # Each repeat corrects other days, so every close meets the same kind of store.
            first = (1 + repeat * days) if scoped else repeat
            first %= max(params.days - days + 1, 1)
            start = START + timedelta(days=first)
            end = start + timedelta(days=days)
            span = (
                f"\"timestamp\" >= TIMESTAMP '{start:%Y-%m-%d}' "
                f"AND \"timestamp\" < TIMESTAMP '{end:%Y-%m-%d}'"
            )
            scope = f" AND external_customer_id = '{customer}'" if customer else ""
            in_scope = baseline.count(f"SELECT count(*) FROM base.main.events WHERE {span}{scope}")
            count = max(in_scope, 1) if scoped else params.backfill_events
            new = replacement(
                count,
                params.customers,
                days,
                SEED_BACKFILL + (50 if scoped else 0) + repeat,
                start,
                customer,
            )
            backfill = store.backfills.create(
                timeframe_start=start,
                timeframe_end=end,
                external_customer_id=customer,
                replace_existing_events=True,
            )
            staging.append(timed(store.ingest, new, backfill_id=backfill.id))
            files = day_files(engine_path, start, days)
            seconds = timed(store.backfills.close, backfill.id)
            target = baseline.scratch / f"{'b2' if scoped else 'b1'}_{repeat}"
            base = timed(
                baseline.rewrite, files, new, start=start, end=end, customer=customer, target=target
            )
            scenario.engine.append(seconds)
            scenario.baseline.append(base)
            scenario.events.append(new.num_rows)
            replaced.append(in_scope)
            log(
                f"  {name} #{repeat + 1}: {new.num_rows:,} new, {in_scope:,} replaced; "
                f"engine close {seconds:.3f} s, baseline rewrite {base:.3f} s "
                f"(staging {staging[-1]:.3f} s)"
            )
    scenario.notes = {
        "customer": customer,
        "days": days,
        "replaced_events": replaced,
        "staging_seconds": staging,
    }
    return scenario


# -- report ---------------------------------------------------------------------------------


def _figure(values: Sequence[float], unit: str) -> str:
    s = summary(values)
    if not s:
        return "-"
    if unit == "events/s":
        return f"{s['median']:,.0f} [{s['min']:,.0f}-{s['max']:,.0f}]"
    return f"{s['median']:.3f} [{s['min']:.3f}-{s['max']:.3f}]"


def report(load: dict[str, Any], scenarios: list[Scenario], params: Params) -> str:
    rows = [
        ["scenario", "unit", "engine median [min-max]", "baseline median [min-max]", "ratio"],
        [
            f"load {load['events']:,} events (once)",
            "events/s",
            f"{load['engine_events_per_s']:,.0f}",
            f"{load['baseline_events_per_s']:,.0f}",
            f"{load['baseline_events_per_s'] / load['engine_events_per_s']:.2f}",
        ],
    ]
    for scenario in scenarios:
        ratio = summary(scenario.ratios())
        rows.append(
            [
                f"{scenario.name} ({scenario.events[0]:,} events)",
                scenario.unit,
                _figure(scenario.engine, scenario.unit),
                _figure(scenario.baseline, scenario.unit),
                f"{ratio['median']:.2f} [{ratio['min']:.2f}-{ratio['max']:.2f}]",
            ]
        )
        if "staging_seconds" in scenario.notes:
            rows.append(
                [
                    "   (staging the backfill's events, engine)",
                    "s",
                    _figure(scenario.notes["staging_seconds"], "s"),
                    "",
                    "",
                ]
            )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = [
        f"N = {params.events:,} events, {params.customers:,} customers, {params.days} days; "
        f"{params.repeat} repeats, A/B alternating; ratio = engine cost / baseline cost",
    ]
    for index, row in enumerate(rows):
        lines.append(
            "  ".join(
                cell.ljust(width) if column == 0 else cell.rjust(width)
                for column, (cell, width) in enumerate(zip(row, widths, strict=True))
            )
        )
        if index == 0:
            lines.append("  ".join("-" * width for width in widths))
    return "\n".join(lines)


@contextmanager
def workdir(requested: Path | None, keep: bool) -> Iterator[Path]:
    if requested is not None:
        if requested.exists() and any(requested.iterdir()):
            raise SystemExit(f"--workdir {requested} is not empty")
        requested.mkdir(parents=True, exist_ok=True)
        yield requested
        return
    path = Path(tempfile.mkdtemp(prefix="bench-core-"))
    try:
        yield path
    finally:
        if keep:
            log(f"kept {path}")
        else:
            shutil.rmtree(path, ignore_errors=True)


def machine(load_at_start: tuple[float, float, float]) -> dict[str, Any]:
    # Load averages say how much the figures are worth: 2 cores shared with other jobs give
    # noisy absolute numbers, while the A/B ratios stay comparable.
    return {
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "duckdb": duckdb.__version__,
        "pyarrow": pa.__version__,
        "load_average_at_start": load_at_start,
        "load_average_at_end": os.getloadavg(),
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--events", type=int, default=10_000_000, help="N, events in the store")
    parser.add_argument("--customers", type=int, default=1_000)
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--batch", type=int, default=1_000_000, help="live ingest batch size")
    parser.add_argument("--backfill-events", type=int, default=100_000)
    parser.add_argument("--out", type=Path, help="write the results as JSON here")
    parser.add_argument("--workdir", type=Path, help="empty folder for the stores (kept)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary stores")
    parser.add_argument(
        "--only", choices=["a", "b1", "b2"], action="append", help="run only these scenarios"
    )
    args = parser.parse_args(argv)
    if args.days < 8:
        parser.error("--days must be at least 8 (the 7-day backfill needs room)")
    started = time.perf_counter()
    load_at_start = os.getloadavg()
    with workdir(args.workdir, args.keep) as folder:
        params = Params(
            events=args.events,
            customers=args.customers,
            days=args.days,
            repeat=args.repeat,
            batch=args.batch,
            backfill_events=args.backfill_events,
            workdir=folder,
        )
        engine_path = folder / "engine"
        baseline = Baseline(folder / "baseline")
        log(f"building the {params.events:,}-event store in {folder}")
        load = build(params, engine_path, baseline)
        only = set(args.only or ["a", "b1", "b2"])
        scenarios: list[Scenario] = []
        if "a" in only:
            scenarios.append(live_ingest(params, engine_path, baseline))
        if "b1" in only:
            scenarios.append(backfill_close(params, engine_path, baseline, scoped=False))
        if "b2" in only:
            scenarios.append(backfill_close(params, engine_path, baseline, scoped=True))
        baseline.close()
        text = report(load, scenarios, params)
        print(text)
        results = {
            "benchmark": "bench_core",
            "params": {
                "events": params.events,
                "customers": params.customers,
                "days": params.days,
                "repeat": params.repeat,
                "batch": params.batch,
                "backfill_events": params.backfill_events,
            },
            "machine": machine(load_at_start),
            "load": load,
            "scenarios": {scenario.name: scenario.to_json() for scenario in scenarios},
            "wall_seconds": time.perf_counter() - started,
        }
    log(f"total {time.perf_counter() - started:.1f} s")
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
