"""The main job, end to end, on the bundled sample (``usage-engine demo``, ``make demo``).

1. Build a store from the sample (``data/``: 20 000 events, 5 customers, 14 days) with a few
   metrics. A retrying producer had sent cust_0001's gpt-4o completions of 2026-11-25 twice,
   with fresh idempotency keys, so that customer is billed double for that model that day.
2. A replace backfill scoped to that customer and day, with the deprecation filter
   ``event_name = 'completion' AND model = 'gpt-4o'``, receives the correct events.
   Nothing changes until it closes; the preview shows what closing will change.
3. Closing it makes the correction visible in one commit: gpt-4o is back to single counts,
   the other models and customers are untouched.
4. Reverting it restores exactly the numbers from before; ``as_of`` still shows the
   corrected numbers as they were known at the close.

The store's clock is fixed at 2026-12-04T00:00Z so that every run prints the same numbers.
Each step is checked; a number that is not what the story says fails the demo (exit 1).
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from rich.text import Text

import engine
from engine.cli import CliError, Output, UsageError, iso, preview_rows
from engine.notebook import load_sample, sample_dir

__all__ = ["NOW", "run"]

NOW = datetime(2026, 12, 4, tzinfo=UTC)
CUSTOMER = "cust_0001"
DAY = datetime(2026, 11, 25, tzinfo=UTC)
MODEL = "gpt-4o"
FILTER = f"event_name = 'completion' AND model = '{MODEL}'"
#: Days shown around the incident in the summary.
WEEK = (DAY - timedelta(days=3), DAY + timedelta(days=4))

#: Two of the sample's metrics and two grouped by model, which show the incident per model.
SAMPLE_METRIC_NAMES = ("completion_tokens", "event_count")
BY_MODEL_METRICS = [
    {
        "name": "completions_by_model",
        "sql": "SELECT count(*) FROM events WHERE event_name = 'completion' GROUP BY model",
    },
    {
        "name": "completion_tokens_by_model",
        "sql": "SELECT sum(tokens) FROM events WHERE event_name = 'completion' GROUP BY model",
    },
]

ByModel = dict[str, tuple[int, int]]  # model -> (completions, tokens)


class StoryError(CliError):
    """A number is not what the story says: the engine is wrong (or the sample changed)."""


def check(condition: bool, message: str) -> None:
    # Not `assert`: the checks are the point of the demo and must survive `python -O`.
    if not condition:
        raise StoryError(f"demo check failed: {message}")


def fixed_clock() -> datetime:
    return NOW


@contextmanager
def _demo_store(requested: Path | None) -> Iterator[Path]:
    if requested is not None:
        if requested.exists() and (not requested.is_dir() or any(requested.iterdir())):
            raise UsageError(f"--store {requested} is not empty; the demo builds a new store")
        yield requested
        return
    folder = Path(tempfile.mkdtemp(prefix="usage-engine-demo-"))
    try:
        yield folder / "store"
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _incident(data: Path) -> list[dict[str, Any]]:
    """CUSTOMER's MODEL completions on DAY: the events the producer sent twice."""
    day = DAY.strftime("%Y-%m-%d")
    with (data / "events.jsonl").open(encoding="utf-8") as lines:
        events = [json.loads(line) for line in lines if line.strip()]
    return [
        e
        for e in events
        if e.get("external_customer_id") == CUSTOMER
        and e["event_name"] == "completion"
        and e["properties"].get("model") == MODEL
        and str(e["timestamp"]).startswith(day)
    ]


class Story:
    """The demo's steps over one store, printing as it goes."""

    def __init__(self, ui: Output, store: engine.Store, metric_ids: dict[str, str]) -> None:
        self.ui = ui
        self.store = store
        self.metric_ids = metric_ids

    # -- reading usage through the API ----------------------------------------------------------

    def by_model(self, *, as_of: int | None = None) -> ByModel:
        """CUSTOMER's completions and tokens per model on DAY (store.usage, grouped metrics)."""
        values: dict[str, list[int]] = {}
        for position, name in enumerate(("completions_by_model", "completion_tokens_by_model")):
            usage = self.store.usage(
                self.metric_ids[name],
                timeframe_start=DAY,
                timeframe_end=DAY + timedelta(days=1),
                external_customer_id=CUSTOMER,
                granularity="day",
                group_by="model",
                as_of=as_of,
            )
            for row in usage.iter_rows(named=True):
                values.setdefault(row["model"], [0, 0])[position] = int(row["value"])
        return {model: (v[0], v[1]) for model, v in sorted(values.items())}

    def daily_tokens(self) -> dict[str, int]:
        """CUSTOMER's completion tokens per day of the week around DAY."""
        usage = self.store.usage(
            self.metric_ids["completion_tokens"],
            timeframe_start=WEEK[0],
            timeframe_end=WEEK[1],
            external_customer_id=CUSTOMER,
            granularity="day",
        )
        return {
            f"{row['timeframe_start']:%Y-%m-%d}": int(row["value"])
            for row in usage.iter_rows(named=True)
        }

    def others_events(self) -> int:
        """Events of every other customer on DAY: a scoped backfill must never move them."""
        usage = self.store.usage(
            self.metric_ids["event_count"],
            timeframe_start=DAY,
            timeframe_end=DAY + timedelta(days=1),
            granularity=None,
        )
        return sum(
            int(row["value"])
            for row in usage.iter_rows(named=True)
            if row["external_customer_id"] != CUSTOMER
        )

    # -- printing -------------------------------------------------------------------------------

    def step(self, title: str) -> None:
        if not self.ui.json_mode:
            self.ui.out.print()
            self.ui.out.print(Text(title, style="bold underline"))

    def say(self, text: str) -> None:
        self.ui.line(text)

    def table(self, columns: list[str], rows: list[list[Any]], title: str | None = None) -> None:
        if not self.ui.json_mode:
            numeric = [c for c in columns if c not in ("model", "metric", "customer", "day")]
            self.ui.table(columns, rows, title=title, numeric=numeric)

    def by_model_table(self, usage: ByModel, title: str) -> None:
        rows: list[list[Any]] = [[model, n, tokens] for model, (n, tokens) in usage.items()]
        rows.append(
            ["(all models)", sum(n for n, _ in usage.values()), sum(t for _, t in usage.values())]
        )
        self.table(["model", "completions", "tokens"], rows, title=title)


def run(ui: Output, *, store: Path | None = None) -> int:
    """Tell the story in a new store (``store``, or a temporary one); return the exit code."""
    started = time.perf_counter()
    data = sample_dir()
    incident = _incident(data)
    check(bool(incident), f"the sample has {MODEL} completions of {CUSTOMER} on {DAY:%Y-%m-%d}")
    # A retry with a *fresh* key is what idempotency cannot catch: same body, new key.
    retried = [{**e, "idempotency_key": e["idempotency_key"] + "-retry"} for e in incident]
    truth = (len(incident), sum(int(e["properties"]["tokens"]) for e in incident))
    metric_specs = [
        m
        for m in json.loads((data / "metrics.json").read_text())
        if m["name"] in SAMPLE_METRIC_NAMES
    ] + BY_MODEL_METRICS

    with _demo_store(store) as path, engine.open(path, clock=fixed_clock) as opened:
        if not ui.json_mode:
            ui.line(f"Store: {path}   clock: {iso(NOW)} (fixed, so every run prints the same)")

        # 1. history
        loaded = load_sample(opened, data, metrics=metric_specs, extra_events=retried)
        story = Story(ui, opened, {m.name: m.id for m in loaded.metrics})
        story.step("1. Load 14 days of usage of 5 customers (2026-11-17 .. 2026-11-30)")
        check(loaded.events == 20_000 + len(retried), "every sample event is loaded once")
        story.say(
            f"{loaded.events:,} events, {len(loaded.customers)} customers and "
            f"{len(loaded.metrics)} metrics, loaded through one add-only backfill "
            f"({loaded.backfill.id}): history older than the 12 h grace period goes in that "
            "way, not as live events."
        )
        story.say(
            f"Among them, the incident: a retrying producer re-sent {len(retried):,} {MODEL} "
            f"completions of {CUSTOMER} on {DAY:%Y-%m-%d} with fresh idempotency keys."
        )

        # 2. the incident, in billed usage
        story.step(f"2. Billed usage of {CUSTOMER} on {DAY:%Y-%m-%d} (store.usage)")
        before = story.by_model()
        week_before = story.daily_tokens()
        others_before = story.others_events()
        story.by_model_table(before, f"{CUSTOMER}, {DAY:%Y-%m-%d}: completions and tokens by model")
        check(before.get(MODEL) == (2 * truth[0], 2 * truth[1]), f"{MODEL} is double-counted")
        story.say(
            f"{MODEL} shows {before[MODEL][0]:,} completions; the producer sent {truth[0]:,}."
        )

        # 3. the correction
        story.step("3. Create a replace backfill for that customer and day, filtered on the model")
        backfill = opened.backfills.create(
            timeframe_start=DAY,
            timeframe_end=DAY + timedelta(days=1),
            external_customer_id=CUSTOMER,
            replace_existing_events=True,
            deprecation_filter=FILTER,
        )
        if not ui.json_mode:
            ui.record(
                {
                    "id": backfill.id,
                    "status": backfill.status,
                    "timeframe_start": backfill.timeframe_start,
                    "timeframe_end": backfill.timeframe_end,
                    "customer": CUSTOMER,
                    "replace_existing_events": backfill.replace_existing_events,
                    "deprecation_filter": FILTER,
                }
            )
        staged = opened.ingest(incident, backfill_id=backfill.id)
        check(len(staged.ingested) == truth[0], "every corrected event is staged")
        check(story.by_model() == before, "a pending backfill changes nothing")
        story.say(
            f"Staged the {len(staged.ingested):,} correct events (their original keys, sent "
            f"once). The backfill is {opened.backfills.get(backfill.id).status}: usage is "
            "unchanged until it closes."
        )

        # 4. preview
        story.step("4. Preview: what closing would change (nothing is written)")
        preview = preview_rows(opened, opened.backfills.preview(backfill.id))
        story.table(
            ["metric", "customer", "day", "before", "after", "delta"],
            [
                [
                    r["metric_name"],
                    r["external_customer_id"],
                    f"{r['timeframe_start']:%Y-%m-%d}",
                    r["before"],
                    r["after"],
                    r["delta"],
                ]
                for r in preview
            ],
        )
        deltas = {r["metric_name"]: r["delta"] for r in preview}
        check(deltas.get("completion_tokens") == -truth[1], "the preview removes the extra tokens")
        check(deltas.get("event_count") == -truth[0], "the preview removes the extra events")
        check(
            {r["external_customer_id"] for r in preview} == {CUSTOMER}
            and {f"{r['timeframe_start']:%Y-%m-%d}" for r in preview} == {f"{DAY:%Y-%m-%d}"},
            "the preview touches only that customer and day",
        )

        # 5. close
        story.step("5. Close it: the correction becomes visible in one commit")
        clock = time.perf_counter()
        closed = opened.backfills.close(backfill.id)
        close_seconds = time.perf_counter() - clock
        close_version = _close_version(opened, backfill.id)
        after = story.by_model()
        week_after = story.daily_tokens()
        story.say(
            f"Backfill {closed.id} is {closed.status} "
            f"(version {close_version}, {close_seconds:.2f} s)."
        )
        story.by_model_table(after, f"{CUSTOMER}, {DAY:%Y-%m-%d} after close")
        check(after.get(MODEL) == truth, f"{MODEL} is counted once")
        for model, numbers in before.items():
            if model != MODEL:
                check(after.get(model) == numbers, f"{model} is untouched by the filter")
        check(story.others_events() == others_before, "other customers are untouched")

        # 6. revert
        story.step("6. Revert it: the backfill stops counting and its deprecations are lifted")
        reverted = opened.backfills.revert(backfill.id)
        after_revert = story.by_model()
        as_of_close = story.by_model(as_of=close_version)
        story.say(f"Backfill {reverted.id} is {reverted.status}.")
        story.by_model_table(after_revert, f"{CUSTOMER}, {DAY:%Y-%m-%d} after revert")
        check(after_revert == before, "after revert, usage equals usage before the backfill")
        check(story.daily_tokens() == week_before, "after revert, every day is as before")
        check(story.others_events() == others_before, "other customers are untouched")
        check(as_of_close == after, f"usage as_of version {close_version} shows the correction")
        check(opened.verify() == [], "materialized usage matches a from-scratch computation")

        # summary
        story.step("Summary")
        models = sorted(before)
        story.table(
            ["model", "before", "after close", "after revert", f"as of v{close_version}"],
            [
                [
                    m,
                    before[m][1],
                    after.get(m, (0, 0))[1],
                    after_revert[m][1],
                    as_of_close.get(m, (0, 0))[1],
                ]
                for m in models
            ],
            title=f"{CUSTOMER}'s completion tokens on {DAY:%Y-%m-%d}",
        )
        story.table(
            ["day", "before", "after close", "after revert"],
            [[day, week_before[day], week_after.get(day), week_before[day]] for day in week_before],
            title=f"{CUSTOMER}'s completion tokens per day",
        )
        story.say(
            f"Before = after revert; after close {MODEL} is back to the {truth[0]:,} "
            f"completions / {truth[1]:,} tokens the producer sent; as_of shows the corrected "
            f"numbers as known at version {close_version}. Store verified. "
            f"({time.perf_counter() - started:.1f} s)"
        )
        if ui.json_mode:
            ui.json(
                {
                    "ok": True,
                    "store": str(path),
                    "backfill_id": backfill.id,
                    "close_version": close_version,
                    "customer": CUSTOMER,
                    "day": DAY,
                    "model": MODEL,
                    "truth": {"completions": truth[0], "tokens": truth[1]},
                    "before": _by_model_json(before),
                    "after_close": _by_model_json(after),
                    "after_revert": _by_model_json(after_revert),
                    "as_of_close": _by_model_json(as_of_close),
                    "preview": preview,
                }
            )
    return 0


def _by_model_json(usage: ByModel) -> dict[str, dict[str, int]]:
    return {m: {"completions": n, "tokens": t} for m, (n, t) in usage.items()}


def _close_version(store: engine.Store, backfill_id: str) -> int:
    """The version of the backfill's close commit (the ``backfills`` view shows it; the
    Backfill value object, which mirrors Orb's, does not)."""
    from sqlglot import exp

    query = (
        exp.select("close_version")
        .from_("backfills")
        .where(exp.column("id").eq(exp.convert(backfill_id)))
    )
    row = store.sql(query.sql(dialect="duckdb")).fetchone()
    if row is None or row[0] is None:
        raise StoryError(f"backfill {backfill_id} has no close version")
    return int(row[0])
