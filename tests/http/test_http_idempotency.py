"""Idempotency-Key: replays within 48 h, 409 on reuse for another request, survives restarts."""

from __future__ import annotations

import threading
import time
from datetime import timedelta
from typing import Any

import httpx
import orb
import pytest
from http_support import API_KEY, Env, assert_problem
from procs.common import DAY, HOUR, NOW, OLD, event

BACKFILL = {
    "timeframe_start": OLD.isoformat(),
    "timeframe_end": (OLD + DAY).isoformat(),
    "replace_existing_events": False,
}


def test_same_key_same_request_replays_the_first_response(client: orb.Orb) -> None:
    first = client.events.backfills.with_raw_response.create(**BACKFILL, idempotency_key="create-1")
    second = client.events.backfills.with_raw_response.create(
        **BACKFILL, idempotency_key="create-1"
    )
    assert "idempotent-replayed" not in first.headers
    assert second.headers["idempotent-replayed"] == "true"
    assert second.parse().id == first.parse().id
    assert second.http_response.content == first.http_response.content
    assert [b.id for b in client.events.backfills.list().data] == [first.parse().id]


def test_same_key_different_request_is_409(client: orb.Orb) -> None:
    client.customers.create(name="A", email="a@example.com", idempotency_key="reused")
    with pytest.raises(orb.ResourceConflict) as raised:
        client.customers.create(name="B", email="b@example.com", idempotency_key="reused")
    assert_problem(raised.value.body, 409, "409-resource-conflict")
    assert "Idempotency-Key" in raised.value.body["detail"]
    # The same key on another route is another request too.
    with pytest.raises(orb.ResourceConflict):
        client.metrics.create(
            name="m",
            sql="SELECT count(*) FROM events",
            description=None,
            item_id="i",
            idempotency_key="reused",
        )


def test_keys_are_scoped_to_the_api_key(start_server: Any) -> None:
    base_url = start_server(api_keys=["key-a", "key-b"])
    body = {"name": "A", "email": "a@example.com"}
    ids = set()
    for key in ("key-a", "key-b"):
        response = httpx.post(
            f"{base_url}/v1/customers",
            json=body,
            headers={"Authorization": f"Bearer {key}", "Idempotency-Key": "shared"},
        )
        assert response.status_code == 201 and "idempotent-replayed" not in response.headers
        ids.add(response.json()["id"])
    assert len(ids) == 2


def test_failed_requests_are_not_kept(client: orb.Orb) -> None:
    # Refused requests changed nothing, so the key stays free: a corrected request may use it.
    bad = {**BACKFILL, "timeframe_end": BACKFILL["timeframe_start"]}
    for _ in range(2):
        with pytest.raises(orb.ConstraintViolation) as raised:
            client.events.backfills.with_raw_response.create(**bad, idempotency_key="k")
        assert "idempotent-replayed" not in raised.value.response.headers
    assert client.events.backfills.create(**BACKFILL, idempotency_key="k").status == "pending"


def test_replays_survive_a_restart(client: orb.Orb, start_server: Any) -> None:
    first = client.events.ingest(
        events=[event("i1", (NOW - HOUR).isoformat())],
        extra_query={"debug": "true"},
        idempotency_key="ingest-1",
    )
    # A new app over the same store folder reads the replay table from idempotency.sqlite.
    base_url = start_server()
    with orb.Orb(api_key=API_KEY, base_url=f"{base_url}/v1", max_retries=0) as restarted:
        again = restarted.events.with_raw_response.ingest(
            events=[event("i1", (NOW - HOUR).isoformat())],
            extra_query={"debug": "true"},
            idempotency_key="ingest-1",
        )
    assert again.headers["idempotent-replayed"] == "true"
    assert (
        again.parse().to_dict()
        == first.to_dict()
        == {
            "validation_failed": [],
            "debug": {"duplicate": [], "ingested": ["i1"]},
        }
    )


def test_replays_expire_after_48_hours(client: orb.Orb, env: Env) -> None:
    first = client.customers.create(name="A", email="a@example.com", idempotency_key="old")
    env.clock.advance(timedelta(hours=47))
    assert (
        client.customers.create(name="A", email="a@example.com", idempotency_key="old").id
        == first.id
    )
    env.clock.advance(timedelta(hours=2))
    assert (
        client.customers.create(name="A", email="a@example.com", idempotency_key="old").id
        != first.id
    )


def test_concurrent_requests_with_one_key_run_once(env: Env) -> None:
    responses: list[httpx.Response] = []

    def create() -> None:
        responses.append(
            httpx.post(
                f"{env.base_url}/v1/events/backfills",
                json=BACKFILL,
                headers={"Authorization": f"Bearer {API_KEY}", "Idempotency-Key": "race"},
                timeout=30,
            )
        )

    threads = [threading.Thread(target=create) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert [r.status_code for r in responses] == [200] * 4
    assert len({r.json()["id"] for r in responses}) == 1
    assert sum(r.headers.get("idempotent-replayed") == "true" for r in responses) == 3
    assert len(env.store.backfills.list().data) == 1


def test_sdk_retry_after_a_timeout_never_creates_two_backfills(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first attempt times out on the client while the server still creates the backfill;
    the SDK retries with the same Idempotency-Key, waits for the first attempt and gets its
    response."""
    create = env.store.backfills.create
    calls = []

    def slow_create(**kwargs: Any) -> Any:
        calls.append(kwargs)
        time.sleep(1.0)
        return create(**kwargs)

    monkeypatch.setattr(env.store.backfills, "create", slow_create)
    with orb.Orb(
        api_key=API_KEY, base_url=f"{env.base_url}/v1", max_retries=2, timeout=0.5
    ) as client:
        response = client.events.backfills.with_raw_response.create(**BACKFILL)
    assert response.retries_taken >= 1
    assert response.headers["idempotent-replayed"] == "true"
    assert len(calls) == 1
    assert [b.id for b in env.store.backfills.list().data] == [response.parse().id]


def test_malformed_idempotency_key_is_400(http: httpx.Client) -> None:
    response = http.post(
        "/v1/customers", json={"name": "A", "email": "a@x"}, headers={"Idempotency-Key": "k" * 300}
    )
    assert_problem(response.json(), 400, "400-constraint-violation")
