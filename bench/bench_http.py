"""HTTP ingest benchmark: throughput and latency of ``POST /v1/ingest`` with 500-event requests
from 1, 4 and 16 concurrent clients, beside the Python API's ``store.ingest`` in the same run.

Not a test: it prints a table (and with ``--out`` writes JSON). The server runs in a subprocess
(``engine.http.serve``, one uvicorn worker, no rate limit, no background closer) so that the
clients, threads with one ``httpx.Client`` each in this process, do not share its GIL. Each
store starts empty with one metric (``sum(tokens)``), so every ingest also refreshes
materialized usage, as in production. Every request carries fresh idempotency keys, with
timestamps in the last hour, and an ``Idempotency-Key`` header like the SDK sends.

    python bench/bench_http.py                       # about 4 min on 2 cores
    python bench/bench_http.py --requests 64 --group-commit on --out /tmp/http.json

Group commit (the server's default) writes concurrent live ingest requests in one commit; the
bench measures the server with it on and off, each on a fresh store.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import engine  # noqa: E402

API_KEY = "bench-key"
METRIC_SQL = "SELECT sum(tokens) FROM events"

_SERVER = """
import sys
from engine.http import serve
serve(sys.argv[1], host="127.0.0.1", port=int(sys.argv[2]), api_keys=[sys.argv[3]],
      rate_limit=None, close_interval=None, group_commit=sys.argv[4] == "on", log_level="warning")
"""


def batch(size: int, tag: str) -> list[dict[str, Any]]:
    """``size`` Orb-shaped events with fresh keys, spread over the last hour."""
    now = datetime.now(UTC)
    return [
        {
            "idempotency_key": f"{tag}-{n}",
            "event_name": "api_call",
            "timestamp": (now - timedelta(seconds=1 + (n * 7) % 3500)).isoformat(),
            "external_customer_id": f"cust_{n % 50:03d}",
            "properties": {"tokens": n % 97, "model": "small" if n % 3 else "large"},
        }
        for n in range(size)
    ]


@dataclass
class Run:
    name: str
    clients: int
    events: int = 0
    seconds: float = 0.0
    latencies: list[float] = field(default_factory=list)
    errors: int = 0

    @property
    def rate(self) -> float:
        return self.events / self.seconds if self.seconds else 0.0

    def percentile(self, q: float) -> float:
        if not self.latencies:
            return float("nan")
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]

    def to_json(self) -> dict[str, Any]:
        return {
            "clients": self.clients,
            "requests": len(self.latencies),
            "events": self.events,
            "seconds": round(self.seconds, 3),
            "events_per_second": round(self.rate, 1),
            "p50_ms": round(self.percentile(0.50) * 1000, 1),
            "p99_ms": round(self.percentile(0.99) * 1000, 1),
            "mean_ms": round(statistics.fmean(self.latencies) * 1000, 1)
            if self.latencies
            else None,
            "errors": self.errors,
        }


def python_api(store_path: Path, requests: int, size: int) -> Run:
    run = Run("python store.ingest", clients=1)
    with engine.open(store_path) as store:
        store.metrics.create(name="tokens", sql=METRIC_SQL)
        store.ingest(batch(size, "warm-py"))
        started = time.perf_counter()
        for r in range(requests):
            events = batch(size, f"py-{r}")
            t0 = time.perf_counter()
            store.ingest(events)
            run.latencies.append(time.perf_counter() - t0)
            run.events += size
        run.seconds = time.perf_counter() - started
    return run


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def start_server(store_path: Path, group_commit: str) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-c", _SERVER, str(store_path), str(port), API_KEY, group_commit],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    base_url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            if httpx.get(f"{base_url}/health", timeout=1).status_code == 200:
                return process, base_url
        except httpx.TransportError:
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            raise RuntimeError("the benchmark server did not start")
        time.sleep(0.1)


def http_level(base_url: str, clients: int, requests: int, size: int, group_commit: str) -> Run:
    plural = "s" if clients > 1 else ""
    run = Run(f"HTTP, group commit {group_commit}, {clients} client{plural}", clients=clients)
    per_client = max(1, requests // clients)
    # Bodies are built before the clock starts: the figure is the server's, not the client's.
    bodies = [
        [
            json.dumps({"events": batch(size, f"h{clients}-{c}-{r}")}).encode()
            for r in range(per_client)
        ]
        for c in range(clients)
    ]
    lock = threading.Lock()
    barrier = threading.Barrier(clients + 1)

    def client(index: int) -> None:
        headers = {"Authorization": f"Bearer {API_KEY}", "Content-Type": "application/json"}
        with httpx.Client(base_url=base_url, headers=headers, timeout=600) as http:
            barrier.wait()
            for body in bodies[index]:
                t0 = time.perf_counter()
                response = http.post(
                    "/v1/ingest", content=body, headers={"Idempotency-Key": str(uuid.uuid4())}
                )
                elapsed = time.perf_counter() - t0
                with lock:
                    run.latencies.append(elapsed)
                    if response.status_code == 200:
                        run.events += size
                    else:
                        run.errors += 1

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for thread in threads:
        thread.start()
    barrier.wait()
    started = time.perf_counter()
    for thread in threads:
        thread.join()
    run.seconds = time.perf_counter() - started
    return run


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--requests", type=int, default=32, help="requests per level (total)")
    parser.add_argument("--events", type=int, default=500, help="events per request")
    parser.add_argument(
        "--group-commit",
        nargs="+",
        choices=["on", "off"],
        default=["on", "off"],
        help="server settings to measure (default: both, each on a fresh store)",
    )
    parser.add_argument("--out", type=Path, help="write the figures as JSON here")
    args = parser.parse_args(argv)

    runs: list[Run] = []
    with tempfile.TemporaryDirectory(prefix="bench-http-") as workdir:
        print("python API ...", file=sys.stderr)
        runs.append(python_api(Path(workdir) / "py-store", args.requests, args.events))

        for mode in args.group_commit:
            store_path = Path(workdir) / f"http-store-{mode}"
            with engine.open(store_path) as store:
                store.metrics.create(name="tokens", sql=METRIC_SQL)
            process, base_url = start_server(store_path, mode)
            try:
                warm = httpx.post(
                    f"{base_url}/v1/ingest",
                    json={"events": batch(args.events, "warm-http")},
                    headers={"Authorization": f"Bearer {API_KEY}"},
                    timeout=600,
                )
                warm.raise_for_status()
                for clients in args.clients:
                    print(f"HTTP, group commit {mode}, {clients} clients ...", file=sys.stderr)
                    runs.append(http_level(base_url, clients, args.requests, args.events, mode))
            finally:
                process.terminate()
                process.wait(timeout=30)

    print(f"\n{args.events} events per request; load average {os.getloadavg()[0]:.1f}\n")
    print("| path | clients | requests | events/s | p50 ms | p99 ms | errors |")
    print("|---|---|---|---|---|---|---|")
    for run in runs:
        f = run.to_json()
        print(
            f"| {run.name} | {run.clients} | {f['requests']} | {f['events_per_second']:,.0f}"
            f" | {f['p50_ms']:,.0f} | {f['p99_ms']:,.0f} | {run.errors} |"
        )
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(
            json.dumps(
                {
                    "machine": {
                        "platform": platform.platform(),
                        "python": platform.python_version(),
                        "cpus": os.cpu_count(),
                        "load_average": os.getloadavg(),
                    },
                    "events_per_request": args.events,
                    "runs": {run.name: run.to_json() for run in runs},
                },
                indent=2,
            )
            + "\n"
        )
    return 0 if all(run.errors == 0 for run in runs) else 1


if __name__ == "__main__":
    sys.exit(main())
