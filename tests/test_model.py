"""Hand-made scenarios for the reference model (tests/model.py).

The stateful test only proves that the engine and the model agree; these prove that the model
says what DESIGN section 2 says, one rule per test, with values a reader can check by hand.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from model import (
    And,
    BoolColumn,
    Compare,
    EventBody,
    InList,
    InvalidFilter,
    Model,
    ModelBackfill,
    Or,
    frozen_properties,
)

from engine.errors import (
    ConstraintViolation,
    DuplicateResourceCreation,
    RequestValidationError,
    ResourceConflict,
    ResourceNotFound,
)
from engine.models import BackfillStatus

H = timedelta(hours=1)
DAY = timedelta(days=1)
NOW = datetime(2024, 3, 10, tzinfo=UTC)
OLD = NOW - 2 * DAY  # far outside the grace period, a typical backfill target


class Clock:
    def __init__(self) -> None:
        self.now = NOW

    def __call__(self) -> datetime:
        return self.now


def ev(
    key: str, ts: datetime, *, ext: str = "ext-a", name: str = "api_call", **props: Any
) -> dict[str, Any]:
    return {
        "idempotency_key": key,
        "event_name": name,
        "timestamp": ts,
        "external_customer_id": ext,
        "properties": props or {"tokens": 1},
    }


def by_id(key: str, ts: datetime, customer_id: str, **props: Any) -> dict[str, Any]:
    event = ev(key, ts, **props)
    del event["external_customer_id"]
    return {**event, "customer_id": customer_id}


def keys(model: Model) -> set[str]:
    return {row[0] for row in model.effective()}


def props_of(model: Model, key: str) -> dict[str, Any]:
    (row,) = [r for r in model.effective() if r[0] == key]
    return {k: v for k, _t, v in row[5]}


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def model(clock: Clock) -> Model:
    return Model(clock=clock)


def seed_old_events(model: Model, clock: Clock, *events: dict[str, Any]) -> None:
    """Ingest live events as if they had arrived on time, then return to NOW."""
    for event in events:
        clock.now = event["timestamp"]
        model.ingest([event])
    clock.now = NOW


def backfill(
    model: Model, bid: str, start: datetime = OLD, end: datetime = OLD + DAY, **kw: Any
) -> ModelBackfill:
    return model.create_backfill(backfill_id=bid, timeframe_start=start, timeframe_end=end, **kw)


# --------------------------------------------------------------------------- live ingest


def test_live_duplicates_are_reported_not_written(model: Model) -> None:
    assert model.ingest([ev("k1", NOW, tokens=1)]) == (["k1"], [])
    assert model.ingest([ev("k1", NOW, tokens=99), ev("k2", NOW)]) == (["k2"], ["k1"])
    assert props_of(model, "k1") == {"tokens": 1}
    assert model.version == 2


def test_all_duplicate_batch_takes_no_version(model: Model) -> None:
    model.ingest([ev("k1", NOW)])
    model.ingest([ev("k1", NOW)])
    assert model.version == 1


def test_identical_in_batch_duplicate_counts_once(model: Model) -> None:
    assert model.ingest([ev("k1", NOW), ev("k1", NOW)]) == (["k1"], [])
    assert len(model.rows) == 1


@pytest.mark.parametrize(
    "bad",
    [
        ev("k2", NOW - 12 * H - timedelta(microseconds=1)),
        ev("k2", NOW + timedelta(minutes=5, microseconds=1)),
        ev("k2", NOW.replace(tzinfo=None)),
        {**ev("k2", NOW), "customer_id": "cus_missing"},  # both ids
        {k: v for k, v in ev("k2", NOW).items() if k != "external_customer_id"},  # neither
        by_id("k2", NOW, "cus_missing"),  # unknown customer
        ev("k2", NOW, tokens=None),
        ev("k2", NOW, tokens={"nested": 1}),
        ev("k2", NOW, tokens=2**63),
        ev("k2", NOW, tokens=float("nan")),
        {k: v for k, v in ev("k2", NOW).items() if k != "event_name"},
    ],
)
def test_one_invalid_event_rejects_the_batch(model: Model, bad: dict[str, Any]) -> None:
    with pytest.raises(RequestValidationError) as info:
        model.ingest([ev("k1", NOW), bad])
    assert [e["idempotency_key"] for e in info.value.validation_errors] == ["k2"]
    assert model.rows == [] and model.version == 0


def test_grace_and_future_boundaries_are_inclusive(model: Model) -> None:
    model.ingest([ev("a", NOW - 12 * H), ev("b", NOW + timedelta(minutes=5))])
    assert keys(model) == {"a", "b"}


def test_conflicting_in_batch_duplicate_rejects(model: Model) -> None:
    with pytest.raises(RequestValidationError) as info:
        model.ingest([ev("k1", NOW, tokens=1), ev("k1", NOW, tokens=2)])
    assert info.value.validation_errors[0]["idempotency_key"] == "k1"


def test_int64_bounds_and_iso_text(model: Model) -> None:
    model.ingest([ev("k1", NOW, big=2**63 - 1, small=-(2**63))])
    model.ingest([{**ev("k2", NOW), "timestamp": "2024-03-10T00:00:00Z"}])
    assert {r[0]: r[2] for r in model.effective()}["k2"] == NOW


def test_backfill_rows_do_not_make_live_duplicates(model: Model, clock: Clock) -> None:
    # only live-source rows count for live idempotency; a key first seen in a backfill can
    # still arrive live and then supersedes the backfill's row with a newer version
    clock.now = OLD - H
    model.ingest([ev("k0", OLD - H)])
    clock.now = NOW
    backfill(model, "b1", end=NOW - 12 * H, replace_existing_events=False)
    model.ingest([ev("k1", OLD, tokens=1)], backfill_id="b1")
    model.close("b1")
    assert model.ingest([ev("k1", NOW, tokens=2)]) == (["k1"], [])
    assert props_of(model, "k1") == {"tokens": 2}


# --------------------------------------------------------------------------- customers


def test_external_id_is_unique(model: Model) -> None:
    model.create_customer(customer_id="c1", external_customer_id="ext-a")
    model.create_customer(customer_id="c2", external_customer_id=None)
    model.create_customer(customer_id="c3", external_customer_id=None)
    with pytest.raises(DuplicateResourceCreation):
        model.create_customer(customer_id="c4", external_customer_id="ext-a")
    assert set(model.customers) == {"c1", "c2", "c3"}


# --------------------------------------------------------------------------- backfill create


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"end": OLD}, ConstraintViolation),
        ({"end": OLD + timedelta(days=31, microseconds=1)}, ConstraintViolation),
        ({"customer_id": "c1", "external_customer_id": "ext-a"}, ConstraintViolation),
        (
            {"replace_existing_events": False, "deprecation_filter": Compare("tokens", ">", 1)},
            ConstraintViolation,
        ),
        ({"deprecation_filter": InvalidFilter("(SELECT 1) = 1")}, ConstraintViolation),
        ({"end": NOW - 12 * H + timedelta(microseconds=1)}, ConstraintViolation),
        ({"close_time": NOW - timedelta(microseconds=1)}, ConstraintViolation),
        ({"customer_id": "cus_missing"}, ResourceNotFound),
        # a 400 wins over a 404 wins over a 409
        ({"customer_id": "cus_missing", "close_time": NOW - H}, ConstraintViolation),
    ],
)
def test_create_backfill_rejections(model: Model, kwargs: dict[str, Any], error: type) -> None:
    model.create_customer(customer_id="c1", external_customer_id="ext-a")
    with pytest.raises(error):
        backfill(model, "b1", **kwargs)
    assert model.backfills == {}


def test_create_backfill_boundaries(model: Model) -> None:
    # 31 days exactly; ends exactly at now - grace; closes exactly now
    b = backfill(model, "b1", start=NOW - 12 * H - 31 * DAY, end=NOW - 12 * H, close_time=NOW)
    assert b.close_time == NOW
    b2 = backfill(model, "b2", start=NOW - H, end=NOW + DAY, replace_existing_events=False)
    assert b2.close_time == NOW + DAY  # default: created_at + 1 day


def test_create_backfill_fills_the_other_customer_id(model: Model) -> None:
    model.create_customer(customer_id="c1", external_customer_id="ext-a")
    model.create_customer(customer_id="c2", external_customer_id=None)
    b1 = backfill(model, "b1", customer_id="c1")
    assert (b1.customer_id, b1.external_customer_id) == ("c1", "ext-a")
    b2 = backfill(model, "b2", external_customer_id="ext-a", start=OLD - 2 * DAY, end=OLD - DAY)
    assert (b2.customer_id, b2.external_customer_id) == ("c1", "ext-a")
    b3 = backfill(model, "b3", external_customer_id="ext-ghost")
    assert (b3.customer_id, b3.external_customer_id) == (None, "ext-ghost")
    b4 = backfill(model, "b4", customer_id="c2")
    assert (b4.customer_id, b4.external_customer_id) == ("c2", None)


def test_overlap_rules(model: Model) -> None:
    model.create_customer(customer_id="c1", external_customer_id="ext-a")
    model.create_customer(customer_id="c2", external_customer_id="ext-b")
    backfill(model, "b1", customer_id="c1")
    backfill(model, "b2", customer_id="c2")  # other customer: fine
    with pytest.raises(ResourceConflict):  # same customer named by its external id
        backfill(model, "b3", external_customer_id="ext-a", start=OLD + H, end=OLD + 2 * H)
    with pytest.raises(ResourceConflict):  # account-wide conflicts with every pending one
        backfill(model, "b3", start=OLD - H, end=OLD + H)
    backfill(model, "b3", start=OLD - DAY, end=OLD)  # half-open: touching is fine
    with pytest.raises(ResourceConflict):  # and every pending one conflicts with it
        backfill(model, "b4", customer_id="c2", start=OLD - H, end=OLD)
    model.close("b1")
    model.revert("b2")
    backfill(model, "b4", start=OLD, end=OLD + DAY)  # closed and reverted ones do not block


# --------------------------------------------------------------------------- backfill ingest


def test_backfill_ingest_rules(model: Model, clock: Clock) -> None:
    model.create_customer(customer_id="c1", external_customer_id="ext-a")
    model.create_customer(customer_id="c2", external_customer_id="ext-b")
    backfill(model, "b1", customer_id="c1", close_time=NOW + H)
    with pytest.raises(ResourceNotFound):
        model.ingest([ev("k1", OLD)], backfill_id="nope")
    for bad in (
        ev("k1", OLD - timedelta(microseconds=1)),
        ev("k1", OLD + DAY),
        ev("k1", OLD, ext="ext-b"),
        by_id("k1", OLD, "c2"),
    ):
        with pytest.raises(RequestValidationError):
            model.ingest([bad], backfill_id="b1")
    # old timestamps are fine here: the grace period is for live ingest only
    result = model.ingest(
        [ev("k1", OLD), by_id("k2", OLD + DAY - timedelta(microseconds=1), "c1")],
        backfill_id="b1",
    )
    assert result == (["k1", "k2"], [])
    assert model.ingest([ev("k1", OLD + H), ev("k3", OLD)], backfill_id="b1") == (["k3"], ["k1"])
    assert model.backfills["b1"].events_ingested == 3
    assert keys(model) == set()  # nothing is visible before close
    clock.now = NOW + H
    with pytest.raises(ResourceConflict):  # close_time reached
        model.ingest([ev("k4", OLD)], backfill_id="b1")
    model.close("b1")
    with pytest.raises(ResourceConflict):
        model.ingest([ev("k4", OLD)], backfill_id="b1")


# --------------------------------------------------------------------------- close / revert


def test_replace_supersedes_deprecates_and_reverts_exactly(model: Model, clock: Clock) -> None:
    seed_old_events(
        model,
        clock,
        ev("k1", OLD + H, tokens=1),
        ev("k2", OLD + 2 * H, tokens=2),
        ev("k3", OLD + DAY, tokens=3),  # outside the timeframe: untouched
    )
    before = model.effective()
    backfill(model, "b1")
    model.ingest([ev("k1", OLD + H, tokens=10), ev("k4", OLD, tokens=4)], backfill_id="b1")
    model.close("b1")
    assert {k: props_of(model, k) for k in keys(model)} == {
        "k1": {"tokens": 10},  # re-sent: superseded, counted once
        "k3": {"tokens": 3},  # k2 was not re-sent: deprecated
        "k4": {"tokens": 4},
    }
    assert model.backfills["b1"].close_time == NOW
    clock.now = NOW + H
    model.revert("b1")
    assert model.effective() == before
    assert model.backfills["b1"].reverted_at == NOW + H
    assert model.version == 5  # three live batches, one close, one revert


def test_add_backfill_deprecates_nothing(model: Model, clock: Clock) -> None:
    seed_old_events(model, clock, ev("k1", OLD + H, tokens=1))
    backfill(model, "b1", replace_existing_events=False)
    model.ingest([ev("k2", OLD)], backfill_id="b1")
    model.close("b1")
    assert keys(model) == {"k1", "k2"}


def test_scoped_replace_leaves_other_customers(model: Model, clock: Clock) -> None:
    model.create_customer(customer_id="c1", external_customer_id="ext-a")
    seed_old_events(
        model,
        clock,
        ev("k1", OLD, ext="ext-a"),
        by_id("k2", OLD, "c1"),
        ev("k3", OLD, ext="ext-b"),
    )
    backfill(model, "b1", customer_id="c1")
    model.close("b1")
    assert keys(model) == {"k3"}  # both spellings of c1 are in scope


def test_close_deprecates_rows_that_were_already_superseded(model: Model, clock: Clock) -> None:
    # "whether or not it was still effective": b1's close also marks the old live k1, so
    # reverting b2 (which superseded k1 first) does not bring the live k1 back
    seed_old_events(model, clock, ev("k1", OLD, tokens=1))
    backfill(model, "b2", replace_existing_events=False)
    model.ingest([ev("k1", OLD, tokens=2)], backfill_id="b2")
    model.close("b2")
    backfill(model, "b1")
    model.close("b1")
    assert keys(model) == set()
    model.revert("b2")
    assert keys(model) == set()
    model.revert("b1")
    assert props_of(model, "k1") == {"tokens": 1}


def test_no_fallback_to_an_older_version(model: Model, clock: Clock) -> None:
    # the newest candidate is deprecated, the older live row is not (it fails the filter),
    # and still the key does not count: only the newest candidate is ever considered
    seed_old_events(model, clock, ev("k1", OLD, model="gpt-3"))
    backfill(model, "add", replace_existing_events=False)
    model.ingest([ev("k1", OLD, model="gpt-4")], backfill_id="add")
    model.close("add")
    backfill(model, "f", deprecation_filter=Compare("model", "=", "gpt-4"))
    model.close("f")
    assert keys(model) == set()
    assert model.search(["k1"])["k1"][1] is True
    model.revert("f")
    assert props_of(model, "k1") == {"model": "gpt-4"}


def test_filter_deprecates_matching_rows_and_later_live_ones(model: Model, clock: Clock) -> None:
    clock.now = NOW - 2 * H
    model.ingest([ev("k1", NOW - 2 * H, model="gpt-4"), ev("k2", NOW - 2 * H, model="gpt-3")])
    clock.now = NOW
    backfill(
        model,
        "f",
        start=NOW - DAY,
        end=NOW + DAY,
        deprecation_filter=Compare("model", "=", "gpt-4"),
    )
    model.ingest([ev("k3", NOW - 3 * H, model="gpt-4")], backfill_id="f")
    model.close("f")
    assert keys(model) == {"k2", "k3"}
    # later live events in the timeframe that match are deprecated too; others count
    model.ingest([ev("k4", NOW, model="gpt-4"), ev("k5", NOW, model="gpt-3")])
    assert keys(model) == {"k2", "k3", "k5"}
    # so are amendments that make an event match
    model.amend(
        "k2",
        event_name="api_call",
        timestamp=NOW - 2 * H,
        properties={"model": "gpt-4"},
        external_customer_id="ext-a",
    )
    assert keys(model) == {"k3", "k5"}
    model.revert("f")
    assert keys(model) == {"k1", "k2", "k4", "k5"}
    assert props_of(model, "k2") == {"model": "gpt-4"}


def test_later_backfill_rows_are_not_deprecated_by_an_earlier_filter(model: Model) -> None:
    backfill(model, "f", start=OLD, end=OLD + DAY, deprecation_filter=BoolColumn("cached"))
    model.close("f")
    backfill(model, "add", replace_existing_events=False)
    model.ingest([ev("k1", OLD, cached=True)], backfill_id="add")
    model.close("add")
    assert keys(model) == {"k1"}


def test_close_and_revert_state_machine(model: Model, clock: Clock) -> None:
    backfill(model, "b1")
    backfill(model, "b2", start=OLD - 2 * DAY, end=OLD - DAY)
    with pytest.raises(ResourceNotFound):
        model.close("nope")
    with pytest.raises(ResourceNotFound):
        model.revert("nope")
    model.revert("b2")  # pending -> reverted, no commit
    assert model.version == 0 and model.backfills["b2"].status == BackfillStatus.REVERTED
    for op in (model.close, model.revert):
        with pytest.raises(ResourceConflict):
            op("b2")
    model.close("b1")
    with pytest.raises(ResourceConflict):
        model.close("b1")
    model.revert("b1")
    assert model.version == 2
    with pytest.raises(ResourceConflict):
        model.revert("b1")


def test_close_due_closes_only_due_pending_backfills(model: Model, clock: Clock) -> None:
    model.create_customer(customer_id="c1", external_customer_id="ext-a")
    model.create_customer(customer_id="c2", external_customer_id="ext-b")
    backfill(model, "due", customer_id="c1", close_time=NOW + H)
    backfill(model, "later", customer_id="c2", close_time=NOW + 2 * H)
    backfill(model, "gone", start=OLD - 2 * DAY, end=OLD - DAY, close_time=NOW)
    model.revert("gone")
    clock.now = NOW + H
    assert [b.id for b in model.close_due()] == ["due"]
    assert model.backfills["due"].close_time == NOW + H
    assert model.backfills["later"].status == BackfillStatus.PENDING
    assert model.close_due() == []


# --------------------------------------------------------------------------- amend / deprecate


def test_amend_and_deprecate(model: Model, clock: Clock) -> None:
    model.ingest([ev("k1", NOW, tokens=1)])
    with pytest.raises(ResourceNotFound):
        model.amend("nope", event_name="x", timestamp=NOW, properties={}, external_customer_id="e")
    with pytest.raises(ConstraintViolation):
        model.amend(
            "k1",
            event_name="x",
            timestamp=NOW + H,
            properties={"a": 1},
            external_customer_id="ext-a",
        )
    with pytest.raises(RequestValidationError) as info:
        model.amend(
            "k1",
            event_name="x",
            timestamp=NOW,
            properties={"a": None},
            external_customer_id="ext-a",
        )
    assert info.value.fields["any_400"]
    with pytest.raises(RequestValidationError):
        model.amend(
            "k1", event_name="x", timestamp=NOW, properties={"a": 1}, customer_id="cus_missing"
        )
    assert model.version == 1
    # the grace period does not apply: a day later the event can still be amended
    clock.now = NOW + DAY
    model.amend(
        "k1",
        event_name="tokens_used",
        timestamp=NOW,
        properties={"tokens": 5},
        external_customer_id="ext-a",
    )
    assert model.effective() == {
        ("k1", "tokens_used", NOW, None, "ext-a", frozen_properties({"tokens": 5}))
    }
    assert model.ingest([ev("k1", NOW + DAY)]) == ([], ["k1"])  # amendments are live rows
    model.deprecate("k1")
    assert model.effective() == set()
    body, deprecated = model.search(["k1", "nope"])["k1"]
    assert deprecated and body.event_name == "tokens_used"
    with pytest.raises(ResourceNotFound):
        model.deprecate("k1")
    with pytest.raises(ResourceNotFound):
        model.amend(
            "k1", event_name="x", timestamp=NOW, properties={"a": 1}, external_customer_id="ext-a"
        )
    assert model.ingest([ev("k1", NOW + DAY)]) == ([], ["k1"])  # tombstones are live rows too
    assert model.version == 3


def test_amend_of_a_backfill_deprecated_event_conflicts(model: Model, clock: Clock) -> None:
    seed_old_events(model, clock, ev("k1", OLD))
    backfill(model, "b1")
    model.close("b1")
    assert model.search(["k1"])["k1"][1] is True
    with pytest.raises(ResourceConflict):
        model.deprecate("k1")
    with pytest.raises(ResourceConflict):
        model.amend(
            "k1", event_name="x", timestamp=OLD, properties={"a": 1}, external_customer_id="ext-a"
        )


def test_backfill_row_can_be_amended_and_revert_of_its_backfill_hides_it(
    model: Model, clock: Clock
) -> None:
    backfill(model, "b1", replace_existing_events=False)
    model.ingest([ev("k1", OLD, tokens=1)], backfill_id="b1")
    model.close("b1")
    model.amend(
        "k1",
        event_name="api_call",
        timestamp=OLD,
        properties={"tokens": 2},
        external_customer_id="ext-a",
    )
    model.revert("b1")
    assert props_of(model, "k1") == {"tokens": 2}  # the amendment is a live row of its own


# --------------------------------------------------------------------------- filters


def body(**props: Any) -> EventBody:
    return EventBody("api_call", NOW, None, "ext-a", frozen_properties(props))


@pytest.mark.parametrize(
    ("flt", "props", "expected"),
    [
        (Compare("model", "=", "gpt-4"), {"model": "gpt-4"}, True),
        (Compare("model", "=", "gpt-4"), {"model": 4}, None),  # other type: NULL
        (Compare("model", "!=", "gpt-4"), {}, None),  # missing: NULL, even for !=
        (Compare("tokens", ">", 50), {"tokens": 50.5}, True),
        (Compare("tokens", ">", 50), {"tokens": "75"}, None),  # a string never compares as a number
        (Compare("tokens", ">", 50), {"tokens": True}, None),  # nor does a boolean
        (Compare("tokens", "<=", 50), {"tokens": 50}, True),
        (InList("region", ("eu", "us")), {"region": "us"}, True),
        (InList("region", ("eu", "us")), {"region": 1}, None),
        (BoolColumn("cached", negate=True), {"cached": False}, True),
        (BoolColumn("cached", negate=True), {"cached": 0}, None),
        (BoolColumn("cached"), {"cached": "yes"}, None),
        (And(BoolColumn("cached"), Compare("tokens", ">", 1)), {"tokens": 5}, None),
        (And(BoolColumn("cached"), Compare("tokens", ">", 1)), {"tokens": 0}, False),
        (Or(BoolColumn("cached"), Compare("tokens", ">", 1)), {"tokens": 5}, True),
        (Or(BoolColumn("cached"), Compare("tokens", ">", 1)), {"tokens": 0}, None),
        (Compare("event_name", "=", "api_call"), {}, True),
    ],
)
def test_filter_three_valued_logic(flt: Any, props: dict[str, Any], expected: bool | None) -> None:
    assert flt.evaluate(body(**props)) is expected


def test_filter_sql() -> None:
    flt = And(
        Or(Compare("model", "=", "it's"), InList("region", ("eu", "us"))),
        BoolColumn("cached", negate=True),
    )
    assert flt.sql == "((model = 'it''s') OR (region IN ('eu', 'us'))) AND (NOT cached)"
    assert Compare("tokens", ">", 50.5).sql == "tokens > 50.5"
