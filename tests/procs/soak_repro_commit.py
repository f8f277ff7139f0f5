"""Minimal reproduction of the commit failures the soak found: one process ingests live batches
with ``store.ingest`` while other processes only read; each commit is then checked.

Usage: ``python tests/procs/soak_repro_commit.py STORE [--seconds S] [--readers N]``

The writer (this process) ingests batches of 100 events, one commit each, and after each one
checks that the catalog has a new snapshot and that the batch's rows are stored. Reader
processes (this script with ``--read``) loop over ``store.usage(...)`` and a read transaction
over the effective events, as ``soak_reader.py`` does. Prints one line per anomaly and a final
tally: ``commits=… lost=… raised=…``; exit status 1 if any commit was lost or raised.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import engine
from procs.common import proc_command, subprocess_env


def read_forever(store_path: Path, seconds: float) -> int:
    with engine.open(store_path) as store:
        metric = store.metrics.list()[0]
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            now = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
            store.usage(
                metric.id,
                timeframe_start=now - timedelta(hours=2),
                timeframe_end=now + timedelta(hours=1),
                granularity="hour",
            )
            with store._storage.read():
                store.sql("SELECT count(*) FROM events").fetchall()
                store.sql("SELECT count(*) FROM lake.main.usage_cells").fetchall()
    return 0


def write_and_check(store_path: Path, seconds: float, readers: int) -> int:
    with engine.open(store_path) as store:
        if not store.metrics.list():
            store.metrics.create(name="events", sql="SELECT count(*) FROM events")
    children = [
        subprocess.Popen(
            proc_command(
                "soak_repro_commit.py", str(store_path), "--read", "--seconds", str(seconds)
            ),
            env=subprocess_env(),
        )
        for _ in range(readers)
    ]
    commits = lost = raised = 0
    with engine.open(store_path) as store:
        storage = store._storage
        deadline = time.monotonic() + seconds
        batch = 0
        while time.monotonic() < deadline:
            batch += 1
            now = datetime.now(UTC)
            events = [
                {
                    "idempotency_key": f"r{batch}-{i}",
                    "event_name": "api_call",
                    "timestamp": (now - timedelta(seconds=i)).isoformat().replace("+00:00", "Z"),
                    "external_customer_id": f"c{i % 5}",
                    "properties": {"tokens": 1},
                }
                for i in range(100)
            ]
            before = storage.snapshot_id()
            try:
                result = store.ingest(events)
            except Exception as error:
                raised += 1
                print(f"batch {batch}: ingest raised {type(error).__name__}: {error}", flush=True)
                continue
            commits += 1
            after = storage.snapshot_id()
            (stored,) = store.sql(
                "SELECT count(*) FROM lake.main.stored_events "
                f"WHERE idempotency_key LIKE 'r{batch}-%'"
            ).fetchone()  # type: ignore[misc]
            if len(result.ingested) != 100 or after <= before or stored != 100:
                lost += 1
                print(
                    f"batch {batch}: ingest returned {len(result.ingested)} ingested, snapshot "
                    f"{before} -> {after}, rows stored {stored}",
                    flush=True,
                )
    for child in children:
        child.wait()
    print(f"commits={commits} lost={lost} raised={raised}", flush=True)
    return 1 if lost or raised else 0


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("store", type=Path)
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--readers", type=int, default=1)
    parser.add_argument("--read", action="store_true", help="(internal) be a reader process")
    args = parser.parse_args(argv)
    if args.read:
        return read_forever(args.store, args.seconds)
    return write_and_check(args.store, args.seconds, args.readers)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
