"""Size limits on what one HTTP request may store.

The body limit (8 MiB) and the 500-event batch bound a request, not what it stores: without
these, one event could carry 10 000 properties or a 1 MB idempotency key, which every later
query, index and error message then carries too. No billing event needs either. Events over a
limit are refused like any invalid event (a 400 request-validation error per idempotency key,
nothing written); the limits of other bodies are in their schemas (:mod:`engine.http.schemas`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from engine.errors import RequestValidationError

__all__ = [
    "MAX_IDENTIFIER_LENGTH",
    "MAX_PROPERTIES",
    "MAX_STRING_LENGTH",
    "check_event_sizes",
    "event_size_problems",
]

#: Properties of one event.
MAX_PROPERTIES = 1_000
#: Characters of an idempotency key, event name, customer id or property name.
MAX_IDENTIFIER_LENGTH = 1_000
#: Characters of a string property value.
MAX_STRING_LENGTH = 100_000

_IDENTIFIERS = ("idempotency_key", "event_name", "customer_id", "external_customer_id")


def event_size_problems(event: Mapping[str, Any]) -> list[str]:
    """What in ``event`` is over a limit (types are the engine's to check)."""
    problems = []
    for field in _IDENTIFIERS:
        value = event.get(field)
        if isinstance(value, str) and len(value) > MAX_IDENTIFIER_LENGTH:
            problems.append(
                f"{field} has {len(value)} characters; at most {MAX_IDENTIFIER_LENGTH} are allowed"
            )
    properties = event.get("properties")
    if isinstance(properties, Mapping):
        if len(properties) > MAX_PROPERTIES:
            problems.append(
                f"{len(properties)} properties; at most {MAX_PROPERTIES} are allowed per event"
            )
        for name, value in properties.items():
            if len(name) > MAX_IDENTIFIER_LENGTH:
                problems.append(
                    f"a property name has {len(name)} characters; at most "
                    f"{MAX_IDENTIFIER_LENGTH} are allowed"
                )
            elif isinstance(value, str) and len(value) > MAX_STRING_LENGTH:
                problems.append(
                    f"property {name!r} has {len(value)} characters; at most "
                    f"{MAX_STRING_LENGTH} are allowed"
                )
            if len(problems) >= 5:  # enough to act on; a list as long as the event helps nobody
                break
    return problems


def check_event_sizes(events: Sequence[Any]) -> None:
    """Refuse the batch, per idempotency key, when any event is over a limit."""
    errors = []
    for ordinal, event in enumerate(events, start=1):
        if not isinstance(event, Mapping):
            continue
        problems = event_size_problems(event)
        if not problems:
            continue
        key = event.get("idempotency_key")
        # Never echo an oversized key back: name the event by its position instead.
        label = (
            key
            if isinstance(key, str) and len(key) <= MAX_IDENTIFIER_LENGTH
            else f"(event {ordinal})"
        )
        errors.append({"idempotency_key": label, "validation_errors": problems})
    if errors:
        noun = "event" if len(errors) == 1 else "events"
        raise RequestValidationError(
            f"{len(errors)} {noun} over a size limit; nothing was ingested",
            validation_errors=errors,
        )
