"""Every error becomes ``{"error": {"code", "message", "details"}}`` with the right
status, in one place. Bad input is never a 500; a store that does not answer is a 503."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pymongo.errors import ConnectionFailure, ExecutionTimeout, ServerSelectionTimeoutError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match, Route

from shared.errors import ApiError
from shared.logs import get_log

log = get_log(__name__)


def error_response(status: int, code: str, message: str, details: Any = None) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message, "details": details}},
                        status_code=status)


def field_errors(errors: Any, prefix: tuple[Any, ...] = ()) -> list[dict[str, Any]]:
    """Pydantic errors as ``[{field: "payload.to", message, type}]``."""
    out = []
    for err in errors:
        # NOTE: a key in loc can hold a lone surrogate, which no JSON answer can carry.
        loc = [str(part).encode("utf-8", "backslashreplace").decode()
               for part in (*prefix, *err.get("loc", ())) if part != "body"]
        out.append({"field": ".".join(loc) or None, "message": err.get("msg", ""),
                    "type": err.get("type", "")})
    return out


async def _api_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ApiError)
    response = error_response(exc.status_code, exc.code, exc.message, exc.details)
    response.headers.update(exc.headers or {})
    return response


async def _validation_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = list(exc.errors())
    if any(e.get("type") == "json_invalid" for e in errors):
        return error_response(400, "invalid_json", "the request body is not valid JSON",
                              field_errors(errors))
    return error_response(422, "invalid_input", "the request has invalid fields",
                          field_errors(errors))


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
    response = error_response(exc.status_code, code, str(exc.detail))
    response.headers.update(exc.headers or {})
    if exc.status_code == 405:  # RFC 9110: a 405 lists the methods the path serves
        response.headers["Allow"] = ", ".join(_allowed_methods(request))
    return response


def _allowed_methods(request: Request) -> list[str]:
    """Every method some route serves at this path (Starlette's own 405 names only those
    of the first route whose path matched, e.g. GET but not POST for ``/jobs``)."""
    matching = [route for route in _routes(request.app.router.routes)
                if isinstance(route, Route)
                and route.matches(request.scope)[0] is not Match.NONE]
    # NOTE: a literal path (/jobs/batch) is its own resource, not /jobs/{job_id}'s.
    literal = [route for route in matching if not route.param_convertors]
    methods: set[str] = set()
    for route in literal or matching:
        methods |= route.methods or set()
    return sorted(methods)


def _routes(routes: Iterable[Any]) -> Iterator[Any]:
    """Every route, including those of included routers (FastAPI nests them)."""
    for route in routes:
        inner = getattr(route, "original_router", None) or getattr(route, "router", None)
        if inner is not None and hasattr(inner, "routes"):
            yield from _routes(inner.routes)
        else:
            yield route


async def _store_down(_: Request, exc: Exception) -> JSONResponse:
    log.warning("api.store_unavailable", error=str(exc), errorType=type(exc).__name__)
    return error_response(503, "store_unavailable",
                          "a backing store (MongoDB or Redis) is unreachable; nothing was "
                          "changed, try again shortly")


async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
    log.exception("api.unexpected_error", errorType=type(exc).__name__)
    return error_response(500, "internal_error", "unexpected server error")


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(ApiError, _api_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    for store_error in (ServerSelectionTimeoutError, ConnectionFailure, ExecutionTimeout,
                        RedisConnectionError, RedisTimeoutError):
        app.add_exception_handler(store_error, _store_down)
    app.add_exception_handler(Exception, _unexpected)
