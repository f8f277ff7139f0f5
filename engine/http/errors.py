"""Orb's error model, in one place.

Every error the HTTP API returns is an RFC 7807 body with Orb's ``type`` URL, ``status``,
``title`` and ``detail`` (plus ``validation_errors`` for request validation), because the
official SDK picks its exception class from ``type``. Engine errors already carry those fields
(:class:`engine.errors.EngineError`); the errors that only exist at the HTTP edge (a missing key,
an unknown URL, a body too large, a rate limit, an idempotency mismatch) are subclasses of it
here, so one renderer (:func:`problem_response`) and one exception handler serve them all. The
request gate (:mod:`engine.http.gate`) renders its refusals with the same function.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError as FastAPIValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from engine.errors import ConstraintViolation, EngineError, RequestValidationError

__all__ = [
    "ORB_ERRORS",
    "AuthenticationFailed",
    "HttpProblem",
    "IdempotencyMismatch",
    "InternalServerError",
    "MethodNotAllowed",
    "RequestTooLarge",
    "TooManyRequests",
    "UrlNotFound",
    "install_error_handlers",
    "problem_response",
]

log = logging.getLogger("engine.http")

ORB_ERRORS = "https://docs.withorb.com/reference/error-responses#"


class HttpProblem(EngineError):
    """An error that only exists at the HTTP edge; ``headers`` go out with the response."""

    def __init__(self, detail: str, *, headers: Mapping[str, str] | None = None) -> None:
        super().__init__(detail)
        self.headers = dict(headers or {})


class AuthenticationFailed(HttpProblem):
    status = 401
    type = ORB_ERRORS + "401-authentication-error"
    title = "Authentication error"


class UrlNotFound(HttpProblem):
    status = 404
    type = ORB_ERRORS + "404-url-not-found"
    title = "URL not found"


class MethodNotAllowed(HttpProblem):
    """A known path with a method it does not serve.

    HTTP says 405 with ``Allow``; Orb has no 405 type, and for an Orb client "this endpoint does
    not exist" is the right reading, so the body carries the url-not-found type (the SDK raises
    ``orb.URLNotFound``).
    """

    status = 405
    type = ORB_ERRORS + "404-url-not-found"
    title = "Method not allowed"


class IdempotencyMismatch(HttpProblem):
    """The Idempotency-Key was used before for a different request (Orb's 409 schema)."""

    status = 409
    type = ORB_ERRORS + "409-resource-conflict"
    title = "Idempotency key reused"


class RequestTooLarge(HttpProblem):
    status = 413
    type = ORB_ERRORS + "413-request-too-large"
    title = "Request too large"


class TooManyRequests(HttpProblem):
    status = 429
    type = ORB_ERRORS + "429-too-many-requests"
    title = "Too many requests"


class InternalServerError(HttpProblem):
    status = 500
    type = ORB_ERRORS + "500-internal-server-error"
    title = "Internal server error"


def problem_response(error: EngineError) -> JSONResponse:
    """The response for any engine or HTTP error: Orb's body, status and headers."""
    headers = dict(getattr(error, "headers", {}))
    # The SDK retries every 409 by default ("lock timeouts"); ours are decisions (a backfill in
    # the wrong state, a reused idempotency key) that a retry would only repeat, so say so. 429
    # and 5xx stay retryable.
    if 400 <= error.status < 500 and error.status != 429:
        headers.setdefault("x-should-retry", "false")
    return JSONResponse(error.to_dict(), status_code=error.status, headers=headers)


def request_validation(errors: Sequence[Any]) -> RequestValidationError:
    """FastAPI's 422 as Orb's 400 request-validation error: one entry per problem, naming where
    it is (``loc``) and what is wrong (``msg``), without echoing the input back."""
    problems = [
        {
            "loc": [str(part) for part in error.get("loc", ())],
            "msg": str(error.get("msg", "")),
            "type": str(error.get("type", "")),
        }
        for error in errors
    ]
    where = ", ".join(".".join(p["loc"]) or "body" for p in problems[:3])
    noun = "problem" if len(problems) == 1 else "problems"
    more = "" if len(problems) <= 3 else ", ..."
    return RequestValidationError(
        f"{len(problems)} {noun} in the request ({where}{more})", validation_errors=problems
    )


def _allowed_methods(request: Request) -> list[str]:
    """Every method served on the request's path. Starlette's own ``Allow`` names only the first
    route that matched, and FastAPI makes one route per method; ``app.state.api_routes`` (set by
    ``create_app``) holds the routes with their full paths."""
    methods: set[str] = set()
    for route in getattr(request.app.state, "api_routes", request.app.routes):
        match, _ = route.matches(request.scope)
        if match != Match.NONE:
            methods.update(getattr(route, "methods", None) or ())
    return sorted(methods)


def install_error_handlers(app: FastAPI) -> None:
    """Route every error the app can raise through :func:`problem_response`."""

    async def engine_error(request: Request, error: Exception) -> JSONResponse:
        assert isinstance(error, EngineError)
        if error.status >= 500:
            # An EngineError with a 5xx status is still a deliberate message, but log it.
            log.error("%s %s failed: %s", request.method, request.url.path, error.detail)
        return problem_response(error)

    async def validation_error(request: Request, error: Exception) -> JSONResponse:
        assert isinstance(error, FastAPIValidationError)
        return problem_response(request_validation(error.errors()))

    async def http_error(request: Request, error: Exception) -> JSONResponse:
        assert isinstance(error, StarletteHTTPException)
        problem: EngineError
        if error.status_code == 404:
            problem = UrlNotFound(f"no route matches {request.method} {request.url.path}")
        elif error.status_code == 405:
            allow = ", ".join(_allowed_methods(request))
            problem = MethodNotAllowed(
                f"{request.method} is not served on {request.url.path}; allowed: {allow}",
                headers={"Allow": allow},
            )
        elif error.status_code < 500:
            # Starlette raises no other status for these routes; should one appear, answer with
            # the nearest Orb error rather than a body of another shape.
            problem = ConstraintViolation(str(error.detail))
        else:
            problem = InternalServerError(str(error.detail))
        return problem_response(problem)

    async def unexpected(request: Request, error: Exception) -> JSONResponse:
        # The traceback goes to the log; the client learns nothing about the internals.
        log.error(
            "%s %s raised %s",
            request.method,
            request.url.path,
            type(error).__name__,
            exc_info=error,
        )
        return problem_response(
            InternalServerError("the server failed to handle the request; it has been logged")
        )

    app.add_exception_handler(EngineError, engine_error)
    app.add_exception_handler(FastAPIValidationError, validation_error)
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(Exception, unexpected)
