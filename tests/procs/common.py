"""Helpers shared by the tests and by the subprocess entry points in this folder.

Kept free of pytest so that ``python tests/procs/<script>.py`` can import it too.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

import engine

HOUR = timedelta(hours=1)
DAY = timedelta(days=1)
#: The fake "now" every test starts at.
NOW = datetime(2024, 3, 10, 12, 0, tzinfo=UTC)
#: A day well outside the grace period: the usual target of a backfill.
OLD = NOW - 3 * DAY

REPO = Path(__file__).resolve().parents[2]


class FakeClock:
    """A settable clock: ``engine.open(path, clock=FakeClock())``."""

    def __init__(self, now: datetime = NOW) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now

    def advance(self, delta: timedelta) -> datetime:
        self.now += delta
        return self.now


def event(
    key: str,
    timestamp: datetime | str,
    *,
    ext: str | None = "acme",
    customer_id: str | None = None,
    name: str = "api_call",
    **properties: Any,
) -> dict[str, Any]:
    """One Orb-shaped event; ``properties`` default to ``{"tokens": 1}``."""
    body: dict[str, Any] = {
        "idempotency_key": key,
        "event_name": name,
        "timestamp": timestamp,
        "properties": properties or {"tokens": 1},
    }
    if customer_id is not None:
        body["customer_id"] = customer_id
    elif ext is not None:
        body["external_customer_id"] = ext
    return body


EffectiveRow = tuple[str, str, datetime, str | None, str | None, str]


def effective(store: engine.Store, **kwargs: Any) -> list[EffectiveRow]:
    """``store.events.effective(...)`` as sorted plain tuples (properties as canonical JSON)."""
    frame = store.events.effective(**kwargs)
    rows = [
        (
            key,
            name,
            ts,
            cid,
            ext,
            json.dumps(props, sort_keys=True),
        )
        for key, name, ts, cid, ext, props in frame.select(
            "idempotency_key",
            "event_name",
            "timestamp",
            "customer_id",
            "external_customer_id",
            "properties",
        ).rows()
    ]
    return sorted(rows)


def effective_props(store: engine.Store) -> dict[str, dict[str, Any]]:
    """Effective events as ``{key: properties}``."""
    return {row[0]: json.loads(row[5]) for row in effective(store)}


def fingerprint(store: engine.Store) -> dict[str, Any]:
    """What a refused operation must leave alone: the effective events, every backfill row, and
    the latest DuckLake snapshot (any commit, even one that changed nothing visible, makes a
    new snapshot; so an equal snapshot id proves that no table was written at all)."""
    (snapshot,) = store.sql("SELECT max(snapshot_id) FROM ducklake_snapshots('lake')").fetchone()
    return {
        "snapshot": snapshot,
        "events": sorted(store.sql("SELECT * FROM events").fetchall(), key=repr),
        "backfills": sorted(store.sql("SELECT * FROM backfills").fetchall(), key=repr),
    }


def statuses(store: engine.Store) -> dict[str, str]:
    """``{backfill id: status}`` of every backfill."""
    rows = store.sql("SELECT id, status FROM backfills").fetchall()
    return dict(rows)


def max_version(store: engine.Store) -> int:
    (row,) = store.sql("SELECT coalesce(max(version), 0) FROM lake.main.commits").fetchall()
    return int(row[0])


# -- large stores (concurrency and crash tests) ---------------------------------------------------

#: Live events of a large store lie in [BIG_T0 - 11 h, BIG_T0).
BIG_T0 = NOW
#: When the large store's backfill is created and closed (far past the grace period).
BIG_LATER = BIG_T0 + 2 * DAY
BIG_START = BIG_T0 - 12 * HOUR
BIG_END = BIG_T0 + HOUR
#: Reads the tests compare: (count, sum of tokens, rows that came from a backfill).
TOTALS_SQL = (
    "SELECT count(*), coalesce(sum(CAST(properties->>'tokens' AS BIGINT)), 0), "
    "count(backfill_id) FROM events"
)


def big_table(prefix: str, count: int, tokens: int) -> pa.Table:
    """``count`` events ``<prefix><i>`` spread over [BIG_T0 - 11 h, BIG_T0), ``tokens`` each."""
    span_us = int((11 * HOUR).total_seconds() * 1_000_000)
    offsets = pa.array([(i * span_us) // count for i in range(count)], type=pa.int64())
    start = pa.scalar(BIG_T0 - 11 * HOUR, type=pa.timestamp("us", tz="UTC"))
    timestamps = pc.add(start, pc.cast(offsets, pa.duration("us")))
    return pa.table(
        {
            "idempotency_key": pa.array([f"{prefix}{i}" for i in range(count)]),
            "event_name": pa.array(["api_call"] * count),
            "timestamp": timestamps,
            "external_customer_id": pa.array([f"cust{i % 7}" for i in range(count)]),
            "properties": pa.array([f'{{"tokens": {tokens}}}'] * count),
        }
    )


def build_big_store(path: Path, count: int) -> str:
    """A store with ``count`` live events (1 token each) and a pending account-wide replace
    backfill staging ``count`` other events (2 tokens each) over the same hours. Returns the
    backfill id. Before close the totals are (count, count, 0); after, (count, 2 count, count).
    """
    clock = FakeClock(BIG_T0)
    with engine.open(path, clock=clock) as store:
        store.ingest(big_table("live-", count, 1))
        clock.now = BIG_LATER
        backfill = store.backfills.create(timeframe_start=BIG_START, timeframe_end=BIG_END)
        store.ingest(big_table("fix-", count, 2), backfill_id=backfill.id)
        return backfill.id


def before_totals(count: int) -> tuple[int, int, int]:
    return (count, count, 0)


def after_totals(count: int) -> tuple[int, int, int]:
    return (count, 2 * count, count)


def subprocess_env() -> dict[str, str]:
    """The environment for ``python tests/procs/<script>.py``: the repo on ``sys.path``."""
    env = dict(os.environ)
    paths = [str(REPO), str(REPO / "tests")]
    if env.get("PYTHONPATH"):
        paths.append(env["PYTHONPATH"])
    env["PYTHONPATH"] = os.pathsep.join(paths)
    env["PYTHONUNBUFFERED"] = "1"
    return env


def proc_command(script: str, *args: str) -> list[str]:
    return [sys.executable, str(REPO / "tests" / "procs" / script), *args]


def say(message: str) -> None:
    """A line to the parent process, flushed at once (subprocess side)."""
    sys.stdout.write(message + "\n")
    sys.stdout.flush()


def read_until(readline: Callable[[], str], expected: str) -> list[str]:
    """Lines from ``readline`` up to and including ``expected`` (parent side); raises on EOF."""
    seen: list[str] = []
    while True:
        line = readline()
        if not line:
            raise AssertionError(f"subprocess ended before saying {expected!r}; said {seen!r}")
        line = line.rstrip("\n")
        seen.append(line)
        if line == expected:
            return seen
