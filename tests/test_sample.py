"""The sample generator (engine/sample.py), the committed sample in data/, and the demo."""

from __future__ import annotations

import collections
import json
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from engine.sample import (
    EVENT_NAMES,
    SAMPLE_METRICS,
    SCHEMA,
    generate_events,
    main,
    sample_customers,
    write_events,
)

ROOT = Path(__file__).resolve().parents[1]
START = datetime(2026, 11, 2, tzinfo=UTC)  # a Monday

PROPERTY_KEYS = {
    "completion": {"cached", "model", "region", "tokens"},
    "embedding": {"model", "region", "tokens"},
    "api_call": {"endpoint", "latency_ms", "region", "status"},
    "storage_gb_hour": {"gb", "region", "tier"},
}


def generate(
    events: int = 20_000,
    *,
    customers: int = 20,
    days: int = 7,
    seed: int = 3,
    batch_size: int = 1_000_000,
) -> pa.Table:
    return pa.concat_tables(
        generate_events(
            events=events,
            customers=customers,
            days=days,
            seed=seed,
            start=START,
            batch_size=batch_size,
        )
    )


# -- determinism ---------------------------------------------------------------------------


def test_same_seed_gives_identical_tables() -> None:
    assert generate().equals(generate())


def test_output_does_not_depend_on_batch_size() -> None:
    whole = generate(150_000)
    batches = list(
        generate_events(
            events=150_000, customers=20, days=7, seed=3, start=START, batch_size=40_000
        )
    )
    assert [b.num_rows for b in batches] == [40_000, 40_000, 40_000, 30_000]
    assert pa.concat_tables(batches).equals(whole)


def test_other_seed_gives_other_events_and_fresh_keys() -> None:
    first, second = generate(seed=3), generate(seed=4)
    assert not first.equals(second)
    keys = set(first.column("idempotency_key").to_pylist())
    assert keys.isdisjoint(second.column("idempotency_key").to_pylist())


def test_committed_sample_is_what_the_documented_command_writes(tmp_path: Path) -> None:
    out = tmp_path / "events.jsonl"
    customers = tmp_path / "customers.json"
    metrics = tmp_path / "metrics.json"
    code = main(
        [
            *("--events", "20000", "--customers", "5", "--days", "14", "--seed", "7"),
            *("--end", "2026-12-01T00:00:00Z", "--out", str(out)),
            *("--customers-out", str(customers), "--metrics-out", str(metrics)),
        ]
    )
    assert code == 0
    assert out.read_bytes() == (ROOT / "data" / "events.jsonl").read_bytes()
    assert customers.read_bytes() == (ROOT / "data" / "customers.json").read_bytes()
    assert metrics.read_bytes() == (ROOT / "data" / "metrics.json").read_bytes()


# -- shape and types -----------------------------------------------------------------------


def test_schema_and_row_count() -> None:
    table = generate(12_345)
    assert table.schema == SCHEMA
    assert table.num_rows == 12_345
    assert table.column("customer_id").null_count == table.num_rows
    for name in ("idempotency_key", "event_name", "timestamp", "external_customer_id"):
        assert table.column(name).null_count == 0, name


def test_keys_are_unique() -> None:
    keys = generate(200_000).column("idempotency_key")
    assert pc.count_distinct(keys).as_py() == len(keys)
    assert all(k.startswith("evt_") and len(k) == 20 for k in keys.to_pylist()[:100])


def test_times_are_sorted_inside_the_range_at_millisecond_granularity() -> None:
    micros = generate(days=7).column("timestamp").cast(pa.int64()).to_numpy()
    start = int(START.timestamp()) * 1_000_000
    end = int((START + timedelta(days=7)).timestamp()) * 1_000_000
    assert micros.min() >= start
    assert micros.max() < end
    assert (micros[1:] >= micros[:-1]).all()
    assert (micros % 1_000 == 0).all()


def test_properties_are_flat_json_objects_by_event_name() -> None:
    table = generate(5_000)
    names = table.column("event_name").to_pylist()
    assert set(names) == set(EVENT_NAMES)
    for name, text in zip(names, table.column("properties").to_pylist(), strict=True):
        properties = json.loads(text)
        assert set(properties) == PROPERTY_KEYS[name]
        assert all(isinstance(v, str | int | float | bool) for v in properties.values())
        if "tokens" in properties:
            assert isinstance(properties["tokens"], int) and properties["tokens"] >= 1
        if "gb" in properties:
            assert isinstance(properties["gb"], float)


def test_event_name_mix() -> None:
    counts = collections.Counter(generate(50_000).column("event_name").to_pylist())
    assert counts["completion"] > counts["embedding"] > counts["storage_gb_hour"]
    assert 0.50 < counts["completion"] / 50_000 < 0.60


def test_customers_are_the_sample_customers() -> None:
    assert sample_customers(3) == ["cust_0001", "cust_0002", "cust_0003"]
    assert sample_customers(12_000)[-1] == "cust_12000"
    used = set(generate(customers=20).column("external_customer_id").to_pylist())
    assert used <= set(sample_customers(20))


# -- distributions -------------------------------------------------------------------------


def test_customer_volumes_are_skewed() -> None:
    counts = collections.Counter(
        generate(100_000, customers=50).column("external_customer_id").to_pylist()
    )
    ranked = [counts[c] for c in sample_customers(50)]
    top, median, last = ranked[0], sorted(ranked)[25], ranked[-1]
    assert top > 10 * median  # Zipf-like: the head dominates
    assert top / 100_000 > 0.15  # one customer sends a large share
    assert last > 0  # and the tail still exists
    assert ranked[0] > ranked[1] > ranked[4] > ranked[20]


def test_daily_rhythm_and_quieter_weekends() -> None:
    times = generate(70_000, days=7).column("timestamp").to_pylist()
    hours = collections.Counter(t.hour for t in times)
    assert hours[15] > 2 * hours[3]  # afternoon UTC peak, night floor
    weekdays = collections.Counter(t.weekday() for t in times)
    assert weekdays[5] < 0.75 * weekdays[2]  # Saturday vs Wednesday


# -- files and metrics ---------------------------------------------------------------------


def test_parquet_output_round_trips(tmp_path: Path) -> None:
    out = tmp_path / "events.parquet"
    batches = generate_events(events=3_000, customers=5, days=2, seed=9, start=START)
    assert write_events(batches, out) == 3_000
    assert pq.read_table(out).equals(generate(3_000, customers=5, days=2, seed=9))


def test_jsonl_output_is_orb_shaped(tmp_path: Path) -> None:
    out = tmp_path / "events.jsonl"
    write_events(generate_events(events=500, customers=5, days=2, seed=9, start=START), out)
    lines = out.read_text().splitlines()
    assert len(lines) == 500
    first = json.loads(lines[0])
    assert list(first) == [
        "idempotency_key",
        "event_name",
        "timestamp",
        "external_customer_id",
        "properties",
    ]
    assert first["timestamp"].endswith("Z")
    assert isinstance(first["properties"], dict)


def test_unknown_extension_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="jsonl"):
        write_events(iter([]), tmp_path / "events.csv")


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(ValueError):
        next(generate_events(events=10, customers=0, days=1, seed=1, start=START))
    with pytest.raises(ValueError, match="aware"):
        next(generate_events(events=10, customers=1, days=1, seed=1, start=datetime(2026, 1, 1)))


def test_sample_metrics_are_orb_style_sql() -> None:
    names = [metric["name"] for metric in SAMPLE_METRICS]
    assert len(names) == len(set(names))
    for metric in SAMPLE_METRICS:
        assert set(metric) == {"name", "sql"}
        assert metric["sql"].startswith("SELECT ") and " FROM events" in metric["sql"]


# -- the demo ------------------------------------------------------------------------------


def test_demo_story_runs_and_exits_0() -> None:
    done = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "backfill_story.py")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    assert "Before = after revert" in done.stdout
