"""The Idempotency-Key replay table.

The SDK sends an ``Idempotency-Key`` on every POST and PUT and reuses it on retries, so a
request that timed out after the server acted must not act twice (a retried backfill create
would otherwise create two). The first successful response for a key is kept for ``ttl``
(48 h); the same key with the same request gets it again, marked ``Idempotent-Replayed: true``;
the same key with a different request is a 409.

Only 2xx responses are kept: the engine is all or nothing, so a refused request changed nothing
and running it again is safe (and gives a fresh answer if the state moved on).

Entries live in a bounded in-memory map in front of a small SQLite file in the store folder
(``idempotency.sqlite``, Python's ``sqlite3``), so replays survive a restart.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

__all__ = ["IDEMPOTENCY_FILE", "IdempotencyStore", "StoredResponse"]

IDEMPOTENCY_FILE = "idempotency.sqlite"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS responses (
    scope TEXT NOT NULL,
    key TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    status INTEGER NOT NULL,
    headers TEXT NOT NULL,
    body BLOB NOT NULL,
    created_at REAL NOT NULL,
    PRIMARY KEY (scope, key)
)
"""


@dataclass(frozen=True)
class StoredResponse:
    """A response kept for replay; ``fingerprint`` identifies the request it answered."""

    fingerprint: str
    status: int
    headers: list[tuple[str, str]]
    body: bytes
    created_at: float


class IdempotencyStore:
    """Keeps first responses per (principal, key). Thread-safe.

    ``path`` None keeps them in memory only. ``clock`` gives the current aware time (the
    server's injected clock, so tests can let 48 h pass).
    """

    def __init__(
        self,
        path: Path | None,
        *,
        ttl: timedelta,
        clock: Callable[[], datetime],
        memory_entries: int = 10_000,
    ) -> None:
        self._ttl = ttl.total_seconds()
        self._clock = clock
        self._memory: OrderedDict[tuple[str, str], StoredResponse] = OrderedDict()
        self._memory_entries = memory_entries
        self._lock = threading.Lock()
        self._db: sqlite3.Connection | None = None
        if path is not None:
            # One connection shared by the event loop and the purge task, under self._lock.
            self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
            # WAL with synchronous=NORMAL: a commit costs no fsync, and a crash loses at most
            # the last few replays, never the file.
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.execute(_SCHEMA)

    def _now(self) -> float:
        return self._clock().timestamp()

    def get(self, scope: str, key: str) -> StoredResponse | None:
        """The live entry for ``key``, or None (never kept, or older than the ttl)."""
        now = self._now()
        with self._lock:
            entry = self._memory.get((scope, key))
            if entry is None and self._db is not None:
                row = self._db.execute(
                    "SELECT fingerprint, status, headers, body, created_at FROM responses "
                    "WHERE scope = ? AND key = ?",
                    (scope, key),
                ).fetchone()
                if row is not None:
                    headers = [(str(n), str(v)) for n, v in json.loads(row[2])]
                    entry = StoredResponse(row[0], int(row[1]), headers, bytes(row[3]), row[4])
                    self._remember((scope, key), entry)
            if entry is None or now - entry.created_at > self._ttl:
                return None
            self._memory.move_to_end((scope, key))
            return entry

    def put(
        self,
        scope: str,
        key: str,
        *,
        fingerprint: str,
        status: int,
        headers: list[tuple[str, str]],
        body: bytes,
    ) -> None:
        entry = StoredResponse(fingerprint, status, headers, body, self._now())
        with self._lock:
            self._remember((scope, key), entry)
            if self._db is not None:
                self._db.execute(
                    "INSERT OR REPLACE INTO responses VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (scope, key, fingerprint, status, json.dumps(headers), body, entry.created_at),
                )

    def purge(self) -> int:
        """Forget entries older than the ttl; returns how many rows the file dropped."""
        cutoff = self._now() - self._ttl
        with self._lock:
            for name in [k for k, v in self._memory.items() if v.created_at < cutoff]:
                del self._memory[name]
            if self._db is None:
                return 0
            cursor = self._db.execute("DELETE FROM responses WHERE created_at < ?", (cutoff,))
            return cursor.rowcount

    def close(self) -> None:
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None

    def _remember(self, name: tuple[str, str], entry: StoredResponse) -> None:
        self._memory[name] = entry
        self._memory.move_to_end(name)
        while len(self._memory) > self._memory_entries:
            self._memory.popitem(last=False)
