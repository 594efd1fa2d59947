"""Every error answer is shaped here, and each can be serialised whatever the client sent.

- 422: pydantic's shape, ``{"detail": [{"type", "loc", "msg", "input", "ctx"?}]}``; ``loc``
  names the field (``["body", "requests", 3, "k"]``).
- 400: the body is not JSON, not UTF-8, or nested too deep to parse.
- 401 / 403 / 404 / 409 / 413 / 415 / 503: ``{"detail": "<message>"}``.

A client can put anything in the ``input`` and ``msg`` that an error echoes back: NaN or
Infinity (``json.loads`` accepts them), raw bytes (a non-JSON body), lone surrogates
(``"\\ud800"``). Starlette's JSON rendering refuses the first and the last, which turned
such requests into 500s; ``printable`` makes every echoed value plain JSON first.
"""

from __future__ import annotations

import logging
import math
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException
from starlette.routing import Match

from service.schemas import ErrorDetail

log = logging.getLogger("service.errors")

MAX_DEPTH = 8  # echoed inputs nested deeper are cut (a 256 KiB body can nest 100k deep)

MESSAGES = {
    400: "The body is not valid JSON (or not UTF-8)",
    401: "Missing or invalid X-API-Key",
    403: "The key is not allowed here",
    404: "Unknown id",
    409: "Conflict",
    413: "Body larger than MAX_BODY_BYTES",
    415: "Content-Type is not application/json",
    422: "Invalid field; `loc` names it",
    503: "Not available now (no model loaded, or the event store is unreachable)",
}


def responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` for these status codes (422 keeps FastAPI's own schema)."""
    out: dict[int | str, dict[str, Any]] = {}
    for code in codes:
        out[code] = {"description": MESSAGES[code]}
        if code != 422:
            out[code]["model"] = ErrorDetail
    return out


def printable(value: Any, depth: int = 0) -> Any:
    """``value`` as plain JSON: non-finite floats and bytes as strings, lone surrogates
    escaped, tuples as lists, anything else by ``str``; nesting cut at ``MAX_DEPTH``."""
    if value is None or isinstance(value, bool | int):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else repr(value)
    if isinstance(value, str):
        return value.encode("utf-8", "backslashreplace").decode("utf-8")
    if isinstance(value, bytes | bytearray):
        return bytes(value[:1000]).decode("utf-8", "backslashreplace")
    if depth >= MAX_DEPTH:
        return "..."
    if isinstance(value, dict):
        return {str(printable(k)): printable(v, depth + 1) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [printable(v, depth + 1) for v in value]
    return printable(str(value))


def _json_error(error: dict) -> bool:
    return error.get("type") == "json_invalid"


async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    errors = exc.errors()
    bad_json = next((e for e in errors if _json_error(e)), None)
    if bad_json is not None:
        where = bad_json.get("loc", ("body",))[-1]
        reason = (bad_json.get("ctx") or {}).get("error", "JSON decode error")
        detail = f"body is not valid JSON: {reason} (at character {where})"
        return JSONResponse({"detail": printable(detail)}, status_code=400)
    return JSONResponse({"detail": printable(errors)}, status_code=422)


def allowed_methods(request: Request) -> str:
    """Every method some route of the app serves at this path. Starlette's 405 names the
    methods of the first route matching the path only, and /items/{item_id} has a GET
    route (read, API key) and PUT / DELETE routes (item API, admin key)."""
    methods: set[str] = set()
    for route in request.app.router.routes:
        match, _ = route.matches({**request.scope, "method": ""})
        if match != Match.NONE:
            methods |= set(getattr(route, "methods", None) or ())
    return ", ".join(sorted(methods))


async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
    detail = exc.detail
    headers = exc.headers
    if exc.status_code == 405:
        headers = {**(headers or {}), "Allow": allowed_methods(request)}
    if exc.status_code == 400 and isinstance(exc.__cause__, UnicodeDecodeError):
        detail = "body is not valid UTF-8 JSON"
    elif exc.status_code == 400 and isinstance(exc.__cause__, RecursionError):
        detail = "body is nested too deeply to parse"
    return JSONResponse({"detail": printable(detail)}, status_code=exc.status_code, headers=headers)


async def server_error(request: Request, exc: Exception) -> JSONResponse:
    """A bug, not a client mistake: logged with its traceback, answered without details."""
    log.error("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    return JSONResponse({"detail": "internal error (logged)"}, status_code=500)


def install(app: FastAPI) -> None:
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(HTTPException, http_error)
    app.add_exception_handler(Exception, server_error)
