"""Request and response bodies, shaped like Orb's OpenAPI (field names, required fields, nulls).

Response models list every field of Orb's schema. Where the engine has no such concept (a
customer's billing address, a metric's item...) the field is present with a neutral value:
null where Orb allows null, otherwise the value Orb shows for an account that never set it
(``balance`` "0.00", ``auto_collection`` false, ``timezone`` "UTC", empty lists and maps).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    WithJsonSchema,
)

from engine.http.limits import MAX_IDENTIFIER_LENGTH
from engine.models import Backfill, Customer, Event, Metric

__all__ = [
    "AmendEventBody",
    "AmendEventResult",
    "BackfillOut",
    "BackfillPreview",
    "Backfills",
    "CustomerOut",
    "Customers",
    "DeprecateEventResult",
    "EventOut",
    "EventSearchBody",
    "EventVolumes",
    "Events",
    "IngestBody",
    "IngestResponse",
    "MetricOut",
    "Metrics",
    "NewBackfillBody",
    "NewCustomerBody",
    "NewMetricBody",
    "PaginationMetadata",
    "Problem",
    "UsageResponse",
    "UtcDatetime",
    "backfill_out",
    "customer_out",
    "event_out",
    "metric_out",
]


def _to_utc(moment: datetime) -> datetime:
    try:
        return moment.astimezone(UTC)
    except OverflowError:
        raise ValueError("is out of range once converted to UTC") from None


#: A time with a zone, converted to UTC here: the engine works in UTC, and a time that has no
#: UTC equivalent (year 1 at +01:00) is a 400 rather than an overflow deeper down.
UtcDatetime = Annotated[AwareDatetime, AfterValidator(_to_utc)]


#: A string field that names or identifies something (an id, a name, an email, a metadata entry);
#: no such value needs more, and a 1 MB one would be stored and echoed for good.
Identifier = Annotated[str, Field(max_length=MAX_IDENTIFIER_LENGTH)]
#: Free text (a metric's description).
MAX_TEXT_LENGTH = 10_000
#: Entries of a metadata map.
MAX_METADATA_ENTRIES = 100


class _Body(BaseModel):
    # Orb's request schemas say additionalProperties: false; an unknown field is most likely a
    # typo, and silently ignoring it would hide that.
    model_config = ConfigDict(extra="forbid")


# -- errors ------------------------------------------------------------------------------------


class Problem(BaseModel):
    """Orb's RFC 7807 error body."""

    type: str = Field(description="Orb's error type URL; the SDK picks its exception from it.")
    status: int
    title: str | None
    detail: str | None
    validation_errors: list[Any] | None = Field(
        default=None,
        description="Request validation errors only: per idempotency key for ingest, else per "
        "request field (loc, msg, type).",
    )


# -- shared ------------------------------------------------------------------------------------


class PaginationMetadata(BaseModel):
    has_more: bool
    next_cursor: str | None


# -- ingest ------------------------------------------------------------------------------------

_PROPERTY_VALUE = {"oneOf": [{"type": "string"}, {"type": "number"}, {"type": "boolean"}]}

#: Orb's IngestEvent, documented as such; the engine validates each event itself so that a bad
#: batch is answered per idempotency key, as Orb does, rather than by a generic schema error.
_INGEST_EVENT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "title": "IngestEvent",
    "additionalProperties": False,
    "required": ["event_name", "timestamp", "properties", "idempotency_key"],
    "properties": {
        "idempotency_key": {"type": "string", "minLength": 1},
        "event_name": {"type": "string", "minLength": 1},
        "timestamp": {
            "type": "string",
            "format": "date-time",
            "examples": ["2020-12-09T16:09:53Z"],
        },
        "customer_id": {"oneOf": [{"type": "string"}, {"type": "null"}]},
        "external_customer_id": {"oneOf": [{"type": "string"}, {"type": "null"}]},
        "properties": {"type": "object", "additionalProperties": _PROPERTY_VALUE},
    },
}


class IngestBody(_Body):
    events: Annotated[
        list[dict[str, Any]],
        WithJsonSchema(
            {"type": "array", "maxItems": 500, "title": "Events", "items": _INGEST_EVENT_SCHEMA}
        ),
    ] = Field(description="At most 500 events per request (413 above).")


class ValidationFailed(BaseModel):
    idempotency_key: str
    validation_errors: list[str]


class IngestDebug(BaseModel):
    duplicate: list[str] = Field(description="Keys skipped because they were already ingested.")
    ingested: list[str] = Field(description="Keys written by this request.")


class IngestResponse(BaseModel):
    validation_failed: list[ValidationFailed] = Field(
        description="Always empty on a 200: a batch with an invalid event is refused whole (400)."
    )
    debug: IngestDebug | None = Field(default=None, description="Only with ?debug=true.")


# -- backfills ---------------------------------------------------------------------------------


class NewBackfillBody(_Body):
    timeframe_start: UtcDatetime
    timeframe_end: UtcDatetime
    # Strict: lax parsing would read "yes", "off" or 0 as a boolean; Orb asks for true or false.
    replace_existing_events: StrictBool = True
    close_time: UtcDatetime | None = None
    customer_id: Identifier | None = None
    external_customer_id: Identifier | None = None
    deprecation_filter: str | None = None  # the filter grammar limits its length


class BackfillOut(BaseModel):
    id: str
    status: Literal["pending", "reflected", "pending_revert", "reverted"]
    created_at: datetime
    timeframe_start: datetime
    timeframe_end: datetime
    events_ingested: int
    close_time: datetime | None
    reverted_at: datetime | None
    customer_id: str | None
    external_customer_id: str | None = Field(
        description="Not in Orb's schema: the external id the backfill was scoped by, if any."
    )
    replace_existing_events: bool
    deprecation_filter: str | None


class Backfills(BaseModel):
    data: list[BackfillOut]
    pagination_metadata: PaginationMetadata


def backfill_out(backfill: Backfill) -> BackfillOut:
    return BackfillOut(
        id=backfill.id,
        status=backfill.status.value,
        created_at=backfill.created_at,
        timeframe_start=backfill.timeframe_start,
        timeframe_end=backfill.timeframe_end,
        events_ingested=backfill.events_ingested,
        close_time=backfill.close_time,
        reverted_at=backfill.reverted_at,
        customer_id=backfill.customer_id,
        external_customer_id=backfill.external_customer_id,
        replace_existing_events=backfill.replace_existing_events,
        deprecation_filter=backfill.deprecation_filter,
    )


class PreviewRow(BaseModel):
    metric_id: str
    customer_id: str | None
    external_customer_id: str | None
    timeframe_start: datetime = Field(description="The day (UTC) this row covers.")
    timeframe_end: datetime
    before: float | None = Field(description="The value now; null when there is none.")
    after: float | None = Field(description="The value once the backfill closes.")
    delta: float


class BackfillPreview(BaseModel):
    """What closing a pending backfill would change: only the (metric, customer, day)s that
    change."""

    data: list[PreviewRow]


def _day_after(day: datetime) -> datetime:
    try:
        return day + timedelta(days=1)
    except OverflowError:  # the last day Python can name
        return datetime.max.replace(tzinfo=UTC)


def preview_rows(rows: list[dict[str, Any]]) -> list[PreviewRow]:
    return [PreviewRow(**row, timeframe_end=_day_after(row["timeframe_start"])) for row in rows]


# -- events ------------------------------------------------------------------------------------


class EventSearchBody(_Body):
    event_ids: list[Identifier] = Field(min_length=1, max_length=500)
    timeframe_start: UtcDatetime | None = None
    timeframe_end: UtcDatetime | None = None


class EventOut(BaseModel):
    id: str
    customer_id: str | None
    external_customer_id: str | None
    event_name: str
    properties: dict[str, Any]
    timestamp: datetime
    deprecated: bool


class Events(BaseModel):
    data: list[EventOut]


def event_out(event: Event) -> EventOut:
    return EventOut(
        id=event.id,
        customer_id=event.customer_id,
        external_customer_id=event.external_customer_id,
        event_name=event.event_name,
        properties=dict(event.properties),
        timestamp=event.timestamp,
        deprecated=event.deprecated,
    )


class AmendEventBody(_Body):
    event_name: str
    timestamp: UtcDatetime
    properties: dict[str, Any]
    customer_id: str | None = None
    external_customer_id: str | None = None


class AmendEventResult(BaseModel):
    amended: str


class DeprecateEventResult(BaseModel):
    deprecated: str


class EventVolume(BaseModel):
    timeframe_start: datetime
    timeframe_end: datetime
    count: int


class EventVolumes(BaseModel):
    data: list[EventVolume]
    pagination_metadata: PaginationMetadata


# -- customers ---------------------------------------------------------------------------------


class NewCustomerBody(_Body):
    # Orb requires both; the engine would take a customer without them, but an Orb client
    # always sends them and the response schema promises strings.
    name: str = Field(min_length=1, max_length=MAX_IDENTIFIER_LENGTH)
    email: str = Field(min_length=1, max_length=MAX_IDENTIFIER_LENGTH)
    external_customer_id: str | None = Field(
        default=None, min_length=1, max_length=MAX_IDENTIFIER_LENGTH
    )


class Address(BaseModel):
    line1: str | None
    line2: str | None
    city: str | None
    state: str | None
    postal_code: str | None
    country: str | None


class CustomerMinified(BaseModel):
    id: str
    external_customer_id: str | None


class CustomerHierarchy(BaseModel):
    parent: CustomerMinified | None
    children: list[CustomerMinified]


class CustomerOut(BaseModel):
    metadata: dict[str, str]
    id: str
    external_customer_id: str | None
    name: str | None = Field(
        description="Null only for customers created without one outside HTTP."
    )
    email: str | None = Field(
        description="Null only for customers created without one outside HTTP."
    )
    timezone: str
    payment_provider_id: str | None
    payment_provider: str | None
    created_at: datetime
    shipping_address: Address | None
    billing_address: Address | None
    balance: str
    currency: str | None
    tax_id: dict[str, Any] | None
    auto_collection: bool
    exempt_from_automated_tax: bool | None
    email_delivery: bool
    auto_issuance: bool | None
    additional_emails: list[str]
    portal_url: str | None
    hierarchy: CustomerHierarchy
    accounting_sync_configuration: dict[str, Any] | None
    reporting_configuration: dict[str, Any] | None
    payment_configuration: dict[str, Any] | None
    default_payment_method: dict[str, Any] | None
    automatic_tax_enabled: bool | None


class Customers(BaseModel):
    data: list[CustomerOut]
    pagination_metadata: PaginationMetadata


def customer_out(customer: Customer) -> CustomerOut:
    return CustomerOut(
        metadata={},
        id=customer.id,
        external_customer_id=customer.external_customer_id,
        name=customer.name,
        email=customer.email,
        timezone="UTC",
        payment_provider_id=None,
        payment_provider=None,
        created_at=customer.created_at,
        shipping_address=None,
        billing_address=None,
        balance="0.00",
        currency=None,
        tax_id=None,
        auto_collection=False,
        exempt_from_automated_tax=None,
        email_delivery=False,
        auto_issuance=None,
        additional_emails=[],
        portal_url=None,
        hierarchy=CustomerHierarchy(parent=None, children=[]),
        accounting_sync_configuration=None,
        reporting_configuration=None,
        payment_configuration=None,
        default_payment_method=None,
        automatic_tax_enabled=None,
    )


# -- metrics -----------------------------------------------------------------------------------


class NewMetricBody(_Body):
    name: str = Field(min_length=1, max_length=MAX_IDENTIFIER_LENGTH)
    sql: str  # the metric grammar limits its length
    description: str | None = Field(default=None, max_length=MAX_TEXT_LENGTH)
    item_id: Identifier | None = Field(
        default=None,
        description="Accepted for Orb compatibility and ignored: there is no item catalog.",
    )
    metadata: dict[Identifier, Identifier | None] | None = Field(
        default=None, max_length=MAX_METADATA_ENTRIES
    )


class Item(BaseModel):
    id: str
    name: str
    created_at: datetime
    metadata: dict[str, str]
    external_connections: list[dict[str, str]]
    archived_at: datetime | None


class MetricOut(BaseModel):
    metadata: dict[str, str]
    id: str
    name: str
    description: str | None
    status: Literal["active", "draft", "archived"]
    item: Item = Field(description="A stand-in derived from the metric (there is no item catalog).")
    parameter_definitions: list[dict[str, Any]] | None
    sql: str


class Metrics(BaseModel):
    data: list[MetricOut]
    pagination_metadata: PaginationMetadata


def metric_out(metric: Metric) -> MetricOut:
    return MetricOut(
        metadata=dict(metric.metadata),
        id=metric.id,
        name=metric.name,
        description=metric.description,
        status=metric.status,  # type: ignore[arg-type]
        item=Item(
            id=metric.id,
            name=metric.name,
            created_at=metric.created_at,
            metadata={},
            external_connections=[],
            archived_at=None,
        ),
        parameter_definitions=None,
        sql=metric.sql,
    )


# -- usage -------------------------------------------------------------------------------------


class Grouping(BaseModel):
    key: str
    value: str | None


class UsageRow(BaseModel):
    customer_id: str | None
    external_customer_id: str | None
    timeframe_start: datetime
    timeframe_end: datetime
    value: float
    grouping: Grouping | None = Field(description="The GROUP BY value, for a grouped metric.")


class UsageResponse(BaseModel):
    """Usage of a metric per customer and time bucket; buckets without events are absent."""

    data: list[UsageRow]
