"""Run the HTTP API with uvicorn: what ``usage-engine serve`` calls."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import uvicorn

import engine
from engine.http.app import DEFAULT_MAX_BODY_BYTES, DEFAULT_RATE_LIMIT, create_app
from engine.http.ratelimit import RateLimit

__all__ = ["serve"]

log = logging.getLogger("engine.http")


def serve(
    store_path: str | Path,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    api_keys: Sequence[str] | None = None,
    rate_limit: RateLimit | None = DEFAULT_RATE_LIMIT,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    close_interval: float | None = 60.0,
    group_commit: bool = True,
    log_level: str = "info",
    memory_limit: str | None = None,
) -> None:
    """Open the store at ``store_path`` and serve it until interrupted (Ctrl-C or SIGTERM).

    Keys: ``api_keys``, else ``USAGE_ENGINE_API_KEYS``, plus those made by
    :func:`engine.http.create_api_key`. One process serves the store; a single worker, because
    the store's writes go through one connection anyway. ``memory_limit`` as for
    :func:`engine.open`.

    >>> serve("data/store", host="127.0.0.1", port=8000)  # doctest: +SKIP
    """
    with engine.open(store_path, memory_limit=memory_limit) as store:
        app = create_app(
            store,
            api_keys=api_keys,
            rate_limit=rate_limit,
            max_body_bytes=max_body_bytes,
            close_interval=close_interval,
            group_commit=group_commit,
        )
        if not app.state.keys.configured:
            log.warning(
                "no API keys: every request will get 401 until USAGE_ENGINE_API_KEYS is set or "
                "'usage-engine api-keys create --store %s' creates one",
                store_path,
            )
        config = uvicorn.Config(app, host=host, port=port, log_level=log_level, workers=1)
        uvicorn.Server(config).run()
