"""A bounded soak on loopback: the HTTP server ingesting under load while another process closes
and reverts backfills and a third reads usage; then every acknowledged write is looked for and
every read is compared with a model of what it must have seen.

Processes and threads (see ``tests/procs/soak_common.py`` for how the store is split):

- ``soak_server.py``: the HTTP API (group commit, default rate limit, background closer every
  second) over the store, in its own process;
- ``LOAD_CLIENTS`` threads here, each an official ``orb`` SDK client ingesting batches of 1 to
  200 live events, re-sending old batches (all duplicates) and sending batches with one invalid
  event (refused whole);
- a contender thread here, creating account-wide add-only backfills over the region through
  the SDK: it and the backfiller refuse each other with 409 and retry;
- an HTTP reader thread here (``GET /v1/usage``);
- ``soak_backfiller.py``: backfill create / stage / close / revert via ``engine.open``;
- ``soak_reader.py``: usage, effective events and ``as_of`` reads, checked per snapshot.

``ENGINE_SOAK_SECONDS`` (default 90) sets how long the load runs; ``ENGINE_SOAK_REPORT`` names a
file for the JSON report (always printed, and kept as ``report.json`` in the test's tmp dir,
beside every process's log); ``ENGINE_SOAK_TRACE`` names a file where the server logs each of
its transactions with the catalog's snapshot id after it (diagnostics; it adds catalog reads).
"""

from __future__ import annotations

import json
import os
import queue
import random
import signal
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import IO, Any

import httpx
import orb
import pytest
from procs.common import proc_command, subprocess_env
from procs.soak_common import (
    API_KEY,
    CONTENDER_CUSTOMER,
    LIVE_CUSTOMERS,
    METRICS,
    MODELS,
    Cells,
    add_to_cell,
    distinct_states,
    iso,
    load_backfills,
    read_jsonl,
    region_end_for,
    region_start_for,
    region_state,
)

import engine

pytestmark = pytest.mark.slow

SOAK_SECONDS = float(os.environ.get("ENGINE_SOAK_SECONDS", "90"))
LOAD_CLIENTS = 4
MAX_BATCH = 200
#: Seconds a child may take beyond the soak to finish its last step and report.
GRACE_SECONDS = 180.0


class SoakChild:
    """A ``tests/procs`` script speaking lines on stdout; stderr goes to a file (a full pipe
    would block the child)."""

    def __init__(self, script: str, stderr_path: Path, *args: str) -> None:
        self.stderr_path = stderr_path
        self._stderr: IO[str] = stderr_path.open("w")
        self.process = subprocess.Popen(
            proc_command(script, *args),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            text=True,
            # A crash of a child (SIGBUS, SIGSEGV) then leaves its Python stack in stderr.
            env={**subprocess_env(), "PYTHONFAULTHANDLER": "1"},
        )
        self.lines: queue.Queue[str | None] = queue.Queue()
        self._pump = threading.Thread(target=self._read_stdout, daemon=True)
        self._pump.start()

    def _read_stdout(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.put(line.rstrip("\n"))
        self.lines.put(None)

    def expect(self, prefix: str, timeout: float) -> str:
        """The first line starting with ``prefix``; fails if the child ends first."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self.lines.get(timeout=max(0.1, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(f"no {prefix!r} within {timeout} s: {self.errors()}") from None
            if line is None:
                self.process.wait()
                raise AssertionError(
                    f"child exited ({self.process.returncode}) before {prefix!r}: {self.errors()}"
                )
            if line.startswith(prefix):
                return line[len(prefix) :].strip()

    def send(self, line: str) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(line + "\n")
        self.process.stdin.flush()

    def errors(self) -> str:
        self._stderr.flush()
        return self.stderr_path.read_text()[-4000:]

    def wait(self, timeout: float) -> int:
        code = self.process.wait(timeout=timeout)
        self._pump.join(timeout=10)
        return code

    def stop(self) -> None:
        """Kill it if still running (after a failure) and release its pipes."""
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        for stream in (self.process.stdin, self.process.stdout):
            if stream is not None:
                stream.close()
        self._stderr.close()


@dataclass
class HttpStats:
    """What the HTTP threads saw, merged under one lock."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    statuses: Counter[int] = field(default_factory=Counter)
    counters: Counter[str] = field(default_factory=Counter)
    acknowledged: set[str] = field(default_factory=set)
    rejected: set[str] = field(default_factory=set)
    unknown: set[str] = field(default_factory=set)
    latencies_ms: list[float] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    #: One line per ingest request: kind, first and last key, size, outcome, start, end.
    requests: list[dict[str, Any]] = field(default_factory=list)
    #: contender backfill id -> (expected final status, events staged)
    contender_backfills: dict[str, tuple[str, int]] = field(default_factory=dict)

    def count_response(self, response: httpx.Response) -> None:
        with self.lock:
            self.statuses[response.status_code] += 1

    def problem(self, text: str) -> None:
        with self.lock:
            self.counters["problems"] += 1
            if len(self.problems) < 20:
                self.problems.append(text)


def sdk_client(base_url: str, stats: HttpStats) -> orb.Orb:
    """The official SDK, with retries (429s and connection errors; it keeps the request's
    Idempotency-Key across them), counting every response including those it retried."""
    hooks: dict[str, list[Any]] = {"response": [stats.count_response]}
    return orb.Orb(
        api_key=API_KEY,
        base_url=f"{base_url}/v1",
        max_retries=8,
        timeout=180,
        http_client=httpx.Client(event_hooks=hooks, timeout=180),
    )


def live_event(key: str, rng: random.Random) -> dict[str, Any]:
    moment = datetime.now(UTC) - timedelta(seconds=rng.uniform(0, 3600))
    return {
        "idempotency_key": key,
        "event_name": "api_call",
        "timestamp": iso(moment),
        "external_customer_id": rng.choice(LIVE_CUSTOMERS),
        "properties": {"tokens": rng.randint(1, 100), "model": rng.choice(MODELS)},
    }


def load_client(index: int, base_url: str, deadline: float, stats: HttpStats, seed: int) -> None:
    """Ingest until the deadline: fresh batches (must all be ingested), re-sent batches (must
    all be duplicates) and batches with one stale event (must be refused whole, 400)."""
    rng = random.Random(seed)
    sent: list[list[dict[str, Any]]] = []
    serial = 0
    with sdk_client(base_url, stats) as client:
        while time.monotonic() < deadline:
            roll = rng.random()
            kind = "resend" if roll < 0.08 and sent else "invalid" if roll < 0.12 else "fresh"
            if kind == "resend":
                batch = rng.choice(sent)
            else:
                batch = []
                for _ in range(rng.randint(1, MAX_BATCH)):
                    serial += 1
                    batch.append(live_event(f"live-{index}-{serial}", rng))
                if kind == "invalid":
                    # Two days old: outside the 12 h grace period, so the whole batch is refused.
                    stale = batch[rng.randrange(len(batch))]
                    stale["timestamp"] = iso(datetime.now(UTC) - timedelta(days=2))
            keys = {event["idempotency_key"] for event in batch}
            entry = {
                "client": index,
                "kind": kind,
                "first": batch[0]["idempotency_key"],
                "last": batch[-1]["idempotency_key"],
                "size": len(batch),
                "start": time.time(),
            }
            with stats.lock:
                stats.requests.append(entry)
            started = time.perf_counter()
            try:
                response = client.events.ingest(events=batch, extra_query={"debug": "true"})
            except orb.RequestValidationError:
                entry.update(outcome="400", end=time.time())
                with stats.lock:
                    stats.counters["requests"] += 1
                    stats.latencies_ms.append((time.perf_counter() - started) * 1000)
                if kind != "invalid":
                    stats.problem(f"a {kind} batch was refused")
                    stats.unknown |= keys
                with stats.lock:
                    stats.counters["invalid_batches_refused"] += 1
                    stats.rejected |= keys
                continue
            except (orb.APIConnectionError, orb.APIStatusError) as error:
                # Outcome unknown: the keys may or may not be stored; the test fails on any.
                entry.update(outcome=type(error).__name__, end=time.time())
                stats.problem(f"{kind} batch: {type(error).__name__}: {error}")
                with stats.lock:
                    stats.unknown |= keys
                continue
            elapsed_ms = (time.perf_counter() - started) * 1000
            entry.update(outcome="200", end=time.time())
            body = response.to_dict()
            ingested = set(body.get("debug", {}).get("ingested", []))
            duplicate = set(body.get("debug", {}).get("duplicate", []))
            with stats.lock:
                stats.counters["requests"] += 1
                stats.latencies_ms.append(elapsed_ms)
                if body.get("validation_failed"):
                    stats.problem(f"validation_failed in a 200: {body['validation_failed']}")
                if ingested | duplicate != keys or ingested & duplicate:
                    stats.problem(f"{kind} batch: answer does not cover the keys sent: {body}")
                if kind == "invalid":
                    stats.problem("a batch with a stale event was accepted")
                if kind == "fresh":
                    stats.counters["fresh_batches"] += 1
                    stats.counters["unexpected_duplicates"] += len(duplicate)
                    sent.append(batch)
                if kind == "resend":
                    stats.counters["resent_batches"] += 1
                    stats.counters["resent_keys_ingested_again"] += len(ingested)
                stats.acknowledged |= ingested | duplicate


def contender(
    base_url: str, region: tuple[datetime, datetime], deadline: float, stats: HttpStats, seed: int
) -> None:
    """Account-wide add-only backfills over the backfiller's region, through the SDK: 409
    while the backfiller has one open (counted, retried), else stage, then close or revert."""
    rng = random.Random(seed)
    start, end = region
    serial = 0
    with sdk_client(base_url, stats) as client:
        while time.monotonic() < deadline:
            try:
                backfill = client.events.backfills.create(
                    timeframe_start=iso(start),
                    timeframe_end=iso(end),
                    replace_existing_events=False,
                )
            except orb.ResourceConflict:
                with stats.lock:
                    stats.counters["contender_create_conflicts_409"] += 1
                time.sleep(rng.uniform(0.1, 0.4))
                continue
            except orb.APIError as error:
                stats.problem(f"contender create: {type(error).__name__}: {error}")
                return
            events = []
            for _ in range(rng.randint(1, 3)):
                serial += 1
                moment = start + timedelta(
                    seconds=rng.randrange(int((end - start).total_seconds()))
                )
                events.append(
                    {
                        "idempotency_key": f"contender-{serial}",
                        "event_name": "contender_call",
                        "timestamp": iso(moment),
                        "external_customer_id": CONTENDER_CUSTOMER,
                        "properties": {"tokens": 1, "model": "a"},
                    }
                )
            close = rng.random() < 0.5
            try:
                client.events.ingest(events=events, backfill_id=backfill.id)
                if close:
                    client.events.backfills.close(backfill.id)
                else:
                    client.events.backfills.revert(backfill.id)
            except orb.APIError as error:  # nothing here may fail: our own backfill
                stats.problem(f"contender {backfill.id}: {type(error).__name__}: {error}")
                return
            outcome = "reflected" if close else "reverted"
            with stats.lock:
                stats.contender_backfills[backfill.id] = (outcome, len(events))
                stats.counters[f"contender_{outcome}"] += 1
            time.sleep(rng.uniform(0.5, 2.0))


def http_reader(base_url: str, metric_id: str, deadline: float, stats: HttpStats) -> None:
    """Usage of the live window over HTTP, as a dashboard would poll it."""
    start = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) - timedelta(hours=2)
    params = {
        "metric_id": metric_id,
        "timeframe_start": iso(start),
        "timeframe_end": iso(start + timedelta(hours=4)),
        "granularity": "none",
    }
    with httpx.Client(
        base_url=f"{base_url}/v1",
        headers={"Authorization": f"Bearer {API_KEY}"},
        timeout=180,
        event_hooks={"response": [stats.count_response]},
    ) as client:
        while time.monotonic() < deadline:
            try:
                response = client.get("/usage", params=params)
            except httpx.HTTPError as error:
                stats.problem(f"GET /usage: {type(error).__name__}: {error}")
                return
            with stats.lock:
                stats.counters["http_usage_reads"] += 1
            if response.status_code not in (200, 429):
                stats.problem(f"GET /usage: {response.status_code} {response.text[:300]}")
            time.sleep(0.3)


def floor_hour(moment: datetime) -> datetime:
    return moment.replace(minute=0, second=0, microsecond=0)


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


@pytest.fixture
def children() -> Iterator[list[SoakChild]]:
    started: list[SoakChild] = []
    yield started
    for child in started:
        child.stop()


def region_cells(store: engine.Store, region: tuple[datetime, datetime]) -> Cells:
    """The region's effective usage cells now, from the test's own connection."""
    cells: Cells = {}
    frame = store.events.effective(timeframe_start=region[0], timeframe_end=region[1])
    for customer, timestamp, properties in frame.select(
        "external_customer_id", "timestamp", "properties"
    ).rows():
        if customer and customer.startswith("bf-"):
            add_to_cell(cells, customer, timestamp, properties["tokens"], properties["model"])
    return cells


def metric_cells(cells: Cells, position: int) -> dict[str, int]:
    """One metric's non-zero cells out of ``[count, tokens, tokens of model a]`` cells (usage
    has no row where a metric's value is zero or absent)."""
    return {key: values[position] for key, values in cells.items() if values[position]}


def expected_statuses(log: Path) -> dict[str, str]:
    """The final status of each backfill of the backfiller, from its log."""
    statuses: dict[str, str] = {}
    for record in read_jsonl(log):
        if record["op"] == "create":
            statuses[record["id"]] = "pending"
        elif record["op"] == "close":
            statuses[record["id"]] = "reflected"
        elif record["op"] == "revert":
            statuses[record["id"]] = "reverted"
    return statuses


def test_soak_http_ingest_with_backfills_and_readers(
    tmp_path: Path, children: list[SoakChild]
) -> None:
    store_path = tmp_path / "store"
    region_start = region_start_for(datetime.now(UTC))
    region = (region_start, region_end_for(region_start))
    with engine.open(store_path) as store:
        metric_ids = {
            name: store.metrics.create(name=name, sql=sql).id for name, sql in METRICS.items()
        }

    server = SoakChild(
        "soak_server.py",
        tmp_path / "server.err",
        str(store_path),
        *(
            ["--trace", os.environ["ENGINE_SOAK_TRACE"]]
            if os.environ.get("ENGINE_SOAK_TRACE")
            else []
        ),
    )
    children.append(server)
    port = server.expect("listening", timeout=60)
    base_url = f"http://127.0.0.1:{port}"
    backfiller_log = tmp_path / "backfiller.jsonl"
    reads_log = tmp_path / "reads.jsonl"
    common = ["--region-start", iso(region[0]), "--seconds", str(SOAK_SECONDS)]
    backfiller = SoakChild(
        "soak_backfiller.py",
        tmp_path / "backfiller.err",
        str(store_path),
        *common,
        "--seed",
        "7",
        "--log",
        str(backfiller_log),
    )
    children.append(backfiller)
    reader = SoakChild(
        "soak_reader.py", tmp_path / "reader.err", str(store_path), *common, "--out", str(reads_log)
    )
    children.append(reader)
    backfiller.expect("ready", timeout=120)
    reader.expect("ready", timeout=120)

    stats = HttpStats()
    began = time.monotonic()
    started_at = datetime.now(UTC)
    deadline = began + SOAK_SECONDS
    backfiller.send("go")
    reader.send("go")
    threads = [
        threading.Thread(target=load_client, args=(i, base_url, deadline, stats, 100 + i))
        for i in range(LOAD_CLIENTS)
    ]
    threads.append(threading.Thread(target=contender, args=(base_url, region, deadline, stats, 1)))
    threads.append(
        threading.Thread(target=http_reader, args=(base_url, metric_ids["events"], deadline, stats))
    )
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=SOAK_SECONDS + GRACE_SECONDS)
        assert not thread.is_alive(), "an HTTP client thread did not finish"
    backfiller_summary = json.loads(backfiller.expect("summary", timeout=GRACE_SECONDS))
    reader_summary = json.loads(reader.expect("summary", timeout=GRACE_SECONDS))
    assert backfiller.wait(60) == 0, backfiller.errors()
    assert reader.wait(60) == 0, reader.errors()
    elapsed = time.monotonic() - began
    server.process.send_signal(signal.SIGTERM)
    # uvicorn shuts down gracefully (in-flight requests finish), then re-raises the signal.
    assert server.wait(60) in (0, -signal.SIGTERM), server.errors()
    server_errors = server.errors()

    # -- what the store holds now ------------------------------------------------------------
    with engine.open(store_path) as store:
        stored_live = dict(
            store.sql(
                "SELECT idempotency_key, count(*) FROM lake.main.stored_events "
                "WHERE backfill_id IS NULL GROUP BY 1"
            ).fetchall()
        )
        effective_live = {
            row[0]
            for row in store.sql(
                "SELECT idempotency_key FROM events WHERE external_customer_id LIKE 'live-%'"
            ).fetchall()
        }
        rows = store.sql(
            "SELECT id, status, close_version, revert_version, events_ingested FROM backfills"
        ).fetchall()
        ((final_version,),) = store.sql(
            "SELECT coalesce(max(version), 0) FROM lake.main.commits"
        ).fetchall()
        final_region = region_cells(store, region)
        contender_stored = dict(
            store.sql(
                "SELECT backfill_id, count(*) FROM lake.main.stored_events "
                f"WHERE external_customer_id = '{CONTENDER_CUSTOMER}' GROUP BY 1"
            ).fetchall()
        )
        mismatches = store.verify()
        # Every live event lies in [start - 1 h, end]; whole hours keep the materialized path.
        live_usage = store.usage(
            metric_ids["events"],
            timeframe_start=floor_hour(started_at) - timedelta(hours=2),
            timeframe_end=floor_hour(datetime.now(UTC)) + timedelta(hours=2),
            granularity=None,
        )
    backfill_rows = {row[0]: row[1:] for row in rows}
    versions = {bid: (row[1], row[2]) for bid, row in backfill_rows.items()}

    # -- the model of the region against every read ------------------------------------------
    backfills = load_backfills(backfiller_log)
    state_cache: dict[int, Cells] = {}

    def state_at(version: int) -> Cells:
        if version not in state_cache:
            state_cache[version] = region_state(backfills, versions, version)
        return state_cache[version]

    model_checks: Counter[str] = Counter()
    model_failures: list[dict[str, Any]] = []
    for observation in read_jsonl(reads_log):
        if observation["kind"] == "snapshot":
            ok = observation["region"] == state_at(observation["version"])
            check = "snapshot_region_equals_model_at_its_version"
        elif observation["kind"] == "api_effective":  # one query: one snapshot
            states = distinct_states(backfills, versions, observation["low"], observation["high"])
            ok = observation["region"] in states
            check = "api_effective_region_is_a_whole_state_in_its_version_range"
        else:
            # One store.usage call per metric, each a snapshot of its own: each metric's cells
            # must be that metric's cells in one state of the range.
            states = distinct_states(backfills, versions, observation["low"], observation["high"])
            ok = all(
                metric_cells(observation["region"], position)
                in [metric_cells(state, position) for state in states]
                for position in range(len(METRICS))
            )
            check = "api_usage_each_metric_is_a_whole_state_in_its_version_range"
        model_checks[f"passed_{check}" if ok else f"failed_{check}"] += 1
        if not ok and len(model_failures) < 5:
            low = observation.get("version", observation.get("low"))
            high = observation.get("version", observation.get("high"))
            model_failures.append(
                {
                    **observation,
                    "model_states": distinct_states(backfills, versions, low, high),
                    "model_before": state_at(max(0, low - 1)),
                }
            )
    final_model_ok = final_region == state_at(final_version)

    logged_statuses = expected_statuses(backfiller_log)
    status_mismatches = {
        bid: (status, backfill_rows.get(bid, (None,))[0])
        for bid, status in logged_statuses.items()
        if backfill_rows.get(bid, (None,))[0] != status
    }
    staged_mismatches = {
        b.id: (len(b.events), backfill_rows[b.id][3])
        for b in backfills
        if b.id in backfill_rows and backfill_rows[b.id][3] != len(b.events)
    }
    contender_mismatches = {
        bid: (outcome, staged, backfill_rows.get(bid, (None,))[0], contender_stored.get(bid, 0))
        for bid, (outcome, staged) in stats.contender_backfills.items()
        if backfill_rows.get(bid, (None,))[0] != outcome
        or contender_stored.get(bid, 0) != (staged if outcome == "reflected" else 0)
    }

    reader_counters: dict[str, int] = reader_summary["counters"]
    http_5xx = sum(count for status, count in stats.statuses.items() if status >= 500)
    report = {
        "soak_seconds": SOAK_SECONDS,
        "elapsed_seconds": round(elapsed, 1),
        "events_acknowledged": len(stats.acknowledged),
        "events_stored": len(stored_live),
        "events_effective": len(effective_live),
        "live_usage_events": int(live_usage["value"].sum()) if live_usage.height else 0,
        "ingest_requests": stats.counters["requests"],
        "ingest_p50_ms": round(percentile(stats.latencies_ms, 0.50), 1),
        "ingest_p99_ms": round(percentile(stats.latencies_ms, 0.99), 1),
        "invalid_batches_refused": stats.counters["invalid_batches_refused"],
        "events_refused": len(stats.rejected),
        "resent_batches": stats.counters["resent_batches"],
        "http_statuses": {str(k): v for k, v in sorted(stats.statuses.items())},
        "backfiller": backfiller_summary,
        "contender": {k: v for k, v in stats.counters.items() if k.startswith("contender")},
        "conflicts_409": (
            backfiller_summary.get("create_conflicts_409", 0)
            + backfiller_summary.get("close_conflicts_409", 0)
            + backfiller_summary.get("stage_refused_409", 0)
            + stats.counters["contender_create_conflicts_409"]
        ),
        "reads": reader_counters.get("reads", 0) + stats.counters["http_usage_reads"],
        "reader": reader_counters,
        "model_checks": dict(model_checks),
        "invariant_checks_passed": sum(
            v for k, v in {**reader_counters, **model_checks}.items() if k.startswith("passed_")
        ),
        "invariant_checks_failed": sum(
            v for k, v in {**reader_counters, **model_checks}.items() if k.startswith("failed_")
        ),
        "final_version": final_version,
        "verify_mismatches": len(mismatches),
    }
    text = json.dumps(report, indent=2, sort_keys=True)
    print(text)
    (tmp_path / "report.json").write_text(text)
    with (tmp_path / "requests.jsonl").open("w") as requests_log:
        for entry in stats.requests:
            requests_log.write(json.dumps(entry) + "\n")
    if os.environ.get("ENGINE_SOAK_REPORT"):
        Path(os.environ["ENGINE_SOAK_REPORT"]).write_text(text)

    # Every promise is checked and all broken ones are named at once: one failure must not
    # hide another.
    lost = stats.acknowledged - set(stored_live)
    invented = set(stored_live) - stats.acknowledged
    broken = [
        message
        for ok, message in [
            # -- no write lost, none invented ----------------------------------------------
            (stats.problems == [], f"HTTP clients saw: {stats.problems}"),
            (stats.unknown == set(), f"{len(stats.unknown)} keys got no clear answer"),
            (http_5xx == 0, f"{http_5xx} responses were 5xx: {dict(stats.statuses)}"),
            (bool(stats.acknowledged), "the load clients got nothing acknowledged"),
            (
                not lost,
                f"{len(lost)} acknowledged events are not stored (lost writes), e.g. "
                f"{sorted(lost)[:5]}",
            ),
            (not invented, f"{len(invented)} stored events were never acknowledged"),
            ([k for k, n in stored_live.items() if n != 1] == [], "a live key is stored twice"),
            (effective_live == stats.acknowledged, "effective live events != acknowledged"),
            (
                report["live_usage_events"] == len(stats.acknowledged),
                f"live usage counts {report['live_usage_events']} events, "
                f"{len(stats.acknowledged)} were acknowledged",
            ),
            (bool(stats.rejected), "no invalid batch was sent"),
            (not stats.rejected & set(stored_live), "events of a refused batch are stored"),
            (
                stats.counters["unexpected_duplicates"] == 0,
                f"{stats.counters['unexpected_duplicates']} fresh keys reported as duplicates",
            ),
            (
                stats.counters["resent_keys_ingested_again"] == 0,
                f"{stats.counters['resent_keys_ingested_again']} re-sent keys ingested again",
            ),
            # -- backfills: every acknowledged step happened, conflicts were reported ------
            (
                backfiller_summary.get("closes", 0) > 0
                and backfiller_summary.get("reverts", 0) > 0,
                f"the backfiller did too little: {backfiller_summary}",
            ),
            (status_mismatches == {}, f"backfill status != log: {status_mismatches}"),
            (staged_mismatches == {}, f"events_ingested != staged: {staged_mismatches}"),
            (contender_mismatches == {}, f"contender backfills: {contender_mismatches}"),
            (report["conflicts_409"] > 0, "no writer ever met another: the soak proved nothing"),
            # -- no torn read --------------------------------------------------------------
            (reader_summary["failures"] == [], f"reader: {reader_summary['failures']}"),
            (model_failures == [], f"reads that match no committed state: {model_failures}"),
            (final_model_ok, f"final region {final_region} != model {state_at(final_version)}"),
            (
                reader_counters.get("passed_snapshot_region_materialized_equals_effective", 0) > 0
                and reader_counters.get("passed_api_usage_equals_effective_events", 0) > 0
                and reader_counters.get("passed_as_of_equals_snapshot", 0) > 0,
                f"some reader check never ran: {reader_counters}",
            ),
            (mismatches == [], f"verify() found {len(mismatches)} mismatches: {mismatches[:3]}"),
            ("Traceback" not in server_errors, f"the server logged errors: {server_errors}"),
        ]
        if not ok
    ]
    assert broken == [], "\n".join(broken)
