"""The live catalog: PUT /items/{item_id}, DELETE /items/{item_id}, POST /items/batch.

Admin routes (``ADMIN_API_KEY``, as /admin/*). Each call is one new index version of the
served bundle, written by ``index.updates.apply_changes`` under the index's cross-process
writer lock; new and changed items are embedded by the item tower from their features
alone (as ``python -m index add``). The worker that wrote swaps the version in before it
answers; every other worker of every replica sharing the bundle directory picks it up by
its index watcher (``INDEX_POLL_S``, service/README.md "The item API").

Kept apart from the read-only item routes (routes/items.py): different key, blocking work.
"""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter, Depends, HTTPException, Response
from fastapi.exceptions import RequestValidationError

from index import updates
from index.errors import UnknownItemError
from service.core.errors import responses
from service.core.security import require_admin_key
from service.deps import EngineDep, RuntimeDep, SettingsDep
from service.engine import Engine
from service.recommend import error, feature_errors
from service.routes.items import ItemPath
from service.runtime import Runtime
from service.schemas import ItemBatchRequest, ItemWrite, ItemWriteResponse
from training.bundle import BundleError

router = APIRouter(tags=["item API"], dependencies=[Depends(require_admin_key)])

ID_ONLY = (
    "this bundle's item tower was trained without item features (ids only): it cannot "
    "embed a new or changed item from features. Retrain with item features, or add "
    "items with precomputed vectors (`python -m index add --vector-file`)"
)


# ----------------------------------------------------------------------------- checks


def check_item_features(engine: Engine, features: dict[str, Any], loc: tuple) -> list[dict]:
    """Names must be the bundle's item features, values of the kind's type, at least one
    (422 shape, as /recommend's user features)."""
    specs = engine.item_encoder.by_name
    if not features:
        msg = f"give at least one item feature; known: {', '.join(specs)}"
        return [error((*loc, "features"), msg, "too_short", features)]
    return feature_errors(specs, features, loc, "item")


def _require_item_tower(engine: Engine) -> None:
    if not engine.item_encoder.by_name:
        raise HTTPException(409, ID_ONLY)


def _record(item_id: str, body: ItemWrite) -> dict[str, Any]:
    record = {"id": item_id, "title": body.title, "features": dict(body.features)}
    if body.genres is not None:
        record["genres"] = list(body.genres)
    return record


def _duplicates(values: list[str]) -> list[int]:
    seen: set[str] = set()
    out = []
    for pos, value in enumerate(values):
        if value in seen:
            out.append(pos)
        seen.add(value)
    return out


# ----------------------------------------------------------------------------- writing


async def write(
    runtime: Runtime, engine: Engine, upserts: list[dict[str, Any]], deletes: list[str]
) -> ItemWriteResponse:
    """Embed, write one index version (off the event loop), swap it in on this worker.

    One write at a time per worker (``item_write_lock``): waiting writers queue here,
    not as threads blocked on the file lock (the default executor is small)."""

    def work() -> dict[str, Any]:
        vectors = engine.item_encoder([r["features"] for r in upserts]) if upserts else None
        return updates.apply_changes(engine.path, upserts, deletes, vectors)

    async with runtime.item_write_lock:
        try:
            section = await asyncio.to_thread(work)
        except UnknownItemError:
            raise
        except ValueError as e:  # what the checks above let through, e.g. a blank id
            raise RequestValidationError([error(("body",), str(e), "value_error", None)]) from e
        except (BundleError, OSError) as e:
            raise HTTPException(409, f"the index cannot be written: {e}") from e
    await runtime.refresh_index()
    metrics = runtime.metrics.item_writes
    for op in ("added", "replaced", "removed"):
        if section[op]:
            metrics.labels(op=op).inc(len(section[op]))
    return ItemWriteResponse(
        index_version=section["version"],
        model_version=engine.version,
        added=section["added"],
        replaced=section["replaced"],
        removed=section["removed"],
        active_items=section["active"],
    )


# ----------------------------------------------------------------------------- routes


@router.put(
    "/items/{item_id}",
    response_model=ItemWriteResponse,
    status_code=200,
    summary="Add (new id, 201) or replace (known id, 200) an item; embedded from its features",
    responses={
        201: {"model": ItemWriteResponse, "description": "Added: a new item"},
        **responses(400, 401, 403, 409, 413, 415, 422, 503),
    },
)
async def put_item(
    body: ItemWrite,
    runtime: RuntimeDep,
    engine: EngineDep,
    response: Response,
    item_id: str = ItemPath,
) -> ItemWriteResponse:
    _require_item_tower(engine)
    errors = check_item_features(engine, body.features, ("body",))
    if not item_id.strip():
        errors.append(error(("path", "item_id"), "blank item id", "value_error", item_id))
    if errors:
        raise RequestValidationError(errors)
    answer = await write(runtime, engine, [_record(item_id, body)], [])
    if answer.added:
        response.status_code = 201
    return answer


@router.delete(
    "/items/{item_id}",
    response_model=ItemWriteResponse,
    summary="Remove an item from serving (a new index version)",
    responses=responses(401, 403, 404, 409, 422, 503),
)
async def delete_item(
    runtime: RuntimeDep, engine: EngineDep, item_id: str = ItemPath
) -> ItemWriteResponse:
    if engine.internal(item_id) is None:
        raise HTTPException(404, f"unknown item id {item_id!r}")
    try:
        return await write(runtime, engine, [], [item_id])
    except UnknownItemError as e:  # removed by another writer meanwhile
        raise HTTPException(404, f"unknown item id {item_id!r}") from e


@router.post(
    "/items/batch",
    response_model=ItemWriteResponse,
    summary="Upsert and delete many items in one new index version (all or nothing)",
    responses=responses(400, 401, 403, 409, 413, 415, 422, 503),
)
async def batch_items(
    body: ItemBatchRequest, runtime: RuntimeDep, engine: EngineDep, settings: SettingsDep
) -> ItemWriteResponse:
    total = len(body.upsert) + len(body.delete)
    if total == 0:
        raise RequestValidationError(
            [error(("body",), "give at least one item in `upsert` or `delete`", "too_short", {})]
        )
    if total > settings.max_item_batch:
        msg = f"at most {settings.max_item_batch} upserts + deletes (MAX_ITEM_BATCH), not {total}"
        raise RequestValidationError([error(("body",), msg, "too_long", None)])
    if body.upsert:
        _require_item_tower(engine)
    errors = []
    for j, item in enumerate(body.upsert):
        errors += check_item_features(engine, item.features, ("body", "upsert", j))
    ids = [item.item_id for item in body.upsert]
    for j, item_id in enumerate(ids):
        if not item_id.strip():
            errors.append(
                error(("body", "upsert", j, "item_id"), "blank item id", "value_error", item_id)
            )
    for j in _duplicates(ids):
        errors.append(
            error(("body", "upsert", j, "item_id"), "listed twice", "value_error", ids[j])
        )
    upserted = set(ids)
    for k in _duplicates(body.delete):
        msg = "listed twice"
        errors.append(error(("body", "delete", k), msg, "value_error", body.delete[k]))
    for k, item_id in enumerate(body.delete):
        if item_id in upserted:
            msg = "also in `upsert`: an item is either upserted or deleted"
            errors.append(error(("body", "delete", k), msg, "value_error", item_id))
        elif engine.internal(item_id) is None:
            msg = f"unknown item id {item_id!r}"
            errors.append(error(("body", "delete", k), msg, "value_error", item_id))
    if errors:
        raise RequestValidationError(errors)
    upserts = [_record(item.item_id, item) for item in body.upsert]
    try:
        return await write(runtime, engine, upserts, list(body.delete))
    except UnknownItemError as e:  # removed by another writer meanwhile
        gone = set(e.item_id)
        raise RequestValidationError(
            [
                error(("body", "delete", k), f"unknown item id {x!r}", "value_error", x)
                for k, x in enumerate(body.delete)
                if x in gone
            ]
        ) from e
