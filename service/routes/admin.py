"""POST /admin/reload (ADMIN_API_KEY): load the bundle `current` points at and swap it in."""

from __future__ import annotations

from fastapi import APIRouter, Depends, HTTPException, Query

from service.core.errors import responses
from service.core.security import require_admin_key
from service.deps import RuntimeDep
from service.runtime import ReloadError
from service.schemas import ReloadResponse

router = APIRouter(prefix="/admin", tags=["admin"], dependencies=[Depends(require_admin_key)])


@router.post(
    "/reload",
    response_model=ReloadResponse,
    summary="Reload the bundle; a broken bundle is refused (409) and the old one keeps serving",
    responses=responses(401, 403, 409, 413, 415, 422),
)
async def reload(
    runtime: RuntimeDep,
    force: bool = Query(False, description="Reload even if unchanged"),
) -> ReloadResponse:
    previous = runtime.engine.version if runtime.engine else None
    try:
        result = await runtime.reload(force=force)
    except ReloadError as e:
        serving = f"; still serving {previous}" if previous else "; no model loaded"
        raise HTTPException(409, f"reload failed: {e}{serving}") from e
    return ReloadResponse(
        reloaded=result.reloaded,
        model_version=result.version,
        previous_version=result.previous,
        message=result.message,
    )
