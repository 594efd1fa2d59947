"""API-key dependencies and the request-body size limit.

- API_KEY set: every route but /healthz and /readyz needs ``X-API-Key`` (401 when missing
  or wrong). The admin key is accepted there too.
- /admin/*: needs ``X-API-Key: <ADMIN_API_KEY>`` (401 missing/unknown key, 403 a valid
  non-admin key). With neither key set (local development) admin routes are open; with
  API_KEY set but no ADMIN_API_KEY they are closed (403).
Keys are compared with ``hmac.compare_digest``.
"""

from __future__ import annotations

import hmac
import json
from collections.abc import Callable

from fastapi import HTTPException, Request
from fastapi.security import APIKeyHeader

from service.core.config import Settings


class KeyCheck(APIKeyHeader):
    """The ``X-API-Key`` header scheme (what OpenAPI and /docs show) that also checks the
    key, so a protected route solves one dependency, not a checker depending on the
    header scheme: each dependency FastAPI solves costs a measurable share of a cache hit
    (docs/BENCHMARKS.md, "Where a cache hit's CPU goes")."""

    def __init__(self, check: Callable[[Settings, str | None], None]):
        super().__init__(
            name="X-API-Key",
            scheme_name="APIKeyHeader",
            auto_error=False,
            description="API_KEY (or ADMIN_API_KEY for /admin/*)",
        )
        self.check = check

    async def __call__(self, request: Request) -> None:  # type: ignore[override]
        self.check(request.app.state.settings, request.headers.get("x-api-key"))


def _matches(given: str | None, secret) -> bool:
    if given is None or secret is None:
        return False
    return hmac.compare_digest(given.encode(), secret.get_secret_value().encode())


def _authorize(settings: Settings, key: str | None) -> None:
    if settings.api_key is None:
        return
    if _matches(key, settings.api_key) or _matches(key, settings.admin_api_key):
        return
    raise HTTPException(
        401, "missing or invalid X-API-Key header", headers={"WWW-Authenticate": "ApiKey"}
    )


def _authorize_admin(settings: Settings, key: str | None) -> None:
    if settings.admin_api_key is None:
        if settings.api_key is None:
            return  # development mode: no keys configured at all
        raise HTTPException(403, "admin API disabled: set ADMIN_API_KEY")
    if _matches(key, settings.admin_api_key):
        return
    if _matches(key, settings.api_key):
        raise HTTPException(403, "this key is not an admin key")
    raise HTTPException(
        401, "missing or invalid admin X-API-Key header", headers={"WWW-Authenticate": "ApiKey"}
    )


require_api_key = KeyCheck(_authorize)
require_admin_key = KeyCheck(_authorize_admin)


class BodyTooLarge(HTTPException):
    """An HTTPException so FastAPI's body parsing passes it on as a 413, not a 400."""

    def __init__(self, limit: int):
        super().__init__(413, f"request body larger than {limit} bytes (MAX_BODY_BYTES)")


def is_json(content_type: bytes) -> bool:
    media = content_type.split(b";", 1)[0].strip().lower()
    return media == b"application/json" or (
        media.startswith(b"application/") and media.endswith(b"+json")
    )


BODY_METHODS = ("POST", "PUT")


class BodyGuardMiddleware:
    """Pure ASGI, for every request body: 415 when a POST or PUT says its body is anything but
    JSON (every body this API takes is JSON; no Content-Type is read as JSON), 413 when
    Content-Length or the streamed body exceeds ``limit`` bytes. A middleware rather
    than a route dependency: each dependency FastAPI solves costs a measurable share of
    a cache hit (docs/BENCHMARKS.md, "Load")."""

    def __init__(self, app, limit: int):
        self.app, self.limit = app, limit

    async def _reject(self, send, status: int, detail: str) -> None:
        body = json.dumps({"detail": detail}).encode()
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        too_large = BodyTooLarge(self.limit).detail
        for name, value in scope["headers"]:
            if name == b"content-length":
                try:
                    too_big = int(value) > self.limit
                except ValueError:
                    too_big = False
                if too_big:
                    return await self._reject(send, 413, too_large)
            elif name == b"content-type" and scope["method"] in BODY_METHODS and not is_json(value):
                detail = "send the body as Content-Type: application/json"
                return await self._reject(send, 415, detail)
        received = 0
        started = False

        async def limited_receive():
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.limit:
                    raise BodyTooLarge(self.limit)
            return message

        async def tracking_send(message):
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except BodyTooLarge:
            if not started:
                await self._reject(send, 413, too_large)
