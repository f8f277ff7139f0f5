"""Run one backfill operation on a store in its own process, with fault-injection hooks.

Usage: ``python tests/procs/operate.py STORE {close,revert} BACKFILL_ID [options]``

Protocol on stdout, one line each: ``ready`` once the store is open; ``starting`` right
before the operation; ``in-transaction`` when ``--hold`` stops it; ``done <status>`` when
the operation returned. With ``--wait-go`` the process reads a line from stdin before
``starting``; with ``--hold KIND:N`` it stops right before the N-th statement of KIND (e.g.
``COMMIT:1``) and reads a line from stdin before running it. ``--kill KIND:N:before|after``
sends SIGKILL to this very process right before / right after the N-th statement of KIND
(counted from ``starting``). ``--trace`` writes every statement's kind to stderr.

Statements are counted on the DuckDB connection, which sees everything the engine runs:
reads, writes, ``BEGIN TRANSACTION`` and ``COMMIT``.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import engine
from procs.common import BIG_LATER, HOUR, FakeClock, say


def _kind(sql: Any) -> str:
    text = sql if isinstance(sql, str) else ""
    words = text.lstrip().split(None, 1)
    return words[0].upper() if words else "?"


class _Point:
    def __init__(self, spec: str) -> None:
        parts = spec.split(":")
        self.kind = parts[0].upper()
        self.occurrence = int(parts[1])
        self.when = parts[2] if len(parts) > 2 else "before"
        if self.when not in ("before", "after"):
            raise SystemExit(f"bad point {spec!r}")


class _Connection:
    """Forwards everything to a DuckDB connection; counts statements once armed."""

    def __init__(self, real: Any, *, kill: _Point | None, hold: _Point | None, trace: bool):
        self._real = real
        self._kill = kill
        self._hold = hold
        self._trace = trace
        self.armed = False
        self.seen: Counter[str] = Counter()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)

    def _matches(self, point: _Point | None, kind: str, when: str) -> bool:
        return (
            point is not None
            and point.kind == kind
            and point.when == when
            and self.seen[kind] == point.occurrence
        )

    def execute(self, sql: Any, *args: Any, **kwargs: Any) -> Any:
        if not self.armed:
            return self._real.execute(sql, *args, **kwargs)
        kind = _kind(sql)
        self.seen[kind] += 1
        if self._trace:
            sys.stderr.write(f"{kind} {self.seen[kind]}\n")
            sys.stderr.flush()
        if self._matches(self._hold, kind, "before"):
            say("in-transaction")
            sys.stdin.readline()
        if self._matches(self._kill, kind, "before"):
            os.kill(os.getpid(), signal.SIGKILL)
        result = self._real.execute(sql, *args, **kwargs)
        if self._matches(self._kill, kind, "after"):
            os.kill(os.getpid(), signal.SIGKILL)
        return result


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
        storage = store._storage
        connection = _Connection(
            storage._connection,
            kill=_Point(args.kill) if args.kill else None,
            hold=_Point(args.hold) if args.hold else None,
            trace=args.trace,
        )
        storage._connection = connection
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
