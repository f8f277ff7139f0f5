"""The benchmark suite: this engine against the systems its users would pick instead.

One entry point (``make bench``; see ``BENCHMARKS.md`` for the figures). It generates N events
with the project's generator (``engine.sample``; cached as Parquet under ``bench/out/data``),
loads them into every system, then runs each scenario for every system in the same run,
interleaved (A B C ... A B C ..., the order rotating each repeat) so drift on a shared machine
hits all alike. Peers live in ``bench/peers``; each does the same work as plainly as its users
would (see ``bench/peers/base.py``). Each system runs in a process of its own
(``bench/peers/isolated.py``), which times its calls and reports its peak memory; one killed
by the kernel fails alone. From 50M events, the systems that take a memory cap get a sixth of
the machine's memory each (``--memory-limit-gib``), so that all five fit together.

Scenarios: bulk ingest from Parquet; live ingest in 500-event batches; dedup of a batch with
half duplicates (100k at N >= 1M); close of a 1-day account-wide replace backfill (100k
events), without and with a deprecation filter; close and revert of a 7-day one-customer
backfill; usage of one customer over 30 days (p50, p99); full recompute of the 5 metrics; disk
bytes per event; peak memory of each system's process. All systems must also agree on the usage
they serve: the run compares every system's per-customer totals of the 5 metrics with the
engine's at several checkpoints (and the usage scenario's results), and records any difference
under ``checks``.

    python bench/run.py --scale 1M                    # smoke, a few minutes
    python bench/run.py                               # 10M, the default
    python bench/run.py --scale 100M                  # the full run
    python bench/run.py --scale 20000 --repeat 1      # what the CI smoke test runs
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from importlib.metadata import version
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
for entry in (str(ROOT), str(BENCH)):
    if entry not in sys.path:
        sys.path.insert(0, entry)

from peers.base import (  # noqa: E402
    DAYS,
    METRIC_NAMES,
    START,
    Scope,
    System,
    UsageRow,
    normalized,
)
from peers.isolated import IsolatedSystem, worker_time  # noqa: E402
from peers.systems import ALL_SYSTEMS, make_system  # noqa: E402

from engine.sample import generate_events, sample_customers  # noqa: E402

SCALES = {"1M": 1_000_000, "10M": 10_000_000, "100M": 100_000_000}

SEED_LIVE = 100  # + repeat
SEED_DEDUP_SEEN = 150  # + repeat: the half of the dedup batch ingested beforehand
SEED_DEDUP_FRESH = 170  # + repeat
SEED_BACKFILL = 300  # + 10 * variant + repeat

#: Live events land on the day after the history; "now" is one hour after that day, and the
#: engine accepts live events up to LIVE_GRACE old. Replace backfills must end before
#: now - LIVE_GRACE (Orb's rule), which every backfill below does (they end by day 29).
LIVE_DAY = START + timedelta(days=DAYS)
NOW = LIVE_DAY + timedelta(days=1, hours=1)
LIVE_GRACE = timedelta(hours=36)
#: Every checkpoint compares usage over the history and the live day.
EVERYTHING = (START, LIVE_DAY + timedelta(days=1))


def log(text: str) -> None:
    print(f"[{datetime.now(UTC):%H:%M:%S}] {text}", file=sys.stderr, flush=True)


# -- parameters -----------------------------------------------------------------------------


def parse_scale(text: str) -> int:
    """``1M``, ``10M``, ``100M``, or a number of events (``20000``, ``20k``, ``2.5M``)."""
    if text in SCALES:
        return SCALES[text]
    match = re.fullmatch(r"(\d+(?:\.\d+)?)([kKmM]?)", text.replace("_", ""))
    if not match:
        raise argparse.ArgumentTypeError(f"bad scale {text!r}: use 1M, 10M, 100M or a number")
    factor = {"": 1, "k": 1_000, "m": 1_000_000}[match.group(2).lower()]
    events = int(float(match.group(1)) * factor)
    if events < 1_000:
        raise argparse.ArgumentTypeError("scale must be at least 1000 events")
    return events


@dataclass(frozen=True)
class Params:
    events: int
    customers: int
    repeat: int
    live_batches: int
    usage_calls: int
    seed: int
    workdir: Path
    memory_limit_gib: float | None

    @property
    def backfill_events(self) -> int:
        return min(100_000, max(self.events // 10, 100))

    @property
    def dedup_events(self) -> int:
        return min(100_000, max(self.events // 10, 100))

    @property
    def customer(self) -> str:
        """The customer of the scoped backfill and of the usage queries (10th heaviest)."""
        return sample_customers(self.customers)[min(9, self.customers - 1)]

    def day(self, variant: int, repeat: int) -> datetime:
        """The day of a 1-day backfill: each (variant, repeat) its own, at the start."""
        return START + timedelta(days=2 * repeat + variant)

    def week(self, repeat: int) -> datetime:
        """The first day of the scoped week, after the 1-day backfills' days, ending by day 29."""
        return START + timedelta(days=(2 * self.repeat + 7 * repeat) % (DAYS - 7))


# -- results --------------------------------------------------------------------------------


@dataclass
class Scenario:
    """One scenario's figures: per system, one value per repeat."""

    key: str
    title: str
    unit: str  # "events/s", "s", "ms", "bytes/event"
    values: dict[str, list[float]] = field(default_factory=dict)
    not_available: dict[str, str] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def higher_is_better(self) -> bool:
        return self.unit == "events/s"

    def cost(self, value: float) -> float:
        return 1.0 / value if self.higher_is_better else value

    def ratios(self, system: str) -> list[float]:
        """Per repeat: the peer's cost over the engine's (> 1: the engine is ahead)."""
        ours, theirs = self.values.get("engine", []), self.values.get(system, [])
        return [
            self.cost(t) / self.cost(o)
            for o, t in zip(ours, theirs, strict=False)
            if o > 0 and t > 0
        ]

    def add(self, system: str, value: float) -> None:
        self.values.setdefault(system, []).append(value)

    def to_json(self) -> dict[str, Any]:
        return {
            "title": self.title,
            "unit": self.unit,
            "values": self.values,
            "summary": {name: summary(v) for name, v in self.values.items()},
            "ratio_peer_cost_over_engine": {
                name: summary(self.ratios(name)) for name in self.values if name != "engine"
            },
            "not_available": self.not_available,
            "details": self.details,
        }


def summary(values: Sequence[float]) -> dict[str, float]:
    if not values:
        return {}
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def percentile(values: Sequence[float], fraction: float) -> float:
    ordered = sorted(values)
    rank = fraction * (len(ordered) - 1)
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def timed(action: Callable[[], Any]) -> tuple[float, Any]:
    """Seconds ``action`` took, and its result. When it called systems in their worker
    processes, the seconds are those the workers measured: the pipe is no system's cost."""
    calls, worker_seconds = worker_time()
    started = time.perf_counter()
    result = action()
    elapsed = time.perf_counter() - started
    calls_after, worker_seconds_after = worker_time()
    if calls_after > calls:
        elapsed = worker_seconds_after - worker_seconds
    return elapsed, result


# -- data -----------------------------------------------------------------------------------


def history_file(params: Params) -> Path:
    """The generated history as Parquet, cached by size, customers and seed."""
    folder = BENCH / "out" / "data"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"events-{params.events}-c{params.customers}-seed{params.seed}.parquet"
    if path.exists():
        return path
    partial = path.with_suffix(".partial")
    log(f"generating {params.events:,} events into {path}")
    writer: pq.ParquetWriter | None = None
    try:
        for batch in generate_events(
            events=params.events,
            customers=params.customers,
            days=DAYS,
            seed=params.seed,
            start=START,
            batch_size=1_000_000,
        ):
            if writer is None:
                writer = pq.ParquetWriter(partial, batch.schema, compression="zstd")
            writer.write_table(batch)
    finally:
        if writer is not None:
            writer.close()
    partial.rename(path)
    return path


def events_of(count: int, params: Params, *, days: int, seed: int, start: datetime) -> pa.Table:
    return pa.concat_tables(
        generate_events(
            events=count,
            customers=params.customers,
            days=days,
            seed=seed,
            start=start,
            batch_size=max(count, 1),
        )
    )


def for_customer(table: pa.Table, customer: str) -> pa.Table:
    index = table.schema.get_field_index("external_customer_id")
    return table.set_column(
        index, "external_customer_id", pa.array([customer] * table.num_rows, pa.string())
    )


def history_count(parquet: Path, where: str) -> int:
    row = duckdb.sql(f"SELECT count(*) FROM read_parquet('{parquet}') WHERE {where}").fetchone()
    return int(row[0]) if row else 0


# -- systems --------------------------------------------------------------------------------


def memory_limit_for(events: int) -> float | None:
    """The default cap, in GiB, of each system that takes one: none below 50M events; from
    there a sixth of the machine's memory, so that five systems, each in its own process, fit
    together with the runner (at 100M, one process holding every system uncapped was killed
    at 24 GB)."""
    if events < 50_000_000:
        return None
    total = machine()["memory_bytes"]
    return max(1.0, round(total / 6 / 2**30, 1)) if total else None


class Run:
    def __init__(self, params: Params, names: list[str]) -> None:
        self.params = params
        self.names = names
        self.systems: dict[str, IsolatedSystem] = {}
        self.scenarios: dict[str, Scenario] = {}
        self.checks: dict[str, dict[str, Any]] = {}
        self.failures: dict[str, str] = {}  # system -> first error, after which it is skipped
        self.loads: list[tuple[str, float]] = []

    # -- bookkeeping --------------------------------------------------------------------------

    def scenario(self, key: str, title: str, unit: str) -> Scenario:
        if key not in self.scenarios:
            self.scenarios[key] = Scenario(key, title, unit)
        return self.scenarios[key]

    def order(self, repeat: int) -> list[str]:
        """Systems still running, the order rotated each repeat."""
        alive = [n for n in self.names if n in self.systems and n not in self.failures]
        shift = repeat % len(alive) if alive else 0
        return alive[shift:] + alive[:shift]

    def attempt(self, name: str, what: str, action: Callable[[], Any]) -> Any:
        """Run ``action``; on error, record it and drop the system from the rest of the run."""
        try:
            return action()
        except Exception as error:
            message = str(error).strip().splitlines()[0][:160] if str(error).strip() else ""
            kind = getattr(error, "kind", type(error).__name__)
            detail = f"{what}: {kind}: {message}"
            self.failures.setdefault(name, detail)
            log(f"  !! {name} failed in {detail}\n{traceback.format_exc()}")
            return None

    def sample_load(self, label: str) -> None:
        self.loads.append((label, os.getloadavg()[0]))

    # -- checks -------------------------------------------------------------------------------

    def compare(self, checkpoint: str, results: dict[str, list[UsageRow]]) -> None:
        """Every system's rows against the engine's (or the first system's)."""
        reference = "engine" if "engine" in results else next(iter(results), None)
        if reference is None:
            return
        expected = normalized(results[reference])
        entry: dict[str, Any] = {"reference": reference, "rows": len(expected), "agree": {}}
        for name, rows in results.items():
            got = normalized(rows)
            same = got == expected
            entry["agree"][name] = same
            if not same:
                missing = [r for r in expected if r not in got]
                extra = [r for r in got if r not in expected]
                entry.setdefault("differences", {})[name] = {
                    "rows": len(got),
                    "missing": [str(r) for r in missing[:5]],
                    "unexpected": [str(r) for r in extra[:5]],
                }
                log(f"  !! {checkpoint}: {name} differs from {reference}: {len(missing)} missing")
        self.checks[checkpoint] = entry

    def totals(self, checkpoint: str) -> None:
        """Per customer (and group) totals of every metric over everything, in every system."""
        log(f"check {checkpoint}")
        results: dict[str, list[UsageRow]] = {}
        for name in self.order(0):
            system = self.systems[name]

            def everything(system: System = system) -> list[UsageRow]:
                rows: list[UsageRow] = []
                for metric in METRIC_NAMES:
                    rows += [
                        (f"{metric}/{customer}", bucket, group, value)
                        for customer, bucket, group, value in system.usage(
                            metric,
                            start=EVERYTHING[0],
                            end=EVERYTHING[1],
                            customer=None,
                            by_day=False,
                        )
                    ]
                return rows

            rows = self.attempt(name, f"check {checkpoint}", everything)
            if rows is not None:
                results[name] = rows
        self.compare(checkpoint, results)

    # -- scenarios ----------------------------------------------------------------------------

    def build(self, parquet: Path) -> None:
        events = history_count(parquet, "TRUE")
        bulk = self.scenario("bulk_ingest", "bulk ingest from Parquet (once)", "events/s")
        build = self.scenario(
            "materialize", "create the 5 metrics over the loaded history (once)", "s"
        )
        disk = self.scenario("disk", "disk bytes per event (after the load)", "bytes/event")
        for name in self.names:
            log(f"build {name}")
            system = self.attempt(
                name,
                "start",
                lambda name=name: IsolatedSystem(
                    name,
                    make_system,
                    name,
                    self.params.workdir,
                    NOW,
                    LIVE_GRACE,
                    self.params.memory_limit_gib,
                ),
            )
            if system is None:
                continue
            self.systems[name] = system
            loaded = self.attempt(
                name, "bulk ingest", lambda s=system: timed(lambda: s.bulk_load(parquet))
            )
            if loaded is None:
                continue
            seconds, count = loaded
            if count != events:
                self.failures[name] = f"bulk ingest loaded {count} of {events} events"
                continue
            bulk.add(name, events / seconds)
            made = self.attempt(name, "materialize", lambda s=system: timed(s.materialize))
            if made is None:
                continue
            build.add(name, made[0])
            stored = self.attempt(name, "disk", system.disk_bytes)
            if stored is None:
                continue
            disk.add(name, stored / events)
            log(
                f"  {name}: {events / seconds:,.0f} events/s, metrics {made[0]:.2f} s, "
                f"{stored / events:.1f} bytes/event"
            )
        self.sample_load("build")
        self.totals("after bulk ingest")

    def live_ingest(self) -> None:
        scenario = self.scenario("live_ingest", "live ingest, 500-event batches", "events/s")
        latencies: dict[str, list[float]] = {}
        for repeat in range(self.params.repeat):
            table = events_of(
                500 * self.params.live_batches,
                self.params,
                days=1,
                seed=SEED_LIVE + repeat,
                start=LIVE_DAY,
            )
            batches = [table.slice(i, 500) for i in range(0, table.num_rows, 500)]
            for name in self.order(repeat):
                system = self.systems[name]

                def run(system: System = system, batches: list[pa.Table] = batches) -> list[float]:
                    seconds = []
                    for batch in batches:
                        took, fresh = timed(lambda b=batch: system.ingest_live(b))
                        if fresh != batch.num_rows:
                            raise AssertionError(f"{fresh} of {batch.num_rows} events new")
                        seconds.append(took)
                    return seconds

                seconds = self.attempt(name, "live ingest", run)
                if seconds is None:
                    continue
                scenario.add(name, table.num_rows / sum(seconds))
                latencies.setdefault(name, []).extend(seconds)
                log(f"  live #{repeat + 1} {name}: {table.num_rows / sum(seconds):,.0f} events/s")
        scenario.details["batches_per_repeat"] = self.params.live_batches
        scenario.details["batch_seconds"] = {
            name: {"p50": percentile(v, 0.5), "p99": percentile(v, 0.99)}
            for name, v in latencies.items()
        }
        self.sample_load("live ingest")

    def dedup(self) -> None:
        half = self.params.dedup_events // 2
        scenario = self.scenario(
            "dedup", f"dedup: live batch of {2 * half:,} events, half seen before", "s"
        )
        for repeat in range(self.params.repeat):
            seen = events_of(
                half, self.params, days=1, seed=SEED_DEDUP_SEEN + repeat, start=LIVE_DAY
            )
            fresh = events_of(
                half, self.params, days=1, seed=SEED_DEDUP_FRESH + repeat, start=LIVE_DAY
            )
            # Interleaved by time, as a retrying client would resend them.
            batch = pa.concat_tables([seen, fresh]).sort_by("timestamp")
            for name in self.order(repeat):
                system = self.systems[name]
                setup = self.attempt(name, "dedup setup", lambda s=system, t=seen: s.ingest_live(t))
                if setup is None:
                    continue
                result = self.attempt(
                    name, "dedup", lambda s=system, b=batch: timed(lambda: s.ingest_live(b))
                )
                if result is None:
                    continue
                seconds, new = result
                if new != half:
                    self.failures[name] = f"dedup: {new} events new instead of {half}"
                    continue
                scenario.add(name, seconds)
                log(f"  dedup #{repeat + 1} {name}: {seconds:.3f} s")
        self.sample_load("dedup")
        self.totals("after live ingest and dedup")

    def account_wide(self) -> None:
        count = self.params.backfill_events
        titles = {
            False: f"close 1-day account-wide replace backfill ({count:,} events)",
            True: f"close 1-day account-wide replace backfill ({count:,} events), "
            "deprecation filter `model = 'gpt-4o'`",
        }
        for variant, filtered in enumerate((False, True)):
            key = "close_1day_filter" if filtered else "close_1day"
            scenario = self.scenario(key, titles[filtered], "s")
            staging = self.scenario(f"stage_{key}", f"(staging the events of: {key})", "s")
            for repeat in range(self.params.repeat):
                day = self.params.day(variant, repeat)
                scope = Scope(day, day + timedelta(days=1), None, filtered)
                new = events_of(
                    count,
                    self.params,
                    days=1,
                    seed=SEED_BACKFILL + 10 * variant + repeat,
                    start=day,
                )
                for name in self.order(repeat):
                    self._close(name, scope, new, scenario, staging, f"{key} #{repeat + 1}")
        self.sample_load("1-day closes")
        self.totals("after the 1-day closes")

    def _close(
        self,
        name: str,
        scope: Scope,
        new: pa.Table,
        scenario: Scenario,
        staging: Scenario,
        label: str,
    ) -> str | None:
        system = self.systems[name]
        staged = self.attempt(
            name, f"stage {label}", lambda: timed(lambda: system.stage_backfill(scope, new))
        )
        if staged is None:
            return None
        stage_seconds, backfill_id = staged
        closed = self.attempt(
            name, f"close {label}", lambda: timed(lambda: system.close_backfill(backfill_id))
        )
        if closed is None:
            return None
        scenario.add(name, closed[0])
        staging.add(name, stage_seconds)
        log(f"  {label} {name}: close {closed[0]:.3f} s (staging {stage_seconds:.3f} s)")
        return str(backfill_id)

    def one_customer(self, parquet: Path) -> None:
        customer = self.params.customer
        close = self.scenario(
            "close_7day_customer", "close 7-day one-customer replace backfill", "s"
        )
        revert = self.scenario("revert_7day_customer", "revert that backfill", "s")
        staging = self.scenario("stage_close_7day_customer", "(staging its events)", "s")
        sizes = []
        for repeat in range(self.params.repeat):
            start = self.params.week(repeat)
            scope = Scope(start, start + timedelta(days=7), customer, False)
            # Re-send as many events as the customer has that week (the history is untouched
            # on those days by the earlier scenarios).
            count = history_count(
                parquet,
                f"external_customer_id = '{customer}' AND \"timestamp\" >= '{start:%Y-%m-%d}' "
                f"AND \"timestamp\" < '{start + timedelta(days=7):%Y-%m-%d}'",
            )
            new = for_customer(
                events_of(
                    max(count, 1),
                    self.params,
                    days=7,
                    seed=SEED_BACKFILL + 50 + repeat,
                    start=start,
                ),
                customer,
            )
            sizes.append(new.num_rows)
            closed: dict[str, str] = {}
            for name in self.order(repeat):
                backfill_id = self._close(name, scope, new, close, staging, f"7-day #{repeat + 1}")
                if backfill_id is not None:
                    closed[name] = backfill_id
            if repeat == 0:
                self.totals("7-day backfill closed")
            for name in self.order(repeat):
                if name not in closed:
                    continue
                system = self.systems[name]
                done = self.attempt(
                    name,
                    "revert",
                    lambda s=system, b=closed[name]: timed(lambda: s.revert_backfill(b)),
                )
                if done is not None:
                    revert.add(name, done[0])
                    log(f"  revert #{repeat + 1} {name}: {done[0]:.3f} s")
        close.details = {"customer": customer, "events": sizes, "days": 7}
        self.sample_load("7-day close and revert")
        self.totals("after the 7-day reverts")

    def usage(self) -> None:
        p50 = self.scenario("usage_p50", "usage of one customer over 30 days by day, p50", "ms")
        p99 = self.scenario("usage_p99", "usage of one customer over 30 days by day, p99", "ms")
        customer = self.params.customer
        end = START + timedelta(days=DAYS)
        answers: dict[str, list[UsageRow]] = {}
        for repeat in range(self.params.repeat):
            for name in self.order(repeat):
                system = self.systems[name]

                def calls(
                    system: System = system, name: str = name, repeat: int = repeat
                ) -> list[float]:
                    seconds = []
                    for index in range(self.params.usage_calls + len(METRIC_NAMES)):
                        metric = METRIC_NAMES[index % len(METRIC_NAMES)]
                        took, rows = timed(
                            lambda m=metric: system.usage(
                                m, start=START, end=end, customer=customer, by_day=True
                            )
                        )
                        # The first call of each metric warms caches: not counted.
                        if index >= len(METRIC_NAMES):
                            seconds.append(took)
                        elif repeat == 0:
                            answers.setdefault(name, []).extend(
                                (f"{metric}/{c}", b, g, v) for c, b, g, v in rows
                            )
                    return seconds

                seconds = self.attempt(name, "usage", calls)
                if seconds is None:
                    continue
                p50.add(name, 1e3 * percentile(seconds, 0.5))
                p99.add(name, 1e3 * percentile(seconds, 0.99))
                log(f"  usage #{repeat + 1} {name}: p50 {p50.values[name][-1]:.2f} ms")
        p50.details = {"customer": customer, "calls_per_repeat": self.params.usage_calls}
        self.compare("usage of one customer by day", answers)
        self.sample_load("usage")

    def recompute(self) -> None:
        scenario = self.scenario("recompute", "full recompute of the 5 metrics", "s")
        for repeat in range(self.params.repeat):
            for name in self.order(repeat):
                system = self.systems[name]
                done = self.attempt(name, "recompute", lambda s=system: timed(s.recompute))
                if done is not None:
                    scenario.add(name, done[0])
                    log(f"  recompute #{repeat + 1} {name}: {done[0]:.2f} s")
        self.sample_load("recompute")
        self.totals("after recompute")

    def memory(self) -> None:
        """Each system's peak resident memory over the run so far."""
        scenario = self.scenario(
            "memory", "peak resident memory of the system's process over the run", "GiB"
        )
        for name in self.order(0):
            if name == "postgres":
                scenario.not_available[name] = "the server runs in processes of its own"
                continue
            peak = self.attempt(name, "memory", self.systems[name].peak_memory_bytes)
            if peak is not None:
                scenario.add(name, peak / 2**30)

    def close(self) -> None:
        for name, system in self.systems.items():
            if name not in self.failures:
                self.attempt(name, "shutdown", system.close)
                continue
            try:
                system.close()
            except Exception as error:  # its first failure is the one recorded
                log(f"  {name}: shutdown: {type(error).__name__}: {error}")


# -- report ---------------------------------------------------------------------------------

ORDER = (
    "bulk_ingest",
    "live_ingest",
    "dedup",
    "close_1day",
    "close_1day_filter",
    "close_7day_customer",
    "revert_7day_customer",
    "usage_p50",
    "usage_p99",
    "recompute",
    "disk",
    "memory",
    "materialize",
    "stage_close_1day",
    "stage_close_1day_filter",
    "stage_close_7day_customer",
)


def figure(value: float, unit: str) -> str:
    if unit == "events/s":
        return f"{value:,.0f}"
    if unit == "bytes/event":
        return f"{value:.1f}"
    if unit == "GiB":
        return f"{value:.2f}"
    if unit == "ms":
        return f"{value:.2f}"
    return f"{value:.3f}" if value < 10 else f"{value:.1f}"


def cell(values: Sequence[float], unit: str) -> str:
    s = summary(values)
    if not s:
        return "-"
    if len(values) == 1:
        return figure(s["median"], unit)
    return f"{figure(s['median'], unit)} [{figure(s['min'], unit)}-{figure(s['max'], unit)}]"


def markdown(result: dict[str, Any]) -> str:
    names: list[str] = result["systems"]
    peers = [n for n in names if n != "engine"]
    header = ["scenario", "unit", "engine"] + [f"{p} (ratio)" for p in peers]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for key in ORDER:
        data = result["scenarios"].get(key)
        if data is None:
            continue
        unit = data["unit"]
        row = [data["title"], unit, cell(data["values"].get("engine", []), unit)]
        for peer in peers:
            if peer in data["not_available"]:
                row.append(f"n/a: {data['not_available'][peer]}")
                continue
            if peer in result["failures"] and not data["values"].get(peer):
                row.append(f"failed: {result['failures'][peer]}")
                continue
            ratio = data["ratio_peer_cost_over_engine"].get(peer) or {}
            text = cell(data["values"].get(peer, []), unit)
            if ratio:
                mark = "**" if ratio["median"] < 1 else ""
                text += f" ({mark}{ratio['median']:.2f}x{mark})"
            row.append(text)
        lines.append("| " + " | ".join(row) + " |")
    lines.append("")
    lines.append(
        "Median [min-max] over the repeats. Ratio = the peer's cost / the engine's cost "
        "(time, bytes, or 1/throughput), median of the per-repeat ratios: above 1 the engine is "
        "ahead, **bold below 1** where the peer beats the engine."
    )
    agree = {
        checkpoint: all(entry["agree"].values()) for checkpoint, entry in result["checks"].items()
    }
    lines.append("")
    reference = next(iter(result["checks"].values()), {}).get("reference", "the engine")
    lines.append(
        f"Usage agreement with {reference}: "
        + ", ".join(f"{c}: {'yes' if ok else 'NO'}" for c, ok in agree.items())
    )
    return "\n".join(lines) + "\n"


def git_commit() -> dict[str, Any]:
    def git(*args: str) -> str:
        try:
            return subprocess.run(
                ["git", *args], cwd=ROOT, capture_output=True, text=True, check=True
            ).stdout.strip()
        except (OSError, subprocess.CalledProcessError):
            return ""

    return {
        "commit": git("rev-parse", "HEAD"),
        "engine_uncommitted_changes": bool(git("status", "--porcelain", "engine")),
    }


def machine() -> dict[str, Any]:
    memory = 0
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                memory = int(line.split()[1]) * 1024
    except OSError:
        pass
    return {
        "nproc": os.cpu_count(),
        "memory_bytes": memory,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "packages": {
            name: version(name) for name in ("duckdb", "polars", "pyarrow", "chdb", "psycopg")
        },
    }


# -- main -----------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--scale",
        type=parse_scale,
        default=SCALES["10M"],
        help="1M (smoke), 10M (default), 100M (full) or a number of events",
    )
    parser.add_argument(
        "--systems",
        default=",".join(ALL_SYSTEMS),
        help=f"comma-separated, from {','.join(ALL_SYSTEMS)} (default: all)",
    )
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="JSON path (default bench/out/run-<scale>.json); a .md goes beside it",
    )
    parser.add_argument("--customers", type=int, default=1000)
    parser.add_argument(
        "--live-batches", type=int, default=20, help="500-event live batches per repeat"
    )
    parser.add_argument("--usage-calls", type=int, default=100, help="usage calls per repeat")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--workdir", type=Path, default=None, help="kept after the run")
    parser.add_argument(
        "--memory-limit-gib",
        type=float,
        default=None,
        help="cap of each system that takes one (engine, DuckDB script, ClickHouse), in GiB; "
        "default none below 50M events, else a sixth of the machine's memory; 0 for none",
    )
    args = parser.parse_args(argv)
    names = [n.strip() for n in args.systems.split(",") if n.strip()]
    unknown = sorted(set(names) - set(ALL_SYSTEMS))
    if unknown:
        parser.error(f"unknown systems {unknown}; choose from {', '.join(ALL_SYSTEMS)}")
    if args.repeat < 1 or 2 * args.repeat + 1 > DAYS - 7:
        parser.error("--repeat must be between 1 and 10")
    out: Path = args.out or BENCH / "out" / f"run-{args.scale}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="bench-run-"))
    workdir.mkdir(parents=True, exist_ok=True)
    memory_limit_gib = (
        memory_limit_for(args.scale) if args.memory_limit_gib is None else args.memory_limit_gib
    )
    params = Params(
        events=args.scale,
        customers=args.customers,
        repeat=args.repeat,
        live_batches=args.live_batches,
        usage_calls=args.usage_calls,
        seed=args.seed,
        workdir=workdir,
        memory_limit_gib=memory_limit_gib or None,
    )
    started = time.perf_counter()
    started_at = datetime.now(UTC)
    load_start = os.getloadavg()
    parquet = history_file(params)
    run = Run(params, names)
    run.sample_load("start")
    commit_at_start = git_commit()
    versions: dict[str, Any] = {}

    def write(complete: bool) -> dict[str, Any]:
        """The JSON and Markdown so far: written after every phase, so a long run that is
        stopped early still leaves its figures."""
        result: dict[str, Any] = {
            "command": " ".join([Path(sys.executable).name, *sys.argv]),
            "complete": complete,
            "started": started_at.isoformat(),
            "seconds": time.perf_counter() - started,
            "params": {
                "events": params.events,
                "customers": params.customers,
                "days": DAYS,
                "repeat": params.repeat,
                "live_batches": params.live_batches,
                "usage_calls": params.usage_calls,
                "backfill_events": params.backfill_events,
                "dedup_events": params.dedup_events,
                "seed": params.seed,
                "history": str(parquet),
                "memory_limit_gib": params.memory_limit_gib,
            },
            "systems": names,
            "versions": versions,
            # The engine may change under a long run: its commit at both ends.
            "git": {"start": commit_at_start, "end": git_commit()},
            "machine": {
                **machine(),
                "load_average_start": load_start,
                "load_average_end": os.getloadavg(),
                "load_average_1min_during": run.loads,
            },
            "scenarios": {key: s.to_json() for key, s in run.scenarios.items()},
            "checks": run.checks,
            "failures": run.failures,
        }
        out.write_text(json.dumps(result, indent=1, default=str))
        out.with_suffix(".md").write_text(markdown(result))
        return result

    phases: list[Callable[[], None]] = [
        lambda: run.build(parquet),
        run.live_ingest,
        run.dedup,
        run.account_wide,
        lambda: run.one_customer(parquet),
        run.usage,
        run.recompute,
        run.memory,
    ]
    try:
        for index, phase in enumerate(phases):
            phase()
            if index == 0:
                for name in run.order(0):
                    versions[name] = run.attempt(name, "version", run.systems[name].version)
            write(complete=False)
    finally:
        run.close()
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)
    result = write(complete=True)
    print(markdown(result))
    log(f"done in {result['seconds']:.0f} s: {out} and {out.with_suffix('.md')}")
    disagree = [c for c, e in run.checks.items() if not all(e["agree"].values())]
    return 1 if run.failures or disagree else 0


if __name__ == "__main__":
    sys.exit(main())
