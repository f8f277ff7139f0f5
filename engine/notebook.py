"""Helpers for notebooks (and the demo): the bundled sample, a store to play in, and the
engine's value objects as Polars frames.

>>> from engine.notebook import load_sample, notebook_store
>>> store = engine.open(notebook_store())  # doctest: +SKIP
>>> loaded = load_sample(store)  # doctest: +SKIP
"""

from __future__ import annotations

import enum
import json
import os
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, fields, is_dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import polars as pl

import engine
from engine.models import Backfill, Customer, Metric

__all__ = [
    "NOTEBOOK_STORE_ENV",
    "SAMPLE_ARGUMENTS",
    "LoadedSample",
    "frame",
    "load_sample",
    "notebook_store",
    "sample_dir",
    "write_sample",
]

#: Where the notebooks build their store (a path that is not a store yet); tests set it.
NOTEBOOK_STORE_ENV = "USAGE_ENGINE_NOTEBOOK_STORE"

#: The arguments that produced the bundled ``data/`` (see data/README.md): regenerating with
#: them gives the same bytes, which is how an installed package without ``data/`` gets it.
SAMPLE_ARGUMENTS: Mapping[str, Any] = {
    "events": 20_000,
    "customers": 5,
    "days": 14,
    "seed": 7,
    "end": datetime(2026, 12, 1, tzinfo=UTC),
}
_SAMPLE_FILES = ("events.jsonl", "customers.json", "metrics.json")


def sample_dir() -> Path:
    """The folder with the sample (``events.jsonl``, ``customers.json``, ``metrics.json``):
    the checkout's ``data/``, or, in an installed package without it, the same sample
    regenerated once into a temporary folder."""
    bundled = Path(__file__).resolve().parents[1] / "data"
    if all((bundled / name).is_file() for name in _SAMPLE_FILES):
        return bundled
    folder = Path(tempfile.gettempdir()) / "usage-engine-sample"
    if not all((folder / name).is_file() for name in _SAMPLE_FILES):
        write_sample(folder)
    return folder


def write_sample(folder: Path) -> None:
    """Write the bundled sample's three files into ``folder``, byte for byte what ``data/``
    holds (the generator is deterministic)."""
    from engine import sample  # numpy-heavy, and only needed without a checkout

    folder.mkdir(parents=True, exist_ok=True)
    args = SAMPLE_ARGUMENTS
    end: datetime = args["end"]
    batches = sample.generate_events(
        events=args["events"],
        customers=args["customers"],
        days=args["days"],
        seed=args["seed"],
        start=end - timedelta(days=args["days"]),
    )
    # Written under a temporary name and renamed, so a concurrent reader never sees half.
    partial = folder / f"events.{os.getpid()}.jsonl"
    sample.write_events(batches, partial)
    partial.replace(folder / "events.jsonl")
    customers = [
        {"external_customer_id": external_id, "name": f"Sample customer {rank}"}
        for rank, external_id in enumerate(sample.sample_customers(args["customers"]), start=1)
    ]
    (folder / "customers.json").write_text(json.dumps(customers, indent=2) + "\n")
    (folder / "metrics.json").write_text(json.dumps(sample.SAMPLE_METRICS, indent=2) + "\n")


def notebook_store(env: str = NOTEBOOK_STORE_ENV) -> Path:
    """A path for a fresh store: ``$USAGE_ENGINE_NOTEBOOK_STORE`` if set, else a new
    temporary folder. The notebooks load the sample into it, so it must not be a store yet
    (running a notebook twice on one store would load the sample twice)."""
    chosen = os.environ.get(env)
    if not chosen:
        return Path(tempfile.mkdtemp(prefix="usage-engine-notebook-")) / "store"
    path = Path(chosen)
    if path.exists() and (not path.is_dir() or any(path.iterdir())):
        raise FileExistsError(
            f"${env} = {path} already exists and is not empty; the notebooks build a fresh "
            "store: remove it or choose another path"
        )
    return path


@dataclass(frozen=True)
class LoadedSample:
    """What :func:`load_sample` put in the store."""

    customers: list[Customer]
    metrics: list[Metric]
    #: The add-only backfill that carried the history in (closed).
    backfill: Backfill
    events: int


def load_sample(
    store: engine.Store,
    data: Path | None = None,
    *,
    metrics: Sequence[Mapping[str, Any]] | None = None,
    extra_events: Sequence[Mapping[str, Any]] = (),
) -> LoadedSample:
    """Load the sample into an empty store: its customers, then ``metrics`` (default: the
    sample's ``metrics.json``), then the events (plus ``extra_events``).

    The events are history, older than any grace period, so they go in the way Orb loads
    history: one add-only backfill (``replace_existing_events=False``) over the whole days
    they span, closed at once. Metrics come first so that the close materializes them
    together with the events instead of each metric re-reading all history.
    """
    data = data if data is not None else sample_dir()
    events_file = data / "events.jsonl"
    customers = [
        store.customers.create(**customer)
        for customer in json.loads((data / "customers.json").read_text())
    ]
    specs = metrics if metrics is not None else json.loads((data / "metrics.json").read_text())
    created = [store.metrics.create(**spec) for spec in specs]
    start, end = _day_span(events_file, extra_events)
    backfill = store.backfills.create(
        timeframe_start=start, timeframe_end=end, replace_existing_events=False
    )
    loaded = len(store.ingest(events_file, backfill_id=backfill.id).ingested)
    if extra_events:
        loaded += len(store.ingest(list(extra_events), backfill_id=backfill.id).ingested)
    closed = store.backfills.close(backfill.id)
    return LoadedSample(customers=customers, metrics=created, backfill=closed, events=loaded)


def _day_span(
    events_file: Path, extra_events: Iterable[Mapping[str, Any]]
) -> tuple[datetime, datetime]:
    """The whole UTC days ``[first day, day after the last)`` that the events fall in."""
    with events_file.open(encoding="utf-8") as lines:
        stamps = [json.loads(line)["timestamp"] for line in lines if line.strip()]
    stamps += [str(event["timestamp"]) for event in extra_events]
    if not stamps:
        raise ValueError(f"{events_file} holds no events")
    moments = [datetime.fromisoformat(s).astimezone(UTC) for s in stamps]
    first = min(moments).replace(hour=0, minute=0, second=0, microsecond=0)
    last = max(moments).replace(hour=0, minute=0, second=0, microsecond=0)
    return first, last + timedelta(days=1)


def frame(items: Sequence[Any]) -> pl.DataFrame:
    """Value objects (customers, metrics, backfills, events) as a Polars frame, one row each,
    for display in a notebook: ``frame(store.backfills.list().data)``.

    Enums become their text and mappings (metadata, properties) JSON text.
    """
    rows = []
    for item in items:
        if not is_dataclass(item) or isinstance(item, type):
            raise TypeError(f"frame() takes the engine's value objects, not {type(item).__name__}")
        rows.append({f.name: _cell(getattr(item, f.name)) for f in fields(item)})
    return pl.DataFrame(rows)


def _cell(value: Any) -> Any:
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, Mapping):
        return json.dumps(dict(value), sort_keys=True)
    return value
