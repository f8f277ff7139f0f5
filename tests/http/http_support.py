"""Helpers shared by the HTTP tests and their conftest (a module of its own, so that test modules
do not import ``conftest``, a name every conftest in the tree shares)."""

from __future__ import annotations

import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import uvicorn
from procs.common import FakeClock

import engine

API_KEY = "test-key-0123456789"
ORB_ERRORS = "https://docs.withorb.com/reference/error-responses#"


class ServerThread:
    """uvicorn serving ``app`` on a free 127.0.0.1 port, in a daemon thread."""

    def __init__(self, app: Any) -> None:
        # Binding here (port 0) and handing uvicorn the socket means no race for the port.
        self._socket = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._socket.bind(("127.0.0.1", 0))
        self.port = self._socket.getsockname()[1]
        self.base_url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(app, log_level="warning", lifespan="on", access_log=False)
        self.server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=self.server.run, kwargs={"sockets": [self._socket]}, daemon=True
        )

    def start(self) -> ServerThread:
        self._thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the test server did not start")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self._thread.join(timeout=20)
        self._socket.close()


@dataclass
class Env:
    store: engine.Store
    clock: FakeClock
    base_url: str

    @property
    def path(self) -> Path:
        return self.store.path


def assert_problem(body: Any, status: int, kind: str) -> None:
    """``body`` is Orb's RFC 7807 error body of ``status`` and type ``#<kind>``."""
    assert isinstance(body, dict), body
    assert body["type"] == ORB_ERRORS + kind, body
    assert body["status"] == status, body
    assert isinstance(body["title"], str) and body["title"], body
    assert isinstance(body["detail"], str) and body["detail"], body
