"""The engine against the reference model (tests/model.py) over random operation sequences.

Every step runs one operation on both; the step passes when both succeed with the same answer
or both refuse with the same error class (for a refused batch, naming the same keys). After
every step the invariant compares everything a user can observe: the effective events, every
backfill's status / counters / times / customer ids, and the search view (with ``deprecated``
flags) of the keys the step touched. Since the previous step left engine and model equal and a
refused operation leaves the model unchanged, "a refused operation changes nothing in the
engine" is checked by the same comparison.

The universe is tiny on purpose (a few customers, event names, reused keys, timestamps on a
coarse grid over a few days) so that duplicates, re-sent keys, overlapping timeframes and
filter edge cases happen within 30 steps.

Steps are drawn from one weighted rule (``step``) rather than one hypothesis rule per
operation: hypothesis' own rule choice (swarm testing plus preconditions) spent most steps on a
couple of cheap operations, and each engine commit costs a few hundred milliseconds, so every
step has to count.

Profiles: ``ENGINE_STATEFUL_PROFILE=ci`` (default, derandomized: the same sequences on every
run) or ``=long`` (random, many more and longer sequences) for a thorough local run. Run with
``--hypothesis-show-statistics`` to see what the sequences exercised.
"""

from __future__ import annotations

import itertools
import math
import os
import shutil
import tempfile
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import hypothesis.strategies as st
from hypothesis import HealthCheck, event, note, settings
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule
from model import (
    And,
    BoolColumn,
    Compare,
    EffectiveRow,
    EventBody,
    Filter,
    InList,
    InvalidFilter,
    Model,
    ModelBackfill,
    Or,
    frozen_properties,
)

import engine
from engine import EngineError, RequestValidationError
from engine.models import BackfillStatus

T = TypeVar("T")
U = TypeVar("U")

US = timedelta(microseconds=1)
MIN = timedelta(minutes=1)
H = timedelta(hours=1)
DAY = timedelta(days=1)
GRACE = 12 * H
FUTURE = 5 * MIN
MAX_DURATION = 31 * DAY
START = datetime(2024, 3, 4, tzinfo=UTC)  # the clock starts here; history goes back to Mar 1

KEYS = [f"k{i}" for i in range(14)]
EVENT_NAMES = ["api_call", "tokens_used"]
EXTERNAL_IDS = ["ext-a", "ext-b", "ext-c"]
# events and backfills may name an external id no customer has; it is never given to a
# customer later, so "which customer does this event belong to" never changes mid-sequence
GHOST = "ext-ghost"
MISSING_CUSTOMER = "cus_missing"
MISSING_BACKFILL = "bf_missing"
WIDE = (START - 60 * DAY, START + 60 * DAY)  # a search window covering every event

# Each engine commit and read costs 0.1-0.3 s (a DuckLake snapshot each), so a 30-step
# sequence with its checks takes about 10 s of CPU: "ci" stays under 3 minutes on 2 cores.
settings.register_profile(
    "ci",
    max_examples=12,
    stateful_step_count=30,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.register_profile(
    "long",
    max_examples=100,
    stateful_step_count=50,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

# --------------------------------------------------------------------------- strategies

PROPERTIES = {
    # mostly well-typed values, with a few of the other type: a filter must see those as NULL
    "model": st.sampled_from(["gpt-4", "gpt-3.5", "claude"]) | st.just(4),
    "tokens": st.sampled_from([0, 10, 50, 51, 1000, 2**63 - 1, -(2**63)])
    | st.sampled_from([50.5, 0.25])
    | st.sampled_from(["many", "75", True]),
    "region": st.sampled_from(["eu", "us", "ap"]) | st.just(1),
    "cached": st.booleans() | st.sampled_from(["yes", 0]),
}
properties_st = st.fixed_dictionaries({}, optional=PROPERTIES).map(lambda d: d or {"tokens": 1})
BAD_VALUES = [None, {"nested": 1}, [1], 2**63, -(2**63) - 1, math.nan, math.inf]

atom_st: st.SearchStrategy[Filter] = st.one_of(
    st.builds(Compare, st.just("model"), st.sampled_from(["=", "!="]), st.just("gpt-4")),
    st.builds(
        Compare,
        st.just("tokens"),
        st.sampled_from([">", "<=", ">="]),
        st.sampled_from([50, 10, 50.5]),
    ),
    st.builds(InList, st.just("region"), st.sampled_from([("eu", "us"), ("ap",)])),
    st.builds(BoolColumn, st.just("cached"), st.booleans()),
    st.builds(Compare, st.just("event_name"), st.just("="), st.just("api_call")),
    st.builds(Compare, st.just("external_customer_id"), st.just("="), st.just("ext-a")),
)
filter_st: st.SearchStrategy[Filter] = (
    atom_st | st.builds(And, atom_st, atom_st) | st.builds(Or, atom_st, atom_st)
)
INVALID_FILTERS = [
    "(SELECT 1) = 1",
    "model = 'a'; DROP TABLE events",
    "nosuchfn(model) = 'a'",
    "model = ",
    "tokens > (SELECT max(tokens) FROM events)",
]


def _iso(ts: datetime) -> str:
    return ts.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _floor_hour(ts: datetime) -> datetime:
    return ts.replace(minute=0, second=0, microsecond=0)


def _ref_of(body: EventBody) -> tuple[str, str]:
    """How the event names its customer."""
    if body.customer_id is not None:
        return ("customer_id", body.customer_id)
    assert body.external_customer_id is not None
    return ("external_customer_id", body.external_customer_id)


def _ref_body(ref: tuple[str, str]) -> EventBody:
    """Just enough of an event to ask a model backfill whether this customer is in scope."""
    cid = ref[1] if ref[0] == "customer_id" else None
    ext = ref[1] if ref[0] == "external_customer_id" else None
    return EventBody("api_call", START, cid, ext, ())


# --------------------------------------------------------------------------- machine

# How often each operation is drawn, relative to the others.
OPERATIONS = {
    "advance_clock": 3,
    "live_ingest": 4,
    "create_backfill": 4,
    "backfill_ingest": 3,
    "close": 3,
    "revert": 1,
    "amend": 2,
    "deprecate": 1,
    "create_customer": 1,
    "resend_elsewhere": 1,
    "filter_then_live": 1,
    "read_views": 1,
    "reopen": 1,
}
LIVE_FLAWS = [
    "too_old",
    "future",
    "both_ids",
    "no_ids",
    "unknown_customer",
    "naive",
    "bad_property",
    "no_event_name",
    "conflict",
    "identical",
]
BACKFILL_FLAWS = [
    "reversed",
    "too_long",
    "both_ids",
    "filter_without_replace",
    "invalid_filter",
    "too_recent",
    "close_in_past",
    "unknown_customer",
]
STAGE_FLAWS = [
    "before_start",
    "at_end",
    "wrong_customer",
    "both_ids",
    "unknown_customer",
    "bad_property",
    "naive",
]
AMEND_FLAWS = ["other_timestamp", "both_ids", "no_ids", "unknown_customer", "bad_property"]


def _sometimes_flawed(flaws: list[str], clean: int) -> st.SearchStrategy[str | None]:
    """``None`` (a valid request) ``clean`` times as often as each flaw."""
    return st.sampled_from([None] * clean + flaws)


class EngineVsModel(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.now = START
        self.dir = Path(tempfile.mkdtemp(prefix="engine-stateful-"))
        self.store = self.open_store()
        self.model = Model(
            clock=self.clock,
            grace_period=GRACE,
            future_tolerance=FUTURE,
            max_backfill_duration=MAX_DURATION,
        )
        self.fresh = itertools.count()
        self.touched: set[str] = set()
        self.steps = 0

    def clock(self) -> datetime:
        return self.now

    def open_store(self) -> engine.Store:
        return engine.open(
            self.dir / "store",
            clock=self.clock,
            grace_period=GRACE,
            future_tolerance=FUTURE,
            max_backfill_duration=MAX_DURATION,
        )

    def teardown(self) -> None:
        event(f"steps: {self.steps // 5 * 5}+")
        self.store.close()
        shutil.rmtree(self.dir, ignore_errors=True)

    # ----------------------------------------------------------------- helpers

    def both(
        self, label: str, on_engine: Callable[[], T], on_model: Callable[[T | None], U]
    ) -> tuple[T, U] | None:
        """Run one operation on both sides; they must agree on success or on the error class.
        Returns both results, or ``None`` when both refused.

        ``on_model`` gets the engine's result so that it can reuse the ids the engine made."""
        got: T | None = None
        engine_error: EngineError | None = None
        try:
            got = on_engine()
        except EngineError as error:
            engine_error = error
        try:
            want = on_model(got)
        except EngineError as expected:
            note(f"model refuses: {expected!r}")
            event(f"{label}: {type(expected).__name__}")  # --hypothesis-show-statistics
            assert engine_error is not None, f"engine accepted what the model refuses: {expected!r}"
            self.same_error(expected, engine_error)
            return None
        assert engine_error is None, f"engine refused what the model accepts: {engine_error!r}"
        assert got is not None
        event(f"{label}: ok")
        return got, want

    @staticmethod
    def same_error(expected: EngineError, actual: EngineError) -> None:
        if expected.fields.get("any_400") and actual.status == 400:
            return
        assert type(actual) is type(expected), f"expected {expected!r}, engine raised {actual!r}"
        if isinstance(expected, RequestValidationError):
            assert isinstance(actual, RequestValidationError)
            want = {
                e["idempotency_key"]: e["validation_errors"] for e in expected.validation_errors
            }
            got = {e["idempotency_key"]: e["validation_errors"] for e in actual.validation_errors}
            assert set(got) == set(want), f"keys in error: engine {got}, model {want}"
            for key, messages in want.items():
                if any("grace period" in m for m in messages):
                    assert any("backfill" in m.lower() for m in got[key]), got[key]

    def scope_refs(self, b: ModelBackfill) -> list[tuple[str, str]]:
        """Ways an event can name a customer in the backfill's scope."""
        if b.account_wide:
            return self.customer_refs()
        named = [("customer_id", b.customer_id), ("external_customer_id", b.external_customer_id)]
        return [(k, v) for k, v in named if v is not None]

    def customer_refs(self) -> list[tuple[str, str]]:
        """Ways a valid event can name its customer."""
        refs = [("customer_id", c.id) for c in self.model.customers.values()]
        refs += [
            ("external_customer_id", c.external_customer_id)
            for c in self.model.customers.values()
            if c.external_customer_id is not None
        ]
        return [*refs, ("external_customer_id", GHOST)]

    def key_without_live_row(self) -> str:
        """A key that no live ingest would report as a duplicate: flawed events use one, so a
        flaw is never hidden behind (or mistaken for) a duplicate."""
        live = {r.key for r in self.model.rows if r.source is None}
        free = [k for k in KEYS if k not in live]
        return free[0] if free else f"fresh{next(self.fresh)}"

    def make_event(
        self, key: str, ts: datetime, ref: tuple[str, str], data: st.DataObject
    ) -> dict[str, Any]:
        as_text = data.draw(st.sampled_from([False, False, False, True]))
        return {
            "idempotency_key": key,
            "event_name": data.draw(st.sampled_from(EVENT_NAMES)),
            "timestamp": _iso(ts) if as_text else ts,
            ref[0]: ref[1],
            "properties": data.draw(properties_st),
        }

    def spoil(self, event: dict[str, Any], flaw: str, data: st.DataObject) -> None:
        """Make one event invalid in a way every ingest path must refuse."""
        if flaw == "both_ids":
            event["customer_id"] = data.draw(
                st.sampled_from([MISSING_CUSTOMER, *self.model.customers])
            )
            event["external_customer_id"] = data.draw(st.sampled_from([*EXTERNAL_IDS, GHOST]))
        elif flaw == "no_ids":
            event.pop("customer_id", None)
            event.pop("external_customer_id", None)
        elif flaw == "unknown_customer":
            event.pop("external_customer_id", None)
            event["customer_id"] = MISSING_CUSTOMER
        elif flaw == "bad_property":
            name = data.draw(st.sampled_from(["tokens", "model", "extra"]))
            event["properties"] = {
                **event["properties"],
                name: data.draw(st.sampled_from(BAD_VALUES)),
            }
        elif flaw == "naive":
            ts = event["timestamp"]
            ts = ts if isinstance(ts, datetime) else datetime.fromisoformat(ts[:-1] + "+00:00")
            event["timestamp"] = ts.replace(tzinfo=None)
        elif flaw == "no_event_name":
            del event["event_name"]
        else:
            raise AssertionError(flaw)

    # ----------------------------------------------------------------- rules

    @rule(
        operation=st.sampled_from([op for op, weight in OPERATIONS.items() for _ in range(weight)]),
        data=st.data(),
    )
    def step(self, operation: str, data: st.DataObject) -> None:
        if operation in ("backfill_ingest", "close", "revert") and not self.model.backfills:
            operation = "create_backfill"  # rather than one more 404
        note(f"step {operation} at {self.now.isoformat()}")
        getattr(self, operation)(data)

    @initialize(data=st.data())
    def history(self, data: st.DataObject) -> None:
        """Two customers and three days of live events, ingested on time, so that the first
        backfills already have something to replace."""
        self.new_customer("ext-a")
        self.new_customer(None)
        self.now = START - 3 * DAY
        for _ in range(4):
            self.ingest_live(data, None)
            self.now += 18 * H
        self.now = START

    def create_customer(self, data: st.DataObject) -> None:
        external_customer_id = data.draw(st.sampled_from([*EXTERNAL_IDS, None]))
        if len(self.model.customers) >= 4:
            external_customer_id = "ext-a"  # keep the universe small: only a duplicate now
        self.new_customer(external_customer_id)

    def new_customer(self, external_customer_id: str | None) -> None:
        both = self.both(
            "create customer",
            lambda: self.store.customers.create(external_customer_id=external_customer_id),
            lambda got: self.model.create_customer(
                customer_id=got.id if got else "rejected", external_customer_id=external_customer_id
            ),
        )
        if both is not None:
            created = both[0]
            assert created.external_customer_id == external_customer_id
            assert created.created_at == self.now
            assert self.store.customers.get(created.id) == created
            if external_customer_id is not None:
                assert self.store.customers.get_by_external_id(external_customer_id) == created
        assert {c.id for c in self.store.customers.list()} == set(self.model.customers)

    def advance_clock(self, data: st.DataObject) -> None:
        """Time passes, and sometimes the cron job closes what is due."""
        self.now += data.draw(st.sampled_from([30 * MIN, 2 * H, 6 * H, 7 * MIN, DAY, 3 * DAY]))
        if data.draw(st.booleans()):
            self.close_due()

    def live_ingest(self, data: st.DataObject) -> None:
        self.ingest_live(data, data.draw(_sometimes_flawed(LIVE_FLAWS, 14)))

    def ingest_live(self, data: st.DataObject, flaw: str | None, *, aim: bool = False) -> None:
        def live_ts() -> datetime:
            # half hours back from now; 24 of them is exactly the grace period (allowed)
            return self.now - data.draw(st.integers(0, 24)) * 30 * MIN

        refs = self.customer_refs()
        good_ts, good_refs = live_ts, refs
        open_filters = [
            b
            for b in self.model.backfills.values()
            if b.status == BackfillStatus.REFLECTED
            and b.deprecation_filter is not None
            and b.timeframe_start <= self.now
            and b.timeframe_end > self.now - GRACE
        ]
        if bool(open_filters) and (aim or data.draw(st.booleans())):
            # aim at a reflected filtered backfill: its filter must catch late live events
            b = data.draw(st.sampled_from(open_filters))
            low = max(b.timeframe_start, self.now - GRACE)
            high = min(b.timeframe_end - US, self.now)
            good_refs = self.scope_refs(b)

            def good_ts() -> datetime:
                return low + (high - low) * data.draw(st.integers(0, 4)) // 4

        events = [
            self.make_event(
                data.draw(st.sampled_from(KEYS)),
                good_ts(),
                data.draw(st.sampled_from(good_refs)),
                data,
            )
            for _ in range(data.draw(st.integers(1, 4)))
        ]
        # one event per key: a conflicting repeat is a flaw of its own, drawn below
        events = list({e["idempotency_key"]: e for e in events}.values())
        if data.draw(st.integers(0, 3)) == 0:
            events[0]["timestamp"] = self.now + FUTURE  # the future boundary is allowed
        if flaw == "conflict":
            twin = {**events[0], "properties": {**events[0]["properties"], "tokens": -1}}
            events.append(twin)
        elif flaw == "identical":
            events.append(dict(events[0]))
        elif flaw is not None:
            bad = self.make_event(
                self.key_without_live_row(), live_ts(), data.draw(st.sampled_from(refs)), data
            )
            if flaw == "too_old":
                bad["timestamp"] = self.now - GRACE - data.draw(st.sampled_from([US, H]))
            elif flaw == "future":
                bad["timestamp"] = self.now + FUTURE + data.draw(st.sampled_from([US, H]))
            else:
                self.spoil(bad, flaw, data)
            events.insert(data.draw(st.integers(0, len(events))), bad)
        self.ingest_both(events, None)
        self.touched |= {e["idempotency_key"] for e in events}

    def ingest_both(self, events: list[dict[str, Any]], backfill_id: str | None) -> None:
        note(f"ingest (backfill {backfill_id}): {events!r}")
        both = self.both(
            "backfill ingest" if backfill_id else "live ingest",
            lambda: self.store.ingest(events, backfill_id=backfill_id),
            lambda _: self.model.ingest(events, backfill_id=backfill_id),
        )
        if both is not None:
            got, (ingested, duplicates) = both
            assert set(got.ingested) == set(ingested), (got, ingested, duplicates)
            assert set(got.duplicates) == set(duplicates), (got, ingested, duplicates)

    def create_backfill(self, data: st.DataObject) -> None:
        kind = data.draw(st.sampled_from(["replace", "filter", "replace", "add", "filter"]))
        flaw = data.draw(_sometimes_flawed(BACKFILL_FLAWS, 16))
        length = data.draw(st.sampled_from([H, 3 * H, 6 * H, DAY, 2 * DAY]))
        latest_end = self.now - GRACE if kind == "replace" else self.now + DAY
        # the newest row of each key, and most of all one that a backfill re-sent: replacing
        # it must not bring back the key's older row, which often lies outside the timeframe
        newest = [r for r in self.model.newest() if _floor_hour(r.body.timestamp) + H <= latest_end]
        resent = [r for r in newest if r.source is not None]
        targets = resent if bool(resent) and data.draw(st.booleans()) else newest
        aim = bool(targets) and data.draw(st.integers(0, 3)) > (2 if kind == "filter" else 0)
        target = data.draw(st.sampled_from(targets)).body if aim else None
        if target is not None:
            # aim at a stored event (time and customer), or nothing is ever replaced: the
            # clock runs ahead of the events, and most timeframes would miss them; the
            # timeframe of ``length`` around the target still ends by ``latest_end``
            overshoot = _floor_hour(target.timestamp) + length - latest_end
            fewest = max(0, math.ceil(overshoot / H))
            hours_before = data.draw(st.integers(fewest, max(fewest, int(length / H) - 1)))
            start = _floor_hour(target.timestamp) - hours_before * H
            end = start + length
        elif kind == "replace":  # must end before the grace period
            end = _floor_hour(self.now - GRACE) - data.draw(st.integers(0, 48)) * H
            start = end - length
        elif kind == "filter":  # over now: the filter also catches live events that come later
            start = _floor_hour(self.now) - data.draw(st.integers(0, 12)) * H
            end = _floor_hour(self.now) + data.draw(st.sampled_from([H, DAY, 3 * DAY, 7 * DAY]))
        else:
            end = _floor_hour(self.now) - data.draw(st.integers(-6, 48)) * H
            start = end - length
        scopes = ["account", "customer_id", "external_customer_id"]
        scope = data.draw(st.sampled_from(scopes if target is None else ["target"] * 3 + scopes))
        kwargs: dict[str, Any] = {
            "timeframe_start": start,
            "timeframe_end": end,
            "replace_existing_events": kind != "add",
        }
        model_filter: Filter | InvalidFilter | None = None
        if kind == "filter":
            model_filter = data.draw(filter_st)
        if scope == "target" and target is not None:
            if target.customer_id is not None:
                kwargs["customer_id"] = target.customer_id
            else:
                kwargs["external_customer_id"] = target.external_customer_id
        elif scope == "customer_id":
            # insertion order, not sorted: ids are random, and a draw must not depend on them
            kwargs["customer_id"] = data.draw(st.sampled_from(list(self.model.customers)))
        elif scope == "external_customer_id":
            kwargs["external_customer_id"] = data.draw(st.sampled_from([GHOST, *EXTERNAL_IDS]))
        close_time = data.draw(
            st.sampled_from([None, None, None, self.now, self.now + H, self.now + 2 * DAY])
        )
        if close_time is not None:
            kwargs["close_time"] = close_time

        if flaw == "reversed":
            kwargs["timeframe_start"], kwargs["timeframe_end"] = (
                end,
                data.draw(st.sampled_from([start, end])),
            )
        elif flaw == "too_long":
            kwargs["timeframe_start"] = end - MAX_DURATION - data.draw(st.sampled_from([US, DAY]))
        elif flaw == "both_ids":
            kwargs["customer_id"] = data.draw(
                st.sampled_from([MISSING_CUSTOMER, *self.model.customers])
            )
            kwargs["external_customer_id"] = data.draw(st.sampled_from(EXTERNAL_IDS))
        elif flaw == "filter_without_replace":
            kwargs["replace_existing_events"] = False
            model_filter = model_filter or data.draw(filter_st)
        elif flaw == "invalid_filter":
            kwargs["replace_existing_events"] = True
            model_filter = InvalidFilter(data.draw(st.sampled_from(INVALID_FILTERS)))
        elif flaw == "too_recent":
            kwargs["replace_existing_events"], model_filter = True, None
            kwargs["timeframe_end"] = self.now - GRACE + data.draw(st.sampled_from([US, H]))
            kwargs["timeframe_start"] = kwargs["timeframe_end"] - length
        elif flaw == "close_in_past":
            kwargs["close_time"] = self.now - data.draw(st.sampled_from([US, H]))
        elif flaw == "unknown_customer":
            kwargs.pop("external_customer_id", None)
            kwargs["customer_id"] = MISSING_CUSTOMER
        created = self.submit_backfill(kind, kwargs, model_filter)
        if created is not None:
            # most backfills get events at once: 30 steps are few for create, ingest and close
            if data.draw(st.integers(0, 3)) > 0:
                self.ingest_into(created, None, data)
            # and most close at once: closes that follow each other over the same events, and
            # live events still arriving in a filtered timeframe, need closed backfills early
            if data.draw(st.integers(0, 3)) > 0:
                self.close_backfill(created)

    def submit_backfill(
        self, kind: str, kwargs: dict[str, Any], model_filter: Filter | InvalidFilter | None
    ) -> str | None:
        """Create a backfill on both sides; returns its id when both accepted it."""
        if model_filter is not None:
            kwargs["deprecation_filter"] = model_filter.sql
        model_kwargs = {**kwargs, "deprecation_filter": model_filter}
        note(f"create backfill: {kwargs!r}")
        both = self.both(
            f"create {kind} backfill",
            lambda: self.store.backfills.create(**kwargs),
            lambda got: self.model.create_backfill(
                backfill_id=got.id if got else "rejected", **model_kwargs
            ),
        )
        if both is None:
            return None
        created, want = both
        assert created.status == BackfillStatus.PENDING
        assert created.created_at == self.now
        assert created.timeframe_start == kwargs["timeframe_start"]
        assert created.timeframe_end == kwargs["timeframe_end"]
        assert created.replace_existing_events == want.replace_existing_events
        assert (created.deprecation_filter is None) == (want.deprecation_filter is None)
        return created.id

    def resend_elsewhere(self, data: st.DataObject) -> None:
        """DESIGN's no-fallback rule in one step: an add backfill re-sends a stored key at
        another time, then a replace backfill over that time deprecates the re-sent row. The
        key's older row (outside the timeframe, not deprecated) must not count again."""
        old = [
            r
            for r in self.model.newest()
            if not r.tombstone and r.body.timestamp <= self.now - GRACE
        ]
        if not old:
            return self.create_backfill(data)
        row = data.draw(st.sampled_from(old))
        start = _floor_hour(row.body.timestamp) - data.draw(st.integers(1, 8)) * 6 * H
        window = {"timeframe_start": start, "timeframe_end": start + H}
        ref = _ref_of(row.body)
        added = self.submit_backfill(
            "add", {**window, ref[0]: ref[1], "replace_existing_events": False}, None
        )
        if added is None:
            return None
        resent = self.make_event(row.key, start + data.draw(st.integers(0, 59)) * MIN, ref, data)
        self.ingest_both([resent], added)
        self.close_backfill(added)
        scope = {ref[0]: ref[1]} if data.draw(st.booleans()) else {}
        replacing = self.submit_backfill("replace", {**window, **scope}, None)
        if replacing is not None:
            self.close_backfill(replacing)
        return None

    def filter_then_live(self, data: st.DataObject) -> None:
        """A filtered correction over now, closed at once, then live events into its timeframe:
        the filter must keep deprecating the late arrivals (and amendments) that match."""
        start = _floor_hour(self.now) - data.draw(st.integers(0, 12)) * H
        end = _floor_hour(self.now) + data.draw(st.sampled_from([H, DAY, 3 * DAY]))
        ref = data.draw(st.sampled_from([None, *self.customer_refs()]))
        kwargs: dict[str, Any] = {"timeframe_start": start, "timeframe_end": end}
        if ref is not None:
            kwargs[ref[0]] = ref[1]
        created = self.submit_backfill("filter", kwargs, data.draw(filter_st))
        if created is not None:
            self.close_backfill(created)
            self.ingest_live(data, None, aim=True)

    def pick_backfill(self, data: st.DataObject, likely: BackfillStatus) -> str:
        """Mostly a backfill in the ``likely`` status, sometimes any, rarely an unknown id."""
        ids = list(self.model.backfills)
        hits = [i for i in ids if self.model.backfills[i].status == likely]
        return data.draw(st.sampled_from(hits * 6 + ids * 3 + [MISSING_BACKFILL]))

    def backfill_ingest(self, data: st.DataObject) -> None:
        backfill_id = self.pick_backfill(data, BackfillStatus.PENDING)
        self.ingest_into(backfill_id, data.draw(_sometimes_flawed(STAGE_FLAWS, 5)), data)

    def ingest_into(self, backfill_id: str, flaw: str | None, data: st.DataObject) -> None:
        b = self.model.backfills.get(backfill_id)
        start, end = (b.timeframe_start, b.timeframe_end) if b else (START - DAY, START)
        refs = self.customer_refs() if b is None else self.scope_refs(b)

        def inside() -> datetime:
            choice = data.draw(st.integers(0, 2 * int((end - start) / H)))
            return min(start + choice * 30 * MIN, end - US)

        events = [
            self.make_event(
                data.draw(st.sampled_from(KEYS)), inside(), data.draw(st.sampled_from(refs)), data
            )
            for _ in range(data.draw(st.integers(1, 4)))
        ]
        events = list({e["idempotency_key"]: e for e in events}.values())
        if flaw is not None and b is not None:
            staged = set(b.staged) | {e["idempotency_key"] for e in events}
            key = next((k for k in KEYS if k not in staged), f"fresh{next(self.fresh)}")
            bad = self.make_event(key, inside(), data.draw(st.sampled_from(refs)), data)
            if flaw == "before_start":
                bad["timestamp"] = start - US
            elif flaw == "at_end":
                bad["timestamp"] = end
            elif flaw == "wrong_customer":
                others = [r for r in self.customer_refs() if not b.in_scope(_ref_body(r))]
                if not others:
                    return
                bad.pop("customer_id", None)
                bad.pop("external_customer_id", None)
                ref = data.draw(st.sampled_from(others))
                bad[ref[0]] = ref[1]
            else:
                self.spoil(bad, flaw, data)
            events.append(bad)
        self.ingest_both(events, backfill_id)

    def close(self, data: st.DataObject) -> None:
        self.close_backfill(self.pick_backfill(data, BackfillStatus.PENDING))

    def close_backfill(self, backfill_id: str) -> None:
        note(f"close {backfill_id!r}")
        both = self.both(
            "close",
            lambda: self.store.backfills.close(backfill_id),
            lambda _: self.model.close(backfill_id),
        )
        if both is not None:
            closed = both[0]
            assert closed.status == BackfillStatus.REFLECTED and closed.close_time == self.now
            self.note_close(backfill_id)
            self.touched |= set(self.model.backfills[backfill_id].staged)

    def note_close(self, backfill_id: str) -> None:
        """Statistics only: how much a close touched (so a run shows it did real work)."""
        b = self.model.backfills[backfill_id]
        hit = sum(b.deprecates(r) for r in self.model.rows)
        kind = (
            "filter"
            if b.deprecation_filter
            else ("replace" if b.replace_existing_events else "add")
        )
        event(f"closed {kind}: {min(b.events_ingested, 3)}+ staged, {min(hit, 3)}+ deprecated")

    def close_due(self) -> None:
        closed = self.store.backfills.close_due()
        want = self.model.close_due()
        assert {b.id for b in closed} == {b.id for b in want}
        for b in want:
            self.note_close(b.id)
        assert all(b.status == BackfillStatus.REFLECTED for b in closed)
        for b in want:
            self.touched |= set(b.staged)

    def revert(self, data: st.DataObject) -> None:
        backfill_id = self.pick_backfill(data, BackfillStatus.REFLECTED)
        note(f"revert {backfill_id!r}")
        both = self.both(
            "revert",
            lambda: self.store.backfills.revert(backfill_id),
            lambda _: self.model.revert(backfill_id),
        )
        if both is not None:
            reverted = both[0]
            assert reverted.status == BackfillStatus.REVERTED and reverted.reverted_at == self.now
            self.touched |= set(self.model.backfills[backfill_id].staged)

    def stored_key(self, data: st.DataObject) -> str:
        """A key with stored rows, or one without (a 404 unless a backfill closes it in)."""
        return data.draw(st.sampled_from(sorted({r.key for r in self.model.rows} | {"k-none"})))

    def amend(self, data: st.DataObject) -> None:
        key = self.stored_key(data)
        flaw = data.draw(_sometimes_flawed(AMEND_FLAWS, 6))
        current = self.model.search([key]).get(key)
        if current is not None:
            ts, ref = current[0].timestamp, _ref_of(current[0])
        else:
            ts, ref = self.now, ("external_customer_id", GHOST)
        amendment = self.make_event(key, ts, ref, data)
        amendment["timestamp"] = ts  # the API takes a datetime here
        # a flaw only on an amendable event: which error wins over "not found" is unspecified
        if flaw is not None and current is not None and not current[1]:
            if flaw == "other_timestamp":
                amendment["timestamp"] = ts + data.draw(st.sampled_from([US, H, -H]))
            else:
                self.spoil(amendment, flaw, data)
        kwargs = {k: v for k, v in amendment.items() if k != "idempotency_key"}
        kwargs.setdefault("event_name", "api_call")
        note(f"amend {key!r}: {kwargs!r}")
        self.both(
            "amend",
            lambda: self.store.events.amend(key, **kwargs),
            lambda _: self.model.amend(key, **kwargs),
        )
        self.touched.add(key)

    def deprecate(self, data: st.DataObject) -> None:
        key = self.stored_key(data)
        note(f"deprecate {key!r}")
        self.both(
            "deprecate",
            lambda: self.store.events.deprecate(key),
            lambda _: self.model.deprecate(key),
        )
        self.touched.add(key)

    def reopen(self, data: st.DataObject) -> None:
        """Close the store and open it again: every commit (and every staged event) was durable."""
        self.store.close()
        self.store = self.open_store()
        self.touched |= {r.key for r in self.model.rows}

    def read_views(self, data: st.DataObject) -> None:
        """The reads the invariants do not cover: a time window and the paged backfill list."""
        start = datetime(2024, 3, 1, tzinfo=UTC) + data.draw(st.integers(0, 14 * 24)) * H
        end = start + data.draw(st.sampled_from([1, 6, 24, 96])) * H
        status = data.draw(st.sampled_from([None, *BackfillStatus]))
        limit = data.draw(st.sampled_from([1, 2, 5]))
        got = self.engine_effective(timeframe_start=start, timeframe_end=end)
        assert got == self.model.effective(timeframe_start=start, timeframe_end=end)
        seen: list[str] = []
        cursor = None
        for _ in range(len(self.model.backfills) + 2):
            page = self.store.backfills.list(status=status, limit=limit, cursor=cursor)
            assert len(page.data) <= limit
            seen += [b.id for b in page.data]
            cursor = page.next_cursor
            if cursor is None:
                break
        assert cursor is None, "pagination does not end"
        want = [b.id for b in self.model.backfills.values() if status is None or b.status == status]
        assert sorted(seen) == sorted(want)

    # ----------------------------------------------------------------- invariants

    def engine_effective(
        self, timeframe_start: datetime | None = None, timeframe_end: datetime | None = None
    ) -> set[EffectiveRow]:
        frame = self.store.events.effective(
            timeframe_start=timeframe_start, timeframe_end=timeframe_end
        )
        return {
            (
                r["idempotency_key"],
                r["event_name"],
                r["timestamp"],
                r["customer_id"],
                r["external_customer_id"],
                frozen_properties(r["properties"]),
            )
            for r in frame.iter_rows(named=True)
        }

    @invariant()
    def engine_matches_model(self) -> None:
        self.steps += 1
        self.check_effective()
        self.check_backfills()
        self.check_search()

    def check_effective(self) -> None:
        got, want = self.engine_effective(), self.model.effective()
        event(f"effective events: {min(len(want), 10)}+")
        late = [
            r
            for b in self.model.backfills.values()
            for r in self.model.rows
            if b.deprecates(r) and b.version is not None and r.version > b.version
        ]
        if late:
            event("a filter deprecates a live row that came after its close")
        if self.model.shadowed_keys():
            event("an older row would count if the newest one did not shadow it")
        assert got == want, f"engine only: {got - want}\nmodel only: {want - got}"

    def check_backfills(self) -> None:
        page = self.store.backfills.list(limit=100)
        got = {b.id: b for b in page.data}
        assert set(got) == set(self.model.backfills)
        for bid, want in self.model.backfills.items():
            b = got[bid]
            assert (b.status, b.events_ingested) == (want.status, want.events_ingested), (b, want)
            assert (b.close_time, b.reverted_at) == (want.close_time, want.reverted_at), (b, want)
            assert (b.customer_id, b.external_customer_id) == (
                want.customer_id,
                want.external_customer_id,
            ), (b, want)

    def check_search(self) -> None:
        if not self.touched:
            return
        keys = sorted(self.touched)
        self.touched.clear()
        found = self.store.events.search(keys, timeframe_start=WIDE[0], timeframe_end=WIDE[1])
        got = {
            e.id: (
                e.event_name,
                e.timestamp,
                e.customer_id,
                e.external_customer_id,
                frozen_properties(e.properties),
                e.deprecated,
            )
            for e in found
        }
        want = {
            k: (b.event_name, b.timestamp, b.customer_id, b.external_customer_id, b.properties, d)
            for k, (b, d) in self.model.search(keys).items()
        }
        assert got == want


TestEngineVsModel = EngineVsModel.TestCase
TestEngineVsModel.settings = settings.get_profile(os.environ.get("ENGINE_STATEFUL_PROFILE", "ci"))
