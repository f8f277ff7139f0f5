"""The HTTP API: Orb's routes under ``/v1`` over a :class:`engine.Store`, so that the official
Orb SDKs work unchanged, plus usage and backfill preview endpoints.

>>> from engine.http import create_app, serve, create_api_key
>>> serve("data/store", host="127.0.0.1", port=8000)  # doctest: +SKIP
"""

from __future__ import annotations

from engine.http.app import create_app
from engine.http.auth import create_api_key
from engine.http.ratelimit import RateLimit
from engine.http.server import serve

__all__ = ["RateLimit", "create_api_key", "create_app", "serve"]
