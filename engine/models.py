"""Frozen value objects returned by the engine. Field names copy Orb's API."""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Generic, TypeVar

__all__ = [
    "Backfill",
    "BackfillStatus",
    "CompactResult",
    "Customer",
    "Event",
    "IngestResult",
    "Metric",
    "Page",
    "PropertyValue",
]

PropertyValue = str | int | float | bool
T = TypeVar("T")


class BackfillStatus(enum.StrEnum):
    """Lifecycle of a backfill; compares equal to Orb's strings (``status == "pending"``)."""

    PENDING = "pending"
    REFLECTED = "reflected"
    PENDING_REVERT = "pending_revert"
    REVERTED = "reverted"


@dataclass(frozen=True, kw_only=True)
class Customer:
    id: str
    external_customer_id: str | None
    name: str | None
    email: str | None
    created_at: datetime


@dataclass(frozen=True, kw_only=True)
class Backfill:
    """An Orb-style backfill: a staged correction of past usage over ``[timeframe_start,
    timeframe_end)``. ``close_time`` is the scheduled close while pending and the moment it
    closed once reflected."""

    id: str
    status: BackfillStatus
    created_at: datetime
    timeframe_start: datetime
    timeframe_end: datetime
    events_ingested: int
    close_time: datetime | None
    reverted_at: datetime | None
    customer_id: str | None
    external_customer_id: str | None
    replace_existing_events: bool
    deprecation_filter: str | None


@dataclass(frozen=True, kw_only=True)
class Event:
    """One event as Orb's search returns it: the latest stored version of an idempotency key.
    ``deprecated`` is true when that version does not count towards usage."""

    id: str
    event_name: str
    timestamp: datetime
    customer_id: str | None
    external_customer_id: str | None
    properties: Mapping[str, PropertyValue]
    deprecated: bool


@dataclass(frozen=True, kw_only=True)
class Metric:
    """An Orb-style SQL metric, e.g. ``SELECT sum(tokens) FROM events``."""

    id: str
    name: str
    sql: str
    description: str | None
    metadata: Mapping[str, str]
    status: str
    created_at: datetime


@dataclass(frozen=True, kw_only=True)
class IngestResult:
    """Idempotency keys written by an ingest call and keys skipped as duplicates."""

    ingested: list[str] = field(default_factory=list)
    duplicates: list[str] = field(default_factory=list)


@dataclass(frozen=True, kw_only=True)
class Page(Generic[T]):
    """One page of a list, newest first; pass ``next_cursor`` back to get the next one."""

    data: list[T]
    next_cursor: str | None

    @property
    def has_more(self) -> bool:
        return self.next_cursor is not None


@dataclass(frozen=True, kw_only=True)
class CompactResult:
    """What :meth:`Store.compact` did. ``data_files`` and ``data_bytes`` count the Parquet files
    in the store's data folder before and after; files replaced by the merge are deleted by a
    later compaction, once ``file_grace`` has passed (readers in other processes may still be
    scanning them)."""

    data_files_before: int
    data_files_after: int
    data_bytes_before: int
    data_bytes_after: int
    files_merged: int
    snapshots_expired: int
    files_deleted: int
