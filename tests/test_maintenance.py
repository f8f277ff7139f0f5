"""Compaction: fewer files, expired snapshots, and not one answer changed."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from procs.common import DAY, HOUR, NOW, OLD, FakeClock, event, max_version

import engine
from engine.errors import ConstraintViolation

START = OLD - DAY
END = OLD + 3 * DAY


def _parquet_files(store: engine.Store) -> int:
    return sum(1 for _ in (store.path / "data").rglob("*.parquet"))


def _answers(store: engine.Store, metric_ids: list[str], versions: list[int]) -> dict[str, Any]:
    """Everything a user reads: effective events, usage now and as of earlier versions."""
    answers: dict[str, Any] = {
        "effective": store.events.effective(timeframe_start=START, timeframe_end=END)
        .sort("idempotency_key")
        .to_dicts(),
        "backfills": [(b.id, b.status) for b in store.backfills.list().data],
    }
    for metric_id in metric_ids:
        for as_of in [None, *versions]:
            frame = store.usage(
                metric_id,
                timeframe_start=START,
                timeframe_end=END,
                granularity="hour",
                as_of=as_of,
            )
            answers[f"{metric_id}@{as_of}"] = frame.sort(pl.all()).to_dicts()
    return answers


def _fragmented_store(path: Path) -> tuple[engine.Store, list[str], list[int]]:
    """A store written in many small commits, with a closed and a reverted backfill."""
    clock = FakeClock()
    store = engine.open(path, clock=clock)
    metrics = [
        store.metrics.create(name="tokens", sql="SELECT sum(tokens) FROM events").id,
        store.metrics.create(name="models", sql="SELECT count(DISTINCT model) FROM events").id,
    ]
    history = store.backfills.create(
        timeframe_start=START, timeframe_end=END, replace_existing_events=False
    )
    for batch in range(6):
        store.ingest(
            [
                event(f"h{batch}-{i}", OLD + i * HOUR, tokens=i + batch, model=f"m{i % 3}")
                for i in range(40)
            ],
            backfill_id=history.id,
        )
    store.backfills.close(history.id)
    versions = [max_version(store)]
    for batch in range(8):
        store.ingest([event(f"live{batch}-{i}", clock.now - HOUR, tokens=i) for i in range(5)])
    fix = store.backfills.create(timeframe_start=OLD, timeframe_end=OLD + DAY)
    store.ingest(
        [event(f"fix-{i}", OLD + i * HOUR, tokens=100, model="m9") for i in range(10)],
        backfill_id=fix.id,
    )
    store.backfills.close(fix.id)
    versions.append(max_version(store))
    undone = store.backfills.create(timeframe_start=OLD + DAY, timeframe_end=OLD + 2 * DAY)
    store.ingest([event("undone", OLD + DAY, tokens=7)], backfill_id=undone.id)
    store.backfills.close(undone.id)
    store.backfills.revert(undone.id)
    return store, metrics, versions


def test_compaction_changes_files_not_answers(tmp_path: Path) -> None:
    store, metrics, versions = _fragmented_store(tmp_path / "store")
    with store:
        before = _answers(store, metrics, versions)
        result = store.compact(retention=timedelta(0), file_grace=timedelta(0))
        assert result.snapshots_expired > 0
        assert result.files_merged > 0
        assert result.data_files_after == _parquet_files(store)
        assert result.data_files_after < result.data_files_before
        assert _answers(store, metrics, versions) == before
        assert store.verify() == []

        # the store goes on taking writes
        assert store.ingest([event("after", NOW - HOUR, tokens=1)]).ingested == ["after"]
        assert store.verify() == []
        latest = _answers(store, metrics, versions)
    with engine.open(tmp_path / "store") as reopened:
        assert _answers(reopened, metrics, versions) == latest


def test_recent_snapshots_and_files_are_kept_within_the_windows(tmp_path: Path) -> None:
    store, _, _ = _fragmented_store(tmp_path / "store")
    with store:
        result = store.compact()  # defaults: 7 days of snapshots, 1 hour of file grace
        assert result.snapshots_expired == 0
        assert result.files_deleted == 0
        # the merged-away files stay on disk for readers that may still scan them
        assert result.data_files_after >= result.data_files_before


@pytest.mark.parametrize("option", ["retention", "file_grace"])
def test_negative_windows_are_refused(store: engine.Store, option: str) -> None:
    with pytest.raises(ConstraintViolation, match=f"{option} must not be negative"):
        store.compact(**{option: timedelta(seconds=-1)})
