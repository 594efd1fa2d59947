"""GET /healthz, GET /readyz (no API key) and GET /metrics."""

from __future__ import annotations

from fastapi import APIRouter, Response
from fastapi.responses import JSONResponse

from service.core.errors import responses
from service.deps import MetricsDep, RuntimeDep
from service.schemas import Readiness

public = APIRouter(tags=["health"])
router = APIRouter(tags=["health"])


@public.get("/healthz", summary="The process is alive")
async def healthz() -> dict:
    return {"status": "ok"}


@public.get(
    "/readyz",
    summary="Ready to answer /recommend: a bundle is loaded (Redis only with REDIS_REQUIRED)",
    response_model=Readiness,
    responses={503: {"description": "Not ready; `reason` says why", "model": Readiness}},
)
async def readyz(runtime: RuntimeDep) -> JSONResponse:
    ready, body = await runtime.readiness()
    return JSONResponse(body.model_dump(), status_code=200 if ready else 503)


@router.get(
    "/metrics",
    summary="Prometheus metrics",
    response_class=Response,
    responses={200: {"content": {"text/plain": {}}}} | responses(401),
)
async def metrics(metrics: MetricsDep) -> Response:
    body, content_type = metrics.render()
    return Response(body, media_type=content_type)
