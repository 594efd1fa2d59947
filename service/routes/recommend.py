"""POST /recommend and POST /recommend/batch."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Response
from fastapi.exceptions import RequestValidationError

from service.deps import get_engine, get_runtime, json_response
from service.engine import Engine
from service.recommend import recommend, too_long
from service.runtime import Runtime
from service.schemas import BatchRequest, BatchResponse, RecommendRequest, RecommendResponse

router = APIRouter(tags=["recommend"])


@router.post(
    "/recommend",
    response_model=RecommendResponse,
    summary="Top-k items for one user (features, recent items, a known user id, or popularity)",
)
async def recommend_one(
    body: RecommendRequest,
    engine: Engine = Depends(get_engine),
    runtime: Runtime = Depends(get_runtime),
) -> Response:
    (response,) = await recommend([body], engine, runtime, [("body",)])
    return json_response(response)


@router.post(
    "/recommend/batch",
    response_model=BatchResponse,
    summary="Up to MAX_BATCH /recommend bodies, answered in order with one forward "
    "pass and one index search",
)
async def recommend_batch(
    body: BatchRequest,
    engine: Engine = Depends(get_engine),
    runtime: Runtime = Depends(get_runtime),
) -> Response:
    limit = runtime.settings.max_batch
    if len(body.requests) > limit:
        raise RequestValidationError(
            [too_long(("body", "requests"), body.requests, limit, "MAX_BATCH")]
        )
    locs = [("body", "requests", n) for n in range(len(body.requests))]
    responses = await recommend(body.requests, engine, runtime, locs)
    return json_response(BatchResponse(responses=responses, model_version=engine.version))
