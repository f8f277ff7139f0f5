"""The stateful model test, extended to usage (DESIGN section 2, "Metrics and usage").

The same random sequences as ``test_stateful.py``; after every step, usage of five metrics at
hour, day, month and whole-timeframe granularity must equal an aggregation of the reference
model's effective events, ``verify()`` must be empty, a preview taken before a close must equal
(usage after) - (usage before), and usage ``as_of`` an earlier version must equal what the model
said at that version.
"""

from __future__ import annotations

import json
import os
from collections import defaultdict
from datetime import datetime
from typing import Any

import polars as pl
import pytest
from hypothesis import HealthCheck, settings
from hypothesis.stateful import invariant
from test_stateful import DAY, START, WIDE, EngineVsModel, H

import engine
from engine.errors import EngineError

SUM_LIMIT = 1_000_000
METRICS = {
    "count": "SELECT count(*) FROM events",
    # Bounded values keep DOUBLE sums exact whatever the order of addition.
    "sum": f"SELECT sum(tokens) FROM events WHERE tokens < {SUM_LIMIT} AND tokens > -{SUM_LIMIT}",
    "distinct": "SELECT count(DISTINCT model) FROM events",
    "max": "SELECT max(tokens) FROM events",
    "grouped": "SELECT count(*) FROM events GROUP BY region",
}
GRANULARITIES = ("hour", "day", "month", None)
Key = tuple[str | None, str | None, datetime, str | None]


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def _contribution(name: str, properties: dict[str, Any]) -> tuple[bool, Any]:
    """Whether an event counts for metric ``name``, and the value it brings."""
    tokens = _number(properties.get("tokens"))
    if name in ("count", "grouped"):
        return True, 1.0
    if name == "sum":
        return tokens is not None and -SUM_LIMIT < tokens < SUM_LIMIT, tokens
    if name == "max":
        return tokens is not None, tokens
    model = properties.get("model")
    return model is not None, json.dumps(model)


def _window(ts: datetime, granularity: str | None) -> datetime:
    start = WIDE[0]
    if granularity is None:
        return start
    if granularity == "hour":
        return ts.replace(minute=0, second=0, microsecond=0)
    day = ts.replace(hour=0, minute=0, second=0, microsecond=0)
    if granularity == "day":
        return day
    return max(day.replace(day=1), start)


class UsageVsModel(EngineVsModel):
    def __init__(self) -> None:
        super().__init__()
        self.metrics = {n: self.store.metrics.create(name=n, sql=s) for n, s in METRICS.items()}
        self.history_of_sums: dict[int, dict[Key, float]] = {}

    # -- the expectation, from the model only ------------------------------------------------

    def resolve(
        self, customer_id: str | None, external: str | None
    ) -> tuple[str | None, str | None]:
        if customer_id is not None:
            customer = self.model.customers.get(customer_id)
            return customer_id, customer.external_customer_id if customer else None
        customer = self.model.customer_by_external_id(external) if external else None
        return (customer.id if customer else None), external

    def expected(
        self, name: str, granularity: str | None, *, grouped: bool = True
    ) -> dict[Key, float]:
        parts: dict[Key, list[Any]] = defaultdict(list)
        for _key, _name, ts, customer_id, external, frozen in self.model.effective():
            properties = {k: v for k, _t, v in frozen}
            counts, value = _contribution(name, properties)
            if not counts:
                continue
            group = None
            if name == "grouped" and grouped and properties.get("region") is not None:
                region = properties["region"]
                group = region if isinstance(region, str) else json.dumps(region)
            cid, ext = self.resolve(customer_id, external)
            parts[(cid, ext, _window(ts, granularity), group)].append(value)
        if name == "max":
            return {k: max(v) for k, v in parts.items()}
        if name == "distinct":
            return {k: float(len(set(v))) for k, v in parts.items()}
        return {k: float(sum(v)) for k, v in parts.items()}

    def actual(self, name: str, granularity: str | None, **kwargs: Any) -> dict[Key, float]:
        frame = self.store.usage(
            self.metrics[name].id,
            timeframe_start=WIDE[0],
            timeframe_end=WIDE[1],
            granularity=granularity,  # type: ignore[arg-type]
            **kwargs,
        )
        return {
            (
                row["customer_id"],
                row["external_customer_id"],
                row["timeframe_start"],
                row.get("region"),
            ): row["value"]
            for row in frame.iter_rows(named=True)
        }

    # -- checks ------------------------------------------------------------------------------

    @invariant()
    def usage_matches_model(self) -> None:
        for name in METRICS:
            for granularity in GRANULARITIES:
                assert self.actual(name, granularity) == pytest.approx(
                    self.expected(name, granularity)
                ), (name, granularity)
        if self.steps % 5 == 0:
            assert self.store.verify() == []
        (version,) = self.store.sql(
            "SELECT coalesce(max(version), 0) FROM lake.main.commits"
        ).fetchone()  # type: ignore[misc]
        self.history_of_sums[version] = self.expected("sum", "day")
        earlier = sorted(self.history_of_sums)[max(0, len(self.history_of_sums) - 4)]
        assert self.actual("sum", "day", as_of=earlier) == pytest.approx(
            self.history_of_sums[earlier]
        ), f"as_of version {earlier}"

    @invariant()
    def one_customer_usage_is_that_customers_share(self) -> None:
        """A one-customer read (a slice of cells located by customer and hour) equals the rows
        of that customer in the all-customers read, over a window that cuts through history."""
        start, end = START - 2 * DAY + 5 * H, START + DAY + 7 * H
        for name in ("sum", "distinct", "grouped"):
            for granularity in ("hour", None):
                everyone = self.store.usage(
                    self.metrics[name].id,
                    timeframe_start=start,
                    timeframe_end=end,
                    granularity=granularity,  # type: ignore[arg-type]
                )
                for column in ("external_customer_id", "customer_id"):
                    for who in {*everyone[column].drop_nulls().to_list(), "nobody"}:
                        alone = self.store.usage(
                            self.metrics[name].id,
                            timeframe_start=start,
                            timeframe_end=end,
                            granularity=granularity,  # type: ignore[arg-type]
                            **{column: who},
                        )
                        assert alone.equals(everyone.filter(pl.col(column) == who)), (
                            name,
                            granularity,
                            column,
                            who,
                        )

    def close_backfill(self, backfill_id: str) -> None:
        try:
            preview = self.store.backfills.preview(backfill_id)
        except EngineError:
            preview = None
        before = {n: self.expected(n, "day", grouped=False) for n in METRICS}
        super().close_backfill(backfill_id)
        if preview is None or self.model.backfills.get(backfill_id) is None:
            return
        if self.model.backfills[backfill_id].status != engine.BackfillStatus.REFLECTED:
            return
        after = {n: self.expected(n, "day", grouped=False) for n in METRICS}
        names = {m.id: n for n, m in self.metrics.items()}
        want = {}
        for name in METRICS:
            for key in before[name].keys() | after[name].keys():
                b, a = before[name].get(key), after[name].get(key)
                if b != a:
                    want[(self.metrics[name].id, key[0], key[1], key[2])] = (b, a)
        got = {
            (r["metric_id"], r["customer_id"], r["external_customer_id"], r["timeframe_start"]): (
                r["before"],
                r["after"],
            )
            for r in preview.iter_rows(named=True)
        }
        assert got.keys() == want.keys(), {names[k[0]] for k in got.keys() ^ want.keys()}
        for key, (b, a) in want.items():
            assert got[key] == (pytest.approx(b), pytest.approx(a)), key


settings.register_profile(
    "usage-ci",
    max_examples=5,
    stateful_step_count=20,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

TestUsageVsModel = UsageVsModel.TestCase
TestUsageVsModel.settings = settings.get_profile(
    os.environ.get("ENGINE_STATEFUL_USAGE_PROFILE", "usage-ci")
)
