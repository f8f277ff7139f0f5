"""usage-engine: correct past usage for usage-based billing, Orb-style, on DuckLake.

>>> import engine
>>> store = engine.open("data/store")  # doctest: +SKIP
"""

from __future__ import annotations

from engine.errors import (
    ConstraintViolation,
    DuplicateResourceCreation,
    EngineError,
    RequestValidationError,
    ResourceConflict,
    ResourceNotFound,
)
from engine.models import (
    Backfill,
    BackfillStatus,
    CompactResult,
    Customer,
    Event,
    IngestResult,
    Keys,
    Metric,
    Page,
)
from engine.store import Store, open

__all__ = [
    "Backfill",
    "BackfillStatus",
    "CompactResult",
    "ConstraintViolation",
    "Customer",
    "DuplicateResourceCreation",
    "EngineError",
    "Event",
    "IngestResult",
    "Keys",
    "Metric",
    "Page",
    "RequestValidationError",
    "ResourceConflict",
    "ResourceNotFound",
    "Store",
    "open",
]
