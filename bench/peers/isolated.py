"""Each benchmarked system in a process of its own.

One process holding every system ran this machine out of memory at 100M events twice: the
OOM killer took the whole run, and nobody could say which system had grown. In a process of
its own, each system's peak memory is its own figure, and a system that is killed fails alone
(the run records it and goes on with the others).

The worker times each call itself, so the figures leave out the pipe and the pickling of
arguments; :func:`worker_time` lets the runner use those times (see ``run.timed``).
"""

from __future__ import annotations

import contextlib
import multiprocessing
import resource
import signal
import time
import traceback
from collections.abc import Callable
from datetime import datetime
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import pyarrow as pa

from .base import Scope, System, UsageRow

__all__ = ["IsolatedSystem", "WorkerDied", "WorkerError", "worker_time"]

# Over every call this process made to any worker: how many, and the seconds the workers
# measured for them.
_calls = 0
_seconds = 0.0

_PEAK_MEMORY = "__peak_memory_bytes__"


def worker_time() -> tuple[int, float]:
    """Calls made to workers so far, and the seconds the workers spent in them."""
    return _calls, _seconds


class WorkerError(Exception):
    """An exception a system raised in its worker. ``kind`` is its type's name; the message's
    first line is the original message, the rest the worker's traceback."""

    def __init__(self, kind: str, message: str, remote_traceback: str) -> None:
        super().__init__(f"{message}\n--- traceback in the worker ---\n{remote_traceback}")
        self.kind = kind


class WorkerDied(RuntimeError):
    """The worker process ended without answering (killed, for one)."""


class IsolatedSystem:
    """A :class:`System` running in a child process, built there by ``factory(*arguments)``
    (a module-level function and picklable arguments: the child is spawned, not forked, so it
    shares no DuckDB or Polars thread state with the runner)."""

    def __init__(self, name: str, factory: Callable[..., System], *arguments: Any) -> None:
        self.name = name
        context = multiprocessing.get_context("spawn")
        self._pipe, child = context.Pipe()
        self._process = context.Process(
            target=_serve, args=(child, factory, arguments), name=f"bench-{name}"
        )
        self._process.start()
        child.close()
        self._answer()  # the system is built, or its error is raised here

    # -- the System protocol ------------------------------------------------------------------

    def version(self) -> str:
        return str(self._call("version"))

    def bulk_load(self, parquet: Path) -> int:
        return int(self._call("bulk_load", parquet))

    def materialize(self) -> None:
        self._call("materialize")

    def ingest_live(self, batch: pa.Table) -> int:
        return int(self._call("ingest_live", batch))

    def stage_backfill(self, scope: Scope, events: pa.Table) -> str:
        return str(self._call("stage_backfill", scope, events))

    def close_backfill(self, backfill_id: str) -> None:
        self._call("close_backfill", backfill_id)

    def revert_backfill(self, backfill_id: str) -> None:
        self._call("revert_backfill", backfill_id)

    def usage(
        self, metric: str, *, start: datetime, end: datetime, customer: str | None, by_day: bool
    ) -> list[UsageRow]:
        rows: list[UsageRow] = self._call(
            "usage", metric, start=start, end=end, customer=customer, by_day=by_day
        )
        return rows

    def recompute(self) -> None:
        self._call("recompute")

    def disk_bytes(self) -> int:
        return int(self._call("disk_bytes"))

    def close(self) -> None:
        """Close the system, then end its process (killed if it does not end within 60 s)."""
        try:
            if self._process.is_alive():
                self._call("close")
                self._pipe.send(None)
        finally:
            self._process.join(timeout=60)
            if self._process.is_alive():
                self._process.kill()
                self._process.join()
            self._pipe.close()

    # -- beyond the protocol ------------------------------------------------------------------

    def peak_memory_bytes(self) -> int:
        """The most memory the process has held resident so far (Linux ``VmHWM``)."""
        return int(self._call(_PEAK_MEMORY))

    # -- internals ----------------------------------------------------------------------------

    def _call(self, method: str, *arguments: Any, **options: Any) -> Any:
        global _calls, _seconds
        try:
            self._pipe.send((method, arguments, options))
        except (BrokenPipeError, ConnectionResetError):
            raise self._died() from None
        seconds, result = self._answer()
        _calls += 1
        _seconds += seconds
        return result

    def _answer(self) -> tuple[float, Any]:
        try:
            reply = self._pipe.recv()
        except (EOFError, ConnectionResetError):
            raise self._died() from None
        if reply[0] == "error":
            _, kind, message, remote_traceback = reply
            raise WorkerError(kind, message, remote_traceback)
        _, seconds, result = reply
        return float(seconds), result

    def _died(self) -> WorkerDied:
        self._process.join(timeout=10)
        code = self._process.exitcode
        how = f"exit code {code}"
        if code == -signal.SIGKILL:
            how = "killed by SIGKILL, as the kernel's OOM killer does"
        return WorkerDied(f"the {self.name} process ended without answering ({how})")


def _serve(pipe: Connection, factory: Callable[..., System], arguments: tuple[Any, ...]) -> None:
    """The worker: build the system, then answer calls until the runner sends None or goes."""
    try:
        system = factory(*arguments)
    except Exception as error:
        pipe.send(("error", type(error).__name__, str(error), traceback.format_exc()))
        return
    pipe.send(("ok", 0.0, None))
    while True:
        try:
            request = pipe.recv()
        except (EOFError, ConnectionResetError):
            return
        if request is None:
            return
        method, arguments, options = request
        try:
            if method == _PEAK_MEMORY:
                seconds, result = 0.0, _peak_resident_bytes()
            else:
                started = time.perf_counter()
                result = getattr(system, method)(*arguments, **options)
                seconds = time.perf_counter() - started
        except Exception as error:
            pipe.send(("error", type(error).__name__, str(error), traceback.format_exc()))
            continue
        pipe.send(("ok", seconds, result))


def _peak_resident_bytes() -> int:
    """This process's own peak resident memory: Linux's ``VmHWM``, which starts afresh at the
    ``exec`` of a spawned worker. ``ru_maxrss`` keeps the high-water mark of the forked copy of
    the parent from before the ``exec`` (728 MB for a worker spawned by the test suite)."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # kilobytes on Linux
