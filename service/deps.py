"""What a request reads from the app: the runtime, and the engine it uses from start to end.

Plain functions rather than FastAPI dependencies: each ``Depends`` costs tens of
microseconds per request, a measurable share of a cache-hit /recommend.
"""

from __future__ import annotations

from fastapi import HTTPException, Request, Response

from service.engine import Engine
from service.runtime import Runtime


def runtime_of(request: Request) -> Runtime:
    return request.app.state.runtime


def engine_of(request: Request) -> Engine:
    """The current engine, read once per request (a reload swaps it for later requests)."""
    runtime: Runtime = request.app.state.runtime
    engine = runtime.engine
    if engine is None:
        raise HTTPException(503, f"no model loaded: {runtime.load_error or 'still loading'}")
    return engine


def json_body(body: str) -> Response:
    """A rendered JSON answer (see service.render); routes keep ``response_model`` for the
    OpenAPI schema."""
    return Response(body, media_type="application/json")
