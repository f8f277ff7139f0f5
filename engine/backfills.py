"""Backfills: stage corrected events, then close (one commit) or revert (exactly).

This module reads like DESIGN section 2: `create` checks the rules in the order the design
lists them, `close` turns staged events into stored ones and records what they deprecate,
`revert` flips the backfill out of the reflected set. Effective events are a pure function of
stored rows, deprecation rows and which backfills are reflected, so revert deletes nothing.
"""

from __future__ import annotations

import base64
import builtins
import dataclasses
from datetime import datetime, timedelta
from typing import Any

import polars as pl
from sqlglot import exp

from engine.context import Context, as_utc, from_storage
from engine.customers import Customers, new_id
from engine.errors import ConstraintViolation, ResourceConflict, ResourceNotFound
from engine.filters import parse_filter, translate_filter
from engine.ingest import Ingestor
from engine.models import Backfill, BackfillStatus, IngestResult, Page
from engine.queries import (
    bind,
    create_temp_table,
    customer_keys_of,
    deprecation_rows,
    in_storage_order,
    insert_rows,
    supersession_rows,
    table_ref,
)
from engine.schema import BACKFILLS, DEPRECATIONS, STORED_EVENTS, SUPERSESSIONS
from engine.usage import Replacement, Usage

__all__ = ["Backfills"]

_COLUMNS = [
    "id",
    "status",
    "created_at",
    "timeframe_start",
    "timeframe_end",
    "events_ingested",
    "close_time",
    "reverted_at",
    "customer_id",
    "external_customer_id",
    "replace_existing_events",
    "deprecation_filter",
]

#: The temp table a close holds the rows it promotes in.
_PROMOTED = "promoted_rows"

_PROMOTE_STAGED = """
SELECT idempotency_key, event_name, "timestamp", customer_id, external_customer_id, properties,
       CAST(:version AS BIGINT) AS version, CAST(:backfill_id AS VARCHAR) AS backfill_id,
       'event' AS kind
FROM lake.main.staged_events
WHERE backfill_id = :backfill_id
"""


def _backfill(row: tuple[Any, ...]) -> Backfill:
    values = dict(zip(_COLUMNS, row, strict=True))
    for name in ("created_at", "timeframe_start", "timeframe_end", "close_time", "reverted_at"):
        values[name] = from_storage(values[name])
    values["status"] = BackfillStatus(values["status"])
    return Backfill(**values)


def _replacement(backfill: Backfill) -> Replacement | None:
    """What a replace backfill without a deprecation filter replaces: all of its timeframe, for
    its customer (keyed as :func:`engine.queries.customer_key` keys rows) or everyone."""
    if not backfill.replace_existing_events or backfill.deprecation_filter is not None:
        return None
    if backfill.customer_id is None and backfill.external_customer_id is None:
        return Replacement(customer_keys=None)
    return Replacement(
        customer_keys=customer_keys_of(backfill.customer_id, backfill.external_customer_id)
    )


def _timeframe(backfill: Backfill) -> tuple[datetime, datetime]:
    return (
        as_utc(backfill.timeframe_start, field="timeframe_start"),
        as_utc(backfill.timeframe_end, field="timeframe_end"),
    )


def _encode_cursor(sequence: int) -> str:
    return base64.urlsafe_b64encode(f"backfill:{sequence}".encode()).decode()


def _decode_cursor(cursor: str) -> int:
    try:
        kind, _, value = base64.urlsafe_b64decode(cursor.encode()).decode().partition(":")
        if kind != "backfill":
            raise ValueError(kind)
        return int(value)
    except ValueError:
        raise ConstraintViolation(
            f"cursor {cursor!r} is not a valid cursor", cursor=cursor
        ) from None


class Backfills:
    """``store.backfills``: the whole lifecycle of Orb-style backfills."""

    def __init__(
        self, context: Context, customers: Customers, ingestor: Ingestor, usage: Usage
    ) -> None:
        self._context = context
        self._customers = customers
        self._ingestor = ingestor
        self._usage = usage

    # -- create -------------------------------------------------------------------------------

    def create(
        self,
        *,
        timeframe_start: datetime | str,
        timeframe_end: datetime | str,
        customer_id: str | None = None,
        external_customer_id: str | None = None,
        replace_existing_events: bool = True,
        deprecation_filter: str | None = None,
        close_time: datetime | str | None = None,
    ) -> Backfill:
        """Open a backfill over ``[timeframe_start, timeframe_end)``; nothing is visible until
        it closes.

        >>> store.backfills.create(  # doctest: +SKIP
        ...     timeframe_start="2026-11-01T00:00:00Z", timeframe_end="2026-11-02T00:00:00Z",
        ...     external_customer_id="acme", deprecation_filter="model = 'gpt-4'")
        """
        context = self._context
        settings = context.settings
        now = context.now()
        start = as_utc(timeframe_start, field="timeframe_start")
        end = as_utc(timeframe_end, field="timeframe_end")
        if start >= end:
            raise ConstraintViolation("timeframe_start must be before timeframe_end")
        if end - start > settings.max_backfill_duration:
            raise ConstraintViolation(
                f"the timeframe is longer than the maximum backfill duration "
                f"({settings.max_backfill_duration}); split it into several backfills"
            )
        if customer_id is not None and external_customer_id is not None:
            raise ConstraintViolation(
                "give at most one of customer_id and external_customer_id, not both"
            )
        if not isinstance(replace_existing_events, bool):
            raise ConstraintViolation("replace_existing_events must be a boolean")
        if deprecation_filter is not None:
            if not replace_existing_events:
                raise ConstraintViolation(
                    "deprecation_filter only applies when replace_existing_events is true"
                )
            parse_filter(deprecation_filter)
        if (
            replace_existing_events
            and deprecation_filter is None
            and end > now - settings.grace_period
        ):
            raise ConstraintViolation(
                f"a replacing backfill without a deprecation_filter must end at least the grace "
                f"period ({settings.grace_period}) ago, or live events arriving late would be "
                f"counted twice; end it earlier or add a deprecation_filter"
            )
        closes = as_utc(close_time, field="close_time") if close_time is not None else None
        if closes is not None and closes < now:
            raise ConstraintViolation("close_time is in the past")
        if closes is None:
            closes = now + timedelta(days=1)
        if customer_id is not None:
            external_customer_id = self._customers.get(customer_id).external_customer_id
        elif external_customer_id is not None:
            try:
                customer_id = self._customers.get_by_external_id(external_customer_id).id
            except ResourceNotFound:
                customer_id = None
        storage = context.storage
        with storage.write():
            self._check_overlap(start, end, customer_id, external_customer_id)
            sequence_row = storage.one(
                bind("SELECT coalesce(max(sequence), 0) + 1 FROM lake.main.backfills")
            )
            assert sequence_row is not None
            backfill_id = new_id()
            values = {
                "id": backfill_id,
                "status": BackfillStatus.PENDING.value,
                "created_at": now,
                "timeframe_start": start,
                "timeframe_end": end,
                "events_ingested": 0,
                "close_time": closes,
                "reverted_at": None,
                "customer_id": customer_id,
                "external_customer_id": external_customer_id,
                "replace_existing_events": replace_existing_events,
                "deprecation_filter": deprecation_filter,
                "sequence": int(sequence_row[0]),
                "close_version": None,
                "revert_version": None,
            }
            row = exp.select(
                *(
                    exp.cast(exp.convert(values[column.name]), column.type)
                    for column in BACKFILLS.columns
                )
            )
            storage.execute(exp.insert(row, table_ref(BACKFILLS)))
        return _backfill(tuple(values[name] for name in _COLUMNS))

    def _check_overlap(
        self,
        start: datetime,
        end: datetime,
        customer_id: str | None,
        external_customer_id: str | None,
    ) -> None:
        conditions: builtins.list[exp.Expr] = [
            exp.column("status").isin(
                BackfillStatus.PENDING.value, BackfillStatus.PENDING_REVERT.value
            ),
            exp.column("timeframe_start") < exp.convert(end),
            exp.column("timeframe_end") > exp.convert(start),
        ]
        if customer_id is not None or external_customer_id is not None:
            same_customer: builtins.list[exp.Expr] = [
                exp.column("customer_id").is_(exp.null())
                & exp.column("external_customer_id").is_(exp.null())
            ]
            if customer_id is not None:
                same_customer.append(exp.column("customer_id").eq(exp.convert(customer_id)))
            if external_customer_id is not None:
                same_customer.append(
                    exp.column("external_customer_id").eq(exp.convert(external_customer_id))
                )
            conditions.append(exp.or_(*same_customer))
        rows = self._context.storage.rows(
            exp.select("id").from_(table_ref(BACKFILLS)).where(exp.and_(*conditions)).limit(1)
        )
        if rows:
            raise ResourceConflict(
                f"the timeframe overlaps backfill {rows[0][0]!r}, which is still open; close or "
                f"revert it first",
                conflicting_backfill_id=rows[0][0],
            )

    # -- read ---------------------------------------------------------------------------------

    def get(self, backfill_id: str) -> Backfill:
        """The backfill ``backfill_id`` (``ResourceNotFound`` otherwise)."""
        return self._get_with_close_version(backfill_id)[0]

    def _get_with_close_version(self, backfill_id: str) -> tuple[Backfill, int | None]:
        """The backfill, and the version its close committed (None until it closes)."""
        rows = self._context.storage.rows(
            exp.select(*_COLUMNS, "close_version")
            .from_(table_ref(BACKFILLS))
            .where(exp.column("id").eq(exp.convert(backfill_id)))
        )
        if not rows:
            raise ResourceNotFound(
                f"backfill {backfill_id!r} does not exist", backfill_id=backfill_id
            )
        *columns, close_version = rows[0]
        return _backfill(tuple(columns)), close_version

    def list(
        self,
        *,
        customer_id: str | None = None,
        status: str | None = None,
        limit: int = 20,
        cursor: str | None = None,
    ) -> Page[Backfill]:
        """Backfills, newest first, ``limit`` at a time; pass ``page.next_cursor`` back."""
        if not isinstance(limit, int) or not 1 <= limit <= 100:
            raise ConstraintViolation("limit must be an integer from 1 to 100")
        conditions: list[exp.Expr] = [exp.true()]
        if customer_id is not None:
            conditions.append(exp.column("customer_id").eq(exp.convert(customer_id)))
        if status is not None:
            try:
                conditions.append(
                    exp.column("status").eq(exp.convert(BackfillStatus(status).value))
                )
            except ValueError:
                raise ConstraintViolation(
                    f"status must be one of {', '.join(s.value for s in BackfillStatus)}"
                ) from None
        if cursor is not None:
            conditions.append(exp.column("sequence") < exp.convert(_decode_cursor(cursor)))
        rows = self._context.storage.rows(
            exp.select(*_COLUMNS, "sequence")
            .from_(table_ref(BACKFILLS))
            .where(exp.and_(*conditions))
            .order_by(exp.column("sequence").desc())
            .limit(limit + 1)
        )
        data = [_backfill(row[:-1]) for row in rows[:limit]]
        next_cursor = _encode_cursor(rows[limit - 1][-1]) if len(rows) > limit else None
        return Page(data=data, next_cursor=next_cursor)

    # -- ingest -------------------------------------------------------------------------------

    def ingest(self, backfill_id: str, events: Any) -> IngestResult:
        """Stage ``events`` in a pending backfill (``store.ingest(..., backfill_id=)``)."""
        with self._context.storage.write():
            backfill = self.get(backfill_id)
            if backfill.status != BackfillStatus.PENDING:
                raise ResourceConflict(
                    f"backfill {backfill_id!r} is {backfill.status}; only a pending backfill "
                    f"accepts events",
                    backfill_id=backfill_id,
                )
            assert backfill.close_time is not None
            if as_utc(backfill.close_time, field="close_time") <= self._context.now():
                raise ResourceConflict(
                    f"backfill {backfill_id!r} passed its close_time "
                    f"({backfill.close_time.isoformat()}) and accepts no more events",
                    backfill_id=backfill_id,
                )
            return self._ingestor.ingest(events, backfill=backfill)

    # -- close --------------------------------------------------------------------------------

    def close(self, backfill_id: str) -> Backfill:
        """Make the backfill's events count, atomically (``pending`` -> ``reflected``).

        In one commit at version vB: staged events become stored rows of version vB; for a
        replacing backfill, every older row in its timeframe, scope and filter is deprecated.
        """
        context = self._context
        storage = context.storage
        with storage.write():
            backfill = self.get(backfill_id)
            if backfill.status != BackfillStatus.PENDING:
                raise ResourceConflict(
                    f"backfill {backfill_id!r} is {backfill.status}; only a pending backfill can "
                    f"be closed",
                    backfill_id=backfill_id,
                )
            version = context.next_version()
            # One instant for the whole commit: close_time and the version log agree, so
            # usage as_of the close_time includes the close.
            now = context.now()
            self._apply_close(backfill, version, now)
            context.record_commit(
                version, "close", backfill_id=backfill.id, events=backfill.events_ingested, at=now
            )
            # what get() would read back, without the statement
            return dataclasses.replace(
                backfill, status=BackfillStatus.REFLECTED, close_time=from_storage(now)
            )

    def preview(self, backfill_id: str) -> pl.DataFrame:
        """What closing a pending backfill would change, without changing anything.

        A Polars frame with ``metric_id, customer_id, external_customer_id, timeframe_start``
        (the day), ``before, after, delta``: only rows that change. It runs the real close in
        a transaction that is rolled back, so it shows exactly what close would do.
        """
        storage = self._context.storage
        with storage.trial():
            backfill = self.get(backfill_id)
            if backfill.status != BackfillStatus.PENDING:
                raise ResourceConflict(
                    f"backfill {backfill_id!r} is {backfill.status}; only a pending backfill can "
                    f"be previewed",
                    backfill_id=backfill_id,
                )
            self._apply_close(
                backfill, self._context.next_version(), self._context.now(), capture_before=True
            )
            return self._usage.preview_diff()

    def _apply_close(
        self, backfill: Backfill, version: int, now: datetime, *, capture_before: bool = False
    ) -> None:
        storage = self._context.storage
        if backfill.replace_existing_events:
            condition = (
                translate_filter(parse_filter(backfill.deprecation_filter))
                if backfill.deprecation_filter is not None
                else None
            )
            start, end = _timeframe(backfill)
            deprecated = deprecation_rows(
                backfill_id=backfill.id,
                source=table_ref(STORED_EVENTS),
                timeframe_start=start,
                timeframe_end=end,
                customer_id=backfill.customer_id,
                external_customer_id=backfill.external_customer_id,
                condition=condition,
                before_version=version,
            )
            storage.execute(insert_rows(DEPRECATIONS, deprecated))
        # The staged rows as they will be stored, read once from the lake: the supersessions,
        # the stored rows and the usage refresh all read them.
        storage.execute(
            create_temp_table(
                _PROMOTED, bind(_PROMOTE_STAGED, version=version, backfill_id=backfill.id)
            )
        )
        promoted_keys = exp.select("idempotency_key").from_(_PROMOTED)
        stored = self._context.keys.stored_rows(promoted_keys, table="s", newest=version - 1)
        storage.execute(
            insert_rows(
                SUPERSESSIONS,
                supersession_rows(
                    newer=promoted_keys,
                    by_version=version,
                    by_backfill_id=backfill.id,
                    stored_restriction=stored,
                ),
            )
        )
        storage.execute(
            insert_rows(STORED_EVENTS, in_storage_order(exp.select("*").from_(_PROMOTED)))
        )
        storage.execute(
            bind("DELETE FROM lake.main.staged_events WHERE backfill_id = :id", id=backfill.id)
        )
        storage.execute(
            bind(
                "UPDATE lake.main.backfills SET status = 'reflected', close_time = :now, "
                "close_version = :version WHERE id = :id",
                now=now,
                version=version,
                id=backfill.id,
            )
        )
        self._usage.refresh_changed(
            backfill_id=backfill.id,
            close_version=version,
            timeframe=_timeframe(backfill),
            promoted=_PROMOTED,
            replacement=_replacement(backfill),
            # the key index rules out every key having been stored before
            superseding=stored != exp.false(),
            capture_before=capture_before,
        )

    def close_due(self) -> builtins.list[Backfill]:
        """Close every pending backfill whose ``close_time`` has passed (cron, server timer)."""
        rows = self._context.storage.rows(
            exp.select("id")
            .from_(table_ref(BACKFILLS))
            .where(
                exp.column("status").eq(exp.convert(BackfillStatus.PENDING.value))
                & (exp.column("close_time") <= exp.convert(self._context.now()))
            )
            .order_by("sequence")
        )
        closed = []
        for (backfill_id,) in rows:
            try:
                closed.append(self.close(backfill_id))
            except ResourceConflict:
                continue  # another process closed or reverted it meanwhile
        return closed

    # -- revert -------------------------------------------------------------------------------

    def revert(self, backfill_id: str) -> Backfill:
        """Undo a backfill exactly: a pending one never shows; a reflected one stops counting
        and its deprecations are lifted, as if it had never closed."""
        context = self._context
        storage = context.storage
        with storage.write():
            backfill, close_version = self._get_with_close_version(backfill_id)
            if backfill.status == BackfillStatus.PENDING:
                storage.execute(
                    bind(
                        "UPDATE lake.main.backfills SET status = 'reverted', reverted_at = :now "
                        "WHERE id = :id",
                        now=context.now(),
                        id=backfill_id,
                    )
                )
                storage.execute(
                    bind(
                        "DELETE FROM lake.main.staged_events WHERE backfill_id = :id",
                        id=backfill_id,
                    )
                )
                return self.get(backfill_id)
            if backfill.status not in (BackfillStatus.REFLECTED, BackfillStatus.PENDING_REVERT):
                raise ResourceConflict(
                    f"backfill {backfill_id!r} is {backfill.status}; only a pending or reflected "
                    f"backfill can be reverted",
                    backfill_id=backfill_id,
                )
            if backfill.status == BackfillStatus.REFLECTED:
                # The revert commit: leaving the reflected set is what stops the backfill's
                # events and deprecations from counting (effective events are a function of
                # that set). A crash before the next commit leaves `pending_revert`, which
                # opening the store finishes.
                version = context.next_version()
                storage.execute(
                    bind(
                        "UPDATE lake.main.backfills SET status = 'pending_revert', "
                        "revert_version = :version WHERE id = :id",
                        version=version,
                        id=backfill_id,
                    )
                )
                assert close_version is not None
                self._usage.refresh_changed(
                    backfill_id=backfill_id,
                    close_version=close_version,
                    timeframe=_timeframe(backfill),
                )
                context.record_commit(version, "revert", backfill_id=backfill_id)
        return self.finish_revert(backfill_id)

    def finish_revert(self, backfill_id: str) -> Backfill:
        """Mark a ``pending_revert`` backfill ``reverted`` (also run by recovery)."""
        context = self._context
        storage = context.storage
        with storage.write():
            backfill = self.get(backfill_id)
            if backfill.status == BackfillStatus.REVERTED:
                # Another process that opened the store between the two commits finished it.
                return backfill
            if backfill.status != BackfillStatus.PENDING_REVERT:
                raise ResourceConflict(
                    f"backfill {backfill_id!r} is {backfill.status}, not pending_revert",
                    backfill_id=backfill_id,
                )
            now = context.now()
            storage.execute(
                bind(
                    "UPDATE lake.main.backfills SET status = 'reverted', reverted_at = :now "
                    "WHERE id = :id",
                    now=now,
                    id=backfill_id,
                )
            )
            # what get() would read back, without the statement
            return dataclasses.replace(
                backfill, status=BackfillStatus.REVERTED, reverted_at=from_storage(now)
            )

    def recover(self) -> builtins.list[Backfill]:
        """Finish reverts that a crash interrupted; run when a store opens."""
        rows = self._context.storage.rows(
            exp.select("id")
            .from_(table_ref(BACKFILLS))
            .where(exp.column("status").eq(exp.convert(BackfillStatus.PENDING_REVERT.value)))
        )
        return [self.finish_revert(backfill_id) for (backfill_id,) in rows]
