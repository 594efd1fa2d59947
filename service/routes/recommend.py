"""POST /recommend and POST /recommend/batch."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from fastapi.exceptions import RequestValidationError

from service import render
from service.deps import engine_of, json_body, runtime_of
from service.recommend import recommend, too_long
from service.routes.lean import LeanRoute
from service.schemas import BatchRequest, BatchResponse, RecommendRequest, RecommendResponse

router = APIRouter(tags=["recommend"], route_class=LeanRoute)


@router.post(
    "/recommend",
    response_model=RecommendResponse,
    summary="Top-k items for one user (features, recent items, a known user id, or popularity)",
)
async def recommend_one(body: RecommendRequest, request: Request) -> Response:
    (response,) = await recommend([body], engine_of(request), runtime_of(request), [("body",)])
    return json_body(response)


@router.post(
    "/recommend/batch",
    response_model=BatchResponse,
    summary="Up to MAX_BATCH /recommend bodies, answered in order with one forward "
    "pass and one index search",
)
async def recommend_batch(body: BatchRequest, request: Request) -> Response:
    engine, runtime = engine_of(request), runtime_of(request)
    limit = runtime.settings.max_batch
    if len(body.requests) > limit:
        raise RequestValidationError(
            [too_long(("body", "requests"), body.requests, limit, "MAX_BATCH")]
        )
    locs = [("body", "requests", n) for n in range(len(body.requests))]
    responses = await recommend(body.requests, engine, runtime, locs)
    return json_body(render.batch(responses, engine.version))
