"""What routes depend on, as ``Annotated[..., Depends()]`` aliases (FastAPI's
full-stack template style): the settings, the engine a request uses from start to end,
the user store, the metrics; ``ServingDep`` gathers them for the /recommend routes.

The dependencies are ``async def`` functions: FastAPI runs a plain ``def`` dependency (or
a class) in its thread pool, a thread hand-off per request for an attribute read.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, HTTPException, Request

from service.batcher import Batcher
from service.core.config import Settings
from service.dashboard import Dashboard
from service.engine import Engine
from service.metrics import Metrics
from service.runtime import Runtime
from service.store import UserStore


async def get_runtime(request: Request) -> Runtime:
    return request.app.state.runtime


RuntimeDep = Annotated[Runtime, Depends(get_runtime)]


async def get_settings(request: Request) -> Settings:
    return request.app.state.settings


async def get_engine(runtime: RuntimeDep) -> Engine:
    """The current engine, read once per request (a reload swaps it for later requests)."""
    engine = runtime.engine
    if engine is None:
        raise HTTPException(503, "no model loaded yet", headers={"Retry-After": "5"})
    return engine


async def get_store(runtime: RuntimeDep) -> UserStore:
    return runtime.store


async def get_metrics(request: Request) -> Metrics:
    return request.app.state.metrics


SettingsDep = Annotated[Settings, Depends(get_settings)]
EngineDep = Annotated[Engine, Depends(get_engine)]
StoreDep = Annotated[UserStore, Depends(get_store)]
MetricsDep = Annotated[Metrics, Depends(get_metrics)]


@dataclass
class Serving:
    """Everything the /recommend path uses."""

    engine: Engine
    store: UserStore
    batcher: Batcher
    settings: Settings
    metrics: Metrics
    dashboard: Dashboard | None = None  # records answers for /ui (exposure, ANN recall)


async def get_serving(request: Request) -> Serving:
    """The /recommend path's dependencies in one: each dependency FastAPI solves costs
    a measurable share of a cache hit (docs/BENCHMARKS.md, "Load")."""
    runtime: Runtime = request.app.state.runtime
    return Serving(
        await get_engine(runtime),
        runtime.store,
        runtime.batcher,
        runtime.settings,
        runtime.metrics,
        runtime.dashboard,
    )


ServingDep = Annotated[Serving, Depends(get_serving)]
