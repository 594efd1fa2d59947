"""Request-scoped dependencies: the runtime and the engine a request uses from start to end."""

from __future__ import annotations

from fastapi import HTTPException, Request, Response
from pydantic import BaseModel

from service.engine import Engine
from service.runtime import Runtime


async def get_runtime(request: Request) -> Runtime:
    return request.app.state.runtime


async def get_engine(request: Request) -> Engine:
    """The current engine, read once per request (a reload swaps it for later requests)."""
    runtime: Runtime = request.app.state.runtime
    engine = runtime.engine
    if engine is None:
        raise HTTPException(503, f"no model loaded: {runtime.load_error or 'still loading'}")
    return engine


def json_response(model: BaseModel) -> Response:
    """Serialise a response model once (FastAPI would validate it again for response_model;
    the route keeps ``response_model`` for the OpenAPI schema)."""
    return Response(model.model_dump_json(), media_type="application/json")
