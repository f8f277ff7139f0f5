"""Hostile HTTP input (issue 7, item 3): malformed JSON, wrong types, oversized batches, naive
and out-of-range times, NaN and Infinity, 10 000-property events, 1 MB strings, and generated
filters, metrics and event bodies, sent to a real server on loopback.

Every request must get a 4xx with Orb's error body (never a 500), and must change nothing: the
store's tables are read before and after and compared whole. The number of requests sent is
printed at the end of the module.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import httpx
import orb
import pytest
from http_support import ORB_ERRORS, Env, assert_problem
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from procs.common import DAY, HOUR, NOW, OLD

from engine.http.limits import MAX_IDENTIFIER_LENGTH, MAX_PROPERTIES, MAX_STRING_LENGTH
from engine.schema import TABLES

COUNTS: Counter[str] = Counter()
MEGABYTE = 1_000_000
LIVE = (NOW - HOUR).isoformat().replace("+00:00", "Z")
#: Statuses a hostile request may get, and the Orb error types that go with them.
CLIENT_ERRORS = {
    400: {
        "400-constraint-violation",
        "400-request-validation-errors",
        "400-duplicate-resource-creation",
    },
    404: {"404-resource-not-found", "404-url-not-found"},
    409: {"409-resource-conflict"},
    413: {"413-request-too-large"},
}


@pytest.fixture(scope="module", autouse=True)
def _report(request: pytest.FixtureRequest) -> Iterator[None]:
    yield
    capture = request.config.pluginmanager.getplugin("capturemanager")
    with capture.global_and_fixture_disabled():
        sent = sum(count for name, count in COUNTS.items() if ":" not in name)
        print(f"\nhostile http: {sent} requests {json.dumps(dict(COUNTS))}")


def snapshot(env: Env) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of every table of the store (tests keep the store small)."""
    return {
        table.name: env.store.sql(f"SELECT * FROM lake.main.{table.name} ORDER BY ALL").fetchall()
        for table in TABLES
    }


def lake_version(env: Env) -> int:
    """The store's latest DuckLake snapshot: any write, even one rolled back half way, would
    have to commit one. Cheap enough to read around every request."""
    (row,) = env.store.sql("SELECT max(snapshot_id) FROM ducklake_snapshots('lake')").fetchall()
    return int(row[0])


@pytest.fixture
def unchanged(env: Env) -> Iterator[None]:
    """The test changes no row of any table (checked whole, after the test's setup)."""
    before = snapshot(env)
    yield
    assert snapshot(env) == before


def live_event(key: str, **fields: Any) -> dict[str, Any]:
    body = {
        "idempotency_key": key,
        "event_name": "api_call",
        "timestamp": LIVE,
        "external_customer_id": "acme",
        "properties": {"tokens": 1},
    }
    body.update(fields)
    return body


@pytest.fixture
def seeded(env: Env, client: orb.Orb) -> dict[str, str]:
    """A store with a customer, a metric, live events and a pending backfill to attack."""
    customer = client.customers.create(
        name="Acme", email="a@acme.test", external_customer_id="acme"
    )
    metric = client.metrics.create(
        name="calls", sql="SELECT count(*) FROM events", item_id="i", description=None
    )
    client.events.ingest(events=[live_event(f"seed-{n}") for n in range(3)])
    backfill = client.events.backfills.create(
        timeframe_start=OLD, timeframe_end=OLD + DAY, replace_existing_events=False
    )
    return {"customer": customer.id, "metric": metric.id, "backfill": backfill.id}


def assert_refused_unchanged(
    env: Env, http: httpx.Client, method: str, path: str, *, counter: str, **request: Any
) -> dict[str, Any]:
    """Send one request; it gets a 4xx with Orb's body and the store is left as it was."""
    before = lake_version(env)
    COUNTS[counter] += 1
    response = http.request(method, path, **request)
    assert response.status_code in CLIENT_ERRORS, (response.status_code, response.text[:500])
    body = response.json()
    kind = body.get("type", "").removeprefix(ORB_ERRORS)
    assert kind in CLIENT_ERRORS[response.status_code], body
    assert_problem(body, response.status_code, kind)
    assert response.headers.get("x-should-retry") == "false"
    # Problems are listed per event, but a megabyte of input is never echoed back.
    assert len(response.content) < 200_000, len(response.content)
    assert lake_version(env) == before
    return dict(body)


# -- malformed bodies ----------------------------------------------------------------------------

BODY_ROUTES = [
    ("POST", "/v1/ingest"),
    ("POST", "/v1/ingest?backfill_id={backfill}"),
    ("POST", "/v1/events/backfills"),
    ("POST", "/v1/customers"),
    ("POST", "/v1/metrics"),
    ("POST", "/v1/events/search"),
    ("PUT", "/v1/events/seed-0"),
]
MALFORMED = {
    "not json": b"{not json",
    "empty": b"",
    "open bracket": b"[",
    "null": b"null",
    "array": b"[]",
    "string": b'"events"',
    "number": b"42",
    "missing value": b'{"events": }',
    "trailing garbage": b'{"events": []} trailing',
    "trailing comma": b'{"events": [],}',
    "single quotes": b"{'events': []}",
    "invalid utf-8": b'{"events": ["\xff\xfe"]}',
    "lone surrogate escape": b'{"name": "\\ud800", "email": "a@b", "sql": "x"}',
    "100 000 nested arrays": b'{"events": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
    "50 000 nested objects": b'{"events": [' + b'{"a":' * 50_000 + b"1" + b"}" * 50_000 + b"]}",
    "NaN": b'{"events": NaN, "timeframe_start": NaN, "name": NaN, "event_ids": NaN}',
    "Infinity": b'{"events": Infinity, "timeframe_start": -Infinity, "name": Infinity}',
}


def test_malformed_bodies_are_400(
    env: Env, http: httpx.Client, seeded: dict[str, str], unchanged: None
) -> None:
    for method, path in BODY_ROUTES:
        for name, body in MALFORMED.items():
            started = time.perf_counter()
            assert_refused_unchanged(
                env,
                http,
                method,
                path.format(**seeded),
                content=body,
                headers={"Content-Type": "application/json"},
                counter="malformed",
            )
            assert time.perf_counter() - started < 20, name
        # JSON sent as a form or as text is not read as JSON.
        for content_type in ["application/x-www-form-urlencoded", "text/plain"]:
            assert_refused_unchanged(
                env,
                http,
                method,
                path.format(**seeded),
                content=b"events=1",
                headers={"Content-Type": content_type},
                counter="malformed",
            )


# -- wrong types, oversized values, times, numbers -----------------------------------------------


def ingest_cases() -> dict[str, Any]:
    event = live_event
    return {
        "events is an object": {"events": {}},
        "events is a string": {"events": "x"},
        "event is a number": {"events": [1]},
        "event is null": {"events": [None]},
        "key is a number": {"events": [event("k", idempotency_key=1)]},
        "key is empty": {"events": [event("")]},
        "name is a list": {"events": [event("k", event_name=["a"])]},
        "timestamp is a number": {"events": [event("k", timestamp=1_700_000_000)]},
        "timestamp is naive": {"events": [event("k", timestamp="2024-03-10T11:00:00")]},
        "timestamp is a date": {"events": [event("k", timestamp="2024-03-10")]},
        "offset +25:00": {"events": [event("k", timestamp="2024-03-10T11:00:00+25:00")]},
        "February 30": {"events": [event("k", timestamp="2024-02-30T11:00:00Z")]},
        "year 1 at +01:00": {"events": [event("k", timestamp="0001-01-01T00:00:00+01:00")]},
        "year 9999 at -01:00": {"events": [event("k", timestamp="9999-12-31T23:59:59-01:00")]},
        "timestamp in the future": {"events": [event("k", timestamp="2030-01-01T00:00:00Z")]},
        "properties is a list": {"events": [event("k", properties=[1])]},
        "properties is null": {"events": [event("k", properties=None)]},
        "nested property": {"events": [event("k", properties={"a": {"b": 1}})]},
        "null property": {"events": [event("k", properties={"a": None})]},
        "list property": {"events": [event("k", properties={"a": [1]})]},
        "int beyond int64": {"events": [event("k", properties={"a": 2**64})]},
        "int of 400 digits": {"events": [event("k", properties={"a": 10**400})]},
        "both customer ids": {"events": [event("k", customer_id="c")]},
        "no customer id": {"events": [{**event("k"), "external_customer_id": None}]},
        "unknown customer_id": {
            "events": [{**event("k", customer_id="nope"), "external_customer_id": None}]
        },
        "unknown event field": {"events": [event("k", colour="red")]},
        "unknown body field": {"events": [event("k")], "colour": "red"},
        "10 000 properties": {
            "events": [event("k", properties={f"p{i}": i for i in range(10_000)})]
        },
        f"{MAX_PROPERTIES + 1} properties": {
            "events": [event("k", properties={f"p{i}": i for i in range(MAX_PROPERTIES + 1)})]
        },
        "1 MB property value": {"events": [event("k", properties={"a": "x" * MEGABYTE})]},
        "1 MB property name": {"events": [event("k", properties={"a" * MEGABYTE: 1})]},
        "1 MB idempotency key": {"events": [event("k" * MEGABYTE)]},
        "1 MB event name": {"events": [event("k", event_name="n" * MEGABYTE)]},
        "1 MB external id": {"events": [event("k", external_customer_id="c" * MEGABYTE)]},
        "string just over the limit": {
            "events": [event("k", properties={"a": "x" * (MAX_STRING_LENGTH + 1)})]
        },
        "key just over the limit": {"events": [event("k" * (MAX_IDENTIFIER_LENGTH + 1))]},
        "one bad event in 500": {
            "events": [event(f"ok-{n}") for n in range(499)] + [event("bad", timestamp="x")]
        },
        "same key, two bodies": {"events": [event("k"), event("k", event_name="other")]},
    }


def test_bad_ingest_bodies_are_400_and_write_nothing(
    env: Env, http: httpx.Client, seeded: dict[str, str], unchanged: None
) -> None:
    for case, body in ingest_cases().items():
        for path in ["/v1/ingest", f"/v1/ingest?backfill_id={seeded['backfill']}"]:
            refused = assert_refused_unchanged(env, http, "POST", path, json=body, counter="ingest")
            assert refused["status"] == 400, case


def test_nan_and_infinity_numbers_are_400(
    env: Env, http: httpx.Client, seeded: dict[str, str], unchanged: None
) -> None:
    """Python's JSON reader takes NaN, Infinity and 1e400 (as inf); none may be stored."""
    template = json.dumps({"events": [live_event("k", properties={"a": "@"})]})
    for number in ["NaN", "Infinity", "-Infinity", "1e400", "-1e400"]:
        body = template.replace('"@"', number).encode()
        refused = assert_refused_unchanged(
            env, http, "POST", "/v1/ingest", content=body,
            headers={"Content-Type": "application/json"}, counter="numbers",
        )  # fmt: skip
        assert refused["type"].endswith("400-request-validation-errors")
        assert "finite" in json.dumps(refused["validation_errors"]), refused
    for query in ["nan", "inf", "1e400", "-1", "abc", "10000000000000000000000"]:
        assert_refused_unchanged(
            env, http, "GET", "/v1/customers", params={"limit": query}, counter="numbers"
        )


def test_oversized_batches_are_413(
    env: Env, http: httpx.Client, seeded: dict[str, str], unchanged: None
) -> None:
    for count in [501, 5_000, 60_000]:
        events = [live_event(f"big-{n}") for n in range(count)]
        body = json.dumps({"events": events}).encode()
        refused = assert_refused_unchanged(
            env, http, "POST", "/v1/ingest", content=body,
            headers={"Content-Type": "application/json"}, counter="oversized",
        )  # fmt: skip
        assert refused["status"] == 413, (count, len(body))
    # Over the 8 MiB body limit, whatever it holds; refused before it is read whole.
    padding = b" " * (9 * 1024 * 1024)
    refused = assert_refused_unchanged(
        env, http, "POST", "/v1/ingest", content=b'{"events": []' + padding + b"}",
        headers={"Content-Type": "application/json"}, counter="oversized",
    )  # fmt: skip
    assert refused["status"] == 413


def other_route_cases(seeded: dict[str, str]) -> list[tuple[str, str, dict[str, Any]]]:
    day = {"timeframe_start": "2024-03-01T00:00:00Z", "timeframe_end": "2024-03-02T00:00:00Z"}
    customer = {"name": "B", "email": "b@b.test", "external_customer_id": "b"}
    metric = {"name": "m", "sql": "SELECT count(*) FROM events"}
    return [
        # backfills
        ("POST", "/v1/events/backfills", {**day, "timeframe_start": 1_700_000_000}),
        ("POST", "/v1/events/backfills", {**day, "timeframe_start": "2024-03-01T00:00:00"}),
        ("POST", "/v1/events/backfills", {**day, "timeframe_end": "2024-03-02T00:00:00+99:00"}),
        ("POST", "/v1/events/backfills", {**day, "timeframe_start": "9999-12-31T23:00:00-05:00"}),
        ("POST", "/v1/events/backfills", {**day, "replace_existing_events": "yes"}),
        ("POST", "/v1/events/backfills", {**day, "deprecation_filter": 5}),
        ("POST", "/v1/events/backfills", {**day, "deprecation_filter": "x" * MEGABYTE}),
        ("POST", "/v1/events/backfills", {**day, "deprecation_filter": "a = 1; DROP TABLE x"}),
        ("POST", "/v1/events/backfills", {**day, "external_customer_id": "c" * MEGABYTE}),
        ("POST", "/v1/events/backfills", {**day, "customer_id": ["x"]}),
        ("POST", "/v1/events/backfills", {**day, "close_time": "tomorrow"}),
        ("POST", "/v1/events/backfills", {**day, "timeframe_end": "2024-02-01T00:00:00Z"}),
        # customers
        ("POST", "/v1/customers", {**customer, "name": 5}),
        ("POST", "/v1/customers", {**customer, "email": None}),
        ("POST", "/v1/customers", {**customer, "external_customer_id": ""}),
        ("POST", "/v1/customers", {**customer, "name": "n" * MEGABYTE}),
        ("POST", "/v1/customers", {**customer, "email": "e" * MEGABYTE}),
        ("POST", "/v1/customers", {**customer, "external_customer_id": "x" * MEGABYTE}),
        ("POST", "/v1/customers", {**customer, "external_customer_id": "acme"}),
        # metrics
        ("POST", "/v1/metrics", {**metric, "sql": 5}),
        ("POST", "/v1/metrics", {**metric, "name": None}),
        ("POST", "/v1/metrics", {**metric, "name": "m" * MEGABYTE}),
        ("POST", "/v1/metrics", {**metric, "description": "d" * MEGABYTE}),
        ("POST", "/v1/metrics", {**metric, "sql": "SELECT count(*) FROM events " * 40_000}),
        ("POST", "/v1/metrics", {**metric, "metadata": {f"k{i}": "v" for i in range(10_000)}}),
        ("POST", "/v1/metrics", {**metric, "metadata": {"k": "v" * MEGABYTE}}),
        ("POST", "/v1/metrics", {**metric, "metadata": []}),
        ("POST", "/v1/metrics", {**metric, "sql": "SELECT count(*) FROM events; DROP TABLE x"}),
        # events
        ("POST", "/v1/events/search", {"event_ids": "seed-0"}),
        ("POST", "/v1/events/search", {"event_ids": ["k"] * 100_000}),
        ("POST", "/v1/events/search", {"event_ids": ["k" * MEGABYTE]}),
        ("POST", "/v1/events/search", {"event_ids": ["seed-0"], "timeframe_start": "yesterday"}),
        ("PUT", "/v1/events/seed-0", {"event_name": "x", "timestamp": LIVE, "properties": []}),
        (
            "PUT",
            "/v1/events/seed-0",
            {"event_name": "x", "timestamp": "2024-03-10T11:00:00", "properties": {}},
        ),
        (
            "PUT",
            "/v1/events/seed-0",
            {
                "event_name": "x",
                "timestamp": LIVE,
                "external_customer_id": "acme",
                "properties": {f"p{i}": 1 for i in range(10_000)},
            },
        ),
        (
            "PUT",
            "/v1/events/seed-0",
            {
                "event_name": "x" * MEGABYTE,
                "timestamp": LIVE,
                "external_customer_id": "acme",
                "properties": {},
            },
        ),
        (
            "PUT",
            "/v1/events/seed-0",
            {
                "event_name": "x",
                "timestamp": LIVE,
                "external_customer_id": "acme",
                "properties": {"a": "v" * MEGABYTE},
            },
        ),
    ]


def test_bad_bodies_on_other_routes_are_4xx_and_write_nothing(
    env: Env, http: httpx.Client, seeded: dict[str, str], unchanged: None
) -> None:
    for method, path, body in other_route_cases(seeded):
        refused = assert_refused_unchanged(env, http, method, path, json=body, counter="routes")
        assert refused["status"] in (400, 404, 409), (path, body)


def test_bad_query_parameters_are_400(
    env: Env, http: httpx.Client, seeded: dict[str, str], unchanged: None
) -> None:
    usage = {
        "metric_id": seeded["metric"],
        "timeframe_start": "2024-03-01T00:00:00Z",
        "timeframe_end": "2024-03-02T00:00:00Z",
    }
    for path, params in [
        ("/v1/usage", {**usage, "timeframe_start": "2024-03-01T00:00:00"}),
        ("/v1/usage", {**usage, "timeframe_end": "2024-03-02T00:00:00+24:00"}),
        ("/v1/usage", {**usage, "granularity": "week"}),
        ("/v1/usage", {**usage, "as_of": "yesterday"}),
        ("/v1/usage", {**usage, "as_of": "2024-03-01T00:00:00"}),
        ("/v1/usage", {**usage, "group_by": "x" * 10_000}),
        ("/v1/usage", {**usage, "colour": "red"}),
        ("/v1/events/volume", {"timeframe_start": "2024-03-01T00:00:00"}),
        ("/v1/events/volume", {"timeframe_start": "NaN"}),
        ("/v1/customers", {"created_at[gte]": "2024-03-01"}),
        ("/v1/customers", {"cursor": "x" * 10_000}),
        ("/v1/metrics", {"status": "deleted"}),
        ("/v1/events/backfills", {"limit": "0"}),
    ]:
        assert_refused_unchanged(env, http, "GET", path, params=params, counter="query")


def test_event_times_must_be_utc_other_times_are_converted(client: orb.Orb, env: Env) -> None:
    """An event's timestamp must be UTC (``Z`` or ``+00:00``), as Orb's ingest asks: another
    offset is a 400 naming UTC. Other request times (a backfill's timeframe) take any offset and
    are converted (docs/http.md)."""
    with pytest.raises(orb.RequestValidationError) as raised:
        client.events.ingest(events=[live_event("kolkata", timestamp="2024-03-10T16:30:00+05:30")])
    assert "UTC" in json.dumps(raised.value.body["validation_errors"])
    backfill = client.events.backfills.create(
        timeframe_start="2024-03-01T05:30:00+05:30", timeframe_end="2024-03-01T19:00:00-05:00",
        replace_existing_events=False,
    )  # fmt: skip
    assert backfill.timeframe_start.isoformat() == "2024-03-01T00:00:00+00:00"
    assert backfill.timeframe_end.isoformat() == "2024-03-02T00:00:00+00:00"
    client.events.backfills.revert(backfill.id)
    COUNTS["times"] += 3


def test_the_sdk_raises_its_own_classes(client: orb.Orb, env: Env) -> None:
    before = snapshot(env)
    with pytest.raises(orb.RequestValidationError) as raised:
        client.events.ingest(events=[live_event("k", properties={"a": "x" * MEGABYTE})])
    assert "at most" in json.dumps(raised.value.body["validation_errors"])
    with pytest.raises(orb.ConstraintViolation):
        client.events.backfills.create(
            timeframe_start=OLD, timeframe_end=OLD + HOUR, deprecation_filter="(" * 100
        )
    with pytest.raises(orb.RequestTooLarge):
        client.events.ingest(events=[live_event(f"k{n}") for n in range(501)])
    COUNTS["sdk"] += 3
    assert snapshot(env) == before


# -- generated attacks -------------------------------------------------------------------------

FILTER_FRAGMENTS = [
    "tokens", "model", "(", ")", "=", "1", "'x'", "AND", "OR", "NOT", ";", "DROP TABLE events",
    "--", "/*", "*/", "read_csv('/etc/passwd')", "getenv('HOME')", "(SELECT 1)", "COPY", "ATTACH",
    "PRAGMA", "\u202e", "\u00a0", "'", '"', "\\", "CASE", "WHEN", "THEN", "END", "::INTERVAL",
]  # fmt: skip


def run_counted(counter: str, examples: int, test: Any) -> None:
    before = COUNTS[counter]
    settings(
        max_examples=examples,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
    )(test)()
    assert COUNTS[counter] - before >= 0.9 * examples, (counter, COUNTS[counter] - before)


def test_generated_deprecation_filters(
    env: Env, http: httpx.Client, seeded: dict[str, str]
) -> None:
    """Hostile filters through backfill creation: a clean 400, or (when the text happens to
    be a valid filter) a backfill, which is then reverted; never a 500."""
    created: list[str] = []

    @given(words=st.lists(st.sampled_from(FILTER_FRAGMENTS), min_size=1, max_size=10))
    def generated(words: list[str]) -> None:
        body = {
            "timeframe_start": (OLD - 10 * DAY).isoformat(),
            "timeframe_end": (OLD - 9 * DAY).isoformat(),
            "deprecation_filter": " ".join(words),
        }
        COUNTS["filters"] += 1
        before = lake_version(env)
        response = http.post("/v1/events/backfills", json=body)
        if response.status_code == 200:
            COUNTS["filters:accepted"] += 1
            created.append(response.json()["id"])
            assert http.post(f"/v1/events/backfills/{created[-1]}/revert").status_code == 200
            return
        assert response.status_code == 400, response.text[:300]
        assert_problem(response.json(), 400, "400-constraint-violation")
        assert lake_version(env) == before

    run_counted("filters", 100, generated)


METRIC_FRAGMENTS = [
    "SELECT", "count(*)", "sum(tokens)", "FROM", "events", "WHERE", "tokens > 1", "GROUP BY",
    "model", ";", "DROP TABLE events", "--", "/* x */", "read_csv('/etc/passwd')", "UNION",
    "(SELECT 1)", "getenv('HOME')", "COPY events TO '/tmp/x'", "ATTACH 'x'", "\u202e", "'",
]  # fmt: skip


def test_generated_metrics(env: Env, http: httpx.Client, seeded: dict[str, str]) -> None:
    @given(words=st.lists(st.sampled_from(METRIC_FRAGMENTS), min_size=1, max_size=10))
    def generated(words: list[str]) -> None:
        COUNTS["metrics"] += 1
        before = lake_version(env)
        response = http.post("/v1/metrics", json={"name": "m", "sql": " ".join(words)})
        if response.status_code == 201:  # a valid metric by chance: it is a metric
            COUNTS["metrics:accepted"] += 1
            return
        assert response.status_code == 400, response.text[:300]
        assert_problem(response.json(), 400, "400-constraint-violation")
        assert lake_version(env) == before

    run_counted("metrics", 100, generated)


json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=30),
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=10), inner, max_size=4)
    ),
    max_leaves=12,
)
event_fields = st.fixed_dictionaries(
    {},
    optional={
        "idempotency_key": st.one_of(st.text(max_size=20), json_values),
        "event_name": st.one_of(st.text(max_size=20), json_values),
        "timestamp": st.one_of(
            st.sampled_from(["2024-03-10T11:00:00", "2024-03-10T11:00:00+25:00", "x", ""]),
            json_values,
        ),
        "external_customer_id": st.one_of(st.text(max_size=20), json_values),
        "customer_id": st.one_of(st.text(max_size=20), json_values),
        "properties": json_values,
        "extra": json_values,
    },
)


def test_generated_event_bodies(
    env: Env, http: httpx.Client, seeded: dict[str, str], unchanged: None
) -> None:
    """Events whose every field may have any JSON value, and whose timestamp is never valid:
    each batch is refused whole with a 400, never a 500, and nothing is written."""

    @given(events=st.lists(event_fields, min_size=1, max_size=5))
    def generated(events: list[dict[str, Any]]) -> None:
        COUNTS["events"] += 1
        body = json.dumps({"events": events}, allow_nan=True).encode()
        before = lake_version(env)
        response = http.post(
            "/v1/ingest", content=body, headers={"Content-Type": "application/json"}
        )
        assert response.status_code == 400, response.text[:300]
        assert_problem(response.json(), 400, response.json()["type"].removeprefix(ORB_ERRORS))
        assert lake_version(env) == before

    run_counted("events", 80, generated)
