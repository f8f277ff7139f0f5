"""Orb's error model: for each error, the status, the RFC 7807 body and the SDK's exception."""

from __future__ import annotations

import re
from typing import Any

import httpx
import orb
import pytest
from http_support import API_KEY, ORB_ERRORS, Env, assert_problem
from procs.common import DAY, HOUR, NOW, OLD, event

from engine.http import RateLimit


def sdk(base_url: str, api_key: str = API_KEY) -> orb.Orb:
    return orb.Orb(api_key=api_key, base_url=f"{base_url}/v1", max_retries=0)


# -- 401 ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("header", [None, "Bearer wrong-key", f"Basic {API_KEY}", "Bearer"])
def test_missing_or_wrong_key_is_401(env: Env, header: str | None) -> None:
    headers = {"Authorization": header} if header else {}
    response = httpx.get(f"{env.base_url}/v1/customers", headers=headers)
    assert response.status_code == 401
    assert_problem(response.json(), 401, "401-authentication-error")


def test_sdk_raises_orb_authentication_error(env: Env) -> None:
    with (
        sdk(env.base_url, api_key="wrong") as client,
        pytest.raises(orb.AuthenticationError) as raised,
    ):
        client.customers.list()
    assert isinstance(raised.value, orb.OrbAuthenticationError)
    assert_problem(raised.value.body, 401, "401-authentication-error")


def test_authentication_comes_before_everything_else(env: Env) -> None:
    # Unknown route, malformed body, huge batch: an anonymous client learns none of it.
    for method, path, body in [
        ("GET", "/v1/nope", None),
        ("POST", "/v1/ingest", b"{not json"),
        ("POST", "/v1/ingest", b'{"events": [' + b",".join([b"{}"] * 501) + b"]}"),
    ]:
        response = httpx.request(method, f"{env.base_url}{path}", content=body)
        assert response.status_code == 401, (path, response.text)


# -- 404 ---------------------------------------------------------------------------------------


def test_unknown_url_is_404_url_not_found(client: orb.Orb, http: httpx.Client) -> None:
    response = http.get("/v1/no/such/route")
    assert response.status_code == 404
    assert_problem(response.json(), 404, "404-url-not-found")
    assert http.get("/nowhere").status_code == 404  # outside /v1 too, without a key
    with pytest.raises(orb.URLNotFound) as raised:
        client.get("/no/such/route", cast_to=object)
    assert_problem(raised.value.body, 404, "404-url-not-found")


def test_wrong_method_is_405_with_allow(http: httpx.Client) -> None:
    response = http.delete("/v1/customers")
    assert response.status_code == 405
    assert set(response.headers["allow"].replace(" ", "").split(",")) == {"GET", "POST"}
    body = response.json()
    assert body["type"] == ORB_ERRORS + "404-url-not-found" and body["status"] == 405


@pytest.mark.parametrize(
    "call",
    [
        lambda c: c.customers.fetch("missing"),
        lambda c: c.customers.fetch_by_external_id("missing"),
        lambda c: c.metrics.fetch("missing"),
        lambda c: c.events.backfills.fetch("missing"),
        lambda c: c.events.backfills.close("missing"),
        lambda c: c.events.ingest(events=[], backfill_id="missing"),
    ],
    ids=["customer", "external-customer", "metric", "backfill", "close", "ingest-into"],
)
def test_missing_resource_is_404_resource_not_found(client: orb.Orb, call: Any) -> None:
    with pytest.raises(orb.ResourceNotFound) as raised:
        call(client)
    assert raised.value.status_code == 404
    assert_problem(raised.value.body, 404, "404-resource-not-found")
    assert "missing" in raised.value.body["detail"]


# -- 400 ---------------------------------------------------------------------------------------


def test_constraint_violation(client: orb.Orb) -> None:
    with pytest.raises(orb.ConstraintViolation) as raised:
        client.events.backfills.create(timeframe_start=OLD, timeframe_end=OLD - HOUR)
    assert_problem(raised.value.body, 400, "400-constraint-violation")
    assert "timeframe_start" in raised.value.body["detail"]


def test_filter_outside_the_grammar_names_the_construct(client: orb.Orb) -> None:
    with pytest.raises(orb.ConstraintViolation) as raised:
        client.events.backfills.create(
            timeframe_start=OLD, timeframe_end=OLD + HOUR, deprecation_filter="x IN (SELECT 1)"
        )
    assert "select" in raised.value.body["detail"].lower()


def test_duplicate_resource_creation(client: orb.Orb) -> None:
    client.customers.create(name="A", email="a@example.com", external_customer_id="dup")
    with pytest.raises(orb.DuplicateResourceCreation) as raised:
        client.customers.create(name="B", email="b@example.com", external_customer_id="dup")
    assert_problem(raised.value.body, 400, "400-duplicate-resource-creation")


def test_framework_validation_is_orb_400_never_422(http: httpx.Client, client: orb.Orb) -> None:
    for response in [
        http.post("/v1/customers", json={"name": "no email"}),
        http.post("/v1/customers", json={"name": "A", "email": "a@x", "colour": "red"}),
        http.post(
            "/v1/events/backfills",
            content=b"{not json",
            headers={"Content-Type": "application/json"},
        ),
        http.get("/v1/customers", params={"limit": 0}),
        http.get("/v1/events/volume"),
        http.post(
            "/v1/events/backfills",
            json={"timeframe_start": "2024-01-01T00:00:00", "timeframe_end": "x"},
        ),
    ]:
        assert response.status_code == 400, response.text
        body = response.json()
        assert_problem(body, 400, "400-request-validation-errors")
        assert body["validation_errors"] and all(
            "loc" in e and "msg" in e for e in body["validation_errors"]
        )
    with pytest.raises(orb.RequestValidationError):
        client.events.search(event_ids=[])


def test_nul_characters_are_refused(http: httpx.Client) -> None:
    response = http.post(
        "/v1/customers", json={"name": "A", "email": "a@x", "external_customer_id": "a\x00b"}
    )
    assert_problem(response.json(), 400, "400-constraint-violation")
    assert http.get("/v1/customers/a%00b").status_code == 400
    # An escaped backslash followed by "u0000" is six ordinary characters, not a NUL.
    ok = http.post(
        "/v1/customers", json={"name": "A", "email": "a@x", "external_customer_id": "a\\u0000"}
    )
    assert ok.status_code == 201, ok.text


def test_invalid_cursor_is_400(http: httpx.Client) -> None:
    for path in ["/v1/customers", "/v1/metrics", "/v1/events/backfills"]:
        response = http.get(path, params={"cursor": "not-a-cursor"})
        assert_problem(response.json(), 400, "400-constraint-violation")
    response = http.get(
        "/v1/events/volume", params={"timeframe_start": NOW.isoformat(), "cursor": "eA=="}
    )
    assert_problem(response.json(), 400, "400-constraint-violation")


# -- 409 ---------------------------------------------------------------------------------------


def test_resource_conflict_is_not_retried_by_the_sdk(env: Env) -> None:
    # The SDK retries 409 by default; the server says these are final (x-should-retry: false).
    with orb.Orb(api_key=API_KEY, base_url=f"{env.base_url}/v1", max_retries=3) as client:
        backfill = client.events.backfills.create(
            timeframe_start=OLD, timeframe_end=OLD + HOUR, replace_existing_events=False
        )
        client.events.backfills.revert(backfill.id)
        with pytest.raises(orb.ResourceConflict) as raised:
            client.events.backfills.close(backfill.id)
        assert raised.value.response.headers["x-should-retry"] == "false"
        assert_problem(raised.value.body, 409, "409-resource-conflict")
        with pytest.raises(orb.ResourceConflict):
            client.events.ingest(events=[event("k", OLD.isoformat())], backfill_id=backfill.id)


def test_overlapping_backfill_is_409(client: orb.Orb) -> None:
    client.events.backfills.create(
        timeframe_start=OLD, timeframe_end=OLD + DAY, replace_existing_events=False
    )
    with pytest.raises(orb.ResourceConflict) as raised:
        client.events.backfills.create(
            timeframe_start=OLD + HOUR, timeframe_end=OLD + 2 * HOUR, replace_existing_events=False
        )
    assert "overlaps" in raised.value.body["detail"]


# -- 413 ---------------------------------------------------------------------------------------


def test_more_than_500_events_is_413(client: orb.Orb) -> None:
    events = [event(f"k{n}", (NOW - HOUR).isoformat()) for n in range(501)]
    with pytest.raises(orb.RequestTooLarge) as raised:
        client.events.ingest(events=events)
    assert raised.value.status_code == 413
    assert_problem(raised.value.body, 413, "413-request-too-large")
    assert client.events.search(event_ids=["k0"]).data == []


def test_body_over_the_limit_is_413(start_server: Any) -> None:
    base_url = start_server(max_body_bytes=2_000)
    with sdk(base_url) as client, pytest.raises(orb.RequestTooLarge) as raised:
        client.events.ingest(events=[event(f"k{n}", NOW.isoformat()) for n in range(40)])
    assert_problem(raised.value.body, 413, "413-request-too-large")

    def chunks() -> Any:  # no Content-Length: the gate counts as the body streams in
        for _ in range(10):
            yield b" " * 500

    response = httpx.post(
        f"{base_url}/v1/ingest", content=chunks(), headers={"Authorization": f"Bearer {API_KEY}"}
    )
    assert response.status_code == 413
    assert_problem(response.json(), 413, "413-request-too-large")


# -- 429 ---------------------------------------------------------------------------------------


def test_rate_limit_is_429_with_retry_after(start_server: Any) -> None:
    base_url = start_server(rate_limit=RateLimit(requests_per_second=0.2, burst=2))
    with sdk(base_url) as client:
        client.customers.list()
        client.customers.list()
        with pytest.raises(orb.TooManyRequests) as raised:
            client.customers.list()
    assert isinstance(raised.value, orb.RateLimitError)
    assert_problem(raised.value.body, 429, "429-too-many-requests")
    assert 1 <= int(raised.value.response.headers["retry-after"]) <= 5


def test_rate_limit_buckets_are_per_key(start_server: Any) -> None:
    base_url = start_server(
        api_keys=["key-a", "key-b"], rate_limit=RateLimit(requests_per_second=0.1, burst=1)
    )
    with sdk(base_url, "key-a") as a, sdk(base_url, "key-b") as b:
        a.customers.list()
        b.customers.list()
        with pytest.raises(orb.TooManyRequests):
            a.customers.list()


# -- 500 ---------------------------------------------------------------------------------------


def test_unexpected_error_is_500_without_internals(
    client: orb.Orb, env: Env, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def boom(customer_id: str) -> None:
        raise RuntimeError("secret: /var/lib/store/catalog.sqlite is corrupt")

    monkeypatch.setattr(env.store.customers, "get", boom)
    with pytest.raises(orb.InternalServerError) as raised:
        client.customers.fetch("anything")
    assert isinstance(raised.value, orb.OrbInternalServerError)
    body = raised.value.body
    assert_problem(body, 500, "500-internal-server-error")
    assert (
        "secret" not in raised.value.response.text
        and "RuntimeError" not in raised.value.response.text
    )
    assert any("RuntimeError" in r.getMessage() for r in caplog.records)  # but it is logged


# -- every route -------------------------------------------------------------------------------


def _operations(http: httpx.Client) -> list[tuple[str, str]]:
    document = http.get("/openapi.json").json()
    return [
        (method.upper(), path)
        for path, item in document["paths"].items()
        for method in item
        if path.startswith("/v1")
    ]


def test_error_shape_on_every_route(http: httpx.Client, env: Env) -> None:
    """Datasette's test_error_shape: every route's 4xx is Orb's body, whatever the route."""
    operations = _operations(http)
    assert len(operations) == 19  # Orb's 17 plus usage and preview
    for method, path in operations:
        url = re.sub(r"\{[^}]+\}", "does-not-exist", path)
        anonymous = httpx.request(method, f"{env.base_url}{url}")
        assert anonymous.status_code == 401, (method, path)
        assert_problem(anonymous.json(), 401, "401-authentication-error")
        # With a key: a body that is not an object, or bad query values, or a missing resource.
        response = http.request(
            method,
            url,
            params={"limit": "0", "timeframe_start": "yesterday"},
            content=b"[]" if method in ("POST", "PUT") else None,
            headers={"Content-Type": "application/json"},
        )
        assert 400 <= response.status_code < 500, (method, path, response.text)
        body = response.json()
        assert set(body) >= {"type", "status", "title", "detail"}, (method, path, body)
        assert body["status"] == response.status_code and body["type"].startswith(ORB_ERRORS)


def test_openapi_documents_orb_errors_and_no_422(http: httpx.Client) -> None:
    document = http.get("/openapi.json").json()
    assert document["components"]["securitySchemes"]["APIKeyAuth"]["scheme"] == "bearer"
    for path, item in document["paths"].items():
        for method, operation in item.items():
            codes = set(operation["responses"])
            assert "422" not in codes, (method, path)
            assert {"400", "401", "404", "409", "413", "429", "500"} <= codes, (method, path)
    assert "/v1/usage" in document["paths"]
    assert "/v1/events/backfills/{backfill_id}/preview" in document["paths"]


def test_unknown_query_parameters_are_refused(http: httpx.Client) -> None:
    # A misspelt filter silently ignored would answer with more than was asked for.
    response = http.get("/v1/events/backfills", params={"customerid": "c1"})
    body = response.json()
    assert_problem(body, 400, "400-request-validation-errors")
    assert body["validation_errors"][0]["loc"] == ["query", "customerid"]
    assert http.get("/v1/customers", params={"created_at[gte]": NOW.isoformat()}).status_code == 200


def test_times_without_a_utc_equivalent_are_400(http: httpx.Client) -> None:
    response = http.get(
        "/v1/events/volume", params={"timeframe_start": "0001-01-01T00:30:00+01:00"}
    )
    assert_problem(response.json(), 400, "400-request-validation-errors")
    naive = http.get("/v1/events/volume", params={"timeframe_start": "2024-03-10T00:00:00"})
    assert_problem(naive.json(), 400, "400-request-validation-errors")
    late = http.get(
        "/v1/events/volume",
        params={"timeframe_start": "9999-12-31T22:00:00Z", "timeframe_end": "9999-12-31T23:30:00Z"},
    )
    assert late.status_code == 200, late.text
