"""/docs (Swagger UI) and /openapi.json, with the Swagger UI assets served by the app.

The assets come from the ``swagger-ui-bundle`` package (no CDN is reachable in
production networks without internet access).
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, HTTPException, Request
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse

ASSETS = {
    "swagger-ui-bundle.js": "text/javascript",
    "swagger-ui.css": "text/css",
    "favicon-32x32.png": "image/png",
}


def assets_dir() -> Path:
    from swagger_ui_bundle import swagger_ui_path

    return Path(str(swagger_ui_path))


def build_router(dependencies: list) -> APIRouter:
    router = APIRouter(include_in_schema=False, dependencies=dependencies)

    @router.get("/openapi.json")
    async def openapi(request: Request) -> JSONResponse:
        return JSONResponse(request.app.openapi())

    @router.get("/docs")
    async def docs(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "").rstrip("/")
        try:
            assets_dir()
        except ImportError:
            return HTMLResponse(
                "<p>Swagger UI assets are not installed (<code>pip install "
                f'swagger-ui-bundle</code>). The schema is at <a href="{root}/openapi.json">'
                "/openapi.json</a>.</p>",
                status_code=503,
            )
        return get_swagger_ui_html(
            openapi_url=f"{root}/openapi.json",
            title=f"{request.app.title} - Swagger UI",
            swagger_js_url=f"{root}/docs/assets/swagger-ui-bundle.js",
            swagger_css_url=f"{root}/docs/assets/swagger-ui.css",
            swagger_favicon_url=f"{root}/docs/assets/favicon-32x32.png",
        )

    @router.get("/docs/assets/{name}")
    async def asset(name: str) -> FileResponse:
        if name not in ASSETS:
            raise HTTPException(404, f"no docs asset {name!r}")
        try:
            directory = assets_dir()
        except ImportError as e:
            raise HTTPException(503, "swagger-ui-bundle is not installed") from e
        return FileResponse(
            directory / name,
            media_type=ASSETS[name],
            headers={"Cache-Control": "public, max-age=86400"},
        )

    return router
