"""The official ``orb-billing`` SDK, unchanged, against the server: every Orb route we serve."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import httpx
import orb
import pytest
from http_support import Env, assert_problem
from procs.common import DAY, HOUR, NOW, OLD, event


def iso(moment: datetime) -> str:
    return moment.isoformat()


def live_events(
    keys: list[str], at: datetime = NOW - HOUR, **properties: Any
) -> list[dict[str, Any]]:
    return [event(key, iso(at), **properties) for key in keys]


# -- customers ---------------------------------------------------------------------------------


def test_customers_create_fetch_and_list_newest_first(client: orb.Orb, env: Env) -> None:
    created = []
    for n in range(5):
        env.clock.advance(timedelta(seconds=1))
        created.append(
            client.customers.create(
                name=f"C{n}", email=f"c{n}@example.com", external_customer_id=f"ext-{n}"
            )
        )
    first = created[0]
    assert first.name == "C0" and first.email == "c0@example.com"
    assert first.external_customer_id == "ext-0"
    assert first.created_at == NOW + timedelta(seconds=1)
    assert first.balance == "0.00" and first.metadata == {} and first.hierarchy.children == []
    assert client.customers.fetch(first.id).id == first.id
    assert client.customers.fetch_by_external_id("ext-3").id == created[3].id

    page = client.customers.list(limit=2)
    assert [c.id for c in page.data] == [created[4].id, created[3].id]
    assert page.pagination_metadata.has_more and page.pagination_metadata.next_cursor
    # The SDK follows next_cursor by itself.
    assert [c.id for c in client.customers.list(limit=2)] == [c.id for c in reversed(created)]
    after = client.customers.list(created_at_gt=NOW + timedelta(seconds=3))
    assert [c.id for c in after.data] == [created[4].id, created[3].id]


# -- live ingest -------------------------------------------------------------------------------


def test_live_ingest_reports_duplicates_in_debug(client: orb.Orb, http: httpx.Client) -> None:
    response = client.events.ingest(events=live_events(["k1", "k2"]))
    assert response.validation_failed == []
    assert "debug" not in response.to_dict()

    again = client.events.ingest(
        events=live_events(["k2", "k3"]), extra_query={"debug": "true"}
    ).to_dict()
    assert again == {
        "validation_failed": [],
        "debug": {"duplicate": ["k2"], "ingested": ["k3"]},
    }
    found = client.events.search(event_ids=["k1", "k2", "k3", "unknown"])
    assert sorted(e.id for e in found.data) == ["k1", "k2", "k3"]
    assert all(not e.deprecated and e.external_customer_id == "acme" for e in found.data)
    assert found.data[0].properties == {"tokens": 1}


def test_live_batch_with_an_invalid_event_is_refused_whole(client: orb.Orb) -> None:
    batch = [
        *live_events(["good"]),
        event("too-old", iso(NOW - 2 * DAY)),
        {
            "idempotency_key": "bad-shape",
            "event_name": "x",
            "timestamp": iso(NOW),
            "properties": {},
        },
    ]
    with pytest.raises(orb.RequestValidationError) as raised:
        client.events.ingest(events=batch)
    body = raised.value.body
    assert_problem(body, 400, "400-request-validation-errors")
    by_key = {e["idempotency_key"]: e["validation_errors"] for e in body["validation_errors"]}
    assert set(by_key) == {"too-old", "bad-shape"}
    assert any("backfill" in message for message in by_key["too-old"])  # says what to do instead
    assert client.events.search(event_ids=["good"]).data == []  # nothing was written


# -- backfills ---------------------------------------------------------------------------------


def _sum_usage(http: httpx.Client, metric_id: str, start: datetime, end: datetime) -> float:
    response = http.get(
        "/v1/usage",
        params={
            "metric_id": metric_id,
            "timeframe_start": iso(start),
            "timeframe_end": iso(end),
            "external_customer_id": "acme",
            "granularity": "none",
        },
    )
    assert response.status_code == 200, response.text
    return sum(row["value"] for row in response.json()["data"])


def test_backfill_create_ingest_preview_close_revert(
    client: orb.Orb, http: httpx.Client, env: Env
) -> None:
    metric = client.metrics.create(
        name="tokens", sql="SELECT sum(tokens) FROM events", description=None, item_id="item"
    )
    day = OLD.replace(hour=0)
    env.clock.now = day + 2 * HOUR  # live events for that day arrive on that day
    client.events.ingest(events=[event(f"old-{n}", iso(day + HOUR), tokens=10) for n in range(3)])
    env.clock.now = NOW
    assert _sum_usage(http, metric.id, day, day + DAY) == 30

    backfill = client.events.backfills.create(
        timeframe_start=day, timeframe_end=day + DAY, external_customer_id="acme"
    )
    assert backfill.status == "pending" and backfill.replace_existing_events
    assert backfill.close_time == NOW + DAY and backfill.events_ingested == 0
    assert backfill.reverted_at is None and backfill.deprecation_filter is None

    response = client.events.ingest(
        events=[event(f"fix-{n}", iso(day + 2 * HOUR), tokens=4) for n in range(2)],
        backfill_id=backfill.id,
        extra_query={"debug": "true"},
    )
    assert response.to_dict()["debug"] == {"duplicate": [], "ingested": ["fix-0", "fix-1"]}
    assert client.events.backfills.fetch(backfill.id).events_ingested == 2
    assert _sum_usage(http, metric.id, day, day + DAY) == 30  # nothing visible before close

    preview = http.get(f"/v1/events/backfills/{backfill.id}/preview")
    assert preview.status_code == 200, preview.text
    (row,) = preview.json()["data"]
    assert row["metric_id"] == metric.id and row["external_customer_id"] == "acme"
    assert (row["before"], row["after"], row["delta"]) == (30, 8, -22)
    assert row["timeframe_start"] == "2024-03-07T00:00:00Z"
    assert row["timeframe_end"] == "2024-03-08T00:00:00Z"

    closed = client.events.backfills.close(backfill.id)
    assert closed.status == "reflected" and closed.close_time == NOW
    assert _sum_usage(http, metric.id, day, day + DAY) == 8
    old = client.events.search(
        event_ids=["old-0", "fix-0"], timeframe_start=day, timeframe_end=day + DAY
    )
    assert {e.id: e.deprecated for e in old.data} == {"old-0": True, "fix-0": False}

    reverted = client.events.backfills.revert(backfill.id)
    assert reverted.status == "reverted" and reverted.reverted_at == NOW
    assert _sum_usage(http, metric.id, day, day + DAY) == 30


def test_backfills_list_paginates_newest_first(client: orb.Orb, env: Env) -> None:
    created = []
    for n in range(5):
        start = OLD.replace(hour=0) - n * DAY
        created.append(
            client.events.backfills.create(
                timeframe_start=start, timeframe_end=start + DAY, replace_existing_events=False
            )
        )
    page = client.events.backfills.list(limit=2)
    assert [b.id for b in page.data] == [created[4].id, created[3].id]
    assert page.pagination_metadata.has_more
    assert [b.id for b in client.events.backfills.list(limit=2)] == [
        b.id for b in reversed(created)
    ]
    last = client.events.backfills.list(limit=5)
    assert not last.pagination_metadata.has_more and last.pagination_metadata.next_cursor is None
    fetched = client.events.backfills.fetch(created[2].id)
    assert fetched.timeframe_start == created[2].timeframe_start
    assert fetched.replace_existing_events is False


def test_backfill_with_filter_and_customer_id(client: orb.Orb) -> None:
    customer = client.customers.create(
        name="Acme", email="a@example.com", external_customer_id="acme"
    )
    day = OLD.replace(hour=0)
    backfill = client.events.backfills.create(
        timeframe_start=day,
        timeframe_end=day + DAY,
        customer_id=customer.id,
        deprecation_filter="region = 'eu'",
        close_time=NOW + HOUR,
    )
    assert backfill.customer_id == customer.id
    assert backfill.deprecation_filter == "region = 'eu'"
    assert backfill.close_time == NOW + HOUR
    assert backfill.to_dict()["external_customer_id"] == "acme"


# -- events ------------------------------------------------------------------------------------


def test_search_with_timeframe_and_volume(client: orb.Orb, env: Env) -> None:
    client.events.ingest(
        events=[
            *live_events(["a1", "a2"], at=NOW - 3 * HOUR),
            *live_events(["b1"], at=NOW - 2 * HOUR + timedelta(minutes=30)),
        ]
    )
    in_window = client.events.search(
        event_ids=["a1", "a2", "b1"], timeframe_start=NOW - 3 * HOUR, timeframe_end=NOW - 2 * HOUR
    )
    assert sorted(e.id for e in in_window.data) == ["a1", "a2"]
    assert in_window.data[0].timestamp == NOW - 3 * HOUR

    volume = client.events.volume.list(timeframe_start=NOW - DAY, timeframe_end=NOW)
    assert [(v.timeframe_start, v.timeframe_end, v.count) for v in volume.data] == [
        (NOW - 3 * HOUR, NOW - 2 * HOUR, 2),
        (NOW - 2 * HOUR, NOW - HOUR, 1),
    ]
    # Pages of one hour; an unaligned end includes the hour it falls in, as Orb documents.
    first = client.events.volume.list(
        timeframe_start=NOW - DAY, timeframe_end=NOW - 2 * HOUR + timedelta(minutes=1), limit=1
    )
    cursor = first.to_dict()["pagination_metadata"]["next_cursor"]
    assert [v.count for v in first.data] == [2] and cursor
    second = client.events.volume.list(
        timeframe_start=NOW - DAY, timeframe_end=NOW - HOUR, limit=1, cursor=cursor
    )
    assert [v.count for v in second.data] == [1]
    assert second.to_dict()["pagination_metadata"] == {"has_more": False, "next_cursor": None}


def test_amend_and_deprecate(client: orb.Orb, http: httpx.Client) -> None:
    metric = client.metrics.create(
        name="tokens", sql="SELECT sum(tokens) FROM events", description="Tokens", item_id="i"
    )
    at = NOW - HOUR
    client.events.ingest(events=[event("e1", iso(at), tokens=5), event("e2", iso(at), tokens=7)])
    amended = client.events.update(
        "e1",
        event_name="api_call",
        timestamp=at,
        properties={"tokens": 50},
        external_customer_id="acme",
    )
    assert amended.amended == "e1"
    (found,) = client.events.search(event_ids=["e1"]).data
    assert found.properties == {"tokens": 50} and not found.deprecated

    assert client.events.deprecate("e2").deprecated == "e2"
    (gone,) = client.events.search(event_ids=["e2"]).data
    assert gone.deprecated
    assert _sum_usage(http, metric.id, NOW - DAY, NOW + HOUR) == 50

    with pytest.raises(orb.ConstraintViolation):  # an amendment keeps the timestamp
        client.events.update(
            "e1",
            event_name="api_call",
            timestamp=at + HOUR,
            properties={"tokens": 1},
            external_customer_id="acme",
        )
    with pytest.raises(orb.ResourceNotFound):
        client.events.deprecate("never-ingested")


# -- metrics and usage -------------------------------------------------------------------------


def test_metrics_create_fetch_list(client: orb.Orb, env: Env) -> None:
    created = []
    for n in range(3):
        env.clock.advance(timedelta(seconds=1))
        created.append(
            client.metrics.create(
                name=f"m{n}",
                sql="SELECT count(*) FROM events WHERE event_name = 'api_call'",
                description=f"metric {n}",
                item_id="ignored",
                metadata={"team": "billing", "dropped": None},
            )
        )
    metric = client.metrics.fetch(created[0].id)
    assert metric.name == "m0" and metric.description == "metric 0" and metric.status == "active"
    assert metric.metadata == {"team": "billing"}
    assert metric.sql.startswith("SELECT count(*)") and metric.item.id
    assert [m.id for m in client.metrics.list(limit=2)] == [m.id for m in reversed(created)]
    with pytest.raises(orb.ConstraintViolation):
        client.metrics.create(name="bad", sql="DROP TABLE events", description=None, item_id="i")


def test_usage_by_hour_grouped_and_as_of(client: orb.Orb, http: httpx.Client) -> None:
    metric = client.metrics.create(
        name="tokens by model",
        sql="SELECT sum(tokens) FROM events GROUP BY model",
        description=None,
        item_id="i",
    )
    client.events.ingest(
        events=[
            event("u1", iso(NOW - 2 * HOUR), tokens=3, model="a"),
            event("u2", iso(NOW - HOUR), tokens=4, model="b"),
        ]
    )
    params = {
        "metric_id": metric.id,
        "timeframe_start": iso(NOW - DAY),
        "timeframe_end": iso(NOW),
        "granularity": "hour",
    }
    rows = http.get("/v1/usage", params=params).json()["data"]
    assert [(r["timeframe_start"], r["value"], r["grouping"]) for r in rows] == [
        ("2024-03-10T10:00:00Z", 3.0, {"key": "model", "value": "a"}),
        ("2024-03-10T11:00:00Z", 4.0, {"key": "model", "value": "b"}),
    ]
    assert rows[0]["external_customer_id"] == "acme"
    before = http.get("/v1/usage", params={**params, "as_of": "0"}).json()["data"]
    assert before == []
    response = http.get("/v1/usage", params={**params, "group_by": "region"})
    assert_problem(response.json(), 400, "400-constraint-violation")
