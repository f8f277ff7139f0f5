"""Per-commit statement counts and times of two engine trees on copies of one store.

Not a test. For each engine tree given (``--engine``, a checkout's root; the trees alternate,
``--rounds`` times), on a fresh copy of a store that ``bench_usage.py --keep`` left (10M events,
1 000 customers is what ``BENCHMARKS.md`` quotes): six live batches of 500 events, five 1-day
account-wide replace backfills of 100k events (closed one after the other) and three 7-day
replace backfills of one customer (closed, then reverted). Each line is one commit: its wall
time, its statements and their time inside DuckDB (``bench_usage.statements``). The first
live batch and the first close of a process also load the key index; read the later ones.

    python bench/statements_ab.py --store DIR/store-10000000 --engine /tmp/old --engine .
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

#: Run in a child process per tree, so that each imports its own ``engine`` package.
_CHILD = """
import shutil, sys
from datetime import timedelta
root, store, copy = sys.argv[1:4]
sys.path[:0] = [root, root + "/bench"]
import engine
from bench_core import START, replacement
from bench_usage import statements

shutil.copytree(store, copy)
live = START + timedelta(days=30)
now = live + timedelta(hours=25)

def line(label, record):
    s = record.summary()
    print(f"  {label:<22} {s['total_seconds']:.3f} s  {s['statements']:>3} statements"
          f"  {s['in_duckdb_seconds']:.3f} s in DuckDB", flush=True)

with engine.open(copy, clock=lambda: now, grace_period=timedelta(hours=36)) as store:
    for i in range(6):
        batch = replacement(500, 1000, 1, 700 + i, live, None)
        with statements(store) as record:
            store.ingest(batch)
        line(f"live batch {i}", record)
    for day in range(20, 25):
        start = START + timedelta(days=day)
        backfill = store.backfills.create(
            timeframe_start=start, timeframe_end=start + timedelta(days=1),
            replace_existing_events=True)
        store.ingest(replacement(100_000, 1000, 1, 900 + day, start, None),
                     backfill_id=backfill.id)
        with statements(store) as record:
            store.backfills.close(backfill.id)
        line(f"1-day close, day {day}", record)
    for day in (3, 10, 17):
        start = START + timedelta(days=day)
        backfill = store.backfills.create(
            timeframe_start=start, timeframe_end=start + timedelta(days=7),
            external_customer_id="cust_0029", replace_existing_events=True)
        store.ingest(replacement(10_000, 1000, 7, 500 + day, start, "cust_0029"),
                     backfill_id=backfill.id)
        with statements(store) as record:
            store.backfills.close(backfill.id)
        line(f"7-day close, day {day}", record)
        with statements(store) as record:
            store.backfills.revert(backfill.id)
        line("its revert", record)
"""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--store", type=Path, required=True, help="a store to copy")
    parser.add_argument("--engine", type=Path, action="append", required=True)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    for _ in range(args.rounds):
        for root in args.engine:
            print(f"== {root.resolve()}", flush=True)
            work = Path(tempfile.mkdtemp(prefix="statements-ab-"))
            try:
                subprocess.run(
                    [
                        sys.executable,
                        "-c",
                        _CHILD,
                        str(root.resolve()),
                        str(args.store),
                        str(work / "store"),
                    ],
                    check=True,
                )
            finally:
                shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
