"""A small pure-Python reference model of DESIGN.md section 2 (events, backfills, versions).

It stores every row the engine would store (live events, amendments, tombstones and closed
backfill events, each with its version and source) and recomputes effective events from
scratch on every read, exactly as section 2 states them: candidates, newest version per key,
then drop tombstones and rows that a reflected backfill deprecates. Nothing here is clever or
fast on purpose: the stateful test trusts this file more than the engine.

Operations validate fully before they mutate, so a raised error always leaves the model
unchanged (the engine must do the same). Ids of new resources come from the caller (the test
passes the ids the engine generated) so that both sides name customers and backfills alike.

Deprecation filters are structured values (``Compare``, ``InList``, ``BoolColumn``, ``And``,
``Or``) that both render to the SQL the engine parses and evaluate in Python with SQL's
three-valued logic; ``InvalidFilter`` wraps text the engine must refuse.

>>> from datetime import datetime, timezone
>>> now = datetime(2024, 3, 4, tzinfo=timezone.utc)
>>> m = Model(clock=lambda: now)
>>> m.ingest([{"idempotency_key": "k1", "event_name": "api_call", "timestamp": now,
...            "external_customer_id": "ext-x", "properties": {"tokens": 3}}])
(['k1'], [])
>>> [row[0] for row in m.effective()]
['k1']
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any

from engine.errors import (
    ConstraintViolation,
    DuplicateResourceCreation,
    RequestValidationError,
    ResourceConflict,
    ResourceNotFound,
)
from engine.models import BackfillStatus, PropertyValue

__all__ = [
    "And",
    "BoolColumn",
    "Compare",
    "EffectiveRow",
    "EventBody",
    "Filter",
    "InList",
    "InvalidFilter",
    "Model",
    "ModelBackfill",
    "ModelCustomer",
    "Or",
    "Row",
    "frozen_properties",
]

INT64_MIN = -(2**63)
INT64_MAX = 2**63 - 1
RESERVED_COLUMNS = ("event_name", "customer_id", "external_customer_id")

FrozenProperties = tuple[tuple[str, str, PropertyValue], ...]
# (key, event_name, timestamp, customer_id, external_customer_id, frozen properties)
EffectiveRow = tuple[str, str, datetime, str | None, str | None, FrozenProperties]


def frozen_properties(properties: Mapping[str, Any]) -> FrozenProperties:
    """Hashable, type-tagged properties: ``True``, ``1`` and ``1.0`` are equal in Python but
    different property values, and a round trip that turns one into another is a bug."""
    return tuple(sorted((k, type(v).__name__, v) for k, v in properties.items()))


# --------------------------------------------------------------------------- filters


def _typed(value: Any, literal: Any) -> Any:
    """The column value as SQL sees it when compared with ``literal``: numbers compare with
    numbers and strings with strings; any other pairing (or a missing property) is NULL."""
    if value is None:
        return None
    if isinstance(literal, str):
        return value if isinstance(value, str) else None
    if isinstance(literal, bool):
        return value if isinstance(value, bool) else None
    # a numeric literal; bool is an int subclass in Python but not a number in a filter
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return value


def _sql_literal(value: str | int | float | bool) -> str:
    if isinstance(value, bool):
        return "TRUE" if value else "FALSE"
    if isinstance(value, str):
        return "'" + value.replace("'", "''") + "'"
    return repr(value)


_OPS: dict[str, Callable[[Any, Any], bool]] = {
    "=": lambda a, b: a == b,
    "!=": lambda a, b: a != b,
    "<": lambda a, b: a < b,
    "<=": lambda a, b: a <= b,
    ">": lambda a, b: a > b,
    ">=": lambda a, b: a >= b,
}


@dataclass(frozen=True)
class Compare:
    """``column <op> literal``; ``column`` is a property name or a reserved column."""

    column: str
    op: str
    value: str | int | float

    @property
    def sql(self) -> str:
        return f"{self.column} {self.op} {_sql_literal(self.value)}"

    def evaluate(self, body: EventBody) -> bool | None:
        left = _typed(body.column(self.column), self.value)
        return None if left is None else _OPS[self.op](left, self.value)


@dataclass(frozen=True)
class InList:
    """``column IN ('a', 'b')`` over string literals."""

    column: str
    values: tuple[str, ...]

    @property
    def sql(self) -> str:
        return f"{self.column} IN ({', '.join(_sql_literal(v) for v in self.values)})"

    def evaluate(self, body: EventBody) -> bool | None:
        left = _typed(body.column(self.column), "")
        return None if left is None else left in self.values


@dataclass(frozen=True)
class BoolColumn:
    """A boolean property used as a predicate: ``cached`` or ``NOT cached``."""

    column: str
    negate: bool = False

    @property
    def sql(self) -> str:
        return f"NOT {self.column}" if self.negate else self.column

    def evaluate(self, body: EventBody) -> bool | None:
        value = _typed(body.column(self.column), True)
        return None if value is None else (not value if self.negate else value)


@dataclass(frozen=True)
class And:
    left: Filter
    right: Filter

    @property
    def sql(self) -> str:
        return f"({self.left.sql}) AND ({self.right.sql})"

    def evaluate(self, body: EventBody) -> bool | None:
        a, b = self.left.evaluate(body), self.right.evaluate(body)
        if a is False or b is False:
            return False
        return None if a is None or b is None else True


@dataclass(frozen=True)
class Or:
    left: Filter
    right: Filter

    @property
    def sql(self) -> str:
        return f"({self.left.sql}) OR ({self.right.sql})"

    def evaluate(self, body: EventBody) -> bool | None:
        a, b = self.left.evaluate(body), self.right.evaluate(body)
        if a is True or b is True:
            return True
        return None if a is None or b is None else False


@dataclass(frozen=True)
class InvalidFilter:
    """Filter text outside the grammar of DESIGN section 4: creating a backfill with it is a
    400 ConstraintViolation. The model never evaluates it."""

    sql: str


Filter = Compare | InList | BoolColumn | And | Or


# --------------------------------------------------------------------------- state


@dataclass(frozen=True)
class EventBody:
    """The fields of one stored event; ``timestamp`` is an aware UTC datetime."""

    event_name: str
    timestamp: datetime
    customer_id: str | None
    external_customer_id: str | None
    properties: FrozenProperties

    def column(self, name: str) -> Any:
        """A reserved column or a property value; ``None`` when the event lacks it."""
        if name in RESERVED_COLUMNS:
            return getattr(self, name)
        for key, _type, value in self.properties:
            if key == name:
                return value
        return None


@dataclass(frozen=True)
class Row:
    """One stored row. ``source`` is ``None`` for live rows (ingest, amend, deprecate) and
    the backfill id for rows a close wrote; a tombstone is a single-event deprecation."""

    key: str
    version: int
    source: str | None
    tombstone: bool
    body: EventBody


@dataclass(frozen=True)
class ModelCustomer:
    id: str
    external_customer_id: str | None
    created_at: datetime


@dataclass
class ModelBackfill:
    id: str
    status: BackfillStatus
    created_at: datetime
    timeframe_start: datetime
    timeframe_end: datetime
    customer_id: str | None
    external_customer_id: str | None
    replace_existing_events: bool
    deprecation_filter: Filter | None
    close_time: datetime
    reverted_at: datetime | None = None
    version: int | None = None  # the close's version once reflected
    staged: dict[str, EventBody] = field(default_factory=dict)

    @property
    def events_ingested(self) -> int:
        return len(self.staged)

    @property
    def account_wide(self) -> bool:
        return self.customer_id is None and self.external_customer_id is None

    def in_scope(self, body: EventBody) -> bool:
        """Whether an event belongs to this backfill's customer: its customer_id equals the
        backfill's, or its external_customer_id equals the backfill's (which, for a backfill
        created by customer_id, is that customer's external id)."""
        if self.account_wide:
            return True
        return (body.customer_id is not None and body.customer_id == self.customer_id) or (
            body.external_customer_id is not None
            and body.external_customer_id == self.external_customer_id
        )

    def same_customer(self, other: ModelBackfill) -> bool:
        return (self.customer_id is not None and self.customer_id == other.customer_id) or (
            self.external_customer_id is not None
            and self.external_customer_id == other.external_customer_id
        )

    def deprecates(self, row: Row) -> bool:
        """Section 2's close rule, as a pure predicate over one stored row: a reflected replace
        backfill deprecates every older row in its timeframe, scope and filter, and, when it
        has a filter, every later live row (ingest or amendment) that matches too."""
        if self.status != BackfillStatus.REFLECTED or not self.replace_existing_events:
            return False
        assert self.version is not None
        body = row.body
        if not (self.timeframe_start <= body.timestamp < self.timeframe_end):
            return False
        if not self.in_scope(body):
            return False
        if (
            self.deprecation_filter is not None
            and self.deprecation_filter.evaluate(body) is not True
        ):
            return False
        if row.version < self.version:
            return True
        return (
            self.deprecation_filter is not None
            and row.source is None
            and row.version > self.version
        )


def _error_list(problems: dict[str, list[str]]) -> RequestValidationError:
    return RequestValidationError(
        f"{len(problems)} event(s) failed validation",
        validation_errors=[
            {"idempotency_key": k, "validation_errors": v} for k, v in problems.items()
        ],
    )


def _as_utc(value: Any) -> datetime | None:
    """An ingest timestamp as an aware UTC datetime, or ``None`` when it is not one."""
    if isinstance(value, str):
        if not value.endswith("Z"):
            return None
        try:
            value = datetime.fromisoformat(value[:-1] + "+00:00")
        except ValueError:
            return None
    if not isinstance(value, datetime) or value.tzinfo is None:
        return None
    if value.utcoffset() != timedelta(0):
        return None
    return value.astimezone(UTC)


def _property_problems(properties: Any) -> list[str]:
    if not isinstance(properties, Mapping):
        return ["properties must be an object"]
    problems = []
    for key, value in properties.items():
        if not isinstance(key, str):
            problems.append(f"property name {key!r} is not a string")
        elif isinstance(value, bool | str):
            continue
        elif isinstance(value, int):
            if not INT64_MIN <= value <= INT64_MAX:
                problems.append(f"property {key!r} does not fit in int64")
        elif isinstance(value, float):
            if not math.isfinite(value):
                problems.append(f"property {key!r} is not finite")
        else:
            problems.append(f"property {key!r} must be a string, number or boolean")
    return problems


class Model:
    """Reference semantics; see the module docstring."""

    def __init__(
        self,
        *,
        clock: Callable[[], datetime],
        grace_period: timedelta = timedelta(hours=12),
        future_tolerance: timedelta = timedelta(minutes=5),
        max_backfill_duration: timedelta = timedelta(days=31),
    ) -> None:
        self.clock = clock
        self.grace_period = grace_period
        self.future_tolerance = future_tolerance
        self.max_backfill_duration = max_backfill_duration
        self.version = 0
        self.rows: list[Row] = []
        self.customers: dict[str, ModelCustomer] = {}
        self.backfills: dict[str, ModelBackfill] = {}

    # ----------------------------------------------------------------- customers

    def create_customer(
        self, *, customer_id: str, external_customer_id: str | None
    ) -> ModelCustomer:
        if external_customer_id is not None and self.customer_by_external_id(external_customer_id):
            raise DuplicateResourceCreation(f"external_customer_id {external_customer_id!r} in use")
        customer = ModelCustomer(customer_id, external_customer_id, self.clock())
        self.customers[customer_id] = customer
        return customer

    def customer_by_external_id(self, external_customer_id: str) -> ModelCustomer | None:
        for customer in self.customers.values():
            if customer.external_customer_id == external_customer_id:
                return customer
        return None

    # ----------------------------------------------------------------- reads

    def newest(self) -> list[Row]:
        """The newest candidate row of every key, effective or not (what a backfill can hit)."""
        return list(self._candidates().values())

    def _candidates(self) -> dict[str, Row]:
        """The newest candidate row per key (live rows and rows of reflected backfills)."""
        latest: dict[str, Row] = {}
        for row in self.rows:
            if (
                row.source is not None
                and self.backfills[row.source].status != BackfillStatus.REFLECTED
            ):
                continue
            if row.key not in latest or row.version > latest[row.key].version:
                latest[row.key] = row
        return latest

    def _deprecated(self, row: Row) -> bool:
        return any(b.deprecates(row) for b in self.backfills.values())

    def effective(
        self, *, timeframe_start: datetime | None = None, timeframe_end: datetime | None = None
    ) -> set[EffectiveRow]:
        out = set()
        for key, row in self._candidates().items():
            # no fallback to an older version when the newest is dropped: DESIGN's step 3
            # drops "it", the newest candidate, and a revert restores it exactly
            if row.tombstone or self._deprecated(row):
                continue
            b = row.body
            if timeframe_start is not None and b.timestamp < timeframe_start:
                continue
            if timeframe_end is not None and b.timestamp >= timeframe_end:
                continue
            out.add(
                (
                    key,
                    b.event_name,
                    b.timestamp,
                    b.customer_id,
                    b.external_customer_id,
                    b.properties,
                )
            )
        return out

    def shadowed_keys(self) -> set[str]:
        """Keys whose newest candidate is deprecated by a backfill while an older candidate is
        not: the case where falling back to an older version would be wrong (statistics)."""
        latest = self._candidates()
        return {
            r.key
            for r in self.rows
            if r.key in latest
            and r.version < latest[r.key].version
            and not latest[r.key].tombstone
            and self._deprecated(latest[r.key])
            and (r.source is None or self.backfills[r.source].status == BackfillStatus.REFLECTED)
            and not r.tombstone
            and not self._deprecated(r)
        }

    def search(self, keys: Iterable[str]) -> dict[str, tuple[EventBody, bool]]:
        """Per key: the newest candidate's body and whether it does not count (tombstoned or
        deprecated by a reflected backfill). Keys without a candidate are absent."""
        latest = self._candidates()
        return {
            k: (latest[k].body, latest[k].tombstone or self._deprecated(latest[k]))
            for k in keys
            if k in latest
        }

    # ----------------------------------------------------------------- ingest

    def _validate_event(self, event: Mapping[str, Any], problems: list[str]) -> EventBody | None:
        """Field rules shared by live ingest, backfill ingest and amend."""
        name = event.get("event_name")
        if not isinstance(name, str) or not name:
            problems.append("event_name is required")
        ts = _as_utc(event.get("timestamp"))
        if ts is None:
            problems.append("timestamp must be an ISO 8601 UTC time")
        cid, ext = event.get("customer_id"), event.get("external_customer_id")
        if (cid is None) == (ext is None):
            problems.append("exactly one of customer_id and external_customer_id is required")
        elif cid is not None and cid not in self.customers:
            problems.append(f"customer {cid!r} does not exist")
        problems.extend(_property_problems(event.get("properties")))
        if problems:
            return None
        assert isinstance(name, str) and ts is not None
        return EventBody(name, ts, cid, ext, frozen_properties(event["properties"]))

    def ingest(
        self, events: list[dict[str, Any]], *, backfill_id: str | None = None
    ) -> tuple[list[str], list[str]]:
        """Returns (ingested keys, duplicate keys), or raises without changing anything."""
        now = self.clock()
        backfill = None
        if backfill_id is not None:
            backfill = self.backfills.get(backfill_id)
            if backfill is None:
                raise ResourceNotFound(f"backfill {backfill_id!r} not found")
            if backfill.status != BackfillStatus.PENDING or not now < backfill.close_time:
                raise ResourceConflict(f"backfill {backfill_id!r} accepts no more events")
        problems: dict[str, list[str]] = {}
        bodies: dict[str, EventBody] = {}
        raw: dict[str, Mapping[str, Any]] = {}
        for event in events:
            key = event.get("idempotency_key")
            assert isinstance(key, str), "the test always sends a key"
            errs: list[str] = []
            body = self._validate_event(event, errs)
            if body is not None:
                if backfill is None:
                    if body.timestamp < now - self.grace_period:
                        errs.append("timestamp is older than the grace period; use a backfill")
                    if body.timestamp > now + self.future_tolerance:
                        errs.append("timestamp is in the future")
                else:
                    if not backfill.timeframe_start <= body.timestamp < backfill.timeframe_end:
                        errs.append("timestamp is outside the backfill's timeframe")
                    if not backfill.in_scope(body):
                        errs.append("event does not belong to the backfill's customer")
            if key in raw and raw[key] != event:
                errs.append("the same idempotency_key twice with different bodies")
            raw.setdefault(key, event)
            if errs:
                problems.setdefault(key, []).extend(errs)
            elif body is not None:
                bodies.setdefault(key, body)
        if problems:
            raise _error_list(problems)

        if backfill is not None:
            seen = backfill.staged
        else:
            seen = {r.key: r.body for r in self.rows if r.source is None}
        ingested = [k for k in bodies if k not in seen]
        duplicates = [k for k in bodies if k in seen]
        if backfill is not None:
            for k in ingested:
                backfill.staged[k] = bodies[k]
        elif ingested:
            self.version += 1
            self.rows.extend(Row(k, self.version, None, False, bodies[k]) for k in ingested)
        return ingested, duplicates

    # ----------------------------------------------------------------- amend / deprecate

    def current(self, event_id: str) -> Row:
        row = self._candidates().get(event_id)
        if row is None or row.tombstone:
            raise ResourceNotFound(f"event {event_id!r} not found")
        if self._deprecated(row):
            raise ResourceConflict(f"event {event_id!r} is deprecated by a backfill")
        return row

    def amend(
        self,
        event_id: str,
        *,
        event_name: str,
        timestamp: datetime,
        properties: Mapping[str, Any],
        customer_id: str | None = None,
        external_customer_id: str | None = None,
    ) -> str:
        row = self.current(event_id)
        if _as_utc(timestamp) != row.body.timestamp:
            raise ConstraintViolation("an amendment keeps the event's timestamp")
        errs: list[str] = []
        body = self._validate_event(
            {
                "event_name": event_name,
                "timestamp": timestamp,
                "customer_id": customer_id,
                "external_customer_id": external_customer_id,
                "properties": properties,
            },
            errs,
        )
        if body is None:
            # the engine may report these as either 400 class
            err = _error_list({event_id: errs})
            err.fields["any_400"] = True
            raise err
        self.version += 1
        self.rows.append(Row(event_id, self.version, None, False, body))
        return event_id

    def deprecate(self, event_id: str) -> str:
        row = self.current(event_id)
        self.version += 1
        self.rows.append(replace(row, version=self.version, source=None, tombstone=True))
        return event_id

    # ----------------------------------------------------------------- backfills

    def create_backfill(
        self,
        *,
        backfill_id: str,
        timeframe_start: datetime,
        timeframe_end: datetime,
        customer_id: str | None = None,
        external_customer_id: str | None = None,
        replace_existing_events: bool = True,
        deprecation_filter: Filter | InvalidFilter | None = None,
        close_time: datetime | None = None,
    ) -> ModelBackfill:
        now = self.clock()
        if timeframe_start >= timeframe_end:
            raise ConstraintViolation("timeframe_start must be before timeframe_end")
        if timeframe_end - timeframe_start > self.max_backfill_duration:
            raise ConstraintViolation("timeframe is longer than max_backfill_duration")
        if customer_id is not None and external_customer_id is not None:
            raise ConstraintViolation("give customer_id or external_customer_id, not both")
        if deprecation_filter is not None and not replace_existing_events:
            raise ConstraintViolation("deprecation_filter needs replace_existing_events")
        if isinstance(deprecation_filter, InvalidFilter):
            raise ConstraintViolation("deprecation_filter is outside the grammar")
        if (
            replace_existing_events
            and deprecation_filter is None
            and timeframe_end > now - self.grace_period
        ):
            raise ConstraintViolation(
                "a replace backfill without filter must end before the grace period"
            )
        if close_time is not None and close_time < now:
            raise ConstraintViolation("close_time is in the past")
        if customer_id is not None:
            if customer_id not in self.customers:
                raise ResourceNotFound(f"customer {customer_id!r} not found")
            external_customer_id = self.customers[customer_id].external_customer_id
        elif external_customer_id is not None:
            found = self.customer_by_external_id(external_customer_id)
            customer_id = found.id if found else None
        new = ModelBackfill(
            id=backfill_id,
            status=BackfillStatus.PENDING,
            created_at=now,
            timeframe_start=timeframe_start,
            timeframe_end=timeframe_end,
            customer_id=customer_id,
            external_customer_id=external_customer_id,
            replace_existing_events=replace_existing_events,
            deprecation_filter=deprecation_filter,
            close_time=close_time if close_time is not None else now + timedelta(days=1),
        )
        for other in self.backfills.values():
            if other.status not in (BackfillStatus.PENDING, BackfillStatus.PENDING_REVERT):
                continue
            overlaps = (
                other.timeframe_start < timeframe_end and timeframe_start < other.timeframe_end
            )
            if overlaps and (new.account_wide or other.account_wide or new.same_customer(other)):
                raise ResourceConflict(f"timeframe overlaps backfill {other.id!r}")
        self.backfills[backfill_id] = new
        return new

    def _get(self, backfill_id: str) -> ModelBackfill:
        if backfill_id not in self.backfills:
            raise ResourceNotFound(f"backfill {backfill_id!r} not found")
        return self.backfills[backfill_id]

    def close(self, backfill_id: str) -> ModelBackfill:
        b = self._get(backfill_id)
        if b.status != BackfillStatus.PENDING:
            raise ResourceConflict(f"backfill {backfill_id!r} is {b.status.value}")
        self.version += 1
        b.version = self.version
        b.status = BackfillStatus.REFLECTED
        b.close_time = self.clock()
        self.rows.extend(Row(k, b.version, b.id, False, body) for k, body in b.staged.items())
        return b

    def close_due(self) -> list[ModelBackfill]:
        now = self.clock()
        due = [
            b
            for b in self.backfills.values()
            if b.status == BackfillStatus.PENDING and b.close_time <= now
        ]
        # pending backfills of one customer never overlap, so the order of these closes
        # cannot change what is effective; the model closes them in creation order
        return [self.close(b.id) for b in due]

    def revert(self, backfill_id: str) -> ModelBackfill:
        b = self._get(backfill_id)
        if b.status == BackfillStatus.REFLECTED:
            # the revert commit takes a version even though nothing is written as a row here:
            # the status change is what lifts B's rows and deprecations
            self.version += 1
        elif b.status != BackfillStatus.PENDING:
            raise ResourceConflict(f"backfill {backfill_id!r} is {b.status.value}")
        b.status = BackfillStatus.REVERTED
        b.reverted_at = self.clock()
        return b
