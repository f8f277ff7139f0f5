"""Backfills (DESIGN section 2): create, ingest, close, close_due, revert, list, and every
400 / 404 / 409 rule, each checked to change nothing."""

from __future__ import annotations

import base64
from collections.abc import Callable, Iterator
from datetime import timedelta
from functools import partial
from pathlib import Path
from typing import Any

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
    statuses,
)

import engine
from engine.errors import (
    ConstraintViolation,
    RequestValidationError,
    ResourceConflict,
    ResourceNotFound,
)
from engine.models import Backfill, BackfillStatus

US = timedelta(microseconds=1)


def seed_live(store: engine.Store, clock: FakeClock, events: list[dict[str, Any]]) -> None:
    """Ingest events live as if they had arrived on time (in as few batches as the grace
    period allows), then put the clock back."""
    saved = clock.now
    pending = sorted(events, key=lambda e: e["timestamp"])
    while pending:
        first = pending[0]["timestamp"]
        batch = [e for e in pending if e["timestamp"] <= first + 12 * HOUR]
        pending = pending[len(batch) :]
        clock.now = batch[-1]["timestamp"]
        store.ingest(batch)
    clock.now = saved


def create(store: engine.Store, **kwargs: Any) -> Backfill:
    """A backfill over the day starting at OLD unless told otherwise."""
    kwargs.setdefault("timeframe_start", OLD)
    kwargs.setdefault("timeframe_end", OLD + DAY)
    return store.backfills.create(**kwargs)


def refused(
    store: engine.Store,
    error: type[Exception],
    action: Callable[[], object],
    *words: str,
    before: dict[str, Any] | None = None,
) -> Exception:
    """Run ``action``, expect ``error`` whose message holds every one of ``words``, and check
    that the store is unchanged (compared with ``before`` when given)."""
    if before is None:
        before = fingerprint(store)
    with pytest.raises(error) as info:
        action()
    for word in words:
        assert word in str(info.value), (word, str(info.value))
    assert fingerprint(store) == before
    return info.value


# -- create ---------------------------------------------------------------------------------------


def test_create_defaults(store: engine.Store) -> None:
    backfill = create(store)
    assert backfill.status == BackfillStatus.PENDING and backfill.status == "pending"
    assert backfill.created_at == NOW
    assert backfill.close_time == NOW + DAY
    assert (backfill.timeframe_start, backfill.timeframe_end) == (OLD, OLD + DAY)
    assert backfill.events_ingested == 0
    assert backfill.reverted_at is None
    assert backfill.replace_existing_events is True
    assert backfill.customer_id is None and backfill.external_customer_id is None
    assert store.backfills.get(backfill.id) == backfill
    rows = store.sql("SELECT id, status FROM backfills").fetchall()
    assert rows == [(backfill.id, "pending")]


def test_create_boundaries_are_accepted(store: engine.Store) -> None:
    # exactly the maximum duration, ending exactly at now - grace, closing exactly now
    backfill = store.backfills.create(
        timeframe_start=NOW - 12 * HOUR - 31 * DAY,
        timeframe_end=NOW - 12 * HOUR,
        close_time=NOW,
    )
    assert backfill.close_time == NOW


def test_create_accepts_iso_text_and_other_zones(store: engine.Store) -> None:
    backfill = store.backfills.create(
        timeframe_start="2024-03-07T12:00:00Z", timeframe_end="2024-03-08T13:00:00+01:00"
    )
    assert (backfill.timeframe_start, backfill.timeframe_end) == (OLD, OLD + DAY)


def test_a_filtered_or_additive_backfill_may_cover_recent_time(store: engine.Store) -> None:
    filtered = create(
        store,
        timeframe_start=NOW - DAY,
        timeframe_end=NOW + HOUR,
        external_customer_id="acme",
        deprecation_filter="model = 'gpt-4'",
    )
    additive = create(
        store,
        timeframe_start=NOW - DAY,
        timeframe_end=NOW + HOUR,
        external_customer_id="globex",
        replace_existing_events=False,
    )
    assert filtered.deprecation_filter == "model = 'gpt-4'"
    assert additive.replace_existing_events is False


CREATE_400: list[tuple[str, dict[str, Any], str]] = [
    ("empty-timeframe", {"timeframe_end": OLD}, "timeframe_start must be before timeframe_end"),
    ("reversed-timeframe", {"timeframe_end": OLD - HOUR}, "before timeframe_end"),
    ("too-long", {"timeframe_end": OLD + 31 * DAY + US}, "maximum backfill duration"),
    (
        "both-customer-ids",
        {"customer_id": "CUSTOMER", "external_customer_id": "acme"},
        "not both",
    ),
    (
        "filter-without-replace",
        {"replace_existing_events": False, "deprecation_filter": "model = 'gpt-4'"},
        "replace_existing_events",
    ),
    ("filter-subquery", {"deprecation_filter": "(SELECT 1) = 1"}, "subquery"),
    ("filter-syntax", {"deprecation_filter": "model = "}, "could not be parsed"),
    ("filter-function", {"deprecation_filter": "now() > 1"}, "'now'"),
    ("filter-statements", {"deprecation_filter": "a = 1; DROP TABLE x"}, "multiple statements"),
    (
        "replace-into-grace-period",
        {"timeframe_start": NOW - DAY, "timeframe_end": NOW - 12 * HOUR + US},
        "grace period",
    ),
    ("close-time-past", {"close_time": NOW - US}, "close_time is in the past"),
    ("naive-start", {"timeframe_start": OLD.replace(tzinfo=None)}, "time zone"),
    ("garbage-end", {"timeframe_end": "tomorrow"}, "'tomorrow'"),
    ("replace-not-bool", {"replace_existing_events": "yes"}, "boolean"),
    # a 400 wins over the 404 of an unknown customer
    ("400-before-404", {"customer_id": "cus_missing", "close_time": NOW - HOUR}, "close_time"),
]


def test_create_400(store: engine.Store, subtests: pytest.Subtests) -> None:
    customer = store.customers.create(external_customer_id="acme")
    create(store, external_customer_id="globex")
    before = fingerprint(store)
    for label, kwargs, message in CREATE_400:
        with subtests.test(label):
            arguments = {k: customer.id if v == "CUSTOMER" else v for k, v in kwargs.items()}
            action = partial(create, store, **arguments)
            error = refused(store, ConstraintViolation, action, message, before=before)
            assert isinstance(error, ConstraintViolation) and error.status == 400


def test_refused_filter_names_the_construct(store: engine.Store) -> None:
    error = refused(
        store, ConstraintViolation, lambda: create(store, deprecation_filter="(SELECT 1) = 1")
    )
    assert isinstance(error, ConstraintViolation)
    assert error.fields["construct"] == "subquery"


def test_create_404_for_an_unknown_customer(store: engine.Store) -> None:
    error = refused(
        store, ResourceNotFound, lambda: create(store, customer_id="cus_missing"), "cus_missing"
    )
    assert isinstance(error, ResourceNotFound) and error.status == 404


def test_an_unknown_external_id_is_fine(store: engine.Store) -> None:
    backfill = create(store, external_customer_id="not-yet")
    assert backfill.external_customer_id == "not-yet" and backfill.customer_id is None


def test_a_backfill_by_external_id_knows_the_customer_id(store: engine.Store) -> None:
    customer = store.customers.create(external_customer_id="acme")
    by_external = create(store, external_customer_id="acme")
    assert by_external.customer_id == customer.id
    by_id = create(store, customer_id=customer.id, timeframe_start=OLD - DAY, timeframe_end=OLD)
    assert by_id.external_customer_id == "acme"


@pytest.fixture
def customers(store: engine.Store) -> dict[str, str]:
    return {
        name: store.customers.create(external_customer_id=name).id for name in ("acme", "globex")
    }


# (existing backfill's scope, new backfill's scope): each is "all", a customer name (by
# external id) or "id:<name>" (by customer id).
OVERLAP_409 = [
    ("acme", "acme"),
    ("acme", "id:acme"),
    ("id:acme", "acme"),
    ("all", "acme"),
    ("acme", "all"),
    ("all", "all"),
]
NO_CONFLICT = [("acme", "globex"), ("id:acme", "globex"), ("acme", "other-unknown")]


def _scope(name: str, customers: dict[str, str]) -> dict[str, str]:
    if name == "all":
        return {}
    if name.startswith("id:"):
        return {"customer_id": customers[name[3:]]}
    return {"external_customer_id": name}


def test_create_409_when_overlapping_an_open_backfill(
    store: engine.Store, customers: dict[str, str], subtests: pytest.Subtests
) -> None:
    for existing, new in OVERLAP_409:
        with subtests.test(existing=existing, new=new):
            first = create(store, **_scope(existing, customers))
            try:
                action = partial(
                    create,
                    store,
                    timeframe_start=OLD + DAY - US,
                    timeframe_end=OLD + 2 * DAY,
                    **_scope(new, customers),
                )
                error = refused(store, ResourceConflict, action, first.id)
                assert isinstance(error, ResourceConflict) and error.status == 409
            finally:
                store.backfills.revert(first.id)


def test_other_customers_do_not_conflict(store: engine.Store, customers: dict[str, str]) -> None:
    for i, (existing, new) in enumerate(NO_CONFLICT):
        start = OLD - i * DAY
        create(
            store, timeframe_start=start, timeframe_end=start + DAY, **_scope(existing, customers)
        )
        create(store, timeframe_start=start, timeframe_end=start + DAY, **_scope(new, customers))
    assert len(store.backfills.list(status="pending").data) == 2 * len(NO_CONFLICT)


def test_adjacent_timeframes_do_not_overlap(store: engine.Store) -> None:
    create(store)
    create(store, timeframe_start=OLD + DAY, timeframe_end=OLD + 2 * DAY)
    create(store, timeframe_start=OLD - DAY, timeframe_end=OLD)
    assert len(store.backfills.list().data) == 3


def test_only_open_backfills_conflict(store: engine.Store) -> None:
    reflected = create(store)
    store.backfills.close(reflected.id)
    reverted = create(store)
    store.backfills.revert(reverted.id)
    again = create(store)
    assert statuses(store) == {
        reflected.id: "reflected",
        reverted.id: "reverted",
        again.id: "pending",
    }


def test_a_pending_revert_backfill_still_conflicts(
    store: engine.Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    backfill = create(store)
    store.backfills.close(backfill.id)
    _revert_first_commit_only(store, backfill.id, monkeypatch)
    assert store.backfills.get(backfill.id).status == BackfillStatus.PENDING_REVERT
    refused(store, ResourceConflict, lambda: create(store), backfill.id)


def test_404_wins_over_409(store: engine.Store) -> None:
    create(store)
    refused(store, ResourceNotFound, lambda: create(store, customer_id="cus_missing"))


# -- backfill ingest -------------------------------------------------------------------------------


def test_staged_events_are_invisible_until_close(store: engine.Store, clock: FakeClock) -> None:
    seed_live(store, clock, [event("live", OLD + HOUR)])
    visible = effective(store)
    backfill = create(store, replace_existing_events=False)
    result = store.ingest(
        [event("b1", OLD), event("b2", OLD + DAY - US, tokens=5)], backfill_id=backfill.id
    )
    assert result == engine.IngestResult(ingested=["b1", "b2"], duplicates=[])
    assert effective(store) == visible
    assert store.sql("SELECT count(*) FROM all_events").fetchone() == (1,)
    assert store.backfills.get(backfill.id).events_ingested == 2
    assert store.events.search(["b1"], timeframe_start=OLD, timeframe_end=NOW) == []


def test_backfill_duplicates_are_per_backfill(store: engine.Store, clock: FakeClock) -> None:
    seed_live(store, clock, [event("live", OLD + HOUR)])
    backfill = create(store)
    first = store.ingest([event("b1", OLD), event("live", OLD + HOUR)], backfill_id=backfill.id)
    # a key already stored live is no duplicate in a backfill: it will supersede the live row
    assert first == engine.IngestResult(ingested=["b1", "live"], duplicates=[])
    again = store.ingest([event("b1", OLD, tokens=9), event("b3", OLD)], backfill_id=backfill.id)
    assert again == engine.IngestResult(ingested=["b3"], duplicates=["b1"])
    assert store.backfills.get(backfill.id).events_ingested == 3
    other = create(store, timeframe_start=OLD + DAY, timeframe_end=OLD + 2 * DAY)
    assert store.ingest([event("b1", OLD + DAY)], backfill_id=other.id).ingested == ["b1"]


def test_grace_period_does_not_apply_to_backfills(store: engine.Store) -> None:
    ancient = NOW - 365 * DAY
    backfill = create(store, timeframe_start=ancient, timeframe_end=ancient + DAY)
    assert store.ingest([event("b1", ancient)], backfill_id=backfill.id).ingested == ["b1"]


def test_a_scoped_backfill_accepts_its_customer_by_either_id(store: engine.Store) -> None:
    customer = store.customers.create(external_customer_id="acme")
    backfill = create(store, customer_id=customer.id)
    result = store.ingest(
        [event("b1", OLD, customer_id=customer.id), event("b2", OLD, ext="acme")],
        backfill_id=backfill.id,
    )
    assert result.ingested == ["b1", "b2"]


BACKFILL_INGEST_400: list[tuple[str, dict[str, Any], str]] = [
    ("before-timeframe", event("bad", OLD - US), "outside the backfill timeframe"),
    ("at-timeframe-end", event("bad", OLD + DAY), "outside the backfill timeframe"),
    ("other-customer", event("bad", OLD, ext="globex"), "does not belong to the backfill"),
    ("nested-property", event("bad", OLD, meta={"a": 1}), "no nesting"),
    ("no-timestamp-zone", event("bad", "2024-03-07T12:00:00"), "UTC"),
]


def test_backfill_ingest_400(store: engine.Store, subtests: pytest.Subtests) -> None:
    backfill = create(store, external_customer_id="acme")
    store.ingest([event("earlier", OLD)], backfill_id=backfill.id)
    before = fingerprint(store)
    for label, bad, message in BACKFILL_INGEST_400:
        with subtests.test(label):
            batch = [event("good", OLD + HOUR), bad]
            action = partial(store.ingest, batch, backfill_id=backfill.id)
            error = refused(store, RequestValidationError, action, before=before)
            assert isinstance(error, RequestValidationError)
            (problem,) = error.validation_errors
            assert problem["idempotency_key"] == "bad"
            assert any(message in text for text in problem["validation_errors"]), problem
    assert store.backfills.get(backfill.id).events_ingested == 1


def test_404_for_an_unknown_backfill(store: engine.Store, subtests: pytest.Subtests) -> None:
    create(store)
    before = fingerprint(store)
    actions: dict[str, Callable[[], object]] = {
        "get": lambda: store.backfills.get("bf_missing"),
        "ingest": lambda: store.ingest([event("b1", OLD)], backfill_id="bf_missing"),
        "close": lambda: store.backfills.close("bf_missing"),
        "revert": lambda: store.backfills.revert("bf_missing"),
    }
    for name, action in actions.items():
        with subtests.test(name):
            error = refused(store, ResourceNotFound, action, "bf_missing", before=before)
            assert isinstance(error, ResourceNotFound) and error.status == 404


def test_409_for_finished_backfills(store: engine.Store, subtests: pytest.Subtests) -> None:
    """Only a pending backfill takes events or closes; a reverted one cannot be reverted."""
    reflected = create(store, timeframe_start=OLD - DAY, timeframe_end=OLD)
    store.backfills.close(reflected.id)
    reverted = create(store)
    store.backfills.close(reverted.id)
    store.backfills.revert(reverted.id)
    dropped = create(store)  # reverted while pending
    store.backfills.revert(dropped.id)
    before = fingerprint(store)

    def ingest(backfill_id: str) -> object:
        return store.ingest([event("b1", OLD)], backfill_id=backfill_id)

    operations: dict[str, Callable[[str], object]] = {
        "ingest": ingest,
        "close": store.backfills.close,
        "revert": store.backfills.revert,
    }
    for backfill, state in (
        (reflected, "reflected"),
        (reverted, "reverted"),
        (dropped, "reverted"),
    ):
        for name, operation in operations.items():
            if name == "revert" and state == "reflected":
                continue
            with subtests.test(operation=name, backfill=backfill.id, state=state):
                action = partial(operation, backfill.id)
                error = refused(store, ResourceConflict, action, backfill.id, state, before=before)
                assert isinstance(error, ResourceConflict) and error.status == 409
    assert statuses(store) == {
        reflected.id: "reflected",
        reverted.id: "reverted",
        dropped.id: "reverted",
    }


def test_backfill_ingest_409_once_close_time_has_passed(
    store: engine.Store, clock: FakeClock
) -> None:
    backfill = create(store, close_time=NOW + HOUR)
    clock.now = NOW + HOUR - US
    assert store.ingest([event("b1", OLD)], backfill_id=backfill.id).ingested == ["b1"]
    clock.now = NOW + HOUR
    refused(
        store,
        ResourceConflict,
        lambda: store.ingest([event("b2", OLD)], backfill_id=backfill.id),
        "close_time",
    )


# -- close ----------------------------------------------------------------------------------------


@pytest.fixture
def history(store: engine.Store, clock: FakeClock) -> dict[str, dict[str, Any]]:
    """Live events around the day [OLD, OLD + 1 day) of two customers; returns their
    properties by key."""
    events = [
        event("before", OLD - US, tokens=1),
        event("first", OLD, tokens=2),
        event("gpt", OLD + HOUR, tokens=3, model="gpt-4"),
        event("claude", OLD + 2 * HOUR, tokens=4, model="claude"),
        event("globex", OLD + 3 * HOUR, ext="globex", tokens=5, model="gpt-4"),
        event("last", OLD + DAY - US, tokens=6),
        event("after", OLD + DAY, tokens=7),
    ]
    seed_live(store, clock, events)
    return {e["idempotency_key"]: e["properties"] for e in events}


def test_close_replaces_the_timeframe_in_one_commit(
    store: engine.Store, clock: FakeClock, history: dict[str, dict[str, Any]]
) -> None:
    backfill = create(store)
    store.ingest(
        [event("fix1", OLD + HOUR, tokens=10), event("gpt", OLD + HOUR, tokens=30)],
        backfill_id=backfill.id,
    )
    version = max_version(store)
    clock.advance(HOUR)
    closed = store.backfills.close(backfill.id)
    assert closed.status == BackfillStatus.REFLECTED
    assert closed.close_time == NOW + HOUR
    assert closed.events_ingested == 2
    assert store.backfills.get(backfill.id) == closed
    assert effective_props(store) == {
        "before": history["before"],
        "after": history["after"],
        "fix1": {"tokens": 10},
        "gpt": {"tokens": 30},
    }
    assert max_version(store) == version + 1
    rows = store.sql(
        "SELECT DISTINCT version, backfill_id, source FROM all_events WHERE effective "
        "AND backfill_id IS NOT NULL"
    ).fetchall()
    assert rows == [(version + 1, backfill.id, "backfill")]
    # replaced events are marked, not deleted
    assert store.sql("SELECT count(*) FROM all_events").fetchone() == (len(history) + 2,)
    assert store.sql("SELECT count(*) FROM lake.main.staged_events").fetchone() == (0,)


def test_close_of_a_scoped_backfill_keeps_other_customers(
    store: engine.Store, history: dict[str, dict[str, Any]]
) -> None:
    backfill = create(store, external_customer_id="acme")
    store.backfills.close(backfill.id)
    assert set(effective_props(store)) == {"before", "after", "globex"}


def test_close_of_a_scoped_backfill_covers_events_sent_by_customer_id(
    store: engine.Store, clock: FakeClock
) -> None:
    customer = store.customers.create(external_customer_id="acme")
    seed_live(
        store,
        clock,
        [event("by-id", OLD, customer_id=customer.id), event("by-ext", OLD + HOUR, ext="acme")],
    )
    backfill = create(store, external_customer_id="acme")
    store.backfills.close(backfill.id)
    assert effective(store) == []


def test_close_with_a_filter_replaces_matching_events_only(
    store: engine.Store, clock: FakeClock, history: dict[str, dict[str, Any]]
) -> None:
    backfill = create(store, deprecation_filter="model = 'gpt-4'")
    store.ingest(
        [event("gpt-fixed", OLD + HOUR, model="gpt-4", tokens=33)], backfill_id=backfill.id
    )
    store.backfills.close(backfill.id)
    assert set(effective_props(store)) == set(history) - {"gpt", "globex"} | {"gpt-fixed"}
    # late live events in the timeframe that match are deprecated too; others count
    clock.now = OLD + 5 * HOUR
    store.ingest(
        [
            event("late-gpt", OLD + 4 * HOUR, model="gpt-4"),
            event("late-other", OLD + 4 * HOUR, model="claude"),
        ]
    )
    clock.now = OLD + DAY + HOUR
    store.ingest([event("late-gpt-outside", OLD + DAY + HOUR, model="gpt-4")])
    keys = set(effective_props(store))
    assert "late-gpt" not in keys
    assert {"late-other", "late-gpt-outside"} <= keys
    # reverting lifts the late deprecations as well
    store.backfills.revert(backfill.id)
    assert set(effective_props(store)) == set(history) | {
        "late-gpt",
        "late-other",
        "late-gpt-outside",
    }


def test_a_late_batch_meets_each_filtered_backfill_whose_timeframe_it_reaches(
    store: engine.Store, clock: FakeClock
) -> None:
    first = create(store, deprecation_filter="model = 'gpt-4'")
    second = create(
        store,
        timeframe_start=OLD + DAY,
        timeframe_end=OLD + 2 * DAY,
        deprecation_filter="model = 'claude'",
    )
    for backfill in (first, second):
        store.backfills.close(backfill.id)
    clock.now = OLD + DAY + 3 * HOUR
    store.ingest(
        [
            event("first-gpt", OLD + DAY - 2 * HOUR, model="gpt-4"),
            event("first-claude", OLD + DAY - 2 * HOUR, model="claude"),
            event("second-gpt", OLD + DAY + 2 * HOUR, model="gpt-4"),
            event("second-claude", OLD + DAY + 2 * HOUR, model="claude"),
        ]
    )
    assert set(effective_props(store)) == {"first-claude", "second-gpt"}
    store.backfills.revert(first.id)
    assert set(effective_props(store)) == {"first-gpt", "first-claude", "second-gpt"}


def test_additive_close_supersedes_resent_keys(
    store: engine.Store, history: dict[str, dict[str, Any]]
) -> None:
    backfill = create(store, replace_existing_events=False)
    store.ingest(
        [event("first", OLD, tokens=20), event("extra", OLD + HOUR)], backfill_id=backfill.id
    )
    store.backfills.close(backfill.id)
    expected = {**history, "first": {"tokens": 20}, "extra": {"tokens": 1}}
    assert effective_props(store) == expected


def test_replace_deprecates_rows_that_were_already_superseded(
    store: engine.Store, clock: FakeClock
) -> None:
    seed_live(store, clock, [event("k", OLD + HOUR, tokens=1)])
    first = create(store, replace_existing_events=False)
    store.ingest([event("k", OLD + HOUR, tokens=2)], backfill_id=first.id)
    store.backfills.close(first.id)
    second = create(store)
    store.backfills.close(second.id)
    assert effective(store) == []
    # reverting the later backfill restores the first one's row, not the live one
    store.backfills.revert(second.id)
    assert effective_props(store) == {"k": {"tokens": 2}}


def test_close_due_closes_exactly_the_due_backfills(store: engine.Store, clock: FakeClock) -> None:
    due_first = create(store, close_time=NOW + HOUR)
    due_second = create(
        store, close_time=NOW + 2 * HOUR, timeframe_start=OLD + DAY, timeframe_end=OLD + 2 * DAY
    )
    later = create(
        store,
        close_time=NOW + 3 * HOUR,
        timeframe_start=OLD + 2 * DAY,
        timeframe_end=OLD + 2 * DAY + HOUR,
    )
    done = create(store, timeframe_start=OLD - DAY, timeframe_end=OLD)
    store.backfills.revert(done.id)
    clock.now = NOW + HOUR - US
    assert store.backfills.close_due() == []
    clock.now = NOW + 2 * HOUR
    closed = store.backfills.close_due()
    assert [b.id for b in closed] == [due_first.id, due_second.id]
    assert all(b.close_time == NOW + 2 * HOUR for b in closed)
    assert statuses(store) == {
        due_first.id: "reflected",
        due_second.id: "reflected",
        later.id: "pending",
        done.id: "reverted",
    }
    assert store.backfills.close_due() == []


# -- revert ---------------------------------------------------------------------------------------


def test_revert_of_a_pending_backfill(
    store: engine.Store, clock: FakeClock, history: dict[str, dict[str, Any]]
) -> None:
    backfill = create(store)
    store.ingest([event("b1", OLD)], backfill_id=backfill.id)
    visible = effective(store)
    version = max_version(store)
    clock.advance(HOUR)
    reverted = store.backfills.revert(backfill.id)
    assert reverted.status == BackfillStatus.REVERTED
    assert reverted.reverted_at == NOW + HOUR
    assert effective(store) == visible
    assert max_version(store) == version  # nothing that counted changed
    assert store.sql("SELECT count(*) FROM lake.main.staged_events").fetchone() == (0,)


def test_revert_of_a_reflected_backfill_is_exact(
    store: engine.Store, clock: FakeClock, history: dict[str, dict[str, Any]]
) -> None:
    visible = effective(store)
    backfill = create(store, external_customer_id="acme")
    store.ingest([event("first", OLD, tokens=99), event("b1", OLD)], backfill_id=backfill.id)
    store.backfills.close(backfill.id)
    assert effective(store) != visible
    closed_version = max_version(store)
    clock.advance(HOUR)
    reverted = store.backfills.revert(backfill.id)
    assert reverted.status == BackfillStatus.REVERTED
    assert reverted.reverted_at == NOW + HOUR
    assert store.backfills.get(backfill.id) == reverted
    assert effective(store) == visible
    assert max_version(store) == closed_version + 1
    (operation,) = store.sql(
        f"SELECT operation FROM lake.main.commits WHERE version = {closed_version + 1}"
    ).fetchone()
    assert operation == "revert"
    # the backfill's rows stay stored (auditable), just not effective
    rows = store.sql(
        f"SELECT count(*), bool_or(effective) FROM all_events WHERE backfill_id = '{backfill.id}'"
    ).fetchone()
    assert rows == (2, False)


def test_revert_of_one_correction_keeps_later_ones(
    store: engine.Store, history: dict[str, dict[str, Any]]
) -> None:
    first = create(store)
    store.ingest([event("first", OLD, tokens=100), event("one", OLD)], backfill_id=first.id)
    store.backfills.close(first.id)
    second = create(store, timeframe_start=OLD + 12 * HOUR, timeframe_end=OLD + DAY)
    store.ingest([event("two", OLD + 12 * HOUR, tokens=200)], backfill_id=second.id)
    store.backfills.close(second.id)
    both = effective_props(store)
    assert both == {
        "before": history["before"],
        "after": history["after"],
        "first": {"tokens": 100},
        "one": {"tokens": 1},
        "two": {"tokens": 200},
    }
    store.backfills.revert(first.id)
    # exactly as if `first` had never closed: `second` still replaces its half day
    assert effective_props(store) == {
        "before": history["before"],
        "after": history["after"],
        "first": history["first"],
        "gpt": history["gpt"],
        "claude": history["claude"],
        "globex": history["globex"],
        "two": {"tokens": 200},
    }
    store.backfills.revert(second.id)
    assert effective_props(store) == history


class _Interrupted(Exception):
    pass


def _revert_first_commit_only(
    store: engine.Store, backfill_id: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Run a revert that stops between its two commits, as a crash there would."""

    def crash(backfill_id: str) -> Backfill:
        raise _Interrupted(backfill_id)

    with monkeypatch.context() as patch:
        patch.setattr(store.backfills, "finish_revert", crash)
        with pytest.raises(_Interrupted):
            store.backfills.revert(backfill_id)


def test_pending_revert_already_removes_the_effect_and_open_recovers_it(
    store_path: Path, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    with engine.open(store_path, clock=clock) as store:
        seed_live(store, clock, [event("live", OLD + HOUR)])
        visible = effective(store)
        backfill = create(store)
        store.ingest([event("b1", OLD)], backfill_id=backfill.id)
        store.backfills.close(backfill.id)
        _revert_first_commit_only(store, backfill.id, monkeypatch)
        half = store.backfills.get(backfill.id)
        assert half.status == BackfillStatus.PENDING_REVERT
        assert half.reverted_at is None
        assert effective(store) == visible
        # a pending_revert backfill cannot be closed, and revert finishes it
        refused(store, ResourceConflict, lambda: store.backfills.close(backfill.id))
    clock.advance(HOUR)
    with engine.open(store_path, clock=clock) as store:
        recovered = store.backfills.get(backfill.id)
        assert recovered.status == BackfillStatus.REVERTED
        assert recovered.reverted_at == NOW + HOUR
        assert effective(store) == visible


def test_revert_finishes_a_pending_revert(
    store: engine.Store, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    backfill = create(store)
    store.backfills.close(backfill.id)
    _revert_first_commit_only(store, backfill.id, monkeypatch)
    version = max_version(store)
    assert store.backfills.revert(backfill.id).status == BackfillStatus.REVERTED
    assert max_version(store) == version  # the second step is bookkeeping, not a new version


# -- list -----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def listed(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[engine.Store, list[Backfill]]]:
    """A store of its own (the list tests only read it) with seven backfills created one
    minute apart (oldest first) over distinct days; the 2nd, 4th and 6th are reflected and the
    7th is for customer acme."""
    clock = FakeClock(NOW)
    with engine.open(tmp_path_factory.mktemp("listed") / "store", clock=clock) as store:
        customer = store.customers.create(external_customer_id="acme")
        made = []
        for i in range(7):
            start = OLD - (i + 1) * DAY
            scope = {"customer_id": customer.id} if i == 6 else {}
            made.append(create(store, timeframe_start=start, timeframe_end=start + DAY, **scope))
            if i % 2 == 1:
                store.backfills.close(made[-1].id)
            clock.advance(timedelta(minutes=1))
        yield store, [store.backfills.get(b.id) for b in made]


def _walk(fetch: Callable[[str | None], engine.Page[Backfill]]) -> Iterator[list[str]]:
    cursor = None
    while True:
        page = fetch(cursor)
        yield [b.id for b in page.data]
        if page.next_cursor is None:
            assert not page.has_more
            return
        assert page.has_more
        cursor = page.next_cursor


@pytest.mark.parametrize("limit", [1, 3, 7, 100])
def test_list_walks_every_backfill_newest_first(
    listed: tuple[engine.Store, list[Backfill]], limit: int
) -> None:
    store, seven = listed
    pages = list(_walk(lambda cursor: store.backfills.list(limit=limit, cursor=cursor)))
    assert all(1 <= len(page) <= limit for page in pages)
    assert [key for page in pages for key in page] == [b.id for b in reversed(seven)]
    assert len(pages) == -(-7 // limit)


def test_list_default_page_and_filters(listed: tuple[engine.Store, list[Backfill]]) -> None:
    store, seven = listed
    assert store.backfills.list().data == list(reversed(seven))
    reflected = store.backfills.list(status="reflected", limit=2)
    assert [b.id for b in reflected.data] == [seven[5].id, seven[3].id]
    rest = store.backfills.list(status="reflected", limit=2, cursor=reflected.next_cursor)
    assert [b.id for b in rest.data] == [seven[1].id] and rest.next_cursor is None
    customer_id = seven[6].customer_id
    assert customer_id is not None
    assert store.backfills.list(customer_id=customer_id).data == [seven[6]]
    assert store.backfills.list(status="reverted").data == []


def test_a_walk_is_stable_while_backfills_are_created(
    store: engine.Store, clock: FakeClock
) -> None:
    made = []
    for i in range(3):
        made.append(
            create(store, timeframe_start=OLD - i * DAY, timeframe_end=OLD - i * DAY + HOUR)
        )
        clock.advance(timedelta(minutes=1))
    first = store.backfills.list(limit=2)
    assert [b.id for b in first.data] == [made[2].id, made[1].id]
    newest = create(store, timeframe_start=OLD + DAY, timeframe_end=OLD + 2 * DAY)
    second = store.backfills.list(limit=2, cursor=first.next_cursor)
    assert [b.id for b in second.data] == [made[0].id] and second.next_cursor is None
    assert store.backfills.list(limit=1).data == [newest]


LIST_400: list[tuple[dict[str, Any], str]] = [
    ({"limit": 0}, "limit"),
    ({"limit": 101}, "limit"),
    ({"limit": "10"}, "limit"),
    ({"status": "closed"}, "status must be one of"),
    ({"cursor": "not a cursor"}, "cursor"),
    ({"cursor": base64.urlsafe_b64encode(b"customer:3").decode()}, "cursor"),
]


def test_list_400(listed: tuple[engine.Store, list[Backfill]], subtests: pytest.Subtests) -> None:
    store = listed[0]
    before = fingerprint(store)
    for kwargs, message in LIST_400:
        with subtests.test(**kwargs):
            action = partial(store.backfills.list, **kwargs)
            refused(store, ConstraintViolation, action, message, before=before)
