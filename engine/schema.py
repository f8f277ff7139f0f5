"""The tables of a store, as data: names, columns and partitioning.

`sql/ddl.sql` renders these for people to read (a test keeps it in sync); the storage layer
creates them from here.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["CATALOG", "OPTIONS", "TABLES", "Column", "Table", "table"]

#: Name under which the DuckLake catalog is attached in every connection.
CATALOG = "lake"


@dataclass(frozen=True)
class Column:
    name: str
    type: str


@dataclass(frozen=True)
class Table:
    name: str
    columns: tuple[Column, ...]
    #: DuckLake partition transforms, e.g. ``("year(timestamp)", ...)``.
    partitioned_by: tuple[str, ...] = ()

    @property
    def column_names(self) -> list[str]:
        return [column.name for column in self.columns]


def _columns(*pairs: tuple[str, str]) -> tuple[Column, ...]:
    return tuple(Column(name, type_) for name, type_ in pairs)


_EVENT_BODY = (
    ("idempotency_key", "VARCHAR"),
    ("event_name", "VARCHAR"),
    # UTC instants stored without a zone: the whole engine speaks UTC.
    ("timestamp", "TIMESTAMP"),
    ("customer_id", "VARCHAR"),
    ("external_customer_id", "VARCHAR"),
    # A JSON object of string / number / boolean values.
    ("properties", "JSON"),
)

STORED_EVENTS = Table(
    "stored_events",
    _columns(
        *_EVENT_BODY,
        # The commit that wrote the row; strictly increasing across commits.
        ("version", "BIGINT"),
        # NULL for live ingest (and amendments, tombstones); else the backfill it came in.
        ("backfill_id", "VARCHAR"),
        # 'event', 'amendment' or 'tombstone' (a single-event deprecation).
        ("kind", "VARCHAR"),
    ),
    partitioned_by=("year(timestamp)", "month(timestamp)", "day(timestamp)"),
)

STAGED_EVENTS = Table("staged_events", _columns(("backfill_id", "VARCHAR"), *_EVENT_BODY))

# Backfill -> the stored rows (key, version) it deprecates, with the row's customer and event
# time, so reads of a time range prune to day partitions and a commit finds the usage cells it
# touches without reading the events.
DEPRECATIONS = Table(
    "deprecations",
    _columns(
        ("backfill_id", "VARCHAR"),
        ("idempotency_key", "VARCHAR"),
        ("version", "BIGINT"),
        ("customer_id", "VARCHAR"),
        ("external_customer_id", "VARCHAR"),
        ("timestamp", "TIMESTAMP"),
    ),
    partitioned_by=("year(timestamp)", "month(timestamp)", "day(timestamp)"),
)

# One row per (older stored row, newer row with the same key), written when the newer row is:
# a row is superseded when a newer row of its key is a candidate (live, or of a reflected
# backfill). Keeping the pairs makes "newest version per key" an anti-join against this small
# table instead of a window over every stored event. The older row's customer and time are
# kept so a commit finds the usage cells it touches without scanning the events.
SUPERSESSIONS = Table(
    "supersessions",
    _columns(
        ("idempotency_key", "VARCHAR"),
        ("version", "BIGINT"),
        ("superseded_by", "BIGINT"),
        ("by_backfill_id", "VARCHAR"),
        ("customer_id", "VARCHAR"),
        ("external_customer_id", "VARCHAR"),
        ("timestamp", "TIMESTAMP"),
    ),
)

BACKFILLS = Table(
    "backfills",
    _columns(
        ("id", "VARCHAR"),
        ("status", "VARCHAR"),
        ("created_at", "TIMESTAMP"),
        ("timeframe_start", "TIMESTAMP"),
        ("timeframe_end", "TIMESTAMP"),
        ("events_ingested", "BIGINT"),
        ("close_time", "TIMESTAMP"),
        ("reverted_at", "TIMESTAMP"),
        ("customer_id", "VARCHAR"),
        ("external_customer_id", "VARCHAR"),
        ("replace_existing_events", "BOOLEAN"),
        ("deprecation_filter", "VARCHAR"),
        # Orders backfills newest first, stable for cursors.
        ("sequence", "BIGINT"),
        ("close_version", "BIGINT"),
        ("revert_version", "BIGINT"),
    ),
)

CUSTOMERS = Table(
    "customers",
    _columns(
        ("id", "VARCHAR"),
        ("external_customer_id", "VARCHAR"),
        ("name", "VARCHAR"),
        ("email", "VARCHAR"),
        ("created_at", "TIMESTAMP"),
    ),
)

#: One row per commit that changed usage: the version log.
COMMITS = Table(
    "commits",
    _columns(
        ("version", "BIGINT"),
        ("operation", "VARCHAR"),
        ("backfill_id", "VARCHAR"),
        ("committed_at", "TIMESTAMP"),
        ("events_written", "BIGINT"),
    ),
)

METRICS = Table(
    "metrics",
    _columns(
        ("id", "VARCHAR"),
        ("name", "VARCHAR"),
        ("sql", "VARCHAR"),
        ("description", "VARCHAR"),
        ("metadata", "JSON"),
        ("status", "VARCHAR"),
        ("created_at", "TIMESTAMP"),
    ),
)

# Usage cells by day of their bucket, as events are by day: a commit replaces the cells of the
# days it touched, so its delete reads and marks only those days' files. Unpartitioned, every
# file of the initial materialization spans all history, and the delete of a 1-day close read
# and marked all of them (0.24 of 0.95 s at 10M events, 1 000 customers; 0.05 s partitioned).
_BY_DAY_OF_BUCKET = ("year(bucket)", "month(bucket)", "day(bucket)")

# Materialized usage: per metric, per customer (as the events name it), per UTC hour and group,
# the partial aggregates that merge exactly into any coarser window.
USAGE_CELLS = Table(
    "usage_cells",
    _columns(
        ("metric_id", "VARCHAR"),
        # 'id:<customer_id>' or 'ext:<external_customer_id>': what the events name.
        ("customer_key", "VARCHAR"),
        ("customer_id", "VARCHAR"),
        ("external_customer_id", "VARCHAR"),
        ("bucket", "TIMESTAMP"),
        ("group_value", "VARCHAR"),
        # Events whose value counted (non-NULL), and sum / min / max of those values.
        ("events", "BIGINT"),
        ("total", "DOUBLE"),
        ("minimum", "DOUBLE"),
        ("maximum", "DOUBLE"),
    ),
    partitioned_by=_BY_DAY_OF_BUCKET,
)

# For count(DISTINCT x): the distinct values per cell, so any window's count stays exact.
USAGE_DISTINCT = Table(
    "usage_distinct",
    _columns(
        ("metric_id", "VARCHAR"),
        ("customer_key", "VARCHAR"),
        ("customer_id", "VARCHAR"),
        ("external_customer_id", "VARCHAR"),
        ("bucket", "TIMESTAMP"),
        ("group_value", "VARCHAR"),
        ("value", "VARCHAR"),
    ),
    partitioned_by=_BY_DAY_OF_BUCKET,
)

TABLES: tuple[Table, ...] = (
    STORED_EVENTS,
    STAGED_EVENTS,
    DEPRECATIONS,
    SUPERSESSIONS,
    BACKFILLS,
    CUSTOMERS,
    COMMITS,
    METRICS,
    USAGE_CELLS,
    USAGE_DISTINCT,
)


#: DuckLake options a new store is created with (``ducklake_set_option('lake', name, value)``).
#: zstd instead of DuckLake's default snappy: 21.1 instead of 35.6 bytes per stored event on
#: the sample generator's events (2M events), at about the same ingest speed and read speed.
#: Row groups of 16 384 rows instead of 122 880: stored rows are written ordered by customer
#: (``queries.in_storage_order``), so a scan for one customer reads the row group or two that
#: hold it (a one-customer week at 10M events, 1 000 customers: 0.04 s instead of 0.10 s).
#: DuckLake cannot set an option for a table in the transaction that creates it, so this one
#: holds for every table (reloading all five benchmark metrics' cells at 10M events: 1.0-1.08 s
#: against 0.98-1.0 s with the default). zstd level 1 instead of 3: the same bytes within 0.3%
#: for 4M generated events, and a sorted 1M-row insert takes 0.82-0.93 s instead of 0.94-0.99 s.
OPTIONS: tuple[tuple[str, str], ...] = (
    ("parquet_compression", "zstd"),
    ("parquet_compression_level", "1"),
    ("parquet_row_group_size", "16384"),
)


def table(name: str) -> Table:
    """The table definition called ``name``."""
    for candidate in TABLES:
        if candidate.name == name:
            return candidate
    raise KeyError(name)
