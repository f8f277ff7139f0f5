"""The FastAPI application: Orb's routes under ``/v1``, each a thin call into the Python API.

Routes are plain ``def`` functions, so FastAPI runs them in its thread pool; the store guards
its one DuckDB connection with a lock, so concurrent requests queue there rather than in the
event loop. Nothing here touches storage directly: every route calls :class:`engine.Store`.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import logging
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager, suppress
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Literal, TypeVar

from fastapi import APIRouter, Depends, FastAPI, Query, Request, Response, status
from fastapi.openapi.utils import get_openapi
from starlette.concurrency import run_in_threadpool

from engine.errors import ConstraintViolation, RequestValidationError
from engine.http.auth import API_KEYS_FILE, ApiKeys, keys_from_env
from engine.http.batching import GroupCommit
from engine.http.errors import RequestTooLarge, install_error_handlers
from engine.http.gate import Gate
from engine.http.idempotency import IDEMPOTENCY_FILE, IdempotencyStore
from engine.http.limits import check_event_sizes
from engine.http.ratelimit import RateLimit, RateLimiter
from engine.http.schemas import (
    AmendEventBody,
    AmendEventResult,
    BackfillOut,
    BackfillPreview,
    Backfills,
    CustomerOut,
    Customers,
    DeprecateEventResult,
    Events,
    EventSearchBody,
    EventVolume,
    EventVolumes,
    Grouping,
    IngestBody,
    IngestDebug,
    IngestResponse,
    MetricOut,
    Metrics,
    NewBackfillBody,
    NewCustomerBody,
    NewMetricBody,
    PaginationMetadata,
    Problem,
    UsageResponse,
    UsageRow,
    UtcDatetime,
    backfill_out,
    customer_out,
    event_out,
    metric_out,
    preview_rows,
)
from engine.store import Store

__all__ = [
    "DEFAULT_MAX_BODY_BYTES",
    "DEFAULT_RATE_LIMIT",
    "MAX_INGEST_EVENTS",
    "create_app",
]

log = logging.getLogger("engine.http")

#: Orb's limit per ingest request.
MAX_INGEST_EVENTS = 500
#: 500 events of a few hundred bytes each fit many times over; anything bigger is a mistake.
DEFAULT_MAX_BODY_BYTES = 8 * 1024 * 1024
#: Per API key. Generous for one service, but stops a runaway loop from starving the others.
DEFAULT_RATE_LIMIT = RateLimit(requests_per_second=100.0, burst=200)

_ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    code: {"model": Problem, "description": description}
    for code, description in (
        (400, "Constraint violation, duplicate resource creation or request validation error"),
        (401, "Missing or invalid API key"),
        (404, "Resource or URL not found"),
        (409, "Resource conflict, or an Idempotency-Key reused for a different request"),
        (413, "Request too large (over 500 events, or over the body size limit)"),
        (429, "Too many requests for this API key; see Retry-After"),
        (500, "Internal server error"),
    )
}

_DESCRIPTION = """
Orb's usage API (ingest, backfills, events, customers, metrics) served by usage-engine, so
that the official Orb SDKs work unchanged; plus `GET /v1/usage` and
`GET /v1/events/backfills/{backfill_id}/preview`.

Authenticate with `Authorization: Bearer <key>`. POST and PUT honour `Idempotency-Key`: a
repeat of the same request within 48 hours gets the first response again, with
`Idempotent-Replayed: true`. Errors are RFC 7807 bodies with Orb's `type` URLs.
"""

T = TypeVar("T")


# -- cursors -----------------------------------------------------------------------------------


def _encode_cursor(kind: str, *parts: str) -> str:
    return base64.urlsafe_b64encode(json.dumps([kind, *parts]).encode()).decode()


def _decode_cursor(cursor: str, kind: str, arity: int) -> list[str]:
    try:
        decoded = json.loads(base64.urlsafe_b64decode(cursor.encode("ascii")))
    except (ValueError, binascii.Error, UnicodeError):
        decoded = None
    if (
        not isinstance(decoded, list)
        or len(decoded) != arity + 1
        or decoded[0] != kind
        or not all(isinstance(part, str) for part in decoded)
    ):
        raise ConstraintViolation(f"cursor {cursor!r} is not a valid cursor for this list")
    return decoded[1:]


def _cursor_time(text: str, cursor: str) -> datetime:
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise ConstraintViolation(
            f"cursor {cursor!r} is not a valid cursor for this list"
        ) from None
    if moment.tzinfo is None:
        raise ConstraintViolation(f"cursor {cursor!r} is not a valid cursor for this list")
    return moment


def _newest_first_page(
    items: Sequence[T],
    *,
    key: Callable[[T], tuple[datetime, str]],
    kind: str,
    limit: int,
    cursor: str | None,
) -> tuple[list[T], PaginationMetadata]:
    """One page of ``items`` ordered by (created_at, id) descending, as Orb lists them.

    The cursor is the position of the last item returned, so pages stay stable when new items
    arrive in between.
    """
    ordered = sorted(items, key=key, reverse=True)
    if cursor is not None:
        at, item_id = _decode_cursor(cursor, kind, 2)
        position = (_cursor_time(at, cursor), item_id)
        ordered = [item for item in ordered if key(item) < position]
    page = ordered[:limit]
    next_cursor = None
    if len(ordered) > limit:
        last_at, last_id = key(page[-1])
        next_cursor = _encode_cursor(kind, last_at.isoformat(), last_id)
    return page, PaginationMetadata(has_more=next_cursor is not None, next_cursor=next_cursor)


def _created_between(
    created_at: datetime,
    gte: datetime | None,
    gt: datetime | None,
    lt: datetime | None,
    lte: datetime | None,
) -> bool:
    return (
        (gte is None or created_at >= gte)
        and (gt is None or created_at > gt)
        and (lt is None or created_at < lt)
        and (lte is None or created_at <= lte)
    )


def _ceil_hour(moment: datetime) -> datetime:
    floor = moment.replace(minute=0, second=0, microsecond=0)
    if floor == moment:
        return moment
    try:
        return floor + timedelta(hours=1)
    except OverflowError:  # the last hour Python can name: keep the instant
        return moment


def _known_query_parameters(request: Request) -> None:
    """Refuse query parameters a route does not take: a misspelt or unsupported filter that
    was silently ignored would answer with more data than was asked for."""
    route = request.scope.get("route")
    dependant = getattr(route, "dependant", None)
    if dependant is None:
        return
    known = {param.alias for param in dependant.query_params}
    unknown = sorted(set(request.query_params) - known)
    if unknown:
        raise RequestValidationError(
            f"unknown query parameter(s): {', '.join(map(repr, unknown))}",
            validation_errors=[
                {
                    "loc": ["query", name],
                    "msg": "unknown query parameter",
                    "type": "extra_forbidden",
                }
                for name in unknown
            ],
        )


Limit = Annotated[int, Query(ge=1, le=100, description="The number of items to fetch (1 to 100).")]
Cursor = Annotated[str | None, Query(description="`next_cursor` from the previous page.")]
CreatedGte = Annotated[UtcDatetime | None, Query(alias="created_at[gte]")]
CreatedGt = Annotated[UtcDatetime | None, Query(alias="created_at[gt]")]
CreatedLt = Annotated[UtcDatetime | None, Query(alias="created_at[lt]")]
CreatedLte = Annotated[UtcDatetime | None, Query(alias="created_at[lte]")]


# -- the routes --------------------------------------------------------------------------------


def _routes(store: Store, *, group_commit: GroupCommit | None) -> APIRouter:
    router = APIRouter(
        prefix="/v1", responses=_ERROR_RESPONSES, dependencies=[Depends(_known_query_parameters)]
    )

    # ingest -------------------------------------------------------------------------------------

    @router.post(
        "/ingest",
        response_model=IngestResponse,
        response_model_exclude_none=True,
        tags=["Event"],
        summary="Ingest events",
        operation_id="ingest",
    )
    def ingest(
        body: IngestBody,
        backfill_id: Annotated[
            str | None,
            Query(description="Stage the events in this pending backfill instead of going live."),
        ] = None,
        debug: Annotated[
            bool,
            Query(description="Add `debug: {duplicate, ingested}` with the keys of each kind."),
        ] = False,
    ) -> IngestResponse:
        """Ingest up to 500 events, all or nothing: one invalid event refuses the whole batch
        with a 400 request-validation error listing every problem per idempotency key. Keys
        ingested before are skipped as duplicates (not an error)."""
        if len(body.events) > MAX_INGEST_EVENTS:
            raise RequestTooLarge(
                f"{len(body.events)} events in one request; send at most {MAX_INGEST_EVENTS}"
            )
        check_event_sizes(body.events)
        if backfill_id is None and group_commit is not None:
            result = group_commit.ingest(body.events)
        else:
            result = store.ingest(body.events, backfill_id=backfill_id)
        return IngestResponse(
            validation_failed=[],
            debug=IngestDebug(duplicate=list(result.duplicates), ingested=list(result.ingested))
            if debug
            else None,
        )

    # backfills ----------------------------------------------------------------------------------

    @router.post(
        "/events/backfills",
        response_model=BackfillOut,
        tags=["Event"],
        summary="Create backfill",
        operation_id="create-backfill",
    )
    def create_backfill(body: NewBackfillBody) -> BackfillOut:
        """Open a backfill over `[timeframe_start, timeframe_end)`; nothing it receives is
        visible until it closes."""
        return backfill_out(
            store.backfills.create(
                timeframe_start=body.timeframe_start,
                timeframe_end=body.timeframe_end,
                customer_id=body.customer_id,
                external_customer_id=body.external_customer_id,
                replace_existing_events=body.replace_existing_events,
                deprecation_filter=body.deprecation_filter,
                close_time=body.close_time,
            )
        )

    @router.get(
        "/events/backfills",
        response_model=Backfills,
        tags=["Event"],
        summary="List backfills",
        operation_id="list-backfills",
    )
    def list_backfills(
        limit: Limit = 20,
        cursor: Cursor = None,
        customer_id: Annotated[
            str | None, Query(description="Not in Orb: only this customer's backfills.")
        ] = None,
        backfill_status: Annotated[
            Literal["pending", "reflected", "pending_revert", "reverted"] | None,
            Query(alias="status", description="Not in Orb: only backfills in this status."),
        ] = None,
    ) -> Backfills:
        """Backfills, newest first."""
        page = store.backfills.list(
            customer_id=customer_id, status=backfill_status, limit=limit, cursor=cursor
        )
        return Backfills(
            data=[backfill_out(b) for b in page.data],
            pagination_metadata=PaginationMetadata(
                has_more=page.has_more, next_cursor=page.next_cursor
            ),
        )

    @router.get(
        "/events/backfills/{backfill_id}",
        response_model=BackfillOut,
        tags=["Event"],
        summary="Fetch backfill",
        operation_id="fetch-backfill",
    )
    def fetch_backfill(backfill_id: str) -> BackfillOut:
        return backfill_out(store.backfills.get(backfill_id))

    @router.post(
        "/events/backfills/{backfill_id}/close",
        response_model=BackfillOut,
        tags=["Event"],
        summary="Close backfill",
        operation_id="close-backfill",
    )
    def close_backfill(backfill_id: str) -> BackfillOut:
        """Make a pending backfill's correction visible, atomically (409 unless pending)."""
        return backfill_out(store.backfills.close(backfill_id))

    @router.post(
        "/events/backfills/{backfill_id}/revert",
        response_model=BackfillOut,
        tags=["Event"],
        summary="Revert backfill",
        operation_id="revert-backfill",
    )
    def revert_backfill(backfill_id: str) -> BackfillOut:
        """Undo a pending or reflected backfill exactly (409 otherwise)."""
        return backfill_out(store.backfills.revert(backfill_id))

    @router.get(
        "/events/backfills/{backfill_id}/preview",
        response_model=BackfillPreview,
        tags=["Usage engine"],
        summary="Preview backfill (not in Orb)",
        operation_id="preview-backfill",
    )
    def preview_backfill(backfill_id: str) -> BackfillPreview:
        """For a pending backfill: per metric, customer and day, the value now, the value after
        close, and the difference; only rows that change. Nothing is written."""
        frame = store.backfills.preview(backfill_id)
        return BackfillPreview(data=preview_rows(frame.to_dicts()))

    # events -------------------------------------------------------------------------------------

    @router.post(
        "/events/search",
        response_model=Events,
        tags=["Event"],
        summary="Search events",
        operation_id="search-events",
    )
    def search_events(body: EventSearchBody) -> Events:
        """The current version of each event id (its idempotency key), with `deprecated` set
        when it does not count. The timeframe (on event time) defaults to the last week."""
        found = store.events.search(
            body.event_ids, timeframe_start=body.timeframe_start, timeframe_end=body.timeframe_end
        )
        return Events(data=[event_out(event) for event in found])

    @router.get(
        "/events/volume",
        response_model=EventVolumes,
        tags=["Event"],
        summary="Get event volume",
        operation_id="get-event-volume",
    )
    def event_volume(
        timeframe_start: Annotated[
            UtcDatetime, Query(description="Inclusive; the hour it falls in is included.")
        ],
        timeframe_end: Annotated[
            UtcDatetime | None,
            Query(description="Exclusive; the hour it falls in is included. Defaults to now."),
        ] = None,
        limit: Limit = 20,
        cursor: Cursor = None,
    ) -> EventVolumes:
        """Hourly counts of the events that count, by event time, oldest hour first."""
        start = timeframe_start
        if cursor is not None:
            (resume_at,) = _decode_cursor(cursor, "volume", 1)
            start = max(start, _cursor_time(resume_at, cursor))
        # Orb includes the hour an unaligned end falls in; the Python API stops at the instant.
        end = _ceil_hour(timeframe_end) if timeframe_end is not None else None
        rows = store.events.volume(timeframe_start=start, timeframe_end=end).to_dicts()
        next_cursor = None
        if len(rows) > limit:
            next_cursor = _encode_cursor("volume", rows[limit]["timeframe_start"].isoformat())
        return EventVolumes(
            data=[EventVolume(**row) for row in rows[:limit]],
            pagination_metadata=PaginationMetadata(
                has_more=next_cursor is not None, next_cursor=next_cursor
            ),
        )

    @router.put(
        "/events/{event_id}",
        response_model=AmendEventResult,
        tags=["Event"],
        summary="Amend event",
        operation_id="amend-event",
    )
    def amend_event(event_id: str, body: AmendEventBody) -> AmendEventResult:
        """Replace one event's body with a new version; its timestamp cannot change."""
        check_event_sizes([{"idempotency_key": event_id, **body.model_dump()}])
        amended = store.events.amend(
            event_id,
            event_name=body.event_name,
            timestamp=body.timestamp,
            properties=body.properties,
            customer_id=body.customer_id,
            external_customer_id=body.external_customer_id,
        )
        return AmendEventResult(amended=amended)

    @router.put(
        "/events/{event_id}/deprecate",
        response_model=DeprecateEventResult,
        tags=["Event"],
        summary="Deprecate event",
        operation_id="deprecate-event",
    )
    def deprecate_event(event_id: str) -> DeprecateEventResult:
        """Stop one event from counting (amend it to bring it back)."""
        return DeprecateEventResult(deprecated=store.events.deprecate(event_id))

    # customers ----------------------------------------------------------------------------------

    @router.post(
        "/customers",
        response_model=CustomerOut,
        status_code=status.HTTP_201_CREATED,
        tags=["Customer"],
        summary="Create customer",
        operation_id="create-customer",
    )
    def create_customer(body: NewCustomerBody) -> CustomerOut:
        return customer_out(
            store.customers.create(
                external_customer_id=body.external_customer_id, name=body.name, email=body.email
            )
        )

    @router.get(
        "/customers",
        response_model=Customers,
        tags=["Customer"],
        summary="List customers",
        operation_id="list-customers",
    )
    def list_customers(
        limit: Limit = 20,
        cursor: Cursor = None,
        created_at_gte: CreatedGte = None,
        created_at_gt: CreatedGt = None,
        created_at_lt: CreatedLt = None,
        created_at_lte: CreatedLte = None,
    ) -> Customers:
        """Customers, newest first."""
        bounds = (created_at_gte, created_at_gt, created_at_lt, created_at_lte)
        customers = [c for c in store.customers.list() if _created_between(c.created_at, *bounds)]
        page, metadata = _newest_first_page(
            customers,
            key=lambda c: (c.created_at, c.id),
            kind="customer",
            limit=limit,
            cursor=cursor,
        )
        return Customers(data=[customer_out(c) for c in page], pagination_metadata=metadata)

    @router.get(
        "/customers/{customer_id}",
        response_model=CustomerOut,
        tags=["Customer"],
        summary="Fetch customer",
        operation_id="fetch-customer",
    )
    def fetch_customer(customer_id: str) -> CustomerOut:
        return customer_out(store.customers.get(customer_id))

    @router.get(
        "/customers/external_customer_id/{external_customer_id}",
        response_model=CustomerOut,
        tags=["Customer"],
        summary="Fetch customer by external ID",
        operation_id="fetch-customer-external-id",
    )
    def fetch_customer_by_external_id(external_customer_id: str) -> CustomerOut:
        return customer_out(store.customers.get_by_external_id(external_customer_id))

    # metrics ------------------------------------------------------------------------------------

    @router.post(
        "/metrics",
        response_model=MetricOut,
        status_code=status.HTTP_201_CREATED,
        tags=["Metric"],
        summary="Create metric",
        operation_id="create-metric",
    )
    def create_metric(body: NewMetricBody) -> MetricOut:
        """Define an Orb-style SQL metric and materialize it over all history."""
        metadata = {k: v for k, v in (body.metadata or {}).items() if v is not None}
        return metric_out(
            store.metrics.create(
                name=body.name, sql=body.sql, description=body.description, metadata=metadata
            )
        )

    @router.get(
        "/metrics",
        response_model=Metrics,
        tags=["Metric"],
        summary="List metrics",
        operation_id="list-metrics",
    )
    def list_metrics(
        limit: Limit = 20,
        cursor: Cursor = None,
        created_at_gte: CreatedGte = None,
        created_at_gt: CreatedGt = None,
        created_at_lt: CreatedLt = None,
        created_at_lte: CreatedLte = None,
        metric_status: Annotated[
            Literal["active", "archived", "draft"] | None, Query(alias="status")
        ] = None,
    ) -> Metrics:
        """Metrics, newest first."""
        bounds = (created_at_gte, created_at_gt, created_at_lt, created_at_lte)
        metrics = [
            m
            for m in store.metrics.list()
            if _created_between(m.created_at, *bounds)
            and (metric_status is None or m.status == metric_status)
        ]
        page, metadata = _newest_first_page(
            metrics, key=lambda m: (m.created_at, m.id), kind="metric", limit=limit, cursor=cursor
        )
        return Metrics(data=[metric_out(m) for m in page], pagination_metadata=metadata)

    @router.get(
        "/metrics/{metric_id}",
        response_model=MetricOut,
        tags=["Metric"],
        summary="Fetch metric",
        operation_id="fetch-metric",
    )
    def fetch_metric(metric_id: str) -> MetricOut:
        return metric_out(store.metrics.get(metric_id))

    # usage (not in Orb) -------------------------------------------------------------------------

    @router.get(
        "/usage",
        response_model=UsageResponse,
        tags=["Usage engine"],
        summary="Usage of a metric (not in Orb)",
        operation_id="get-usage",
    )
    def usage(
        metric_id: Annotated[str, Query(description="The metric (`GET /v1/metrics`).")],
        timeframe_start: Annotated[UtcDatetime, Query(description="Inclusive.")],
        timeframe_end: Annotated[UtcDatetime, Query(description="Exclusive.")],
        customer_id: Annotated[str | None, Query(description="Only this customer.")] = None,
        external_customer_id: Annotated[
            str | None, Query(description="Only the customer with this external id.")
        ] = None,
        granularity: Annotated[
            Literal["hour", "day", "month", "none"],
            Query(description="Bucket size; `none`: one row per customer for the timeframe."),
        ] = "day",
        group_by: Annotated[
            str | None,
            Query(description="The metric's GROUP BY property (the only one it can group by)."),
        ] = None,
        as_of: Annotated[
            str | None,
            Query(
                description="Usage as known at this time (ISO 8601 with zone) or at this commit "
                "version (an integer)."
            ),
        ] = None,
    ) -> UsageResponse:
        """Usage of a metric per customer and time bucket (`store.usage()`), computed from the
        events that count; buckets with no events are absent."""
        as_of_value: int | str | None = as_of
        if as_of is not None and as_of.isascii() and as_of.isdigit():
            as_of_value = int(as_of)
        frame = store.usage(
            metric_id,
            timeframe_start=timeframe_start,
            timeframe_end=timeframe_end,
            customer_id=customer_id,
            external_customer_id=external_customer_id,
            granularity=None if granularity == "none" else granularity,
            group_by=group_by,
            as_of=as_of_value,
        )
        fixed = ("customer_id", "external_customer_id", "timeframe_start", "timeframe_end", "value")
        group_columns = [name for name in frame.columns if name not in fixed]
        rows = []
        for row in frame.to_dicts():
            grouping = None
            if group_columns:
                value = row[group_columns[0]]
                text = None if value is None else str(value)
                grouping = Grouping(key=group_columns[0], value=text)
            rows.append(UsageRow(**{name: row[name] for name in fixed}, grouping=grouping))
        return UsageResponse(data=rows)

    return router


# -- the application ---------------------------------------------------------------------------


def _openapi(app: FastAPI) -> Callable[[], dict[str, Any]]:
    def build() -> dict[str, Any]:
        if app.openapi_schema:
            return app.openapi_schema
        schema = get_openapi(
            title=app.title, version=app.version, description=app.description, routes=app.routes
        )
        for path in schema.get("paths", {}).values():
            for operation in path.values():
                # Validation failures are answered as Orb's 400, never FastAPI's 422.
                operation.get("responses", {}).pop("422", None)
                operation["security"] = [{"APIKeyAuth": []}]
        components = schema.setdefault("components", {})
        for name in ("HTTPValidationError", "ValidationError"):
            components.get("schemas", {}).pop(name, None)
        components["securitySchemes"] = {
            "APIKeyAuth": {"type": "http", "scheme": "bearer", "description": "An API key."}
        }
        app.openapi_schema = schema
        return schema

    return build


#: How often expired idempotency entries are forgotten.
PURGE_INTERVAL = 3600.0


async def _every(interval: float, work: Callable[[], object], what: str) -> None:
    """Run ``work`` in the thread pool now and then every ``interval`` seconds, for good."""
    while True:
        try:
            await run_in_threadpool(work)
        except Exception:
            # One failed round must not end the loop: the next round retries.
            log.exception("%s failed", what)
        await asyncio.sleep(interval)


def _close_due(store: Store) -> Callable[[], object]:
    def close_due() -> None:
        for backfill in store.backfills.close_due():
            log.info("closed backfill %s (its close_time passed)", backfill.id)

    return close_due


def create_app(
    store: Store,
    *,
    api_keys: Sequence[str] | None = None,
    rate_limit: RateLimit | None = DEFAULT_RATE_LIMIT,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    close_interval: float | None = 60.0,
    idempotency_ttl: timedelta = timedelta(hours=48),
    clock: Callable[[], datetime] | None = None,
    group_commit: bool = True,
) -> FastAPI:
    """The HTTP API over ``store`` (which the caller opens and closes).

    ``api_keys`` are accepted besides the hashed keys in the store's ``api_keys.json``; None
    reads ``USAGE_ENGINE_API_KEYS``. ``rate_limit`` applies per key (None: unlimited).
    ``close_interval`` is how often due backfills are closed in the background (None: never).
    ``clock`` dates idempotency entries (inject the store's clock in tests). ``group_commit``
    writes concurrent live ingest requests in one commit (:mod:`engine.http.batching`).

    >>> app = create_app(engine.open("data/store"), api_keys=["secret"])  # doctest: +SKIP
    """
    keys = ApiKeys(
        keys_from_env() if api_keys is None else api_keys, file=store.path / API_KEYS_FILE
    )
    idempotency = IdempotencyStore(
        store.path / IDEMPOTENCY_FILE,
        ttl=idempotency_ttl,
        clock=clock or (lambda: datetime.now(UTC)),
    )

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        tasks = [asyncio.create_task(_every(PURGE_INTERVAL, idempotency.purge, "purging"))]
        if close_interval is not None:
            closer = _every(close_interval, _close_due(store), "closing due backfills")
            tasks.append(asyncio.create_task(closer))
        try:
            yield
        finally:
            for task in tasks:
                task.cancel()
                with suppress(asyncio.CancelledError):
                    await task
            idempotency.close()

    app = FastAPI(
        title="usage-engine HTTP API",
        version="1.0",
        description=_DESCRIPTION,
        lifespan=lifespan,
    )
    app.state.keys = keys  # serve() warns when no key can match
    batcher = GroupCommit(lambda events: store.ingest(events)) if group_commit else None
    router = _routes(store, group_commit=batcher)
    app.state.api_routes = list(router.routes)  # for the Allow header of 405s
    app.include_router(router)
    install_error_handlers(app)
    app.add_middleware(
        Gate,
        keys=keys,
        limiter=RateLimiter(rate_limit) if rate_limit is not None else None,
        max_body_bytes=max_body_bytes,
        idempotency=idempotency,
    )
    app.openapi = _openapi(app)  # type: ignore[method-assign]

    # Async, so it answers even when every pool thread waits for the store.
    @app.get("/health", include_in_schema=False)
    async def health() -> Response:
        return Response(content=b'{"status":"ok"}', media_type="application/json")

    return app
