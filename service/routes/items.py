"""GET /similar-items/{item_id} and GET /items/{item_id}."""

from __future__ import annotations

from fastapi import APIRouter, HTTPException, Path, Query, Response
from fastapi.exceptions import RequestValidationError

from service import render
from service.core.errors import responses
from service.deps import EngineDep, SettingsDep
from service.engine import Engine
from service.recommend import error
from service.routes.recommend import json_response
from service.schemas import ItemResponse, SimilarResponse

router = APIRouter(tags=["items"])

ItemPath = Path(..., min_length=1, max_length=128, description="External item id")


def _lookup(engine: Engine, item_id: str) -> int:
    i = engine.internal(item_id)
    if i is None:
        raise HTTPException(404, f"unknown item id {item_id!r}")
    return i


@router.get(
    "/similar-items/{item_id}",
    response_model=SimilarResponse,
    summary="Nearest items in the index (the item itself excluded)",
    responses=responses(401, 404, 422, 503),
)
async def similar_items(
    engine: EngineDep,
    settings: SettingsDep,
    item_id: str = ItemPath,
    k: int = Query(10, ge=1, description="1..MAX_K"),
) -> Response:
    if k > settings.max_k:
        msg = f"Input should be less than or equal to {settings.max_k} (MAX_K)"
        ctx = {"le": settings.max_k}
        raise RequestValidationError([error(("query", "k"), msg, "less_than_equal", k, ctx)])
    ((ids, scores),) = engine.search([engine.similar_job(_lookup(engine, item_id), k)])
    items = engine.fragments.items(ids, scores)
    return json_response(render.similar(item_id, items, engine.version))


@router.get(
    "/items/{item_id}",
    response_model=ItemResponse,
    summary="Item metadata",
    responses=responses(401, 404, 422, 503),
)
async def get_item(engine: EngineDep, item_id: str = ItemPath) -> ItemResponse:
    i = _lookup(engine, item_id)
    meta = engine.item(i)
    return ItemResponse(
        item_id=item_id, title=meta["title"], genres=meta["genres"], active=engine.is_active(i)
    )
