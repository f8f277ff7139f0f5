"""API keys and rate limits (issue 7, item 4): keys are stored hashed, checked in constant time
against every known key, rate-limited per key under a concurrent burst (measured against the
token bucket), and scoped to one store: a key of store A is refused by store B's server.

The burst figures are printed at the end of the module.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import stat
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import orb
import pytest
from http_support import ServerThread, assert_problem
from procs.common import HOUR, NOW, FakeClock

import engine
from engine.http import RateLimit, auth, create_api_key, create_app
from engine.http.auth import API_KEYS_FILE, ApiKeys
from engine.http.idempotency import IDEMPOTENCY_FILE

FIGURES: dict[str, Any] = {}


@pytest.fixture(scope="module", autouse=True)
def _report(request: pytest.FixtureRequest) -> Iterator[None]:
    yield
    capture = request.config.pluginmanager.getplugin("capturemanager")
    with capture.global_and_fixture_disabled():
        print(f"\nkeys and limits: {json.dumps(FIGURES)}")


def get(base_url: str, key: str, path: str = "/v1/customers") -> httpx.Response:
    return httpx.get(f"{base_url}{path}", headers={"Authorization": f"Bearer {key}"}, timeout=60)


# -- keys at rest ------------------------------------------------------------------------------


def test_key_file_holds_no_plaintext_key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The file keeps a salted SHA-256 and an 8-character prefix: neither the key, nor any
    longer piece of it, nor its unsalted hash, nor its hex or UTF-8 bytes appear in it; and the
    idempotency store, which is keyed per API key, does not hold the key either."""
    monkeypatch.delenv("USAGE_ENGINE_API_KEYS", raising=False)
    store_path = tmp_path / "store"
    keys = [create_api_key(store_path) for _ in range(3)]
    raw = (store_path / API_KEYS_FILE).read_bytes()
    assert stat.S_IMODE((store_path / API_KEYS_FILE).stat().st_mode) == 0o600
    for key in keys:
        secret = key.removeprefix("ue_")
        pieces = {secret[i : i + 12] for i in range(len(secret) - 11)}  # every 12-char window
        assert not any(piece.encode() in raw for piece in pieces), "part of a key is stored"
        assert key.encode().hex().encode() not in raw
        assert hashlib.sha256(key.encode()).hexdigest().encode() not in raw
    entries = json.loads(raw)["keys"]
    assert {len(bytes.fromhex(entry["salt"])) for entry in entries} == {16}
    assert len({entry["salt"] for entry in entries}) == 3  # one salt per key
    FIGURES["key_file_bytes_scanned"] = len(raw)

    # Use a key for an idempotent write, then look for it in every file of the store folder.
    clock = FakeClock(NOW)
    with engine.open(store_path, clock=clock) as store:
        server = ServerThread(create_app(store, api_keys=[], close_interval=None, clock=clock))
        server.start()
        try:
            response = httpx.post(
                f"{server.base_url}/v1/customers",
                json={"name": "A", "email": "a@a.test", "external_customer_id": "a"},
                headers={"Authorization": f"Bearer {keys[0]}", "Idempotency-Key": "one"},
            )
            assert response.status_code == 201, response.text
        finally:
            server.stop()
    assert (store_path / IDEMPOTENCY_FILE).exists()
    scanned = 0
    for path in store_path.rglob("*"):
        if path.is_file():
            content = path.read_bytes()
            scanned += 1
            assert keys[0].encode() not in content, path
            assert keys[0].removeprefix("ue_")[:20].encode() not in content, path
    FIGURES["store_files_scanned_for_keys"] = scanned


def test_keys_are_compared_in_constant_time_against_every_key(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``hmac.compare_digest`` over salted digests, once per known key whichever matches (no
    early exit), so neither which key matched nor how much of it shows in the time taken."""
    source = inspect.getsource(ApiKeys.authenticate)
    assert "hmac.compare_digest(" in source
    assert "==" not in source and "startswith" not in source and "return record" not in source
    calls: list[tuple[int, int]] = []
    real = auth.hmac.compare_digest

    def counting(a: bytes, b: bytes) -> bool:
        calls.append((len(a), len(b)))
        return real(a, b)

    monkeypatch.setattr(auth.hmac, "compare_digest", counting)
    keys = [f"key-{n}-0123456789" for n in range(5)]
    accepted = ApiKeys(keys, file=None)
    for presented in [keys[0], keys[4], "wrong", keys[2][:-1], ""]:
        calls.clear()
        accepted.authenticate(presented)
        # Every record is compared, always over two 32-byte digests (never the raw key).
        assert calls == [(32, 32)] * len(keys), presented
    assert accepted.authenticate(keys[3]) is not None
    assert accepted.authenticate(keys[3] + " ") is None


# -- rate limits under a burst -------------------------------------------------------------------


def burst(base_url: str, key: str, requests: int, workers: int) -> tuple[list[int], float]:
    """``requests`` concurrent GETs with one key; their statuses and the seconds they took."""
    barrier = threading.Barrier(workers)
    with httpx.Client(
        base_url=base_url,
        headers={"Authorization": f"Bearer {key}"},
        timeout=60,
        limits=httpx.Limits(max_connections=workers, max_keepalive_connections=workers),
    ) as client:

        def one(index: int) -> int:
            if index < workers:
                barrier.wait()  # the first wave leaves together
            response = client.get("/v1/customers")
            if response.status_code == 429:
                assert_problem(response.json(), 429, "429-too-many-requests")
                assert int(response.headers["retry-after"]) >= 1
                assert int(response.headers["retry-after-ms"]) >= 1
                assert "x-should-retry" not in response.headers  # 429 stays retryable
            return response.status_code

        started = time.perf_counter()
        with ThreadPoolExecutor(max_workers=workers) as pool:
            statuses = list(pool.map(one, range(requests)))
        return statuses, time.perf_counter() - started


def test_rate_limit_holds_under_a_concurrent_burst(start_server: Callable[..., str]) -> None:
    """N concurrent requests with one key against a bucket of ``burst`` tokens refilling at
    ``rate``: the admitted count is ``burst`` plus at most what refilled while the burst ran
    (plus one for a token part-filled at the start); the rest are 429s. A second key's bucket
    is untouched by the first key's burst."""
    rate, capacity, sent, workers = 2.0, 40, 160, 32
    base_url = start_server(
        api_keys=["key-a", "key-b"], rate_limit=RateLimit(requests_per_second=rate, burst=capacity)
    )
    burst_started = time.perf_counter()
    statuses, elapsed = burst(base_url, "key-a", sent, workers)
    burst_ended = time.perf_counter()
    admitted = statuses.count(200)
    throttled = statuses.count(429)
    assert admitted + throttled == sent, sorted(set(statuses))
    refill = rate * elapsed
    assert capacity <= admitted <= capacity + refill + 1, (admitted, elapsed)

    # The other key has its whole bucket: every one of `capacity` requests passes.
    other, _ = burst(base_url, "key-b", capacity, workers)
    assert other.count(200) == capacity, other

    # The first key's bucket refills at `rate`, and no faster: over the whole window it admits
    # at most its burst plus what refilled (the server may take a burst's last token before
    # the client sees the answer, so the window is counted from the first burst's start).
    time.sleep(3.0)
    refilled, _ = burst(base_url, "key-a", 40, 20)
    since_burst = time.perf_counter() - burst_ended
    window = time.perf_counter() - burst_started
    assert refilled.count(200) >= rate * 3.0 - 1, (refilled.count(200), since_burst)
    assert admitted + refilled.count(200) <= capacity + rate * window + 1, (
        admitted,
        refilled.count(200),
        window,
    )
    FIGURES["burst"] = {
        "rate_per_s": rate, "burst": capacity, "sent": sent, "workers": workers,
        "admitted": admitted, "throttled": throttled, "seconds": round(elapsed, 2),
        "admitted_bound": round(capacity + refill + 1, 1),
        "second_key_admitted": other.count(200), "second_key_sent": capacity,
        "admitted_after_pause": refilled.count(200),
        "pause_s": round(since_burst, 2),
    }  # fmt: skip


def test_a_throttled_key_is_not_charged_for_anothers_requests(
    start_server: Callable[..., str],
) -> None:
    """Interleaved bursts of two keys against tiny buckets: each key gets its own burst."""
    base_url = start_server(
        api_keys=["key-a", "key-b"], rate_limit=RateLimit(requests_per_second=0.01, burst=5)
    )
    with ThreadPoolExecutor(max_workers=16) as pool:
        statuses = list(
            pool.map(lambda n: (n % 2, get(base_url, f"key-{'ab'[n % 2]}").status_code), range(40))
        )
    for key in (0, 1):
        mine = [status for who, status in statuses if who == key]
        assert mine.count(200) == 5 and mine.count(429) == 15, mine


# -- one key set per store -----------------------------------------------------------------------


@pytest.fixture
def two_stores(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[list[tuple[engine.Store, str, str]]]:
    """Two stores, each with its own created key, each served by its own server:
    ``(store, key, base_url)`` twice."""
    monkeypatch.delenv("USAGE_ENGINE_API_KEYS", raising=False)
    clock = FakeClock(NOW)
    opened: list[tuple[engine.Store, str, str]] = []
    servers: list[ServerThread] = []
    try:
        for name in ("a", "b"):
            store = engine.open(tmp_path / name, clock=clock)
            key = create_api_key(tmp_path / name)
            server = ServerThread(
                create_app(store, api_keys=None, close_interval=None, clock=clock)
            )
            servers.append(server.start())
            opened.append((store, key, server.base_url))
        yield opened
    finally:
        for server in servers:
            server.stop()
        for store, _, _ in opened:
            store.close()


def test_a_key_of_one_store_is_refused_by_another(
    two_stores: list[tuple[engine.Store, str, str]],
) -> None:
    (store_a, key_a, url_a), (store_b, key_b, url_b) = two_stores
    headers_b = {"Authorization": f"Bearer {key_b}"}
    customer = httpx.post(
        f"{url_b}/v1/customers",
        json={"name": "B", "email": "b@b.test", "external_customer_id": "b"},
        headers=headers_b,
    ).json()
    event = {
        "idempotency_key": "e1", "event_name": "call", "timestamp": (NOW - HOUR).isoformat(),
        "external_customer_id": "b", "properties": {"tokens": 1},
    }  # fmt: skip
    assert httpx.post(f"{url_b}/v1/ingest", json={"events": [event]}, headers=headers_b).is_success
    before_b = store_b.sql("SELECT count(*) FROM lake.main.stored_events").fetchall()

    assert get(url_a, key_a).status_code == 200
    assert get(url_b, key_b).status_code == 200
    tried = 0
    paths = ["/v1/customers", f"/v1/customers/{customer['id']}", "/v1/metrics",
             "/v1/customers/external_customer_id/b", "/v1/events/backfills"]  # fmt: skip
    for path in paths:
        for key, url in [(key_a, url_b), (key_b, url_a)]:
            response = get(url, key, path)
            assert response.status_code == 401, (path, response.text)
            assert_problem(response.json(), 401, "401-authentication-error")
            tried += 1
    # Writes with A's key change nothing in B.
    refused = httpx.post(
        f"{url_b}/v1/ingest",
        json={"events": [{**event, "idempotency_key": "e2"}]},
        headers={"Authorization": f"Bearer {key_a}"},
    )
    assert refused.status_code == 401
    assert store_b.sql("SELECT count(*) FROM lake.main.stored_events").fetchall() == before_b
    assert store_a.sql("SELECT count(*) FROM lake.main.stored_events").fetchall() == [(0,)]
    with (
        orb.Orb(api_key=key_a, base_url=f"{url_b}/v1", max_retries=0) as sdk,
        pytest.raises(orb.AuthenticationError),
    ):
        sdk.customers.fetch(customer["id"])
    FIGURES["cross_store_requests_refused"] = tried + 2
