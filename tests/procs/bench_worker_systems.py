"""Systems for tests of the benchmark's worker processes (``bench/peers/isolated.py``): built
in a spawned child, so they live in a module the child can import."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path


class Scripted:
    """Each method does one thing a real system might: answer, fail, take time, grow, or be
    killed the way the kernel's OOM killer kills."""

    name = "scripted"

    def version(self) -> str:
        return f"scripted in process {os.getpid()}"

    def bulk_load(self, parquet: Path) -> int:
        raise ValueError(f"cannot read {parquet}")

    def ingest_live(self, batch: object) -> int:
        os.kill(os.getpid(), signal.SIGKILL)
        raise AssertionError("unreachable")

    def materialize(self) -> None:
        time.sleep(0.3)

    def recompute(self) -> None:
        # 512 MiB written, so resident
        block = bytearray(512 << 20)
        block[::4096] = b"x" * len(block[::4096])

    def disk_bytes(self) -> int:
        return 42

    def close(self) -> None:
        pass


def scripted() -> Scripted:
    return Scripted()


def failing_to_start() -> Scripted:
    raise ConnectionError("no server on port 1")
