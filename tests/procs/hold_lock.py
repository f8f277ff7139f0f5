"""Hold a lock on a store's catalog from another process until told to let go.

Usage: ``python tests/procs/hold_lock.py STORE {exclusive,read-transaction}``

``exclusive`` takes SQLite's exclusive lock on ``catalog.sqlite``, as a DuckLake commit does
while it writes the catalog (only sqlite3, so it starts fast). ``read-transaction`` opens the
store and keeps one read transaction open, as the engine's multi-query reads (usage) do.
Says ``locked`` on stdout once the lock is held, then waits for a line (or EOF) on stdin.
"""

from __future__ import annotations

import sqlite3
import sys
from pathlib import Path


def main(store: Path, mode: str) -> int:
    if mode == "exclusive":
        connection = sqlite3.connect(store / "catalog.sqlite", isolation_level=None)
        connection.execute("BEGIN EXCLUSIVE")
        print("locked", flush=True)
        sys.stdin.readline()
        connection.execute("ROLLBACK")
        connection.close()
        return 0
    import engine
    from procs.common import FakeClock

    with engine.open(store, clock=FakeClock()) as opened, opened._storage.read():
        opened.sql("SELECT count(*) FROM events").fetchall()
        print("locked", flush=True)
        sys.stdin.readline()
    return 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1]), sys.argv[2]))
