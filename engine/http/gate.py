"""The request gate: what every ``/v1`` request passes before a route sees it.

In order: the bearer key (401), the key's rate limit (429), the body size (413), inputs the
engine cannot take (NUL characters, 400), then ``Idempotency-Key`` replay (POST and PUT). It is
plain ASGI middleware so that it runs before FastAPI reads or parses the body: an anonymous or
throttled client never makes the server buffer a large body, and authentication failures win
over malformed bodies. Its refusals are rendered by :func:`engine.http.errors.problem_response`,
like every other error.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import re
from collections.abc import AsyncIterator
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from engine.errors import ConstraintViolation, EngineError
from engine.http.auth import ApiKeys
from engine.http.errors import (
    AuthenticationFailed,
    IdempotencyMismatch,
    RequestTooLarge,
    TooManyRequests,
    problem_response,
)
from engine.http.idempotency import IdempotencyStore
from engine.http.ratelimit import RateLimiter, retry_after_headers

__all__ = ["Gate"]

_MUTATING = frozenset({"POST", "PUT", "PATCH", "DELETE"})
_MAX_IDEMPOTENCY_KEY = 255
# A JSON string can only carry NUL as the escape \u0000; an escaped backslash before it
# ("\\u0000") is the six characters, not a NUL, hence the even-backslash prefix.
_JSON_NUL = re.compile(rb"(?<!\\)(?:\\\\)*\\u0000")


class _KeyLocks:
    """One asyncio lock per idempotency key, dropped when nobody holds or waits for it.

    A retry that arrives while the first attempt still runs waits for it and then replays its
    response, instead of running the request a second time.
    """

    def __init__(self) -> None:
        self._locks: dict[tuple[str, str], tuple[asyncio.Lock, int]] = {}

    @contextlib.asynccontextmanager
    async def hold(self, name: tuple[str, str]) -> AsyncIterator[None]:
        lock, users = self._locks.get(name, (asyncio.Lock(), 0))
        self._locks[name] = (lock, users + 1)
        try:
            async with lock:
                yield
        finally:
            lock, users = self._locks[name]
            if users == 1:
                del self._locks[name]
            else:
                self._locks[name] = (lock, users - 1)


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope["headers"]:
        if key.lower() == name:
            return bytes(value).decode("latin-1")
    return None


class Gate:
    """ASGI middleware guarding the paths under ``prefix``."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        keys: ApiKeys,
        limiter: RateLimiter | None,
        max_body_bytes: int,
        idempotency: IdempotencyStore,
        prefix: str = "/v1",
    ) -> None:
        self.app = app
        self._keys = keys
        self._limiter = limiter
        self._max_body_bytes = max_body_bytes
        self._idempotency = idempotency
        self._prefix = prefix
        self._locks = _KeyLocks()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope["path"] if scope["type"] == "http" else ""
        if not (path == self._prefix or path.startswith(self._prefix + "/")):
            await self.app(scope, receive, send)
            return
        try:
            principal = self._authenticate(scope)
            self._rate_limit(principal)
            body = await self._read_body(scope, receive)
            _refuse_nul(scope, body)
        except EngineError as error:
            await problem_response(error)(scope, receive, send)
            return
        replay_body = _replaying(body, receive)
        key = _header(scope, b"idempotency-key")
        if key is None or scope["method"] not in _MUTATING:
            await self.app(scope, replay_body, send)
            return
        await self._idempotent(scope, replay_body, send, principal, key, body)

    # -- the checks ---------------------------------------------------------------------------

    def _authenticate(self, scope: Scope) -> str:
        header = _header(scope, b"authorization")
        if header is None:
            raise AuthenticationFailed(
                "missing API key: send it as the header 'Authorization: Bearer <key>'"
            )
        scheme, _, presented = header.partition(" ")
        principal = (
            self._keys.authenticate(presented.strip()) if scheme.lower() == "bearer" else None
        )
        if principal is None:
            if not self._keys.configured:
                raise AuthenticationFailed(
                    "this server has no API keys yet: set USAGE_ENGINE_API_KEYS or run "
                    "'usage-engine api-keys create --store PATH'"
                )
            raise AuthenticationFailed("the API key is not valid")
        return principal

    def _rate_limit(self, principal: str) -> None:
        if self._limiter is None:
            return
        wait = self._limiter.acquire(principal)
        if wait is not None:
            raise TooManyRequests(
                f"this API key exceeded its rate limit; retry in {wait:.2f} s",
                headers=retry_after_headers(wait),
            )

    async def _read_body(self, scope: Scope, receive: Receive) -> bytes:
        limit = self._max_body_bytes
        declared = _header(scope, b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise RequestTooLarge(f"the request body is over the limit of {limit} bytes")
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                break
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:  # a body without Content-Length (chunked) is counted as it comes
                raise RequestTooLarge(f"the request body is over the limit of {limit} bytes")
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        return b"".join(chunks)

    # -- idempotency --------------------------------------------------------------------------

    async def _idempotent(
        self, scope: Scope, receive: Receive, send: Send, principal: str, key: str, body: bytes
    ) -> None:
        if not key or len(key) > _MAX_IDEMPOTENCY_KEY:
            error = ConstraintViolation(
                f"Idempotency-Key must be 1 to {_MAX_IDEMPOTENCY_KEY} characters"
            )
            await problem_response(error)(scope, receive, send)
            return
        fingerprint = hashlib.sha256(
            b"\n".join(
                [scope["method"].encode(), scope["path"].encode(), scope["query_string"], body]
            )
        ).hexdigest()
        async with self._locks.hold((principal, key)):
            stored = self._idempotency.get(principal, key)
            if stored is not None:
                if stored.fingerprint != fingerprint:
                    mismatch = IdempotencyMismatch(
                        f"Idempotency-Key {key!r} was already used for a different request; "
                        f"use a new key for a new request"
                    )
                    await problem_response(mismatch)(scope, receive, send)
                    return
                headers = [(n.encode("latin-1"), v.encode("latin-1")) for n, v in stored.headers]
                headers.append((b"idempotent-replayed", b"true"))
                await send(
                    {"type": "http.response.start", "status": stored.status, "headers": headers}
                )
                await send({"type": "http.response.body", "body": stored.body})
                return
            status, headers, chunks = await _captured(self.app, scope, receive)
            content = b"".join(chunks)
            if 200 <= status < 300:
                self._idempotency.put(
                    principal,
                    key,
                    fingerprint=fingerprint,
                    status=status,
                    headers=[
                        (bytes(n).decode("latin-1"), bytes(v).decode("latin-1")) for n, v in headers
                    ],
                    body=content,
                )
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": content})


async def _captured(
    app: ASGIApp, scope: Scope, receive: Receive
) -> tuple[int, list[Any], list[bytes]]:
    """Run ``app`` and keep its response instead of sending it (it is stored before it goes
    out, so a retry after a lost response finds it)."""
    start: dict[str, Any] = {}
    chunks: list[bytes] = []

    async def capture(message: Message) -> None:
        if message["type"] == "http.response.start":
            start.update(message)
        elif message["type"] == "http.response.body":
            chunks.append(message.get("body", b""))

    await app(scope, receive, capture)
    return int(start["status"]), list(start.get("headers", [])), chunks


def _replaying(body: bytes, receive: Receive) -> Receive:
    """A ``receive`` that hands the already-read body to the app, then defers to the client."""
    delivered = False

    async def replay() -> Message:
        nonlocal delivered
        if not delivered:
            delivered = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


def _refuse_nul(scope: Scope, body: bytes) -> None:
    # DuckDB cannot take NUL inside the SQL literals the engine renders (it fails with a parser
    # error), and no identifier or property of a billing event needs one: refuse it here.
    query: bytes = scope["query_string"]
    if "\x00" in scope["path"] or b"%00" in query or b"\x00" in query or _JSON_NUL.search(body):
        raise ConstraintViolation("NUL characters (\\u0000) are not allowed in requests")
