"""Fault injection on a store's DuckDB connection, for subprocess entry points.

:class:`KillableConnection` wraps the connection a :class:`engine.Store` uses and counts the
statements it runs, by kind (the first SQL word: ``SELECT``, ``INSERT``, ``COMMIT``...), once
armed. At a :class:`KillPoint` the process sends itself SIGKILL: right ``before`` the N-th
statement of a kind, right ``after`` it returned, or ``during`` it, from a timer thread that
fires a given number of seconds after the statement started (DuckDB releases the GIL while
it works, so the timer can land inside a long ``COMMIT``, where DuckLake writes its catalog).

The connection sees everything the engine runs, so a kill point names an exact place in an
operation: ``COMMIT:1:before`` is the instant before the first commit.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any

import engine
from procs.common import say

WHENS = ("before", "after", "during")


def statement_kind(sql: Any) -> str:
    """The first word of a statement, upper case (``?`` for anything that is not text)."""
    text = sql if isinstance(sql, str) else ""
    words = text.lstrip().split(None, 1)
    return words[0].upper() if words else "?"


@dataclass(frozen=True)
class KillPoint:
    """``KIND:N:before|after`` or ``KIND:N:during:SECONDS`` (N counts from 1)."""

    kind: str
    occurrence: int
    when: str = "before"
    delay: float = 0.0

    @classmethod
    def parse(cls, spec: str) -> KillPoint:
        parts = spec.split(":")
        if len(parts) < 2 or parts[-1] == "":
            raise SystemExit(f"bad kill point {spec!r}")
        when = parts[2] if len(parts) > 2 else "before"
        if when not in WHENS or (when == "during") != (len(parts) == 4):
            raise SystemExit(f"bad kill point {spec!r}")
        delay = float(parts[3]) if when == "during" else 0.0
        return cls(parts[0].upper(), int(parts[1]), when, delay)

    def __str__(self) -> str:
        base = f"{self.kind}:{self.occurrence}:{self.when}"
        return f"{base}:{self.delay:.4f}" if self.when == "during" else base


def die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


class KillableConnection:
    """Forwards everything to a DuckDB connection; counts statements once ``armed``."""

    def __init__(
        self,
        real: Any,
        *,
        kill: KillPoint | None = None,
        hold: KillPoint | None = None,
        trace: bool = False,
    ) -> None:
        self._real = real
        #: (kind, occurrence, seconds) of every armed statement, in order.
        self.statements: list[tuple[str, int, float]] = []
        self._kill = kill
        self._hold = hold
        self._trace = trace
        self.armed = False
        self.seen: Counter[str] = Counter()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)

    def _matches(self, point: KillPoint | None, kind: str, when: str) -> bool:
        return (
            point is not None
            and point.kind == kind
            and point.when == when
            and self.seen[kind] == point.occurrence
        )

    def execute(self, sql: Any, *args: Any, **kwargs: Any) -> Any:
        if not self.armed:
            return self._real.execute(sql, *args, **kwargs)
        kind = statement_kind(sql)
        self.seen[kind] += 1
        if self._matches(self._hold, kind, "before"):
            say("in-transaction")
            sys.stdin.readline()
        if self._matches(self._kill, kind, "before"):
            die()
        if self._matches(self._kill, kind, "during"):
            assert self._kill is not None
            timer = threading.Timer(self._kill.delay, die)
            timer.daemon = True
            timer.start()
        started = time.perf_counter()
        result = self._real.execute(sql, *args, **kwargs)
        # how long it ran: ``during`` points aim inside that time
        self.statements.append((kind, self.seen[kind], time.perf_counter() - started))
        if self._trace:
            sys.stderr.write(f"trace {kind} {self.seen[kind]} {self.statements[-1][2]:.6f}\n")
            sys.stderr.flush()
        if self._matches(self._kill, kind, "after"):
            die()
        return result


def wrap(
    store: engine.Store,
    *,
    kill: str | None = None,
    hold: str | None = None,
    trace: bool = False,
) -> KillableConnection:
    """Put a :class:`KillableConnection` under ``store`` (not yet armed) and return it."""
    storage = store._storage
    connection = KillableConnection(
        storage._connection,
        kill=KillPoint.parse(kill) if kill else None,
        hold=KillPoint.parse(hold) if hold else None,
        trace=trace,
    )
    storage._connection = connection
    return connection
