"""Fixtures for the HTTP API tests: a real uvicorn server on a loopback port, in a thread, over
a store with a fake clock, driven by the official ``orb-billing`` SDK.

Opening a store costs about a second, so one store and one server serve the whole session and
the store is emptied before each test (as ``tests/conftest.py`` does for its shared store).
Tests that need other server settings (rate limits, the background closer, a restart) start
extra servers over the same store with ``start_server``; they are cheap.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import httpx
import orb
import pytest
from http_support import API_KEY, Env, ServerThread
from procs.common import NOW, FakeClock
from sqlglot import exp

import engine
from engine.http import create_app
from engine.queries import table_ref
from engine.schema import TABLES


@pytest.fixture(scope="session")
def _http_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    clock = FakeClock(NOW)
    store = engine.open(tmp_path_factory.mktemp("http") / "store", clock=clock)
    # No rate limit and no background closer here: tests that need them start their own.
    app = create_app(store, api_keys=[API_KEY], rate_limit=None, close_interval=None, clock=clock)
    server = ServerThread(app).start()
    try:
        yield Env(store=store, clock=clock, base_url=server.base_url)
    finally:
        server.stop()
        store.close()


@pytest.fixture
def env(_http_env: Env) -> Env:
    """The shared server, over an emptied store, with its clock back at ``NOW``."""
    _http_env.clock.now = NOW
    storage = _http_env.store._storage
    with storage.write():
        for table in TABLES:
            storage.execute(exp.delete(table_ref(table)))
    return _http_env


@pytest.fixture
def client(env: Env) -> Iterator[orb.Orb]:
    """The official SDK pointed at the server; no retries, so each call is one request."""
    with orb.Orb(api_key=API_KEY, base_url=f"{env.base_url}/v1", max_retries=0) as sdk:
        yield sdk


@pytest.fixture
def http(env: Env) -> Iterator[httpx.Client]:
    """A raw HTTP client with the API key, for what the SDK does not expose."""
    with httpx.Client(
        base_url=env.base_url, headers={"Authorization": f"Bearer {API_KEY}"}, timeout=30
    ) as raw:
        yield raw


@pytest.fixture
def start_server(env: Env) -> Iterator[Callable[..., str]]:
    """Start another server over ``env.store`` with other ``create_app`` settings; returns
    its base URL. Stopped after the test."""
    servers: list[ServerThread] = []

    def start(**settings: Any) -> str:
        settings.setdefault("api_keys", [API_KEY])
        settings.setdefault("close_interval", None)
        settings.setdefault("clock", env.clock)
        server = ServerThread(create_app(env.store, **settings)).start()
        servers.append(server)
        return server.base_url

    yield start
    for server in servers:
        server.stop()
