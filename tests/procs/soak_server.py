"""The HTTP server of the soak test, in a process of its own: what ``usage-engine serve`` runs
(``engine.http.serve``), except that it binds port 0 on loopback itself and says which port it
got, so parallel runs never race for a port.

Usage: ``python tests/procs/soak_server.py STORE [--close-interval SECONDS]``

Says ``listening <port>`` on stdout once uvicorn accepts connections; stops on SIGTERM or
SIGINT (uvicorn's graceful shutdown), closing the store on the way out.
"""

from __future__ import annotations

import argparse
import socket
import sys
import threading
import time
from pathlib import Path
from typing import IO, Any

import uvicorn

import engine
from engine.http import create_app
from procs.common import say
from procs.soak_common import API_KEY


class _TracedConnection:
    """Forwards to the store's DuckDB connection; logs each transaction statement with the
    catalog's latest snapshot id after it (diagnostics for a commit that leaves no trace)."""

    def __init__(self, real: Any, storage: Any, log: IO[str]) -> None:
        self._real = real
        self._storage = storage
        self._log = log
        self._lock = threading.Lock()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)

    def execute(self, sql: Any, *args: Any, **kwargs: Any) -> Any:
        text = sql if isinstance(sql, str) else ""
        word = text.lstrip().split(None, 1)[0].upper() if text.strip() else "?"
        try:
            result = self._real.execute(sql, *args, **kwargs)
        except BaseException as error:
            self._write(f"{word} raised {type(error).__name__}: {str(error)[:200]}")
            raise
        if word in ("BEGIN", "COMMIT", "ROLLBACK"):
            self._write(f"{word} snapshot={self._storage.snapshot_id()}")
        elif word == "INSERT" and "stored_events" in text:
            self._write("INSERT stored_events")
        return result

    def _write(self, line: str) -> None:
        with self._lock:
            self._log.write(f"{time.time():.6f} {threading.get_ident()} {line}\n")
            self._log.flush()


class _AnnouncingServer(uvicorn.Server):
    """Says the port once started, so the parent never polls a closed socket."""

    def __init__(self, config: uvicorn.Config, port: int) -> None:
        super().__init__(config)
        self._port = port

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        say(f"listening {self._port}")


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("store", type=Path)
    parser.add_argument("--close-interval", type=float, default=1.0)
    parser.add_argument("--trace", type=Path, help="log transaction statements to this file")
    args = parser.parse_args(argv)
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    with engine.open(args.store) as store:
        if args.trace:
            storage = store._storage
            storage._connection = _TracedConnection(  # type: ignore[assignment]
                storage._connection, storage, args.trace.open("a")
            )
        # The default rate limit and group commit, as `usage-engine serve` runs; a short close
        # interval so the background closer races the backfiller's own closes.
        app = create_app(store, api_keys=[API_KEY], close_interval=args.close_interval)
        config = uvicorn.Config(app, log_level="warning", access_log=False, workers=1)
        _AnnouncingServer(config, port).run(sockets=[listener])
    listener.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
