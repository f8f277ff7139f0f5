"""``store.events``: effective events, Orb's search, single-event amend and deprecate."""

from __future__ import annotations

from functools import partial
from typing import Any

import polars as pl
import pytest
from procs.common import (
    DAY,
    HOUR,
    NOW,
    OLD,
    FakeClock,
    effective,
    effective_props,
    event,
    fingerprint,
    max_version,
)

import engine
from engine.errors import (
    ConstraintViolation,
    RequestValidationError,
    ResourceConflict,
    ResourceNotFound,
)
from engine.models import Event


def amend(store: engine.Store, key: str, **changes: Any) -> str:
    """Amend ``key`` to its current body with ``changes`` applied."""
    (current,) = store.events.search([key], timeframe_start=OLD - DAY, timeframe_end=NOW + DAY)
    body: dict[str, Any] = {
        "event_name": current.event_name,
        "timestamp": current.timestamp,
        "properties": dict(current.properties),
        "customer_id": current.customer_id,
        "external_customer_id": current.external_customer_id,
    }
    body.update(changes)
    return store.events.amend(key, **body)


@pytest.fixture
def seeded(store: engine.Store, clock: FakeClock) -> engine.Store:
    """Live events: a, b (acme) and g (globex) one hour ago; o (acme) three days ago."""
    clock.now = OLD + HOUR
    store.ingest([event("o", OLD, tokens=4)])
    clock.now = NOW
    store.ingest(
        [
            event("a", NOW - HOUR, tokens=1),
            event("b", NOW - HOUR, tokens=2, model="gpt-4"),
            event("g", NOW - HOUR, ext="globex", tokens=3),
        ]
    )
    return store


# -- effective ------------------------------------------------------------------------------------


def test_effective_frame_shape_and_order(seeded: engine.Store) -> None:
    frame = seeded.events.effective()
    assert frame.columns == [
        "idempotency_key",
        "event_name",
        "timestamp",
        "customer_id",
        "external_customer_id",
        "properties",
    ]
    assert frame.schema["timestamp"] == pl.Datetime("us", "UTC")
    # by timestamp, then key
    assert frame["idempotency_key"].to_list() == ["o", "a", "b", "g"]
    assert frame["properties"].to_list()[2] == {"tokens": 2, "model": "gpt-4"}


def test_effective_restrictions(seeded: engine.Store) -> None:
    def keys(**kwargs: Any) -> list[str]:
        return [row[0] for row in effective(seeded, **kwargs)]

    assert keys(external_customer_id="acme") == ["a", "b", "o"]
    assert keys(external_customer_id="globex") == ["g"]
    assert keys(timeframe_start=NOW - HOUR) == ["a", "b", "g"]
    assert keys(timeframe_end=NOW - HOUR) == ["o"]
    assert keys(timeframe_start=OLD, timeframe_end=OLD + DAY, external_customer_id="acme") == ["o"]
    assert keys(timeframe_start="2024-03-10T11:00:00Z", timeframe_end=NOW) == ["a", "b", "g"]
    with pytest.raises(ConstraintViolation, match="time zone"):
        seeded.events.effective(timeframe_start=NOW.replace(tzinfo=None))


def test_a_timeframe_applies_to_the_winning_version(seeded: engine.Store) -> None:
    # a backfill re-sends key "a" at another time: the key moves there
    backfill = seeded.backfills.create(
        timeframe_start=OLD, timeframe_end=OLD + DAY, replace_existing_events=False
    )
    seeded.ingest([event("a", OLD + HOUR, tokens=10)], backfill_id=backfill.id)
    seeded.backfills.close(backfill.id)
    now_keys = [row[0] for row in effective(seeded, timeframe_start=NOW - HOUR)]
    old_keys = [row[0] for row in effective(seeded, timeframe_start=OLD, timeframe_end=OLD + DAY)]
    assert now_keys == ["b", "g"]
    assert old_keys == ["a", "o"]


# -- search ---------------------------------------------------------------------------------------


def test_search_returns_the_current_version_with_its_state(seeded: engine.Store) -> None:
    seeded.events.deprecate("b")
    found = seeded.events.search(["a", "b", "g", "missing"])
    by_id = {e.id: e for e in found}
    assert sorted(by_id) == ["a", "b", "g"] and len(found) == 3
    assert by_id["a"] == Event(
        id="a",
        event_name="api_call",
        timestamp=NOW - HOUR,
        customer_id=None,
        external_customer_id="acme",
        properties={"tokens": 1},
        deprecated=False,
    )
    assert by_id["b"].deprecated is True
    assert by_id["b"].properties == {"tokens": 2, "model": "gpt-4"}


def test_search_timeframe_defaults_to_the_last_week(seeded: engine.Store, clock: FakeClock) -> None:
    assert {e.id for e in seeded.events.search(["a", "o"])} == {"a", "o"}
    clock.now = OLD + 7 * DAY + HOUR
    assert {e.id for e in seeded.events.search(["a", "o"])} == {"a"}
    # the timeframe is half-open, on event time
    assert seeded.events.search(["a", "o"], timeframe_start=OLD - HOUR, timeframe_end=OLD) == []
    found = seeded.events.search(["a", "o"], timeframe_start=OLD, timeframe_end=OLD + HOUR)
    assert [e.id for e in found] == ["o"]


def test_search_marks_events_a_backfill_replaced(seeded: engine.Store) -> None:
    backfill = seeded.backfills.create(timeframe_start=OLD, timeframe_end=OLD + DAY)
    seeded.ingest([event("o2", OLD + HOUR)], backfill_id=backfill.id)
    window = {"timeframe_start": OLD, "timeframe_end": OLD + DAY}
    # staged events are not found before close
    assert [e.id for e in seeded.events.search(["o", "o2"], **window)] == ["o"]
    seeded.backfills.close(backfill.id)
    found = {e.id: e.deprecated for e in seeded.events.search(["o", "o2"], **window)}
    assert found == {"o": True, "o2": False}
    seeded.backfills.revert(backfill.id)
    found = {e.id: e.deprecated for e in seeded.events.search(["o", "o2"], **window)}
    assert found == {"o": False}


@pytest.mark.parametrize(
    ("ids", "message"),
    [([], "non-empty"), ("a", "non-empty list"), ([f"k{i}" for i in range(501)], "500")],
)
def test_search_400(store: engine.Store, ids: Any, message: str) -> None:
    with pytest.raises(ConstraintViolation, match=message):
        store.events.search(ids)


# -- amend ----------------------------------------------------------------------------------------


def test_amend_writes_a_new_live_version(seeded: engine.Store) -> None:
    version = max_version(seeded)
    assert amend(seeded, "a", properties={"tokens": 100}, event_name="renamed") == "a"
    assert max_version(seeded) == version + 1
    assert effective_props(seeded)["a"] == {"tokens": 100}
    rows = seeded.sql(
        "SELECT version, kind, source, effective FROM all_events WHERE idempotency_key = 'a' "
        "ORDER BY version"
    ).fetchall()
    assert rows == [(2, "event", "live", False), (version + 1, "amendment", "live", True)]
    (operation,) = seeded.sql(
        f"SELECT operation FROM lake.main.commits WHERE version = {version + 1}"
    ).fetchone()
    assert operation == "amendment"
    (found,) = seeded.events.search(["a"])
    assert (found.event_name, found.deprecated) == ("renamed", False)


def test_amend_may_move_the_event_to_another_customer(seeded: engine.Store) -> None:
    customer = seeded.customers.create(external_customer_id="initech")
    amend(seeded, "a", external_customer_id=None, customer_id=customer.id)
    assert [row[0] for row in effective(seeded, customer_id=customer.id)] == ["a"]


def test_effective_finds_a_customer_by_either_id(store: engine.Store, clock: FakeClock) -> None:
    customer = store.customers.create(external_customer_id="globex")
    store.ingest(
        [
            event("by-ext", clock.now - HOUR, ext="globex"),
            event("by-id", clock.now - HOUR, customer_id=customer.id),
            event("other", clock.now - HOUR, ext="acme"),
        ]
    )
    for scope in (
        {"customer_id": customer.id},
        {"external_customer_id": "globex"},
        {"customer_id": customer.id, "external_customer_id": "globex"},
    ):
        assert [row[0] for row in effective(store, **scope)] == ["by-ext", "by-id"], scope
    assert effective(store, external_customer_id="unknown") == []


def test_amend_ignores_the_grace_period_and_accepts_iso_text(seeded: engine.Store) -> None:
    # "o" is three days old: far outside the live window
    amend(seeded, "o", timestamp="2024-03-07T12:00:00Z", properties={"tokens": 40})
    assert effective_props(seeded)["o"] == {"tokens": 40}


def test_amend_of_a_backfilled_event_survives_the_backfill_revert(seeded: engine.Store) -> None:
    backfill = seeded.backfills.create(timeframe_start=OLD, timeframe_end=OLD + DAY)
    seeded.ingest([event("o", OLD, tokens=5)], backfill_id=backfill.id)
    seeded.backfills.close(backfill.id)
    amend(seeded, "o", properties={"tokens": 6})
    seeded.backfills.revert(backfill.id)
    # the amendment is a live version, newer than everything the backfill wrote
    assert effective_props(seeded)["o"] == {"tokens": 6}


def test_an_amendment_counts_as_a_late_live_event_for_a_filtered_backfill(
    seeded: engine.Store,
) -> None:
    backfill = seeded.backfills.create(
        timeframe_start=NOW - DAY, timeframe_end=NOW, deprecation_filter="model = 'gpt-4'"
    )
    seeded.backfills.close(backfill.id)
    assert set(effective_props(seeded)) == {"o", "a", "g"}
    # "a" did not match the filter; amended so that it matches, the new version is deprecated
    amend(seeded, "a", properties={"tokens": 1, "model": "gpt-4"})
    assert set(effective_props(seeded)) == {"o", "g"}
    seeded.backfills.revert(backfill.id)
    assert effective_props(seeded)["a"] == {"tokens": 1, "model": "gpt-4"}


def _amend_errors(store: engine.Store, subtests: pytest.Subtests, cases: list[Any]) -> None:
    before = fingerprint(store)
    for label, error, action, words in cases:
        with subtests.test(label):
            with pytest.raises(error) as info:
                action()
            for word in words:
                assert word in str(info.value), (word, str(info.value))
            assert info.value.status == {
                ResourceNotFound: 404,
                ResourceConflict: 409,
            }.get(error, 400)
            assert fingerprint(store) == before


def test_amend_and_deprecate_refusals(seeded: engine.Store, subtests: pytest.Subtests) -> None:
    store = seeded
    store.events.deprecate("g")
    backfill = store.backfills.create(timeframe_start=OLD, timeframe_end=OLD + DAY)
    store.ingest([event("staged", OLD + HOUR)], backfill_id=backfill.id)
    replacing = store.backfills.create(
        timeframe_start=NOW - DAY, timeframe_end=NOW, deprecation_filter="model = 'gpt-4'"
    )
    store.backfills.close(replacing.id)  # deprecates "b"
    body = {"event_name": "api_call", "properties": {"tokens": 9}, "external_customer_id": "acme"}
    at = NOW - HOUR
    cases = [
        (
            "amend-unknown",
            ResourceNotFound,
            partial(store.events.amend, "nope", timestamp=at, **body),
            ["'nope'"],
        ),
        (
            "amend-tombstoned",
            ResourceNotFound,
            partial(store.events.amend, "g", timestamp=at, **body),
            ["'g'", "does not exist"],
        ),
        (
            "amend-staged-only",
            ResourceNotFound,
            partial(store.events.amend, "staged", timestamp=OLD + HOUR, **body),
            ["'staged'"],
        ),
        (
            "amend-deprecated-by-backfill",
            ResourceConflict,
            partial(store.events.amend, "b", timestamp=at, **body),
            ["'b'", "backfill"],
        ),
        (
            "amend-other-timestamp",
            ConstraintViolation,
            partial(store.events.amend, "a", timestamp=at + HOUR, **body),
            ["timestamp", (NOW - HOUR).isoformat()],
        ),
        (
            "amend-naive-timestamp",
            ConstraintViolation,
            partial(store.events.amend, "a", timestamp=at.replace(tzinfo=None), **body),
            ["time zone"],
        ),
        (
            "amend-invalid-properties",
            RequestValidationError,
            partial(store.events.amend, "a", timestamp=at, **{**body, "properties": {"x": None}}),
            [],
        ),
        (
            "amend-both-customer-ids",
            RequestValidationError,
            partial(store.events.amend, "a", timestamp=at, customer_id="c", **body),
            [],
        ),
        (
            "amend-no-event-name",
            RequestValidationError,
            partial(store.events.amend, "a", timestamp=at, **{**body, "event_name": ""}),
            [],
        ),
        ("deprecate-unknown", ResourceNotFound, partial(store.events.deprecate, "nope"), ["nope"]),
        ("deprecate-tombstoned", ResourceNotFound, partial(store.events.deprecate, "g"), ["'g'"]),
        (
            "deprecate-staged-only",
            ResourceNotFound,
            partial(store.events.deprecate, "staged"),
            ["staged"],
        ),
        (
            "deprecate-deprecated-by-backfill",
            ResourceConflict,
            partial(store.events.deprecate, "b"),
            ["'b'", "backfill"],
        ),
    ]
    _amend_errors(store, subtests, cases)


def test_invalid_amendment_lists_the_problem(seeded: engine.Store) -> None:
    with pytest.raises(RequestValidationError) as info:
        amend(seeded, "a", properties={"x": None})
    (problem,) = info.value.validation_errors
    assert problem["idempotency_key"] == "a"
    assert any("'x' is null" in text for text in problem["validation_errors"])


# -- deprecate ------------------------------------------------------------------------------------


def test_deprecate_is_a_tombstone_version(seeded: engine.Store) -> None:
    version = max_version(seeded)
    assert seeded.events.deprecate("a") == "a"
    assert max_version(seeded) == version + 1
    assert "a" not in effective_props(seeded)
    rows = seeded.sql(
        "SELECT kind, source, effective FROM all_events WHERE idempotency_key = 'a' "
        "ORDER BY version"
    ).fetchall()
    assert rows == [("event", "live", False), ("tombstone", "live", False)]
    (found,) = seeded.events.search(["a"])
    assert found.deprecated and found.properties == {"tokens": 1}


def test_deprecating_a_backfilled_event_outlives_the_backfill(seeded: engine.Store) -> None:
    backfill = seeded.backfills.create(
        timeframe_start=OLD, timeframe_end=OLD + DAY, replace_existing_events=False
    )
    seeded.ingest([event("o", OLD, tokens=5)], backfill_id=backfill.id)
    seeded.backfills.close(backfill.id)
    seeded.events.deprecate("o")
    seeded.backfills.revert(backfill.id)
    assert "o" not in effective_props(seeded)
