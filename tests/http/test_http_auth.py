"""API keys (environment and hashed file), the rate limiter, and the background closer."""

from __future__ import annotations

import json
import stat
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orb
import pytest
from http_support import API_KEY, Env, assert_problem
from procs.common import DAY, HOUR, NOW, OLD, event

from engine.http import RateLimit, create_api_key
from engine.http.auth import API_KEYS_FILE, ApiKeys
from engine.http.ratelimit import RateLimiter


@pytest.fixture
def keys_file(env: Env) -> Iterator[Path]:
    """The shared store's api_keys.json, removed afterwards so other tests see no file keys."""
    path = env.path / API_KEYS_FILE
    yield path
    path.unlink(missing_ok=True)


def status(base_url: str, key: str) -> int:
    return httpx.get(
        f"{base_url}/v1/customers", headers={"Authorization": f"Bearer {key}"}
    ).status_code


def test_keys_from_the_environment(start_server: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("USAGE_ENGINE_API_KEYS", " first-key, second-key ,,")
    base_url = start_server(api_keys=None)
    assert status(base_url, "first-key") == 200
    assert status(base_url, "second-key") == 200
    assert status(base_url, "first-key,second-key") == 401
    assert status(base_url, API_KEY) == 401


def test_created_keys_are_stored_hashed_and_work_at_once(env: Env, keys_file: Path) -> None:
    key = create_api_key(env.path)
    other = create_api_key(env.path)
    assert key.startswith("ue_") and len(key) > 40 and key != other
    text = keys_file.read_text()
    assert key not in text and key[8:] not in text  # only hashes and a short prefix
    entries = json.loads(text)["keys"]
    assert len(entries) == 2 and {len(e["salt"]) for e in entries} == {32}
    assert stat.S_IMODE(keys_file.stat().st_mode) == 0o600
    # The running server re-reads the file: no restart needed.
    assert status(env.base_url, key) == 200
    assert status(env.base_url, other) == 200
    assert status(env.base_url, key[:-1]) == 401
    with orb.Orb(api_key=key, base_url=f"{env.base_url}/v1", max_retries=0) as client:
        assert client.customers.list().data == []


def test_concurrent_key_creation_loses_none(tmp_path: Path) -> None:
    keys: list[str] = []
    threads = [
        threading.Thread(target=lambda: keys.append(create_api_key(tmp_path))) for _ in range(8)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    accepted = ApiKeys([], file=tmp_path / API_KEYS_FILE)
    assert len({accepted.authenticate(key) for key in keys}) == 8
    assert accepted.authenticate("ue_nope") is None


def test_a_server_without_keys_says_how_to_make_one(start_server: Any, keys_file: Path) -> None:
    assert not keys_file.exists()
    base_url = start_server(api_keys=[])
    response = httpx.get(f"{base_url}/v1/customers", headers={"Authorization": "Bearer x"})
    assert_problem(response.json(), 401, "401-authentication-error")
    assert "api-keys create" in response.json()["detail"]


def test_token_bucket_refills_at_its_rate() -> None:
    now = [0.0]
    limiter = RateLimiter(RateLimit(requests_per_second=2.0, burst=3), monotonic=lambda: now[0])
    assert [limiter.acquire("a") for _ in range(3)] == [None, None, None]
    assert limiter.acquire("a") == pytest.approx(0.5)
    assert limiter.acquire("b") is None  # one bucket per key
    now[0] = 0.5
    assert limiter.acquire("a") is None
    now[0] = 100.0  # refills up to the burst, not beyond
    assert [limiter.acquire("a") is None for _ in range(4)] == [True, True, True, False]
    with pytest.raises(ValueError):
        RateLimit(requests_per_second=0, burst=1)


def test_due_backfills_close_in_the_background(env: Env, start_server: Any) -> None:
    base_url = start_server(close_interval=0.05)
    with orb.Orb(api_key=API_KEY, base_url=f"{base_url}/v1", max_retries=0) as client:
        backfill = client.events.backfills.create(
            timeframe_start=OLD,
            timeframe_end=OLD + DAY,
            replace_existing_events=False,
            close_time=NOW + HOUR,
        )
        client.events.ingest(events=[event("late", OLD.isoformat())], backfill_id=backfill.id)
        time.sleep(0.3)
        assert client.events.backfills.fetch(backfill.id).status == "pending"
        env.clock.advance(2 * HOUR)
        deadline = time.monotonic() + 20
        while client.events.backfills.fetch(backfill.id).status == "pending":
            assert time.monotonic() < deadline, "the background task did not close the backfill"
            time.sleep(0.05)
        closed = client.events.backfills.fetch(backfill.id)
        assert closed.status == "reflected" and closed.close_time == NOW + 2 * HOUR
        found = client.events.search(event_ids=["late"], timeframe_start=OLD, timeframe_end=NOW)
        assert [e.id for e in found.data] == ["late"]
