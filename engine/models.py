"""Frozen value objects returned by the engine. Field names copy Orb's API."""

from __future__ import annotations

import enum
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Generic, TypeVar, overload

import pyarrow as pa

__all__ = [
    "Backfill",
    "BackfillStatus",
    "CompactResult",
    "Customer",
    "Event",
    "IngestResult",
    "Keys",
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


class Keys(Sequence[str]):
    """Idempotency keys, kept in one Arrow array and made Python strings only when read: as
    Python lists, the keys of a 5M-event ingest took 460 MB (9 GB at 100M). A read-only
    sequence; equal to any sequence of the same strings (``keys == ["k1", "k2"]``)."""

    __slots__ = ("_array",)

    def __init__(self, keys: Iterable[str] | pa.Array | pa.ChunkedArray = ()) -> None:
        if isinstance(keys, (pa.Array, pa.ChunkedArray)):
            self._array: pa.Array | pa.ChunkedArray = keys
        else:
            self._array = pa.array(list(keys), pa.string())

    def __len__(self) -> int:
        return len(self._array)

    @overload
    def __getitem__(self, index: int) -> str: ...
    @overload
    def __getitem__(self, index: slice) -> Keys: ...
    def __getitem__(self, index: int | slice) -> str | Keys:
        if isinstance(index, slice):
            return Keys(self._array.to_pylist()[index])
        if not -len(self) <= index < len(self):
            raise IndexError("key index out of range")
        return str(self._array[index].as_py())

    def __iter__(self) -> Iterator[str]:
        chunks = self._array.chunks if isinstance(self._array, pa.ChunkedArray) else [self._array]
        for chunk in chunks:
            yield from chunk.to_pylist()

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Sequence) or isinstance(other, str):
            return NotImplemented
        return len(self) == len(other) and list(self) == list(other)

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return repr(list(self))


@dataclass(frozen=True, kw_only=True)
class IngestResult:
    """Idempotency keys written by an ingest call and keys skipped as duplicates."""

    ingested: Sequence[str] = field(default_factory=Keys)
    duplicates: Sequence[str] = field(default_factory=Keys)


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
