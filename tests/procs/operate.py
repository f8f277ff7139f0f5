"""Run one backfill operation on a store in its own process, with fault-injection hooks.

Usage: ``python tests/procs/operate.py STORE {close,revert} BACKFILL_ID [options]``

Protocol on stdout, one line each: ``ready`` once the store is open; ``starting`` right
before the operation; ``in-transaction`` when ``--hold`` stops it; ``done <status>`` when
the operation returned. With ``--wait-go`` the process reads a line from stdin before
``starting``; with ``--hold KIND:N`` it stops right before the N-th statement of KIND (e.g.
``COMMIT:1``) and reads a line from stdin before running it. ``--kill KIND:N:before|after``
sends SIGKILL to this very process right before / right after the N-th statement of KIND
(counted from ``starting``). ``--trace`` writes every statement's kind to stderr.
The fault injection itself lives in ``killable.py``.

Statements are counted on the DuckDB connection, which sees everything the engine runs:
reads, writes, ``BEGIN TRANSACTION`` and ``COMMIT``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import engine
from procs.common import BIG_LATER, HOUR, FakeClock, say
from procs.killable import wrap


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("store", type=Path)
    parser.add_argument("operation", choices=["close", "revert"])
    parser.add_argument("backfill_id")
    parser.add_argument("--wait-go", action="store_true")
    parser.add_argument("--kill")
    parser.add_argument("--hold")
    parser.add_argument("--trace", action="store_true")
    args = parser.parse_args(argv)

    clock = FakeClock(BIG_LATER + HOUR)
    with engine.open(args.store, clock=clock) as store:
        connection = wrap(store, kill=args.kill, hold=args.hold, trace=args.trace)
        say("ready")
        if args.wait_go:
            sys.stdin.readline()
        say("starting")
        connection.armed = True
        operation = getattr(store.backfills, args.operation)
        backfill = operation(args.backfill_id)
        connection.armed = False
        say(f"done {backfill.status}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
