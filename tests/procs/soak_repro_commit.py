"""Minimal reproduction of the lost commits the soak found (not a test: a tool for whoever fixes
the engine).

    PYTHONPATH=.:tests python tests/procs/soak_repro_commit.py /tmp/repro/store \
        --seconds 40 --readers 1 --snapshot-thread

The writer (this process) ingests batches of 100 live events with ``store.ingest``, one commit
each, and after each checks that the catalog has a new snapshot and that the rows are stored.
``--readers N`` starts N reader processes (this script with ``--read``: ``store.usage`` and a
read transaction, in a loop). ``--snapshot-thread`` adds one thread to the writer process that
calls ``storage.snapshot_id()`` in a loop, as every ``store.usage`` call does (from any request
thread of the server, outside the store's lock). Prints one line per anomaly and a tally
``commits=… lost=… raised=…``; exit status 1 if a commit was lost or raised.

Seen on 2026-12-04 (DuckDB / DuckLake 1.5.5, 2 vCPUs): with ``--readers 1 --snapshot-thread``,
5 of the first 7 batches returned "ingested" but left no snapshot and no rows (the Parquet file
is written, then orphaned); in another run a later commit failed with "Failed to flush changes
into DuckLake: database is locked" and the process died of SIGBUS. With ``--readers 1`` alone
(10 commits), or ``--readers 0 --reader-thread`` (store.usage, hence ``snapshot_id()``, in a
thread, no other process: 6 commits), every commit held. The likely cause: ``snapshot_id()`` opens
``catalog.sqlite`` with Python's ``sqlite3`` module, a second copy of SQLite beside the one
inside DuckDB's sqlite_scanner; closing that connection drops the POSIX locks the other copy
holds on the same file (POSIX locks belong to the process, not the connection: SQLite's
"multiple copies of SQLite in one process" hazard). Another process then sees no lock and
checkpoints and resets the WAL under the writer, whose commit vanishes or whose mapped -shm
file is truncated (SIGBUS). Reading the snapshot id through DuckDB's own attachment instead
(``SELECT max(snapshot_id) FROM ducklake_snapshots('lake')`` under the store's lock) made the
full soak pass (see RELIABILITY.md, Concurrency). Fixed in the engine by f741233; since then
the same command gives ``commits=20 lost=0 raised=0``.

Other options mimic more of the soak: ``--backfiller`` (``soak_backfiller.py`` beside),
``--own-backfills`` (the writer also closes small backfills), ``--reader-thread`` (the writer
process also reads usage).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import engine
from engine.errors import ResourceConflict
from procs.common import proc_command, subprocess_env
from procs.soak_common import METRICS, iso, region_start_for


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


def write_and_check(
    store_path: Path,
    seconds: float,
    readers: int,
    backfiller: bool,
    own_backfills: bool,
    reader_thread: bool,
    snapshot_thread: bool,
) -> int:
    with engine.open(store_path) as store:
        if not store.metrics.list():
            for name, sql in METRICS.items():
                store.metrics.create(name=name, sql=sql)
    children = [
        subprocess.Popen(
            proc_command(
                "soak_repro_commit.py", str(store_path), "--read", "--seconds", str(seconds)
            ),
            env=subprocess_env(),
        )
        for _ in range(readers)
    ]
    if backfiller:
        region = iso(region_start_for(datetime.now(UTC)))
        other = subprocess.Popen(
            proc_command(
                "soak_backfiller.py",
                str(store_path),
                "--region-start",
                region,
                "--seconds",
                str(seconds),
                "--log",
                str(store_path.parent / "repro-backfiller.jsonl"),
            ),
            env=subprocess_env(),
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            text=True,
        )
        assert other.stdin is not None
        other.stdin.write("go\n")
        other.stdin.flush()
        children.append(other)
    own_start = region_start_for(datetime.now(UTC)) - timedelta(days=5)
    commits = lost = raised = 0
    with engine.open(store_path) as store:
        storage = store._storage
        deadline = time.monotonic() + seconds
        if snapshot_thread:
            # What Usage._refresh_cache does on every usage read, from any request thread and
            # without the store's lock: open the catalog with Python's sqlite3, read, close.
            def poll_snapshot() -> None:
                while time.monotonic() < deadline:
                    storage.snapshot_id()

            threading.Thread(target=poll_snapshot, daemon=True).start()
        if reader_thread:
            # What the server's request threads do between commits: usage reads on the same
            # connection (serialized with the writes by the store's lock).
            metric_id = store.metrics.list()[0].id

            def read_usage() -> None:
                while time.monotonic() < deadline:
                    hour = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
                    store.usage(
                        metric_id,
                        timeframe_start=hour - timedelta(hours=2),
                        timeframe_end=hour + timedelta(hours=1),
                        granularity=None,
                    )
                    time.sleep(0.2)

            threading.Thread(target=read_usage, daemon=True).start()
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
            if own_backfills and batch % 3 == 0:
                # What the HTTP contender does inside the server process: a small backfill.
                try:
                    own = store.backfills.create(
                        timeframe_start=own_start,
                        timeframe_end=own_start + timedelta(hours=1),
                        external_customer_id="own",
                        replace_existing_events=False,
                    )
                except ResourceConflict as error:  # our last close did not stick
                    print(f"batch {batch}: backfill create refused: {error}", flush=True)
                    continue
                store.ingest(
                    [
                        {
                            "idempotency_key": f"own{batch}",
                            "event_name": "api_call",
                            "timestamp": iso(own_start),
                            "external_customer_id": "own",
                            "properties": {"tokens": 1},
                        }
                    ],
                    backfill_id=own.id,
                )
                store.backfills.close(own.id)
            before = storage.snapshot_id()
            try:
                result = store.ingest(events)
            except Exception as error:
                raised += 1
                print(f"batch {batch}: ingest raised {type(error).__name__}: {error}", flush=True)
                continue
            commits += 1
            after = storage.snapshot_id()
            # store.sql returns a lazy relation: fetch it under the store's lock, or it would
            # share the DuckDB connection with the reader thread unguarded (that hangs).
            with storage._mutex:
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
    parser.add_argument("--backfiller", action="store_true", help="run soak_backfiller.py too")
    parser.add_argument(
        "--own-backfills", action="store_true", help="the writer also closes small backfills"
    )
    parser.add_argument(
        "--reader-thread", action="store_true", help="the writer process also reads usage"
    )
    parser.add_argument(
        "--snapshot-thread",
        action="store_true",
        help="the writer process also polls storage.snapshot_id() in a thread",
    )
    parser.add_argument("--read", action="store_true", help="(internal) be a reader process")
    args = parser.parse_args(argv)
    if args.read:
        return read_forever(args.store, args.seconds)
    return write_and_check(
        args.store,
        args.seconds,
        args.readers,
        args.backfiller,
        args.own_backfills,
        args.reader_thread,
        args.snapshot_thread,
    )


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
