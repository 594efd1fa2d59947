"""LeanRoute keeps FastAPI's documentation of the hot routes while handling them itself
(behaviour through HTTP: test_service.py's validation, auth and strategy tests)."""

from __future__ import annotations

import httpx
import pytest
from fastapi import APIRouter, Depends, FastAPI, Header, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from service.app import create_app
from service.config import Settings
from service.routes.lean import LeanDispatch, LeanRoute
from service.schemas import RecommendRequest


def test_openapi_still_documents_body_response_and_api_key():
    app = create_app(Settings(artifacts_dir="/nonexistent", reload_poll_s=0))
    spec = app.openapi()
    for path, model in (("/recommend", "RecommendRequest"), ("/recommend/batch", "BatchRequest")):
        op = spec["paths"][path]["post"]
        schema = op["requestBody"]["content"]["application/json"]["schema"]
        assert schema == {"$ref": f"#/components/schemas/{model}"}
        assert op["security"] == [{"APIKeyHeader": []}]
        assert {"200", "422"} <= set(op["responses"])
        assert "$ref" in op["responses"]["200"]["content"]["application/json"]["schema"]


def test_endpoints_take_the_request_and_a_body_model_or_plain_parameters():
    router = APIRouter(route_class=LeanRoute)

    async def body_and_query(body: RecommendRequest, k: int, request: Request) -> Response: ...

    async def no_request(body: RecommendRequest) -> Response: ...

    async def dependency(request: Request, user: str = Depends(lambda: "u")) -> Response: ...

    async def header(request: Request, x_token: str = Header()) -> Response: ...

    for endpoint in (body_and_query, no_request, dependency, header):
        with pytest.raises(TypeError, match="LeanRoute endpoint"):
            router.post("/x")(endpoint)

    async def params(request: Request, item_id: str, k: int = Query(10, ge=1)) -> Response: ...

    router.get("/x/{item_id}")(params)  # path and query parameters only: accepted


def dispatched_app() -> FastAPI:
    """A LeanRoute behind LeanDispatch, an ordinary route, and a custom 422 handler."""
    app = FastAPI()
    app.state.settings = Settings(artifacts_dir="/nonexistent")  # no API key
    router = APIRouter(route_class=LeanRoute)

    @router.post("/echo")
    async def echo(body: RecommendRequest, request: Request) -> Response:
        scope = request.scope  # the router would have put itself in the scope
        return JSONResponse(
            {"k": body.k, "route": scope["route"].path, "router": "router" in scope}
        )

    @router.get("/things/{thing_id}")
    async def thing(request: Request, thing_id: int, k: int = Query(10, ge=1, le=50)) -> Response:
        scope = request.scope
        return JSONResponse(
            {"id": thing_id, "k": k, "route": scope["route"].path, "router": "router" in scope}
        )

    @app.get("/plain")
    async def plain() -> dict:
        return {"plain": True}

    @app.exception_handler(RequestValidationError)
    async def custom_422(request: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse({"custom": [list(e["loc"]) for e in exc.errors()]}, status_code=422)

    app.include_router(router)
    app.add_middleware(
        LeanDispatch, routes=router.routes, exception_handlers=app.exception_handlers
    )
    return app


def dispatched_client(root_path: str = "") -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=dispatched_app(), root_path=root_path)
    return httpx.AsyncClient(transport=transport, base_url="http://t")


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_dispatch_answers_lean_routes_and_passes_everything_else_on(anyio_backend):
    async with dispatched_client() as client:
        r = await client.post("/echo", json={"k": 3})
        assert r.json() == {"k": 3, "route": "/echo", "router": False}
        # the route's errors go through the app's exception handlers
        r = await client.post("/echo", json={"k": "x"})
        assert (r.status_code, r.json()) == (422, {"custom": [["body", "k"]]})
        # other methods and paths are the router's: 405, 200, 404
        assert (await client.get("/echo")).status_code == 405
        assert (await client.get("/plain")).json() == {"plain": True}
        assert (await client.post("/echo/x", json={})).status_code == 404


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_dispatch_matches_path_parameters_and_validates_like_fastapi(anyio_backend):
    async with dispatched_client() as client:
        r = await client.get("/things/7", params={"k": 3})
        assert r.json() == {"id": 7, "k": 3, "route": "/things/{thing_id}", "router": False}
        assert (await client.get("/things/7")).json()["k"] == 10  # the Query default
        r = await client.get("/things/x", params={"k": 0})  # both errors, one 422
        assert r.status_code == 422
        assert r.json() == {"custom": [["path", "thing_id"], ["query", "k"]]}
        assert (await client.post("/things/7")).status_code == 405  # the router's answer
        assert (await client.get("/things/7/more")).status_code == 404


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_dispatch_matches_paths_below_the_root_path(anyio_backend):
    async with dispatched_client(root_path="/api") as client:  # as --root-path
        r = await client.post("/api/echo", json={"k": 4})
        assert r.json() == {"k": 4, "route": "/echo", "router": False}
        r = await client.get("/api/things/5")
        assert r.json() == {"id": 5, "k": 10, "route": "/things/{thing_id}", "router": False}
