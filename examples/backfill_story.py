"""The main job, end to end: correct double-reported usage with a backfill, then revert it.

Run it with ``make demo`` (or ``python examples/backfill_story.py [--store PATH]``). It loads the
bundled sample (``data/``: 20 000 events, 5 customers, the 14 days ending 2026-11-30) into a
fresh store whose clock is fixed at 2026-12-04T00:00Z, and tells one story:

1. A retrying producer sent cust_0001's gpt-4o completions of 2026-11-25 twice, with fresh
   idempotency keys, so the customer is billed double for that model on that day.
2. A replace backfill scoped to that customer and day, with the deprecation filter
   ``event_name = 'completion' AND model = 'gpt-4o'``, receives the correct events.
   Nothing changes until it closes.
3. Closing it makes the correction visible in one commit: gpt-4o is back to single counts,
   the other models of that day are untouched.
4. Reverting it restores exactly the numbers from before the backfill.

The script checks each step and exits 1 if a number is not what the story says.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlglot import exp

# Run as a plain script from a checkout (`python examples/backfill_story.py`) as well.
ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import engine  # noqa: E402

DATA = ROOT / "data"
NOW = datetime(2026, 12, 4, tzinfo=UTC)
CUSTOMER = "cust_0001"
DAY = datetime(2026, 11, 25, tzinfo=UTC)
MODEL = "gpt-4o"
FILTER = f"event_name = 'completion' AND model = '{MODEL}'"
# Long enough to accept the whole sample as live events (the oldest is 17 days before NOW).
HISTORY_GRACE = timedelta(days=30)


def fixed_clock() -> datetime:
    """The demo's "now": every run sees the same store state and prints the same numbers."""
    return NOW


# -- the sample -----------------------------------------------------------------------------


def load_sample_events() -> list[dict[str, Any]]:
    with (DATA / "events.jsonl").open() as handle:
        return [json.loads(line) for line in handle]


def is_incident_event(event: dict[str, Any]) -> bool:
    """cust_0001's gpt-4o completions on DAY: the events the producer sent twice."""
    return bool(
        event["external_customer_id"] == CUSTOMER
        and event["event_name"] == "completion"
        and event["properties"].get("model") == MODEL
        and str(event["timestamp"]).startswith(DAY.strftime("%Y-%m-%d"))
    )


def retried_copies(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    # A retry with a *fresh* key is what idempotency cannot catch: same body, new key.
    return [{**event, "idempotency_key": event["idempotency_key"] + "-retry"} for event in events]


# -- reading usage --------------------------------------------------------------------------


@dataclass(frozen=True)
class Usage:
    """Completions of CUSTOMER on DAY, per model: (events, tokens)."""

    by_model: dict[str, tuple[int, int]]

    def total(self) -> tuple[int, int]:
        return (
            sum(count for count, _ in self.by_model.values()),
            sum(tokens for _, tokens in self.by_model.values()),
        )


def _literal(value: object) -> str:
    # Values enter the query as quoted literals rendered by sqlglot, not pasted text.
    return exp.convert(value).sql(dialect="duckdb")


def usage_query() -> str:
    start = DAY.replace(tzinfo=None)
    end = start + timedelta(days=1)
    return f"""
SELECT properties->>'model' AS model,
       count(*) AS events,
       sum(CAST(properties->>'tokens' AS BIGINT)) AS tokens
FROM events
WHERE external_customer_id = {_literal(CUSTOMER)}
  AND event_name = 'completion'
  AND "timestamp" >= CAST({_literal(start.isoformat())} AS TIMESTAMP)
  AND "timestamp" < CAST({_literal(end.isoformat())} AS TIMESTAMP)
GROUP BY ALL
ORDER BY model"""


def read_usage(store: engine.Store) -> Usage:
    rows = store.sql(usage_query()).fetchall()
    return Usage({str(model): (int(count), int(tokens)) for model, count, tokens in rows})


def other_customers_total(store: engine.Store) -> int:
    """Events of everyone else that day: a scoped backfill must never move them."""
    start = DAY.replace(tzinfo=None)
    end = start + timedelta(days=1)
    row = store.sql(
        f"""SELECT count(*) FROM events
        WHERE external_customer_id <> {_literal(CUSTOMER)}
          AND "timestamp" >= CAST({_literal(start.isoformat())} AS TIMESTAMP)
          AND "timestamp" < CAST({_literal(end.isoformat())} AS TIMESTAMP)"""
    ).fetchone()
    assert row is not None
    return int(row[0])


# -- printing -------------------------------------------------------------------------------


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A plain-text table: text left-aligned, numbers right-aligned with thousands separators."""

    def cell(value: object) -> str:
        return f"{value:,}" if isinstance(value, int) else str(value)

    cells = [[cell(v) for v in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) for i, h in enumerate(headers)]
    numeric = [all(isinstance(row[i], int) for row in rows) for i in range(len(headers))]

    def line(values: Sequence[str]) -> str:
        parts = [
            v.rjust(w) if is_number else v.ljust(w)
            for v, w, is_number in zip(values, widths, numeric, strict=True)
        ]
        return "  " + "  ".join(parts).rstrip()

    rule = "  " + "  ".join("-" * w for w in widths)
    return "\n".join([line(headers), rule, *(line(r) for r in cells)])


def usage_table(usage: Usage) -> str:
    rows: list[list[object]] = [
        [model, count, tokens] for model, (count, tokens) in usage.by_model.items()
    ]
    rows.append(["(all models)", *usage.total()])
    return table(["model", "events", "tokens"], rows)


def comparison_table(columns: dict[str, Usage]) -> str:
    models = sorted({m for usage in columns.values() for m in usage.by_model})
    headers = ["model"]
    for label in columns:
        headers += [f"{label} events", f"{label} tokens"]
    rows: list[list[object]] = []
    for model in models:
        row: list[object] = [model]
        for usage in columns.values():
            row += list(usage.by_model.get(model, (0, 0)))
        rows.append(row)
    return table(headers, rows)


def say(text: str = "") -> None:
    print(text, flush=True)


def step(title: str) -> None:
    say()
    say(f"== {title}")


class StoryError(Exception):
    """A number is not what the story says: the engine is wrong (or the sample changed)."""


def check(condition: bool, message: str) -> None:
    # Not `assert`: the checks are the point of the script and must survive `python -O`.
    if not condition:
        raise StoryError(message)


@contextmanager
def store_path(requested: Path | None) -> Iterator[Path]:
    if requested is not None:
        if requested.exists() and any(requested.iterdir()):
            raise SystemExit(f"--store {requested} is not empty; the story needs a fresh store")
        yield requested
        return
    with tempfile.TemporaryDirectory(prefix="backfill-story-") as folder:
        yield Path(folder) / "store"


# -- the story ------------------------------------------------------------------------------


def load_history(
    path: Path, events: list[dict[str, Any]], duplicates: list[dict[str, Any]]
) -> None:
    step("Load 14 days of usage (2026-11-17 .. 2026-11-30) for 5 customers")
    say(
        f"Loading history as live events with a {HISTORY_GRACE.days}-day grace period: a "
        "shortcut for this demo only. Real deployments load history through backfills; the "
        "default grace period (12 h) refuses live events older than that."
    )
    started = time.perf_counter()
    with engine.open(path, clock=fixed_clock, grace_period=HISTORY_GRACE) as store:
        for customer in json.loads((DATA / "customers.json").read_text()):
            store.customers.create(
                external_customer_id=customer["external_customer_id"], name=customer["name"]
            )
        result = store.ingest(DATA / "events.jsonl")
        check(len(result.ingested) == len(events), "every sample event is ingested once")
        again = store.ingest(DATA / "events.jsonl")
        check(not again.ingested, "re-sending the file ingests nothing (idempotency)")
        retried = store.ingest(duplicates)
        check(len(retried.ingested) == len(duplicates), "the retried copies have fresh keys")
    say(
        f"Ingested {len(result.ingested):,} events in {time.perf_counter() - started:.1f} s; "
        f"re-sending the file was skipped as {len(again.duplicates):,} duplicates."
    )
    say(
        f"Incident: a retrying producer re-sent {len(duplicates):,} {MODEL} completions of "
        f"{CUSTOMER} on {DAY:%Y-%m-%d} with fresh idempotency keys; they were ingested too."
    )


def tell(path: Path) -> None:
    events = load_sample_events()
    incident = [event for event in events if is_incident_event(event)]
    check(len(incident) > 0, "the sample has gpt-4o completions for the story's customer and day")
    duplicates = retried_copies(incident)
    truth_events = len(incident)
    truth_tokens = sum(int(event["properties"]["tokens"]) for event in incident)

    load_history(path, events, duplicates)

    # From here on the store runs with the default grace period, as in production.
    with engine.open(path, clock=fixed_clock) as store:
        step(f"Billed usage of {CUSTOMER} on {DAY:%Y-%m-%d} (completions), from the events view")
        say(usage_query().strip())
        say()
        before = read_usage(store)
        others_before = other_customers_total(store)
        say(usage_table(before))
        check(
            before.by_model[MODEL] == (2 * truth_events, 2 * truth_tokens),
            f"{MODEL} is double-counted before the correction",
        )
        say(
            f"{MODEL} shows {before.by_model[MODEL][0]:,} events; "
            f"the producer sent {truth_events:,}."
        )

        step("Create a replace backfill for that customer and day, filtered on the model")
        backfill = store.backfills.create(
            timeframe_start=DAY,
            timeframe_end=DAY + timedelta(days=1),
            external_customer_id=CUSTOMER,
            replace_existing_events=True,
            deprecation_filter=FILTER,
        )
        say(
            table(
                ["backfill", "status", "timeframe", "customer", "deprecation_filter"],
                [
                    [
                        backfill.id,
                        str(backfill.status),
                        f"[{backfill.timeframe_start:%Y-%m-%d %H:%M}, "
                        f"{backfill.timeframe_end:%Y-%m-%d %H:%M})",
                        CUSTOMER,
                        FILTER,
                    ]
                ],
            )
        )

        step("Ingest the correct events into it (their original keys, sent once)")
        staged = store.ingest(incident, backfill_id=backfill.id)
        check(len(staged.ingested) == truth_events, "every corrected event is staged")
        pending = read_usage(store)
        check(pending == before, "a pending backfill changes nothing")
        say(
            f"Staged {len(staged.ingested):,} events. The backfill is "
            f"{store.backfills.get(backfill.id).status}: usage is unchanged until it closes."
        )

        step("Close it: the correction becomes visible in one commit")
        started = time.perf_counter()
        closed = store.backfills.close(backfill.id)
        say(f"Backfill {closed.id} is {closed.status} ({time.perf_counter() - started:.2f} s).")
        after = read_usage(store)
        say(usage_table(after))
        check(after.by_model[MODEL] == (truth_events, truth_tokens), f"{MODEL} is counted once")
        for model, numbers in before.by_model.items():
            if model != MODEL:
                check(after.by_model.get(model) == numbers, f"{model} is untouched by the filter")
        check(other_customers_total(store) == others_before, "other customers are untouched")

        step("Revert it: the backfill stops counting and its deprecations are lifted")
        reverted = store.backfills.revert(backfill.id)
        say(f"Backfill {reverted.id} is {reverted.status}.")
        after_revert = read_usage(store)
        say(usage_table(after_revert))
        check(after_revert == before, "after revert, usage equals usage before the backfill")
        check(other_customers_total(store) == others_before, "other customers are untouched")

        step("Summary")
        say(
            comparison_table({"before": before, "after close": after, "after revert": after_revert})
        )
        say()
        say(
            f"Before = after revert, and after close {MODEL} is back to the "
            f"{truth_events:,} events / {truth_tokens:,} tokens the producer actually sent."
        )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument(
        "--store", type=Path, help="store folder to create (default: a temporary folder)"
    )
    args = parser.parse_args(argv)
    try:
        with store_path(args.store) as path:
            say(f"Store: {path}   clock: {NOW.isoformat().replace('+00:00', 'Z')}")
            tell(path)
    except StoryError as error:
        print(f"\nFAILED: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
