"""What every service needs: the storage, the clock and the store's settings."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlglot import exp

from engine.errors import ConstraintViolation
from engine.keys import KeyIndex
from engine.queries import newest_version, table_ref
from engine.schema import COMMITS
from engine.storage import Storage

__all__ = ["Clock", "Context", "Settings", "as_utc", "from_storage", "system_clock"]

Clock = Callable[[], datetime]


def system_clock() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True, kw_only=True)
class Settings:
    grace_period: timedelta = timedelta(hours=12)
    future_tolerance: timedelta = timedelta(minutes=5)
    max_backfill_duration: timedelta = timedelta(days=31)


def as_utc(value: datetime | str, *, field: str) -> datetime:
    """An API time argument as the naive UTC datetime the storage keeps.

    Accepts an aware datetime (any zone, converted) or ISO-8601 text with a zone; a naive
    value is refused because it does not say which instant it means.
    """
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value)
        except ValueError:
            raise ConstraintViolation(
                f"{field} {value!r} is not an ISO-8601 time", field=field
            ) from None
    if not isinstance(value, datetime):
        raise ConstraintViolation(
            f"{field} must be a datetime, got {type(value).__name__}", field=field
        )
    if value.tzinfo is None or value.utcoffset() is None:
        raise ConstraintViolation(
            f"{field} {value.isoformat()} has no time zone; give an aware UTC time", field=field
        )
    try:
        return value.astimezone(UTC).replace(tzinfo=None)
    except OverflowError:
        raise ConstraintViolation(
            f"{field} {value.isoformat()} is out of range", field=field
        ) from None


def from_storage(value: datetime | None) -> datetime | None:
    """A stored (naive UTC) time as the aware datetime the API returns."""
    return None if value is None else value.replace(tzinfo=UTC)


@dataclass(frozen=True, kw_only=True)
class Context:
    storage: Storage
    clock: Clock
    settings: Settings
    #: Where the stored rows of a key lie; every dedup and supersession lookup goes through it.
    keys: KeyIndex

    def now(self) -> datetime:
        """The current instant as a naive UTC datetime, microsecond precision."""
        return as_utc(self.clock(), field="clock()")

    def next_version(self) -> int:
        """The version of the commit being written; call inside ``storage.write()``."""
        row = self.storage.one(newest_version())
        assert row is not None
        return int(row[0]) + 1

    def record_commit(
        self,
        version: int,
        operation: str,
        *,
        backfill_id: str | None = None,
        events: int = 0,
        at: datetime | None = None,
    ) -> None:
        """Append the version-log row of the commit being written."""
        values = exp.select(
            exp.convert(version),
            exp.convert(operation),
            exp.cast(exp.convert(backfill_id), "VARCHAR"),
            exp.convert(at if at is not None else self.now()),
            exp.convert(events),
        )
        self.storage.execute(exp.insert(values, table_ref(COMMITS)))
