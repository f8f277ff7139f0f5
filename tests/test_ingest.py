"""Live ingest (DESIGN section 2, "Events" and "Live ingest") and the input shapes it accepts."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from procs.common import (
    HOUR,
    NOW,
    FakeClock,
    effective,
    effective_props,
    event,
    fingerprint,
    max_version,
)

import engine
from engine.errors import ConstraintViolation, EngineError, RequestValidationError

US = timedelta(microseconds=1)


def rejected(store: engine.Store, events: Any) -> RequestValidationError:
    """Ingest ``events``, expect a rejection, and check that it changed nothing."""
    before = fingerprint(store)
    with pytest.raises(RequestValidationError) as info:
        store.ingest(events)
    assert fingerprint(store) == before
    assert "nothing was ingested" in info.value.detail
    return info.value


def problems_of(error: RequestValidationError) -> dict[str, list[str]]:
    return {e["idempotency_key"]: e["validation_errors"] for e in error.validation_errors}


# -- what a live batch writes ---------------------------------------------------------------------


def test_batch_is_one_commit_and_events_keep_their_values(store: engine.Store) -> None:
    result = store.ingest(
        [
            event("k2", NOW - HOUR, tokens=7, model="gpt-4", ratio=0.25, cached=True),
            event("k1", NOW, ext="globex", big=2**63 - 1, small=-(2**63)),
        ]
    )
    assert result == engine.IngestResult(ingested=["k2", "k1"], duplicates=[])
    assert effective_props(store) == {
        "k1": {"big": 2**63 - 1, "small": -(2**63)},
        "k2": {"tokens": 7, "model": "gpt-4", "ratio": 0.25, "cached": True},
    }
    rows = store.sql(
        "SELECT idempotency_key, version, source, kind, effective FROM all_events ORDER BY 1"
    ).fetchall()
    assert rows == [("k1", 1, "live", "event", True), ("k2", 1, "live", "event", True)]
    commits = store.sql("SELECT version, operation, events_written FROM lake.main.commits")
    assert commits.fetchall() == [(1, "ingest", 2)]
    store.ingest([event("k3", NOW)])
    assert max_version(store) == 2


def test_timestamps_keep_microseconds_and_come_back_as_utc(store: engine.Store) -> None:
    stamp = NOW - timedelta(minutes=3, microseconds=123_457)
    store.ingest([event("k1", stamp), event("k2", "2024-03-10T11:00:00.000001+00:00")])
    frame = store.events.effective()
    assert frame["timestamp"].dtype == pl.Datetime("us", "UTC")
    assert frame["timestamp"].to_list() == [
        datetime(2024, 3, 10, 11, 0, 0, 1, tzinfo=UTC),
        stamp,
    ]


def test_live_duplicates_are_reported_and_not_written(store: engine.Store) -> None:
    store.ingest([event("k1", NOW, tokens=1)])
    result = store.ingest([event("k1", NOW, tokens=99), event("k2", NOW)])
    assert result == engine.IngestResult(ingested=["k2"], duplicates=["k1"])
    assert effective_props(store)["k1"] == {"tokens": 1}
    assert max_version(store) == 2


def test_an_all_duplicate_batch_writes_nothing(store: engine.Store) -> None:
    store.ingest([event("k1", NOW), event("k2", NOW)])
    before = fingerprint(store)
    result = store.ingest([event("k2", NOW, tokens=5), event("k1", NOW)])
    assert result == engine.IngestResult(ingested=[], duplicates=["k2", "k1"])
    assert fingerprint(store) == before
    assert max_version(store) == 1


def test_an_empty_batch_writes_nothing(store: engine.Store) -> None:
    before = fingerprint(store)
    assert store.ingest([]) == engine.IngestResult(ingested=[], duplicates=[])
    assert fingerprint(store) == before


def test_a_key_stays_a_duplicate_forever(store: engine.Store, clock: FakeClock) -> None:
    store.ingest([event("k1", NOW)])
    clock.advance(timedelta(days=400))
    assert store.ingest([event("k1", clock.now)]).duplicates == ["k1"]
    # a deprecated (tombstoned) key still has its live rows: re-sending it does not revive it
    store.events.deprecate("k1")
    assert store.ingest([event("k1", clock.now)]).duplicates == ["k1"]
    assert effective(store) == []


def test_identical_copies_in_one_batch_count_once(store: engine.Store) -> None:
    copy = event("k1", NOW, tokens=3)
    result = store.ingest([copy, dict(copy), event("k2", NOW), dict(copy)])
    assert result == engine.IngestResult(ingested=["k1", "k2"], duplicates=[])
    (count,) = store.sql("SELECT count(*) FROM all_events WHERE idempotency_key = 'k1'").fetchone()
    assert count == 1


def test_copies_that_differ_only_in_property_order_are_identical(store: engine.Store) -> None:
    first = event("k1", NOW, a=1, b=2)
    second = {**first, "properties": {"b": 2, "a": 1}}
    assert store.ingest([first, second]).ingested == ["k1"]


def test_grace_period_and_future_tolerance_are_inclusive(store: engine.Store) -> None:
    result = store.ingest([event("old", NOW - 12 * HOUR), event("new", NOW + timedelta(minutes=5))])
    assert result.ingested == ["old", "new"]


def test_settings_move_the_live_window(store_path: Path, clock: FakeClock) -> None:
    with engine.open(
        store_path, clock=clock, grace_period=HOUR, future_tolerance=timedelta(0)
    ) as store:
        error = rejected(store, [event("k1", NOW - HOUR - US), event("k2", NOW + US)])
        problems = problems_of(error)
        assert "1 h" in problems["k1"][0] and "use a backfill" in problems["k1"][0]
        assert "future" in problems["k2"][0]
        assert store.ingest([event("k3", NOW - HOUR), event("k4", NOW)]).ingested == ["k3", "k4"]


# -- rejections ----------------------------------------------------------------------------------


def _without(body: dict[str, Any], *names: str) -> dict[str, Any]:
    return {k: v for k, v in body.items() if k not in names}


BAD_EVENTS: list[tuple[str, dict[str, Any], str]] = [
    ("too-old", event("bad", NOW - 12 * HOUR - US), "older than the grace period"),
    ("too-old-says-backfill", event("bad", NOW - 2 * HOUR * 24), "use a backfill"),
    ("future", event("bad", NOW + timedelta(minutes=5) + US), "too far in the future"),
    ("naive-datetime", event("bad", NOW.replace(tzinfo=None)), "UTC"),
    ("text-without-zone", event("bad", "2024-03-10T12:00:00"), "UTC"),
    ("text-other-offset", event("bad", "2024-03-10T13:00:00+01:00"), "UTC"),
    ("text-garbage", event("bad", "yesterday"), "'yesterday'"),
    ("no-timestamp", _without(event("bad", NOW), "timestamp"), "timestamp is required"),
    ("both-ids", {**event("bad", NOW), "customer_id": "cus_x"}, "not both"),
    ("no-id", _without(event("bad", NOW), "external_customer_id"), "external_customer_id"),
    ("unknown-customer", event("bad", NOW, customer_id="cus_nope"), "'cus_nope' does not exist"),
    ("no-name", _without(event("bad", NOW), "event_name"), "event_name is required"),
    ("empty-name", event("bad", NOW, name=""), "event_name is required"),
    ("name-not-text", {**event("bad", NOW), "event_name": 5}, "event_name must be a string"),
    ("no-properties", _without(event("bad", NOW), "properties"), "properties is required"),
    ("properties-list", {**event("bad", NOW), "properties": [1]}, "JSON object"),
    ("null-property", event("bad", NOW, tokens=None), "'tokens' is null"),
    ("nested-object", event("bad", NOW, meta={"a": 1}), "no nesting"),
    ("nested-list", event("bad", NOW, tags=["a"]), "no nesting"),
    ("int64-overflow", event("bad", NOW, tokens=2**63), "int64"),
    ("int64-underflow", event("bad", NOW, tokens=-(2**63) - 1), "int64"),
    ("nan", event("bad", NOW, tokens=float("nan")), "finite"),
    ("infinity", event("bad", NOW, tokens=float("inf")), "finite"),
    ("other-type", event("bad", NOW, when=NOW), "'when' must be a string, number or boolean"),
    ("unknown-field", {**event("bad", NOW), "customer": "acme"}, "unknown field 'customer'"),
]


def test_every_rule_names_its_problem(store: engine.Store) -> None:
    """One batch holding one bad event per rule: each is listed under its own key, with a
    message naming the problem, and the valid events around them are not listed."""
    store.ingest([event("earlier", NOW)])
    batch = [event("good", NOW)]
    for label, bad, _message in BAD_EVENTS:
        batch.append({**bad, "idempotency_key": label})
    batch.append(event("good2", NOW))
    error = rejected(store, batch)
    problems = problems_of(error)
    assert list(problems) == [label for label, _bad, _message in BAD_EVENTS]
    missing = {
        label: problems[label]
        for label, _bad, message in BAD_EVENTS
        if not any(message in text for text in problems[label])
    }
    assert missing == {}, missing
    assert error.detail.startswith(f"{len(BAD_EVENTS)} events failed validation")


@pytest.mark.parametrize("label", ["too-old", "unknown-field", "nested-object", "unknown-customer"])
def test_one_invalid_event_rejects_the_whole_batch(store: engine.Store, label: str) -> None:
    (bad,) = [body for name, body, _message in BAD_EVENTS if name == label]
    error = rejected(store, [event("good", NOW), bad, event("good2", NOW)])
    assert list(problems_of(error)) == ["bad"]
    assert error.detail.startswith("1 event failed validation")


def test_every_problem_of_every_event_is_listed(store: engine.Store) -> None:
    error = rejected(
        store,
        [
            event("ok", NOW),
            {"idempotency_key": "k1", "timestamp": "garbage", "properties": {"x": None}},
            {"event_name": "no-key", "timestamp": NOW, "external_customer_id": "a"},
            event("k3", NOW - 13 * HOUR),
        ],
    )
    assert error.detail.startswith("3 events failed validation")
    problems = problems_of(error)
    assert list(problems) == ["k1", "(event 3 without idempotency_key)", "k3"]
    assert len(problems["k1"]) == 4, problems["k1"]
    joined = " | ".join(problems["k1"])
    for part in ("event_name", "external_customer_id", "'x' is null", "'garbage'"):
        assert part in joined
    joined = " | ".join(problems["(event 3 without idempotency_key)"])
    assert "idempotency_key is required" in joined and "properties is required" in joined


def test_copies_with_different_bodies_reject_the_batch(store: engine.Store) -> None:
    error = rejected(
        store, [event("k1", NOW, tokens=1), event("k2", NOW), event("k1", NOW, tokens=2)]
    )
    assert problems_of(error) == {
        "k1": ["idempotency_key appears 2 times in this batch with different bodies"]
    }


def test_a_batch_must_be_a_list_not_one_object(store: engine.Store) -> None:
    before = fingerprint(store)
    with pytest.raises(ConstraintViolation, match="list of event objects"):
        store.ingest(event("k1", NOW))
    assert fingerprint(store) == before


def test_non_object_items_are_named(store: engine.Store) -> None:
    error = rejected(store, [event("k1", NOW), "not an event"])  # type: ignore[list-item]
    (problem,) = error.validation_errors
    assert "event 2 is not an object" in problem["validation_errors"]


# -- input shapes ---------------------------------------------------------------------------------

SHAPE_EVENTS = [
    event("s1", NOW - 2 * HOUR, tokens=5, model="gpt-4"),
    event("s2", NOW - HOUR, ext="globex", tokens=7),
    event("s3", NOW, ratio=0.5, cached=False),
]


def _expected_shape_rows() -> list[tuple[Any, ...]]:
    return sorted(
        (
            e["idempotency_key"],
            e["event_name"],
            e["timestamp"],
            None,
            e["external_customer_id"],
            json.dumps(e["properties"], sort_keys=True),
        )
        for e in SHAPE_EVENTS
    )


def _columns(timestamps: pa.Array) -> dict[str, Any]:
    return {
        "idempotency_key": [e["idempotency_key"] for e in SHAPE_EVENTS],
        "event_name": [e["event_name"] for e in SHAPE_EVENTS],
        "timestamp": timestamps,
        "external_customer_id": [e["external_customer_id"] for e in SHAPE_EVENTS],
        "properties": [json.dumps(e["properties"]) for e in SHAPE_EVENTS],
    }


def _utc_text() -> list[str]:
    # one of each accepted spelling: Z, +00:00, and a space separator
    return [
        "2024-03-10T10:00:00Z",
        "2024-03-10T11:00:00+00:00",
        "2024-03-10 12:00:00.000000Z",
    ]


def _arrow_aware() -> pa.Table:
    stamps = pa.array([e["timestamp"] for e in SHAPE_EVENTS], type=pa.timestamp("us", tz="UTC"))
    return pa.table(_columns(stamps))


def _arrow_other_zone_and_unit() -> pa.Table:
    # an aware Arrow column names its instants exactly, whatever the zone and unit
    stamps = pa.array(
        [e["timestamp"] for e in SHAPE_EVENTS], type=pa.timestamp("ms", tz="America/New_York")
    )
    return pa.table(_columns(stamps))


def _arrow_text() -> pa.Table:
    return pa.table(_columns(pa.array(_utc_text())))


def _polars_struct() -> pl.DataFrame:
    # a struct column has every member on every row: null members mean "absent"
    return pl.DataFrame(
        {
            "idempotency_key": [e["idempotency_key"] for e in SHAPE_EVENTS],
            "event_name": [e["event_name"] for e in SHAPE_EVENTS],
            "timestamp": [e["timestamp"] for e in SHAPE_EVENTS],
            "external_customer_id": [e["external_customer_id"] for e in SHAPE_EVENTS],
            # an explicit struct type: Polars would infer the members from the first row only
            "properties": pl.Series(
                [e["properties"] for e in SHAPE_EVENTS],
                dtype=pl.Struct(
                    {
                        "tokens": pl.Int64,
                        "model": pl.String,
                        "ratio": pl.Float64,
                        "cached": pl.Boolean,
                    }
                ),
            ),
        }
    )


def _polars_text() -> pl.DataFrame:
    return pl.DataFrame(_columns(pa.array(_utc_text())))


def _jsonl(tmp_path: Path) -> Path:
    path = tmp_path / "events.jsonl"
    texts = zip(SHAPE_EVENTS, _utc_text(), strict=True)
    lines = [json.dumps({**e, "timestamp": t}) for e, t in texts]
    path.write_text("\n".join(lines) + "\n")
    return path


def _parquet(tmp_path: Path) -> Path:
    path = tmp_path / "events.parquet"
    pq.write_table(_arrow_aware(), path)
    return path


def _csv(tmp_path: Path) -> Path:
    path = tmp_path / "events.csv"
    pl.DataFrame(_columns(pa.array(_utc_text()))).write_csv(path)
    return path


SHAPES = {
    "dicts": lambda tmp: SHAPE_EVENTS,
    "dicts-text-timestamps": lambda tmp: [
        {**e, "timestamp": t} for e, t in zip(SHAPE_EVENTS, _utc_text(), strict=True)
    ],
    "arrow-aware-timestamps": lambda tmp: _arrow_aware(),
    "arrow-other-zone-ms": lambda tmp: _arrow_other_zone_and_unit(),
    "arrow-text-timestamps": lambda tmp: _arrow_text(),
    "polars-struct-properties": lambda tmp: _polars_struct(),
    "polars-text": lambda tmp: _polars_text(),
    "jsonl": _jsonl,
    "jsonl-as-str": lambda tmp: str(_jsonl(tmp)),
    "parquet": _parquet,
    "csv": _csv,
}


@pytest.mark.parametrize("shape", list(SHAPES))
def test_every_input_shape_stores_the_same_events(
    store: engine.Store, tmp_path: Path, shape: str
) -> None:
    events = SHAPES[shape](tmp_path)
    result = store.ingest(events)
    assert result == engine.IngestResult(ingested=["s1", "s2", "s3"], duplicates=[])
    assert effective(store) == _expected_shape_rows()
    assert max_version(store) == 1


@pytest.mark.parametrize("shape", ["arrow-aware-timestamps", "polars-struct-properties", "csv"])
def test_a_batch_resent_in_another_shape_is_all_duplicates(
    store: engine.Store, tmp_path: Path, shape: str
) -> None:
    store.ingest(SHAPE_EVENTS)
    result = store.ingest(SHAPES[shape](tmp_path))
    assert result == engine.IngestResult(ingested=[], duplicates=["s1", "s2", "s3"])


def test_polars_struct_nulls_mean_absent(store: engine.Store) -> None:
    frame = pl.DataFrame(
        {
            "idempotency_key": ["a", "b"],
            "event_name": ["x", "x"],
            "timestamp": [NOW, NOW],
            "external_customer_id": ["acme", "acme"],
            "properties": [{"n": 1, "s": None}, {"n": None, "s": "z"}],
        }
    )
    store.ingest(frame)
    assert effective_props(store) == {"a": {"n": 1}, "b": {"s": "z"}}


@pytest.mark.parametrize("shape", ["arrow", "jsonl", "csv"])
def test_file_and_table_batches_are_validated_like_dicts(
    store: engine.Store, tmp_path: Path, shape: str
) -> None:
    rows = {
        "idempotency_key": ["ok", "bad"],
        "event_name": ["x", "x"],
        "timestamp": ["2024-03-10T12:00:00Z", "2024-03-01T12:00:00Z"],
        "external_customer_id": ["acme", "acme"],
        "properties": ['{"n": 1}', '{"n": {"deep": 1}}'],
    }
    events: Any
    if shape == "arrow":
        events = pa.table(rows)
    elif shape == "jsonl":
        events = tmp_path / "batch.jsonl"
        lines = [
            json.dumps({**{k: v[i] for k, v in rows.items()}, "properties": json.loads(p)})
            for i, p in enumerate(rows["properties"])
        ]
        events.write_text("\n".join(lines))
    else:
        events = tmp_path / "batch.csv"
        pl.DataFrame(rows).write_csv(events)
    error = rejected(store, events)
    problems = problems_of(error)
    assert list(problems) == ["bad"]
    joined = " | ".join(problems["bad"])
    assert "older than the grace period" in joined and "no nesting" in joined


@pytest.mark.parametrize("library", ["arrow", "polars"])
def test_naive_timestamp_column_is_a_validation_error(store: engine.Store, library: str) -> None:
    # found while writing these tests: this used to escape as a DuckDB BinderException
    naive = [NOW.replace(tzinfo=None)]
    columns = {
        "idempotency_key": ["k1"],
        "event_name": ["x"],
        "timestamp": naive,
        "external_customer_id": ["acme"],
        "properties": ['{"n": 1}'],
    }
    events = pa.table(columns) if library == "arrow" else pl.DataFrame(columns)
    error = rejected(store, events)
    assert "UTC" in " ".join(problems_of(error)["k1"])


def test_a_malformed_jsonl_file_is_a_400_naming_the_line(
    store: engine.Store, tmp_path: Path
) -> None:
    # found while writing these tests: this used to escape as duckdb.InvalidInputException
    # (a 500 for the HTTP layer) naming the wrong line
    path = tmp_path / "broken.jsonl"
    good = json.dumps(event("k1", "2024-03-10T12:00:00Z"))
    bad = '{"idempotency_key": "k3", oops'
    path.write_text(f"{good}\n\n{good.replace('k1', 'k2')}\n{bad}\n{good}\n")
    before = fingerprint(store)
    with pytest.raises(ConstraintViolation) as info:
        store.ingest(path)
    assert info.value.status == 400
    assert f"{path}: line 4 is malformed JSON" in info.value.detail
    assert info.value.fields["line"] == 4
    assert fingerprint(store) == before


def test_a_jsonl_line_that_is_not_an_object_is_a_400(store: engine.Store, tmp_path: Path) -> None:
    path = tmp_path / "array.jsonl"
    path.write_text(json.dumps(event("k1", "2024-03-10T12:00:00Z")) + "\n[1, 2]\n")
    before = fingerprint(store)
    with pytest.raises(EngineError) as info:
        store.ingest(path)
    assert info.value.status == 400
    assert fingerprint(store) == before


def test_unknown_field_in_jsonl_is_refused_like_in_dicts(
    store: engine.Store, tmp_path: Path
) -> None:
    # found while writing these tests: JSONL used to drop unknown fields silently
    path = tmp_path / "extra.jsonl"
    path.write_text(json.dumps({**event("k1", "2024-03-10T12:00:00Z"), "customer": "acme"}))
    error = rejected(store, path)
    assert "unknown field 'customer'" in problems_of(error)["k1"]


def test_missing_file_is_refused(store: engine.Store, tmp_path: Path) -> None:
    missing = tmp_path / "missing.jsonl"
    with pytest.raises(ConstraintViolation, match="does not exist") as info:
        store.ingest(missing)
    assert str(missing) in str(info.value)


def test_unsupported_file_type_is_refused(store: engine.Store, tmp_path: Path) -> None:
    path = tmp_path / "events.xml"
    path.write_text("<events/>")
    before = fingerprint(store)
    with pytest.raises(ConstraintViolation, match=r"\.jsonl, \.parquet or \.csv"):
        store.ingest(path)
    assert fingerprint(store) == before


def test_empty_jsonl_file_ingests_nothing(store: engine.Store, tmp_path: Path) -> None:
    path = tmp_path / "empty.jsonl"
    path.write_text("")
    assert store.ingest(path) == engine.IngestResult(ingested=[], duplicates=[])
    assert max_version(store) == 0


def test_stored_rows_are_kept_by_customer_in_small_row_groups(
    store_path: Path, clock: FakeClock
) -> None:
    # A scan for one customer skips the row groups whose statistics exclude it.
    customers = [f"cust_{n:03d}" for n in range(300)]
    batch = [
        event(f"k{n}", NOW - HOUR + n * US, ext=customers[(n * 7919) % len(customers)])
        for n in range(40_000)
    ]
    with engine.open(store_path, clock=clock) as store:
        store.ingest(batch)
    files = sorted((store_path / "data" / "main" / "stored_events").rglob("*.parquet"))
    assert files
    groups = 0
    for path in files:
        parquet = pq.ParquetFile(path)
        assert all(
            parquet.metadata.row_group(i).num_rows <= 16_384
            for i in range(parquet.metadata.num_row_groups)
        )
        groups += parquet.metadata.num_row_groups
        names = parquet.read(columns=["external_customer_id"]).column(0).to_pylist()
        assert names == sorted(names)
    assert groups >= 3
