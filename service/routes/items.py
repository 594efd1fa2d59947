"""GET /similar-items/{item_id} and GET /items/{item_id}."""

from __future__ import annotations

from fastapi import APIRouter, Depends, HTTPException, Path, Query, Response
from fastapi.exceptions import RequestValidationError

from service.deps import get_engine, get_runtime, json_response
from service.engine import Engine
from service.recommend import error, item_list
from service.runtime import Runtime
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
)
async def similar_items(
    item_id: str = ItemPath,
    k: int = Query(10, ge=1, description="1..MAX_K"),
    engine: Engine = Depends(get_engine),
    runtime: Runtime = Depends(get_runtime),
) -> Response:
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
    ids, scores = result.ids, result.scores
    return json_response(
        SimilarResponse(
            item_id=item_id, items=item_list(engine, ids, scores), model_version=engine.version
        )
    )


@router.get("/items/{item_id}", response_model=ItemResponse, summary="Item metadata")
async def get_item(item_id: str = ItemPath, engine: Engine = Depends(get_engine)) -> ItemResponse:
    i = _lookup(engine, item_id)
    meta = engine.item(i)
    return ItemResponse(
        item_id=item_id, title=meta["title"], genres=meta["genres"], active=engine.is_active(i)
    )
