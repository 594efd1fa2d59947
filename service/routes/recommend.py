"""POST /recommend and POST /recommend/batch."""

from __future__ import annotations

from fastapi import APIRouter, Response
from fastapi.exceptions import RequestValidationError

from service import render
from service.core.errors import responses
from service.deps import ServingDep
from service.recommend import recommend, too_long
from service.schemas import BatchRequest, BatchResponse, RecommendRequest, RecommendResponse

router = APIRouter(tags=["recommend"])

ERRORS = responses(400, 401, 413, 415, 422, 503)


def json_response(body: str) -> Response:
    """A body rendered by service.render (``response_model`` documents its schema)."""
    return Response(body, media_type="application/json")


@router.post(
    "/recommend",
    response_model=RecommendResponse,
    summary="Top-k items for one user (features, recent items, a known user id, or popularity)",
    responses=ERRORS,
)
async def recommend_one(body: RecommendRequest, serving: ServingDep) -> Response:
    (answer,) = await recommend([body], [("body",)], serving)
    return json_response(answer)


@router.post(
    "/recommend/batch",
    response_model=BatchResponse,
    summary="Up to MAX_BATCH /recommend bodies, answered in order with one forward "
    "pass and one index search",
    responses=ERRORS,
)
async def recommend_batch(body: BatchRequest, serving: ServingDep) -> Response:
    limit = serving.settings.max_batch
    if len(body.requests) > limit:
        raise RequestValidationError(
            [too_long(("body", "requests"), body.requests, limit, "MAX_BATCH")]
        )
    locs = [("body", "requests", n) for n in range(len(body.requests))]
    answers = await recommend(body.requests, locs, serving)
    return json_response(render.batch(answers, serving.engine.version))
