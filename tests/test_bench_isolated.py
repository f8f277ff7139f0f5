"""The benchmark runs each system in a worker process (``bench/peers/isolated.py``): answers
and errors come back, a killed worker fails alone and says how it died, and the times are the
worker's own."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from procs.bench_worker_systems import failing_to_start, scripted

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

from peers.isolated import IsolatedSystem, WorkerDied, WorkerError, worker_time

pytestmark = pytest.mark.slow  # each worker is a spawned Python process


@pytest.fixture
def system() -> Iterator[IsolatedSystem]:
    started = IsolatedSystem("scripted", scripted)
    yield started
    started.close()


def test_calls_run_in_another_process(system: IsolatedSystem) -> None:
    assert system.version() != f"scripted in process {os.getpid()}"
    assert system.disk_bytes() == 42


def test_an_error_comes_back_with_its_type_and_the_worker_goes_on(system: IsolatedSystem) -> None:
    with pytest.raises(WorkerError) as raised:
        system.bulk_load(Path("/nowhere.parquet"))
    assert raised.value.kind == "ValueError"
    first_line, rest = str(raised.value).split("\n", 1)
    assert first_line == "cannot read /nowhere.parquet"
    assert "bulk_load" in rest  # the worker's traceback
    assert system.disk_bytes() == 42


def test_a_system_that_cannot_start_fails_at_construction() -> None:
    with pytest.raises(WorkerError, match="no server on port 1") as raised:
        IsolatedSystem("broken", failing_to_start)
    assert raised.value.kind == "ConnectionError"


def test_a_killed_worker_is_reported_as_killed(system: IsolatedSystem) -> None:
    with pytest.raises(WorkerDied, match=r"scripted process .* SIGKILL"):
        system.ingest_live(None)
    with pytest.raises(WorkerDied):
        system.disk_bytes()
    system.close()  # nothing left to close: no error


def test_times_are_the_workers_own(system: IsolatedSystem) -> None:
    calls, seconds = worker_time()
    started = time.perf_counter()
    system.materialize()
    outside = time.perf_counter() - started
    calls_after, seconds_after = worker_time()
    assert calls_after == calls + 1
    assert 0.3 <= seconds_after - seconds <= outside


def test_peak_memory_is_the_workers(system: IsolatedSystem) -> None:
    before = system.peak_memory_bytes()
    assert 10 << 20 < before < 400 << 20
    system.recompute()  # holds 512 MiB
    assert system.peak_memory_bytes() >= 512 << 20
