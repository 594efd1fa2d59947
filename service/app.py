"""App factory. ``uvicorn service.app:app`` serves ``create_app()`` with settings from the
environment; tests call ``create_app(Settings(...))``.

The bundle is loaded in the lifespan (startup), not at import: a missing bundle leaves
the process up with /readyz answering 503, and the watcher loads it once it appears.
"""

from __future__ import annotations

import logging
from contextlib import asynccontextmanager

from fastapi import Depends, FastAPI

from service.core import errors
from service.core.config import Settings
from service.core.security import BodyGuardMiddleware, require_api_key
from service.metrics import Metrics, MetricsMiddleware
from service.routes import admin, docs, events, health, item_writes, items, recommend, ui
from service.runtime import Runtime
from service.schemas import declare_limits

DESCRIPTION = """Candidate retrieval: a two-tower user encoder + a FAISS inner-product index.

`/recommend` resolves explicit `features` / `recent_items` first, then the server-side
state of a `user_id` (bundle profile + `/events`), else popularity. Set the `X-API-Key`
header when the server has `API_KEY` set.
"""


def _configure_logging(level: str) -> None:
    logger = logging.getLogger("service")
    logger.setLevel(level.upper())
    if not logging.getLogger().handlers and not logger.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        logger.addHandler(handler)


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()
    _configure_logging(settings.log_level)
    metrics = Metrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        app.state.runtime = Runtime(settings, metrics)
        await app.state.runtime.start()
        try:
            yield
        finally:
            await app.state.runtime.stop()

    app = FastAPI(
        title="towerrec",
        version="0.1.0",
        description=DESCRIPTION,
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
    )
    app.state.settings, app.state.metrics = settings, metrics
    plain_openapi = app.openapi
    app.openapi = lambda: declare_limits(plain_openapi(), settings)  # MAX_K etc. in the schema
    errors.install(app)

    protected = [Depends(require_api_key)]
    # the router tries routes in order: the busiest first
    app.include_router(recommend.router, dependencies=protected)
    app.include_router(items.router, dependencies=protected)
    app.include_router(events.router, dependencies=protected)
    app.include_router(health.public)
    app.include_router(health.router, dependencies=protected)
    app.include_router(admin.router)
    app.include_router(item_writes.router)  # the item API: admin key (as /admin)
    app.include_router(ui.public)  # the dashboard page: no data, asks for the key
    app.include_router(ui.router, dependencies=protected)
    app.include_router(docs.build_router([] if settings.public_docs else protected))

    app.add_middleware(BodyGuardMiddleware, limit=settings.max_body_bytes)
    app.add_middleware(MetricsMiddleware, metrics=metrics)  # outermost: sees every request
    return app


app = create_app()
