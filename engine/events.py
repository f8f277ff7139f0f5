"""``store.events``: read effective events, search Orb-style, amend and deprecate one event."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any

import polars as pl
import pyarrow as pa
from sqlglot import exp

from engine.context import Context, as_utc, from_storage
from engine.customers import both_ids
from engine.errors import ConstraintViolation, ResourceConflict, ResourceNotFound
from engine.ingest import AmendmentIngestor
from engine.models import Event, PropertyValue
from engine.queries import (
    EVENT_COLUMNS,
    bind,
    effective_events,
    insert_rows,
    latest_rows,
    supersession_rows,
    with_reflected,
)
from engine.schema import STORED_EVENTS, SUPERSESSIONS
from engine.usage import Usage

__all__ = ["Events", "events_frame"]

# The newest candidate row of some keys, and whether it is effective (not a tombstone, not
# deprecated by a reflected backfill).
_LATEST_WITH_STATE = """
SELECT l.idempotency_key, l.event_name, l."timestamp", l.customer_id, l.external_customer_id,
       l.properties, l.version, l.kind,
       l.kind = 'tombstone' AS tombstoned,
       EXISTS (
         SELECT 1 FROM lake.main.deprecations AS d
         WHERE d.backfill_id IN (SELECT r.id FROM reflected AS r)
           AND d.idempotency_key = l.idempotency_key AND d.version = l.version) AS replaced
FROM latest AS l
"""


def events_frame(table: pa.Table) -> pl.DataFrame:
    """Event rows from storage as the Polars frame the API returns: aware UTC timestamps and
    ``properties`` as one dict per row."""
    frame = pl.from_arrow(table.select(list(EVENT_COLUMNS)))
    assert isinstance(frame, pl.DataFrame)
    properties = pl.Series(
        "properties",
        [json.loads(p) for p in table.column("properties").to_pylist()],
        dtype=pl.Object,
    )
    return frame.with_columns(pl.col("timestamp").dt.replace_time_zone("UTC"), properties)


class Events:
    """Reading and correcting single events."""

    def __init__(self, context: Context, usage: Usage) -> None:
        self._context = context
        self._usage = usage
        self._amender = AmendmentIngestor(context, usage)

    def effective(
        self,
        *,
        timeframe_start: datetime | str | None = None,
        timeframe_end: datetime | str | None = None,
        customer_id: str | None = None,
        external_customer_id: str | None = None,
    ) -> pl.DataFrame:
        """The events that count towards usage now, as a Polars frame.

        >>> store.events.effective(external_customer_id="acme").height  # doctest: +SKIP
        """
        customer_id, external_customer_id = both_ids(
            self._context, customer_id, external_customer_id
        )
        query = effective_events(
            timeframe_start=as_utc(timeframe_start, field="timeframe_start")
            if timeframe_start is not None
            else None,
            timeframe_end=as_utc(timeframe_end, field="timeframe_end")
            if timeframe_end is not None
            else None,
            customer_id=customer_id,
            external_customer_id=external_customer_id,
        )
        ordered = (
            exp.select("*").from_(query.subquery("e")).order_by('"timestamp"', "idempotency_key")
        )
        return events_frame(self._context.storage.arrow(ordered))

    def search(
        self,
        event_ids: Sequence[str],
        *,
        timeframe_start: datetime | str | None = None,
        timeframe_end: datetime | str | None = None,
    ) -> list[Event]:
        """Orb's event search: the current version of each id, with ``deprecated`` set when it
        does not count. The timeframe (on event time) defaults to the last week."""
        if isinstance(event_ids, str) or not event_ids:
            raise ConstraintViolation("event_ids must be a non-empty list of idempotency keys")
        if len(event_ids) > 500:
            raise ConstraintViolation("event_ids may hold at most 500 ids")
        now = self._context.now()
        start = (
            as_utc(timeframe_start, field="timeframe_start")
            if timeframe_start
            else now - timedelta(days=7)
        )
        end = as_utc(timeframe_end, field="timeframe_end") if timeframe_end else now
        rows = self._latest(list(event_ids))
        found = []
        for row in rows:
            if not start <= row["timestamp"] < end:
                continue
            found.append(_event(row, deprecated=row["tombstoned"] or row["replaced"]))
        return found

    def amend(
        self,
        event_id: str,
        *,
        event_name: str,
        timestamp: datetime | str,
        properties: Mapping[str, PropertyValue],
        customer_id: str | None = None,
        external_customer_id: str | None = None,
    ) -> str:
        """Replace one event's body with a new version (its timestamp cannot change).

        Returns ``event_id``, like Orb's ``{"amended": event_id}``.
        """
        storage = self._context.storage
        with storage.write():
            current = self._current(event_id, action="amend")
            if as_utc(timestamp, field="timestamp") != current["timestamp"]:
                raise ConstraintViolation(
                    "an amendment must keep the event's timestamp "
                    f"({from_storage(current['timestamp']).isoformat()})",  # type: ignore[union-attr]
                    event_id=event_id,
                )
            body = {
                "idempotency_key": event_id,
                "event_name": event_name,
                "timestamp": timestamp,
                "customer_id": customer_id,
                "external_customer_id": external_customer_id,
                "properties": properties,
            }
            self._amender.validate_only([body], backfill=None)
            self._amender.write_amendment("amendment")
        return event_id

    def deprecate(self, event_id: str) -> str:
        """Stop one event from counting, with a tombstone version (revertible by amending).

        Returns ``event_id``, like Orb's ``{"deprecated": event_id}``.
        """
        context = self._context
        storage = context.storage
        with storage.write():
            self._current(event_id, action="deprecate")
            version = context.next_version()
            keys = _keys([event_id])
            # looked up before the tombstone is written (the index must not see it)
            stored = context.keys.stored_rows(keys, table="s", newest=version - 1)
            tombstone = with_reflected(
                bind(
                    'SELECT l.idempotency_key, l.event_name, l."timestamp", l.customer_id, '
                    "l.external_customer_id, l.properties, CAST(:version AS BIGINT) AS version, "
                    "CAST(NULL AS VARCHAR) AS backfill_id, 'tombstone' AS kind FROM latest AS l",
                    version=version,
                    ctes={"latest": latest_rows(keys=keys, stored_restriction=stored)},
                )
            )
            storage.execute(insert_rows(STORED_EVENTS, tombstone))
            storage.execute(
                insert_rows(
                    SUPERSESSIONS,
                    supersession_rows(
                        newer=keys,
                        by_version=version,
                        by_backfill_id=None,
                        stored_restriction=stored,
                    ),
                )
            )
            self._usage.refresh_changed(version=version)
            context.record_commit(version, "deprecate", events=1)
        return event_id

    def volume(
        self, *, timeframe_start: datetime | str, timeframe_end: datetime | str | None = None
    ) -> pl.DataFrame:
        """Orb's event volume: hourly counts of effective events by event time, as a frame
        with ``timeframe_start, timeframe_end, count``; ``timeframe_end`` defaults to now."""
        return self._usage.volume(timeframe_start=timeframe_start, timeframe_end=timeframe_end)

    # -- internals --------------------------------------------------------------------------

    def _latest(self, keys: list[str]) -> list[dict[str, Any]]:
        storage = self._context.storage

        def read() -> list[dict[str, Any]]:
            selected = _keys(keys)
            latest = latest_rows(
                keys=selected,
                stored_restriction=self._context.keys.stored_rows(selected, table="s"),
            )
            query = with_reflected(bind(_LATEST_WITH_STATE, ctes={"latest": latest}))
            rows: list[dict[str, Any]] = storage.arrow(query).to_pylist()
            return rows

        # one snapshot for the key index's lookup and the query it narrows
        return storage.consistent_read(read)

    def _current(self, event_id: str, *, action: str) -> dict[str, Any]:
        rows = self._latest([event_id])
        if not rows or rows[0]["tombstoned"]:
            raise ResourceNotFound(f"event {event_id!r} does not exist", event_id=event_id)
        if rows[0]["replaced"]:
            raise ResourceConflict(
                f"event {event_id!r} was deprecated by a backfill; cannot {action} it",
                event_id=event_id,
            )
        return rows[0]


def _keys(keys: list[str]) -> exp.Expr:
    """A one-column relation ``idempotency_key`` of the given keys."""
    return exp.select("idempotency_key").from_(
        exp.Unnest(expressions=[exp.Array(expressions=[exp.convert(k) for k in keys])]).as_(
            "k", table=["idempotency_key"]
        )
    )


def _event(row: dict[str, Any], *, deprecated: bool) -> Event:
    timestamp = from_storage(row["timestamp"])
    assert timestamp is not None
    return Event(
        id=row["idempotency_key"],
        event_name=row["event_name"],
        timestamp=timestamp,
        customer_id=row["customer_id"],
        external_customer_id=row["external_customer_id"],
        properties=json.loads(row["properties"]),
        deprecated=bool(deprecated),
    )
