"""GET /healthz, GET /readyz (no API key) and GET /metrics."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import JSONResponse

from service.deps import runtime_of
from service.security import require_api_key

public = APIRouter(tags=["health"])
protected = APIRouter(tags=["health"], dependencies=[Depends(require_api_key)])


@public.get("/healthz", summary="The process is alive")
async def healthz() -> dict:
    return {"status": "ok"}


@public.get(
    "/readyz",
    summary="Bundle loaded and Redis reachable (or no Redis configured)",
    responses={503: {"description": "Not ready; `reason` says why"}},
)
async def readyz(request: Request) -> JSONResponse:
    ok, info = await runtime_of(request).readiness()
    return JSONResponse(
        {"status": "ready" if ok else "not ready", **info}, status_code=200 if ok else 503
    )


@protected.get("/metrics", summary="Prometheus metrics", response_class=Response)
async def metrics(request: Request) -> Response:
    body, content_type = request.app.state.metrics.render()
    return Response(body, media_type=content_type)
