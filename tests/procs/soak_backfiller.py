"""The backfill writer of the soak test: creates, stages, closes and reverts backfills over the
region (see ``soak_common``) directly through ``engine.open``, while the HTTP server writes to
the same store from another process (writers queue on the store's lock file).

Usage: ``python tests/procs/soak_backfiller.py STORE --region-start ISO --seconds S --seed N
--log PATH``

First loads the region's base events (an add-only account-wide backfill, closed), says
``ready`` and waits for a line on stdin; then runs cycles for ``S`` seconds and says
``summary <json counters>``. Every step that succeeded is appended to ``--log`` (JSON lines)
before the next one starts, so the log is the exact record the test's model replays.

A cycle: create a backfill (replace or add-only, scoped to one customer or account-wide, some
with a deprecation filter), retrying on 409 while another writer's open backfill overlaps
(the HTTP contender's); stage events in one or two calls; close it, or revert it while pending.
A quarter of the backfills get a ``close_time`` a few seconds ahead, so that the server's
background closer races this process to close them: whoever loses gets a 409, and this process
then checks that the backfill is reflected (a conflict reported, not a close dropped). Closed
backfills are reverted at random, newest or older, exactly while later ones stay.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import IO, Any

import engine
from engine.errors import ResourceConflict
from engine.models import Backfill, BackfillStatus
from procs.common import say
from procs.soak_common import (
    BF_CUSTOMERS,
    MODELS,
    REGION_HOURS,
    SoakEvent,
    iso,
    parse_time,
)

HOUR = timedelta(hours=1)
#: At most this many of our backfills stay reflected; older ones get reverted.
MAX_REFLECTED = 5
KINDS = ("replace_scoped", "replace_filter", "replace_account", "add_scoped", "add_account")
KIND_WEIGHTS = (3, 2, 1, 2, 1)


def base_key(customer: str, hour: int, index: int) -> str:
    return f"base-{customer}-{hour}-{index}"


class Backfiller:
    def __init__(
        self, store: engine.Store, region_start: datetime, rng: random.Random, log: IO[str]
    ) -> None:
        self.store = store
        self.region_start = region_start
        self.rng = rng
        # Sleeps and retries draw from their own generator, so that the sequence of decisions
        # (kinds, scopes, events, reverts) depends on the seed only, not on timing.
        self.jitter = random.Random(rng.random())
        self.log_file = log
        self.counters: Counter[str] = Counter()
        self.reflected: list[str] = []
        self.cycle = 0

    def log(self, **record: Any) -> None:
        self.log_file.write(json.dumps(record) + "\n")
        self.log_file.flush()

    def create(
        self,
        deadline: float | None,
        filter_model: str | None,
        close_in: float | None = None,
        **settings: Any,
    ) -> Backfill | None:
        """Create a backfill, retrying while an open backfill of another writer overlaps (409);
        ``None`` if the deadline passes first (reported, never silently skipped)."""
        while True:
            if close_in is not None:  # from now, not from the first attempt
                settings["close_time"] = datetime.now(UTC) + timedelta(seconds=close_in)
            try:
                backfill = self.store.backfills.create(**settings)
            except ResourceConflict:
                self.counters["create_conflicts_409"] += 1
                if deadline is not None and time.monotonic() > deadline:
                    self.counters["creates_given_up"] += 1
                    return None
                self.counters["create_retries"] += 1
                time.sleep(self.jitter.uniform(0.05, 0.3))
                continue
            self.counters["creates"] += 1
            customer = settings.get("external_customer_id")
            self.log(
                op="create",
                id=backfill.id,
                customer=customer,
                replace=settings["replace_existing_events"],
                filter_model=filter_model,
                start=iso(settings["timeframe_start"]),
                end=iso(settings["timeframe_end"]),
            )
            return backfill

    def stage(self, backfill_id: str, events: list[SoakEvent]) -> int:
        """Stage ``events``; returns how many were staged before a 409 (close_time passed or
        the server's closer got there first) stopped it."""
        staged = 0
        chunks = (
            [events]
            if len(events) < 4 or self.rng.random() < 0.5
            else [
                events[: len(events) // 2],
                events[len(events) // 2 :],
            ]
        )
        for chunk in chunks:
            try:
                result = self.store.ingest([e.body() for e in chunk], backfill_id=backfill_id)
            except ResourceConflict:
                self.counters["stage_refused_409"] += 1
                break
            if sorted(result.ingested) != sorted(e.key for e in chunk) or result.duplicates:
                raise AssertionError(f"staging {backfill_id} reported {result}")
            self.log(op="staged", id=backfill_id, events=[e.to_json() for e in chunk])
            staged += len(chunk)
        return staged

    def close(self, backfill_id: str) -> None:
        try:
            self.store.backfills.close(backfill_id)
            self.counters["closes"] += 1
            self.log(op="close", id=backfill_id, by="backfiller")
        except ResourceConflict:
            # The server's background closer closed it first: a reported conflict; the close
            # itself must have happened.
            self.counters["close_conflicts_409"] += 1
            status = self.store.backfills.get(backfill_id).status
            if status != BackfillStatus.REFLECTED:
                raise AssertionError(f"close of {backfill_id} got 409 and it is {status}") from None
            self.counters["closed_by_server"] += 1
            self.log(op="close", id=backfill_id, by="server")
        self.reflected.append(backfill_id)

    def revert(self, backfill_id: str) -> None:
        reverted = self.store.backfills.revert(backfill_id)
        if reverted.status != BackfillStatus.REVERTED:
            raise AssertionError(f"revert of {backfill_id} left it {reverted.status}")
        self.counters["reverts"] += 1
        self.log(op="revert", id=backfill_id)
        if backfill_id in self.reflected:
            self.reflected.remove(backfill_id)

    def load_base(self) -> None:
        """Three events per customer and hour, in an add-only account-wide backfill, closed."""
        start = self.region_start
        backfill = self.create(
            None,
            None,
            timeframe_start=start,
            timeframe_end=start + REGION_HOURS * HOUR,
            replace_existing_events=False,
        )
        assert backfill is not None
        events = [
            SoakEvent(
                base_key(customer, hour, index),
                customer,
                start + hour * HOUR + index * timedelta(minutes=10),
                1 + index,
                MODELS[index % 2],
            )
            for customer in BF_CUSTOMERS
            for hour in range(REGION_HOURS)
            for index in range(3)
        ]
        assert self.stage(backfill.id, events) == len(events)
        self.store.backfills.close(backfill.id)
        self.log(op="close", id=backfill.id, by="backfiller")

    def events_for(self, customers: list[str], first_hour: int, last_hour: int) -> list[SoakEvent]:
        """New events, and corrections of base events (same key, new body), in the window."""
        rng = self.rng
        events: list[SoakEvent] = []
        for hour in range(first_hour, last_hour):
            hour_start = self.region_start + hour * HOUR
            for customer in customers:
                for index in range(rng.randint(0, 3)):
                    events.append(
                        SoakEvent(
                            f"bf{self.cycle}-{customer}-{hour}-{index}",
                            customer,
                            hour_start + timedelta(seconds=rng.randrange(3600)),
                            rng.randint(1, 50),
                            rng.choice(MODELS),
                        )
                    )
                if rng.random() < 0.3:
                    events.append(
                        SoakEvent(
                            base_key(customer, hour, rng.randrange(3)),
                            customer,
                            hour_start + timedelta(seconds=rng.randrange(3600)),
                            rng.randint(1, 50),
                            rng.choice(MODELS),
                        )
                    )
        return events

    def run_cycle(self, deadline: float) -> None:
        rng = self.rng
        self.cycle += 1
        kind = rng.choices(KINDS, weights=KIND_WEIGHTS)[0]
        scoped = kind in ("replace_scoped", "add_scoped") or (
            kind == "replace_filter" and rng.random() < 0.5
        )
        customer = rng.choice(BF_CUSTOMERS) if scoped else None
        first = rng.randrange(REGION_HOURS)
        last = min(first + rng.randint(1, 3), REGION_HOURS)
        settings: dict[str, Any] = {
            "timeframe_start": self.region_start + first * HOUR,
            "timeframe_end": self.region_start + last * HOUR,
            "replace_existing_events": kind.startswith("replace"),
        }
        if customer is not None:
            settings["external_customer_id"] = customer
        filter_model = rng.choice(MODELS) if kind == "replace_filter" else None
        if filter_model is not None:
            settings["deprecation_filter"] = f"model = '{filter_model}'"
        racing = rng.random() < 0.25
        close_in = rng.uniform(1.5, 4) if racing else None
        backfill = self.create(deadline, filter_model, close_in, **settings)
        if backfill is None:
            return
        self.counters[f"kind_{kind}"] += 1
        events = self.events_for([customer] if customer else list(BF_CUSTOMERS), first, last)
        self.counters["events_staged"] += self.stage(backfill.id, events)
        if racing:
            # Sometimes past close_time: the server's closer may win the race.
            time.sleep(self.jitter.uniform(0.0, 4.0))
        if not racing and rng.random() < 0.1:
            self.revert(backfill.id)  # pending -> reverted: nothing was ever visible
            self.counters["pending_reverts"] += 1
            return
        self.close(backfill.id)
        roll = rng.random()
        if roll < 0.35:
            self.revert(self.reflected[-1])
        elif roll < 0.6 and len(self.reflected) > 1:
            self.revert(rng.choice(self.reflected[:-1]))  # an older one, later ones stay
        while len(self.reflected) > MAX_REFLECTED:
            self.revert(self.reflected[0])


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("store", type=Path)
    parser.add_argument("--region-start", required=True)
    parser.add_argument("--seconds", type=float, required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--log", type=Path, required=True)
    args = parser.parse_args(argv)
    with engine.open(args.store) as store, args.log.open("a") as log:
        backfiller = Backfiller(store, parse_time(args.region_start), random.Random(args.seed), log)
        backfiller.load_base()
        say("ready")
        sys.stdin.readline()
        deadline = time.monotonic() + args.seconds
        while time.monotonic() < deadline:
            backfiller.run_cycle(deadline)
        if not backfiller.counters["reverts"] and backfiller.reflected:
            # Every run exercises the revert of a reflected backfill, however few cycles it had.
            backfiller.revert(backfiller.reflected[-1])
        say("summary " + json.dumps(dict(backfiller.counters)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
