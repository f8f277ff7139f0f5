"""A deterministic generator of realistic usage events, for the demo, notebooks and benchmarks.

Events look like what an AI / API product sends to a billing system: LLM completions and
embeddings (tokens per model), API calls and hourly storage readings, from customers whose
volumes follow a skewed (Zipf-like) distribution, with a daily and weekly rhythm.

Everything is vectorized (numpy draws, pyarrow string kernels), so ten million events take
seconds, not minutes. Output depends only on the arguments, never on ``batch_size``: random
draws are made per fixed-size chunk from a generator seeded by ``(seed, chunk)``, and the
event times come from the global event index, so batches are sorted by time like a live
stream.

>>> from datetime import UTC, datetime
>>> batch = next(generate_events(events=1_000, customers=5, days=2, seed=7,
...                              start=datetime(2026, 11, 1, tzinfo=UTC)))
>>> batch.num_rows, batch.column_names[:3]
(1000, ['idempotency_key', 'event_name', 'timestamp'])

Command line (writes JSON lines or Parquet, chosen by the file extension)::

    python -m engine.sample --events 20000 --customers 5 --days 14 --seed 7 \
        --out data/events.jsonl
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

__all__ = [
    "EVENT_NAMES",
    "SAMPLE_METRICS",
    "SCHEMA",
    "generate_events",
    "jsonl_lines",
    "main",
    "sample_customers",
    "write_events",
]

#: The columns of every generated table, in order: Orb's event shape.
SCHEMA = pa.schema(
    [
        ("idempotency_key", pa.string()),
        ("event_name", pa.string()),
        ("timestamp", pa.timestamp("us", tz="UTC")),
        ("customer_id", pa.string()),
        ("external_customer_id", pa.string()),
        ("properties", pa.string()),
    ]
)

#: Event names and their share of the traffic.
EVENT_NAMES: tuple[str, ...] = ("completion", "embedding", "api_call", "storage_gb_hour")
_EVENT_SHARES = (0.55, 0.20, 0.20, 0.05)

_COMPLETION_MODELS = ("gpt-4o", "gpt-4o-mini", "claude-sonnet", "llama-3-70b")
_COMPLETION_SHARES = (0.40, 0.30, 0.20, 0.10)
_EMBEDDING_MODELS = ("text-embedding-3-small", "text-embedding-3-large")
_EMBEDDING_SHARES = (0.75, 0.25)
_REGIONS = ("us-east", "eu-west", "ap-south")
_REGION_SHARES = (0.55, 0.35, 0.10)
_ENDPOINTS = ("/v1/search", "/v1/files", "/v1/moderations", "/v1/batches")
_ENDPOINT_SHARES = (0.50, 0.25, 0.15, 0.10)
_STATUSES = (200, 201, 400, 429, 500)
_STATUS_SHARES = (0.86, 0.05, 0.04, 0.03, 0.02)
_TIERS = ("standard", "archive")
_TIER_SHARES = (0.8, 0.2)

#: Zipf exponent of customer volumes: with 5 customers the largest sends about 45% of events.
_ZIPF_EXPONENT = 1.1

#: Random draws are made per chunk of this many events, so output ignores ``batch_size``.
_CHUNK = 1 << 16

#: Orb-style metric SQL over the generated properties (``tokens``, ``model``, ``region``...).
SAMPLE_METRICS: list[dict[str, str]] = [
    {
        "name": "completion_tokens",
        "sql": "SELECT sum(tokens) FROM events WHERE event_name = 'completion'",
    },
    {"name": "event_count", "sql": "SELECT count(*) FROM events"},
    {"name": "distinct_models", "sql": "SELECT count(DISTINCT model) FROM events"},
    {
        "name": "max_completion_tokens",
        "sql": "SELECT max(tokens) FROM events WHERE event_name = 'completion'",
    },
    {"name": "events_by_region", "sql": "SELECT count(*) FROM events GROUP BY region"},
    {
        "name": "embedding_tokens_by_model",
        "sql": "SELECT sum(tokens) FROM events WHERE event_name = 'embedding' GROUP BY model",
    },
    {
        "name": "storage_gb_hours",
        "sql": "SELECT sum(gb) FROM events WHERE event_name = 'storage_gb_hour'",
    },
    {
        "name": "api_server_errors",
        "sql": "SELECT count(*) FROM events WHERE event_name = 'api_call' AND status >= 500",
    },
]

_UInt64Array = npt.NDArray[np.uint64]
_IntArray = npt.NDArray[np.int64]
_FloatArray = npt.NDArray[np.float64]


def sample_customers(customers: int) -> list[str]:
    """The external customer ids the generator uses, heaviest first: ``cust_0001``, ...

    >>> sample_customers(3)
    ['cust_0001', 'cust_0002', 'cust_0003']
    """
    if customers < 1:
        raise ValueError("customers must be at least 1")
    width = max(4, len(str(customers)))
    return [f"cust_{rank:0{width}d}" for rank in range(1, customers + 1)]


def generate_events(
    *,
    events: int,
    customers: int,
    days: int,
    seed: int,
    start: datetime,
    batch_size: int = 1_000_000,
) -> Iterator[pa.Table]:
    """Yield ``events`` events as pyarrow Tables of ``batch_size`` rows (see :data:`SCHEMA`).

    Times lie in ``[start, start + days)``, sorted, at millisecond granularity, denser during
    the (UTC) working day and lower at weekends. ``idempotency_key`` is unique for a seed and
    differs between seeds, so batches from another seed are always fresh events.
    """
    if events < 0 or customers < 1 or days < 1 or batch_size < 1:
        raise ValueError("events must be >= 0; customers, days and batch_size >= 1")
    if not 0 <= seed < 1 << 24:
        raise ValueError("seed must be in [0, 2**24): it is part of every idempotency key")
    if events >= 1 << 40:
        raise ValueError("at most 2**40 events per seed")
    if start.tzinfo is None:
        raise ValueError("start must be an aware datetime (UTC)")
    start_us = _epoch_us(start)
    time_cdf = _time_cdf(start, days)
    customer_names = pa.array(sample_customers(customers), pa.string())
    customer_cdf = _cdf(1.0 / np.arange(1, customers + 1, dtype=np.float64) ** _ZIPF_EXPONENT)

    pending: list[dict[str, npt.NDArray[Any]]] = []
    pending_rows = 0
    for chunk_start in range(0, events, _CHUNK):
        draws = _draws(seed, chunk_start, min(_CHUNK, events - chunk_start), customer_cdf)
        pending.append(draws)
        pending_rows += len(draws["index"])
        while pending_rows >= batch_size:
            merged = _concat(pending)
            yield _table(
                _slice(merged, 0, batch_size), events, seed, start_us, time_cdf, customer_names
            )
            rest = _slice(merged, batch_size, pending_rows)
            pending_rows -= batch_size
            pending = [rest] if pending_rows else []
    if pending_rows:
        yield _table(_concat(pending), events, seed, start_us, time_cdf, customer_names)


# -- random draws ------------------------------------------------------------------------------


def _cdf(weights: npt.ArrayLike) -> _FloatArray:
    cumulative = np.cumsum(np.asarray(weights, dtype=np.float64))
    result: _FloatArray = cumulative / cumulative[-1]
    return result


def _pick(rng: np.random.Generator, n: int, cdf: _FloatArray) -> _IntArray:
    # searchsorted on a CDF is the vectorized form of rng.choice(p=...), with clamping because
    # the last CDF value may round just below 1.0.
    codes = np.searchsorted(cdf, rng.random(n), side="right")
    result: _IntArray = np.minimum(codes, len(cdf) - 1).astype(np.int64)
    return result


def _draws(
    seed: int, chunk_start: int, n: int, customer_cdf: _FloatArray
) -> dict[str, npt.NDArray[Any]]:
    """Every random choice for events ``chunk_start .. chunk_start + n``.

    All draws are made for every event (some only matter for one event name): a fixed draw
    order per chunk is what keeps the output identical across batch sizes.
    """
    sequence = np.random.SeedSequence(entropy=seed, spawn_key=(chunk_start // _CHUNK,))
    rng = np.random.Generator(np.random.PCG64(sequence))
    return {
        "index": np.arange(chunk_start, chunk_start + n, dtype=np.int64),
        "time_jitter": rng.random(n),
        "customer": _pick(rng, n, customer_cdf),
        "kind": _pick(rng, n, _cdf(_EVENT_SHARES)),
        "completion_model": _pick(rng, n, _cdf(_COMPLETION_SHARES)),
        "embedding_model": _pick(rng, n, _cdf(_EMBEDDING_SHARES)),
        "region": _pick(rng, n, _cdf(_REGION_SHARES)),
        "size": rng.standard_normal(n),
        "cached": rng.random(n) < 0.15,
        "endpoint": _pick(rng, n, _cdf(_ENDPOINT_SHARES)),
        "status": _pick(rng, n, _cdf(_STATUS_SHARES)),
        "tier": _pick(rng, n, _cdf(_TIER_SHARES)),
    }


def _concat(parts: list[dict[str, npt.NDArray[Any]]]) -> dict[str, npt.NDArray[Any]]:
    if len(parts) == 1:
        return parts[0]
    return {name: np.concatenate([part[name] for part in parts]) for name in parts[0]}


def _slice(draws: dict[str, npt.NDArray[Any]], lo: int, hi: int) -> dict[str, npt.NDArray[Any]]:
    return {name: values[lo:hi] for name, values in draws.items()}


# -- time --------------------------------------------------------------------------------------


def _epoch_us(moment: datetime) -> int:
    delta = moment.astimezone(UTC) - datetime(1970, 1, 1, tzinfo=UTC)
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def _time_cdf(start: datetime, days: int) -> _FloatArray:
    """CDF of event intensity over the minutes of ``[start, start + days)``.

    Mapping the event index through its inverse spreads events in time order with the daily
    rhythm: a UTC afternoon peak (Europe and the US both awake), a night floor, quieter weekends.
    """
    minutes = np.arange(days * 1440, dtype=np.float64)
    start_utc = start.astimezone(UTC)
    minute_of_day = (start_utc.hour * 60 + start_utc.minute + minutes) % 1440
    hour = minute_of_day / 60.0
    intensity = 0.3 + np.exp(-(((hour - 15.0) / 4.5) ** 2))
    weekday = (start_utc.weekday() + (start_utc.hour * 60 + start_utc.minute + minutes) // 1440) % 7
    intensity = np.where(weekday >= 5, 0.6 * intensity, intensity)
    cdf = np.empty(len(minutes) + 1, dtype=np.float64)
    cdf[0] = 0.0
    cdf[1:] = _cdf(intensity)
    return cdf


def _timestamps(
    index: _IntArray, jitter: _FloatArray, events: int, start_us: int, time_cdf: _FloatArray
) -> pa.Array:
    # Stratified by index: event i falls in quantile [i, i+1) / events of the time CDF, so
    # times are sorted across batches and the daily rhythm holds at any scale.
    quantile = (index + jitter) / events
    minute = np.interp(quantile, time_cdf, np.arange(len(time_cdf), dtype=np.float64))
    # Whole milliseconds, as Orb clients usually send; floor keeps the last one before the end.
    offset_ms = np.floor(minute * 60_000.0).astype(np.int64)
    offset_ms = np.minimum(offset_ms, (len(time_cdf) - 1) * 60_000 - 1)
    micros = start_us + offset_ms * 1_000
    return pa.array(micros, pa.int64()).cast(pa.timestamp("us", tz="UTC"))


# -- strings -----------------------------------------------------------------------------------

_HEX = np.frombuffer(b"0123456789abcdef", dtype=np.uint8)
_KEY_PREFIX = np.frombuffer(b"evt_", dtype=np.uint8)


def _mix64(values: _UInt64Array) -> _UInt64Array:
    """SplitMix64's finalizer: a bijection on 64-bit integers, so distinct inputs give distinct,
    random-looking keys (realistic for hashing and compression, unlike sequential keys)."""
    x = values.copy()
    x ^= x >> np.uint64(30)
    x *= np.uint64(0xBF58476D1CE4E5B9)
    x ^= x >> np.uint64(27)
    x *= np.uint64(0x94D049BB133111EB)
    x ^= x >> np.uint64(31)
    return x


def _keys(seed: int, index: _IntArray) -> pa.Array:
    """``evt_`` + 16 hex digits of mix64(seed << 40 | index): unique per (seed, index)."""
    n = len(index)
    mixed = _mix64((np.uint64(seed) << np.uint64(40)) | index.astype(np.uint64))
    octets = mixed.astype(">u8").view(np.uint8).reshape(n, 8)
    text = np.empty((n, 20), dtype=np.uint8)
    text[:, :4] = _KEY_PREFIX
    text[:, 4::2] = _HEX[octets >> 4]
    text[:, 5::2] = _HEX[octets & 15]
    offsets = np.arange(0, 20 * (n + 1), 20, dtype=np.int32)
    return pa.StringArray.from_buffers(n, pa.py_buffer(offsets), pa.py_buffer(text.tobytes()))


def _choice(options: Sequence[str], codes: _IntArray) -> pa.Array:
    return pa.array(options, pa.string()).take(pa.array(codes))


def _text(values: npt.NDArray[Any]) -> pa.Array:
    return pc.cast(pa.array(values), pa.string())


def _join(*parts: pa.Array | str) -> pa.Array:
    return pc.binary_join_element_wise(*parts, "")


def _bool_text(values: npt.NDArray[np.bool_]) -> pa.Array:
    return pc.if_else(pa.array(values), "true", "false")


def _properties(draws: dict[str, npt.NDArray[Any]]) -> pa.Array:
    """The ``properties`` JSON text of each event, by event name, keys sorted (canonical)."""
    kind = draws["kind"]
    parts: list[pa.Array] = []
    order: list[_IntArray] = []
    for code in range(len(EVENT_NAMES)):
        rows = np.flatnonzero(kind == code)
        order.append(rows)
        size = draws["size"][rows]
        regions = _choice(_REGIONS, draws["region"][rows])
        if code == 0:  # completion: tokens per request, model, cache hits
            tokens = np.clip(np.exp(6.4 + 0.9 * size), 1, 32_000).astype(np.int64)
            parts.append(
                _join(
                    '{"cached":', _bool_text(draws["cached"][rows]),
                    ',"model":"', _choice(_COMPLETION_MODELS, draws["completion_model"][rows]),
                    '","region":"', regions,
                    '","tokens":', _text(tokens), "}",
                )
            )  # fmt: skip
        elif code == 1:  # embedding: tokens embedded, model
            tokens = np.clip(np.exp(5.7 + 0.7 * size), 1, 8_191).astype(np.int64)
            parts.append(
                _join(
                    '{"model":"', _choice(_EMBEDDING_MODELS, draws["embedding_model"][rows]),
                    '","region":"', regions,
                    '","tokens":', _text(tokens), "}",
                )
            )  # fmt: skip
        elif code == 2:  # api_call: endpoint, HTTP status, latency
            latency = np.clip(np.exp(4.5 + 0.6 * size), 1, 60_000).astype(np.int64)
            statuses = np.asarray(_STATUSES, dtype=np.int64)[draws["status"][rows]]
            parts.append(
                _join(
                    '{"endpoint":"', _choice(_ENDPOINTS, draws["endpoint"][rows]),
                    '","latency_ms":', _text(latency),
                    ',"region":"', regions,
                    '","status":', _text(statuses), "}",
                )
            )  # fmt: skip
        else:  # storage_gb_hour: GB held during one hour, always written with 3 decimals
            # Fixed decimals keep `gb` a JSON float on every row (2.0 would print as 2).
            milli = np.clip(np.exp(9.0 + 1.2 * size), 1, 50_000_000).astype(np.int64)
            fraction = pc.utf8_lpad(_text(milli % 1000), width=3, padding="0")
            parts.append(
                _join(
                    '{"gb":', _text(milli // 1000), ".", fraction,
                    ',"region":"', regions,
                    '","tier":"', _choice(_TIERS, draws["tier"][rows]), '"}',
                )
            )  # fmt: skip
    by_kind = pa.concat_arrays(parts)
    inverse = np.empty(len(kind), dtype=np.int64)
    inverse[np.concatenate(order)] = np.arange(len(kind), dtype=np.int64)
    return by_kind.take(pa.array(inverse))


def _table(
    draws: dict[str, npt.NDArray[Any]],
    events: int,
    seed: int,
    start_us: int,
    time_cdf: _FloatArray,
    customer_names: pa.Array,
) -> pa.Table:
    n = len(draws["index"])
    columns = [
        _keys(seed, draws["index"]),
        _choice(EVENT_NAMES, draws["kind"]),
        _timestamps(draws["index"], draws["time_jitter"], events, start_us, time_cdf),
        pa.nulls(n, pa.string()),
        customer_names.take(pa.array(draws["customer"])),
        _properties(draws),
    ]
    return pa.Table.from_arrays(columns, schema=SCHEMA)


# -- files -------------------------------------------------------------------------------------


def jsonl_lines(table: pa.Table) -> pa.Array:
    """Orb-shaped JSON lines (without newline) for a generated table: ``customer_id`` (always
    null here) is left out and ``timestamp`` is ISO-8601 text ending in ``Z``."""
    millis = pc.cast(table.column("timestamp"), pa.timestamp("ms", tz="UTC"), safe=False)
    stamps = pc.strftime(millis, format="%Y-%m-%dT%H:%M:%SZ")
    # Generated keys, names and customer ids are plain ASCII without quotes or backslashes,
    # so they can be spliced into JSON text unescaped; properties already are JSON.
    line = _join(
        '{"idempotency_key":"', table.column("idempotency_key"),
        '","event_name":"', table.column("event_name"),
        '","timestamp":"', stamps,
        '","external_customer_id":"', table.column("external_customer_id"),
        '","properties":', table.column("properties"), "}",
    )  # fmt: skip
    return line.combine_chunks() if isinstance(line, pa.ChunkedArray) else line


def write_events(batches: Iterator[pa.Table], out: Path) -> int:
    """Write generated batches to ``out`` (``.jsonl`` or ``.parquet``); returns the row count."""
    suffix = out.suffix.lower()
    if suffix not in (".jsonl", ".parquet"):
        raise ValueError(f"cannot write {out}: expected a .jsonl or .parquet file name")
    out.parent.mkdir(parents=True, exist_ok=True)
    rows = 0
    if suffix == ".parquet":
        with pq.ParquetWriter(out, SCHEMA, compression="zstd") as writer:
            for batch in batches:
                writer.write_table(batch)
                rows += batch.num_rows
        return rows
    with out.open("wb") as handle:
        for batch in batches:
            # One newline-terminated string array whose data buffer is the file's bytes:
            # written as is, with no Python string per line.
            lines = _join(jsonl_lines(batch), "\n")
            offsets = np.frombuffer(lines.buffers()[1], dtype=np.int32)
            first, last = offsets[lines.offset], offsets[lines.offset + len(lines)]
            handle.write(memoryview(lines.buffers()[2])[first:last])
            rows += batch.num_rows
    return rows


def _aware(text: str) -> datetime:
    moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m engine.sample",
        description="Write deterministic sample usage events as JSON lines or Parquet.",
    )
    parser.add_argument("--events", type=int, required=True)
    parser.add_argument("--customers", type=int, required=True)
    parser.add_argument("--days", type=int, required=True)
    parser.add_argument("--seed", type=int, required=True)
    parser.add_argument(
        "--end",
        type=_aware,
        default=datetime(2026, 12, 1, tzinfo=UTC),
        help="exclusive end of the time range, ISO-8601 (default 2026-12-01T00:00:00Z); "
        "events span the --days days before it",
    )
    parser.add_argument("--out", type=Path, required=True, help="a .jsonl or .parquet path")
    parser.add_argument(
        "--customers-out", type=Path, help="also write the customer ids as a JSON list"
    )
    parser.add_argument("--metrics-out", type=Path, help="also write SAMPLE_METRICS as a JSON list")
    args = parser.parse_args(argv)
    start = args.end - timedelta(days=args.days)
    batches = generate_events(
        events=args.events,
        customers=args.customers,
        days=args.days,
        seed=args.seed,
        start=start,
    )
    rows = write_events(batches, args.out)
    if args.customers_out is not None:
        customers = [
            {"external_customer_id": external_id, "name": f"Sample customer {rank}"}
            for rank, external_id in enumerate(sample_customers(args.customers), start=1)
        ]
        args.customers_out.write_text(json.dumps(customers, indent=2) + "\n")
    if args.metrics_out is not None:
        args.metrics_out.write_text(json.dumps(SAMPLE_METRICS, indent=2) + "\n")
    print(f"wrote {rows} events to {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
