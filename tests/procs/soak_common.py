"""What the soak test (``tests/reliability/test_soak.py``) and its subprocesses share: names,
the region the backfiller owns, the metrics the reader reads, and a reference model of that
region's usage at any version.

The soak splits the store in two parts that never touch, so that each has a simple exact
expectation while all writers still contend for the same store, lock and catalog:

- **live**: customers ``live-*``, events near now, written only through the HTTP server;
- **region**: customers ``bf-*``, six hours twenty days ago, written only by backfills of the
  backfiller process (closed by it, or by the server's background closer when their
  ``close_time`` passes first).

The region's effective events change only at the versions where a backfill of the backfiller
closes or reverts, so its expected usage at any version is a pure function of what the
backfiller staged and of each backfill's ``close_version`` / ``revert_version``
(:func:`region_state`, DESIGN section 2 in twenty lines). Readers record the version they read
at; the test compares every read with the model at that version.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

API_KEY = "soak-key-0123456789abcdef"
BF_CUSTOMERS = ("bf-0", "bf-1", "bf-2", "bf-3")
LIVE_CUSTOMERS = tuple(f"live-{i}" for i in range(8))
#: The customer of the events that the HTTP contender stages in its own backfills.
CONTENDER_CUSTOMER = "contender"
REGION_HOURS = 6
MODELS = ("a", "b")
#: name -> metric SQL; the reader compares usage of each with the effective events.
METRICS = {
    "events": "SELECT count(*) FROM events",
    "tokens": "SELECT sum(tokens) FROM events",
    "tokens_of_model_a": "SELECT sum(tokens) FROM events WHERE model = 'a'",
}

#: ``"<external customer>|<hour>"`` -> ``[count, tokens, tokens of model a]`` of effective events.
Cells = dict[str, list[int]]


def iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def parse_time(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def region_start_for(now: datetime) -> datetime:
    """The region: midnight twenty days before ``now`` (far past the 12 h grace period, so
    replacing backfills need no filter, and within any backfill's 31 days)."""
    day = now.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    return day - timedelta(days=20)


def region_end_for(region_start: datetime) -> datetime:
    return region_start + timedelta(hours=REGION_HOURS)


def cell_key(customer: str, moment: datetime) -> str:
    hour = moment.astimezone(UTC).replace(minute=0, second=0, microsecond=0)
    return f"{customer}|{iso(hour)}"


def add_to_cell(cells: Cells, customer: str, moment: datetime, tokens: int, model: str) -> None:
    cell = cells.setdefault(cell_key(customer, moment), [0, 0, 0])
    cell[0] += 1
    cell[1] += tokens
    cell[2] += tokens if model == "a" else 0


def read_jsonl(path: Path) -> Iterator[dict[str, Any]]:
    if not path.exists():
        return
    with path.open() as lines:
        for line in lines:
            if line.strip():
                yield json.loads(line)


# -- the reference model of the region --------------------------------------------------------


@dataclass(frozen=True)
class SoakEvent:
    key: str
    customer: str
    timestamp: datetime
    tokens: int
    model: str

    def body(self) -> dict[str, Any]:
        return {
            "idempotency_key": self.key,
            "event_name": "bf_call",
            "timestamp": iso(self.timestamp),
            "external_customer_id": self.customer,
            "properties": {"tokens": self.tokens, "model": self.model},
        }

    def to_json(self) -> list[Any]:
        return [self.key, self.customer, iso(self.timestamp), self.tokens, self.model]

    @staticmethod
    def from_json(row: list[Any]) -> SoakEvent:
        key, customer, timestamp, tokens, model = row
        return SoakEvent(key, customer, parse_time(timestamp), int(tokens), model)


@dataclass
class SoakBackfill:
    """A backfill of the backfiller as its log tells it: what it asked for and what it staged."""

    id: str
    customer: str | None
    replace: bool
    filter_model: str | None
    start: datetime
    end: datetime
    events: list[SoakEvent] = field(default_factory=list)

    def deprecates(self, event: SoakEvent) -> bool:
        """Whether this (replacing) backfill's scope, timeframe and filter cover ``event``."""
        return (
            self.replace
            and self.start <= event.timestamp < self.end
            and (self.customer is None or self.customer == event.customer)
            and (self.filter_model is None or self.filter_model == event.model)
        )


def load_backfills(log: Path) -> list[SoakBackfill]:
    """The backfiller's backfills, in creation order, with the events it staged successfully."""
    backfills: dict[str, SoakBackfill] = {}
    for record in read_jsonl(log):
        if record["op"] == "create":
            backfills[record["id"]] = SoakBackfill(
                id=record["id"],
                customer=record["customer"],
                replace=record["replace"],
                filter_model=record["filter_model"],
                start=parse_time(record["start"]),
                end=parse_time(record["end"]),
            )
        elif record["op"] == "staged":
            backfills[record["id"]].events += [SoakEvent.from_json(e) for e in record["events"]]
    return list(backfills.values())


Versions = Mapping[str, tuple[int | None, int | None]]


def region_state(backfills: Iterable[SoakBackfill], versions: Versions, at: int) -> Cells:
    """Effective usage cells of the region at version ``at`` (DESIGN section 2): candidates are
    the rows of backfills reflected at ``at``; the newest row per key wins; a row is dropped if
    a reflected replacing backfill that closed after it covers it."""

    def reflected(backfill: SoakBackfill) -> bool:
        closed, reverted = versions.get(backfill.id, (None, None))
        return closed is not None and closed <= at and (reverted is None or reverted > at)

    live = [(b, versions[b.id][0]) for b in backfills if reflected(b)]
    newest: dict[str, tuple[int, SoakEvent]] = {}
    for backfill, version in live:
        assert version is not None
        for event in backfill.events:
            if event.key not in newest or version > newest[event.key][0]:
                newest[event.key] = (version, event)
    cells: Cells = {}
    for version, event in newest.values():
        if any(
            closed is not None and closed > version and backfill.deprecates(event)
            for backfill, closed in live
        ):
            continue
        add_to_cell(cells, event.customer, event.timestamp, event.tokens, event.model)
    return cells


def distinct_states(
    backfills: list[SoakBackfill], versions: Versions, low: int, high: int
) -> list[Cells]:
    """Every region state between versions ``low`` and ``high`` (inclusive): the state at
    ``low`` and after each backfill commit in ``(low, high]``."""
    moments = {low}
    for closed, reverted in versions.values():
        moments |= {v for v in (closed, reverted) if v is not None and low < v <= high}
    return [region_state(backfills, versions, at) for at in sorted(moments)]
