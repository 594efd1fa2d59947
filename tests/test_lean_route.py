"""LeanRoute keeps FastAPI's documentation of the hot routes while handling them itself
(behaviour through HTTP: test_service.py's validation, auth and strategy tests)."""

from __future__ import annotations

import pytest
from fastapi import APIRouter, Request, Response

from service.app import create_app
from service.config import Settings
from service.routes.lean import LeanRoute
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


def test_endpoints_must_take_exactly_a_body_model_and_the_request():
    router = APIRouter(route_class=LeanRoute)

    async def query_params(k: int, request: Request) -> Response: ...

    async def no_request(body: RecommendRequest) -> Response: ...

    for endpoint in (query_params, no_request):
        with pytest.raises(TypeError, match="LeanRoute endpoint"):
            router.post("/x")(endpoint)
