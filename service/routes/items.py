"""GET /similar-items/{item_id} and GET /items/{item_id}."""

from __future__ import annotations

from fastapi import APIRouter, HTTPException, Path, Query, Request, Response
from fastapi.exceptions import RequestValidationError

from service import render
from service.deps import engine_of, json_body, runtime_of
from service.engine import Engine
from service.recommend import error
from service.routes.lean import LeanRoute
from service.schemas import ItemResponse, SimilarResponse

router = APIRouter(tags=["items"])
hot = APIRouter(tags=["items"], route_class=LeanRoute)  # served through LeanDispatch

ItemPath = Path(..., min_length=1, max_length=128, description="External item id")


def _lookup(engine: Engine, item_id: str) -> int:
    i = engine.internal(item_id)
    if i is None:
        raise HTTPException(404, f"unknown item id {item_id!r}")
    return i


@hot.get(
    "/similar-items/{item_id}",
    response_model=SimilarResponse,
    summary="Nearest items in the index (the item itself excluded)",
)
async def similar_items(
    request: Request,
    item_id: str = ItemPath,
    k: int = Query(10, ge=1, description="1..MAX_K"),
) -> Response:
    engine, runtime = engine_of(request), runtime_of(request)
    if k > runtime.settings.max_k:
        raise RequestValidationError(
            [
                error(
                    ("query", "k"),
                    f"Input should be less than or equal to {runtime.settings.max_k} (MAX_K)",
                    "less_than_equal",
                    k,
                    {"le": runtime.settings.max_k},
                )
            ]
        )
    i = _lookup(engine, item_id)
    (result,) = await runtime.batcher.run(engine, [engine.similar_job(i, k)])
    items = engine.fragments.items(result.ids, result.scores)
    return json_body(render.similar(item_id, items, engine.version))


@router.get("/items/{item_id}", response_model=ItemResponse, summary="Item metadata")
async def get_item(request: Request, item_id: str = ItemPath) -> ItemResponse:
    engine = engine_of(request)
    i = _lookup(engine, item_id)
    meta = engine.item(i)
    return ItemResponse(
        item_id=item_id, title=meta["title"], genres=meta["genres"], active=engine.is_active(i)
    )
