"""The dashboard: GET /ui (the page and its assets, no key: they hold no data) and the JSON
it reads under /ui/api/* (API key when API_KEY is set, like every data route).

The page is plain HTML, CSS and JavaScript in ``service/static`` (package data, no CDN, no
build step). Besides /ui/api/* it calls the public API itself (/recommend, /items,
/similar-items), with the ``X-API-Key`` the user typed in. What each panel measures:
service/README.md, "Dashboard".
"""

from __future__ import annotations

import os
from pathlib import Path as FilePath
from typing import Any

from fastapi import APIRouter, HTTPException, Path, Query
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, HTMLResponse

from service.core.errors import responses
from service.dashboard import Dashboard, exposure_stats, popularity_counts
from service.deps import EngineDep, RuntimeDep, StoreDep
from service.engine import Engine
from service.recommend import error
from training import bundle

STATIC = FilePath(__file__).resolve().parents[1] / "static"
# the eval report's table columns: training.report.TABLE_KEYS (a test keeps them equal; not
# imported, since training.report pulls the training loop into the service)
TABLE_KEYS = ("HR@10", "NDCG@10", "HR@20", "NDCG@20", "Recall@20", "HR@50", "MRR", "Coverage@10")
ASSETS = {"dashboard.js": "text/javascript", "dashboard.css": "text/css"}

public = APIRouter(include_in_schema=False)
router = APIRouter(prefix="/ui/api", tags=["dashboard"])


@public.get("/ui")
async def page() -> HTMLResponse:
    return HTMLResponse((STATIC / "index.html").read_text(), headers={"Cache-Control": "no-cache"})


@public.get("/ui/static/{name}")
async def asset(name: str) -> FileResponse:
    if name not in ASSETS:
        raise HTTPException(404, f"no dashboard asset {name!r}")
    return FileResponse(
        STATIC / name, media_type=ASSETS[name], headers={"Cache-Control": "no-cache"}
    )


def _report(engine: Engine) -> dict[str, Any]:
    cached = getattr(engine, "_ui_report", None)
    if cached is None:
        try:
            cached = bundle.load_json(engine.path, bundle.REPORT_JSON)
        except (OSError, ValueError):
            cached = {}
        engine._ui_report = cached
    return cached


def _recall(runtime) -> dict[str, Any]:
    """The live ANN recall: over the series window and since the sampler started."""
    dash: Dashboard = runtime.dashboard
    snaps = dash.sampler.snapshots()
    out: dict[str, Any] = {
        "sample": runtime.settings.ann_recall_sample,
        "index": runtime.engine.index.kind if runtime.engine else None,
        "window_s": None,
        "window_recall": None,
        "window_checks": 0,
        "total_recall": None,
        "total_checks": 0,
    }
    if snaps:
        last = snaps[-1]
        out["total_checks"] = int(last["checks"])
        out["total_recall"] = last["found"] / last["relevant"] if last["relevant"] else None
        first = snaps[0]
        out["window_s"] = last["t"] - first["t"]
        relevant = last["relevant"] - first["relevant"]
        out["window_checks"] = int(last["checks"] - first["checks"])
        out["window_recall"] = (last["found"] - first["found"]) / relevant if relevant else None
    return out


@router.get(
    "/model",
    summary="The served bundle: version, data, eval report, curve, index",
    responses=responses(401, 503),
)
async def model(engine: EngineDep, runtime: RuntimeDep) -> dict[str, Any]:
    m, report = engine.manifest, _report(engine)
    section = engine.index.section
    table = {
        name: {
            "valid": {k: entry.get("valid", {}).get(k) for k in TABLE_KEYS},
            "test": {k: entry.get("test", {}).get(k) for k in TABLE_KEYS},
            "train_seconds": entry.get("train_seconds"),
        }
        for name, entry in (report.get("models") or {}).items()
    }
    return {
        "version": engine.version,
        "created_at": m.get("created_at"),
        "loaded_at": engine.loaded_at,
        "dataset": m.get("dataset"),
        "model": {
            k: m.get("model", {}).get(k)
            for k in ("encoder", "dim", "members", "n_layers", "max_len")
        }
        | {"vector_dim": engine.cfg.vector_dim},
        "selected": report.get("selected") or m.get("metrics", {}).get("selected"),
        "metric_keys": list(TABLE_KEYS),
        "report": table,
        "skipped_baselines": report.get("skipped_baselines") or {},
        "history": report.get("history"),
        "has_curve_png": (engine.path / bundle.CURVE).exists(),
        "index": {
            k: section.get(k)
            for k in (
                "kind",
                "params",
                "normalized",
                "version",
                "items",
                "active",
                "tombstones",
                "built_at",
                "updated_at",
            )
        }
        | {"bytes": sum(f.get("bytes", 0) for f in (section.get("files") or {}).values())},
        "recall": _recall(runtime),
    }


@router.get(
    "/curve.png",
    summary="The bundle's training-curve PNG",
    response_class=FileResponse,
    responses={200: {"content": {"image/png": {}}}} | responses(401, 404, 503),
)
async def curve(engine: EngineDep) -> FileResponse:
    path = engine.path / bundle.CURVE
    if not path.exists():
        raise HTTPException(404, "this bundle has no training curve")
    return FileResponse(path, media_type="image/png")


@router.get(
    "/live",
    summary="This replica's requests/s, latency, cache, strategies, errors",
    responses=responses(401, 422),
)
async def live(
    runtime: RuntimeDep,
    window_s: float = Query(60.0, gt=0, le=86400, description="Seconds the summary covers"),
) -> dict[str, Any]:
    return runtime.dashboard.sampler.live(window_s) | {"served_by_pid": os.getpid()}


@router.get(
    "/exposure",
    summary="Coverage, Gini and popularity lift of the last answers",
    responses=responses(401, 503),
)
async def exposure(engine: EngineDep, runtime: RuntimeDep) -> dict[str, Any]:
    answers = runtime.dashboard.exposure.recent()
    rows = [i for i in range(engine.n_items) if engine.is_active(i)]
    catalog = [engine.item_ids[i] for i in rows]
    popularity = popularity_counts(engine)[rows]
    stats = exposure_stats(answers, catalog, popularity)
    for it in stats["top"]:
        it["title"] = engine.item(engine.internal(it["item_id"]))["title"]
    return stats | {"window_answers": runtime.settings.exposure_answers}


@router.get(
    "/recall",
    summary="Live recall@k of the served index (sampled exact re-runs)",
    responses=responses(401),
)
async def recall(runtime: RuntimeDep) -> dict[str, Any]:
    return _recall(runtime)


def _titles(engine: Engine) -> list[str]:
    cached = getattr(engine, "_ui_titles", None)
    if cached is None:
        cached = [(engine.item(i)["title"] or "").casefold() for i in range(engine.n_items)]
        engine._ui_titles = cached
    return cached


def _brief(engine: Engine, i: int) -> dict[str, Any]:
    meta = engine.item(i)
    return {"item_id": meta["id"], "title": meta["title"], "genres": meta["genres"]}


@router.get(
    "/search",
    summary="Items by id or title (case-insensitive substring)",
    responses=responses(401, 422, 503),
)
async def search(
    engine: EngineDep,
    q: str = Query(..., min_length=1, max_length=200, description="An item id or part of a title"),
    limit: int = Query(20, ge=1, le=100),
) -> dict[str, Any]:
    out, seen = [], set()
    exact = engine.internal(q.strip())
    if exact is not None:
        out.append(_brief(engine, exact))
        seen.add(exact)
    needle = q.strip().casefold()
    if needle:
        for i, title in enumerate(_titles(engine)):
            if len(out) >= limit:
                break
            if needle in title and i not in seen and engine.is_active(i):
                out.append(_brief(engine, i))
    return {"query": q, "items": out[:limit]}


@router.get(
    "/users/{user_id}",
    summary="A user's features and history (bundle + /events)",
    responses=responses(401, 404, 422, 503),
)
async def user(
    engine: EngineDep,
    store: StoreDep,
    user_id: str = Path(..., min_length=1, max_length=128),
) -> dict[str, Any]:
    try:
        user_id.encode("utf-8")
    except UnicodeEncodeError:
        msg = "must be valid Unicode text (no lone surrogates)"
        raise RequestValidationError(
            [error(("path", "user_id"), msg, "value_error", user_id)]
        ) from None
    known = engine.user(user_id)
    found = await store.read(user_id, None, engine.cfg.vector_dim)
    events = [i for i in (found.history or []) if engine.internal(i) is not None]
    if known is None and not events:
        raise HTTPException(404, f"unknown user id {user_id!r} (not in the bundle, no events)")
    _, features, history = known or (0, {}, [])
    items = [_brief(engine, i) for i in history] + [
        _brief(engine, engine.internal(i)) for i in events
    ]
    return {
        "user_id": user_id,
        "in_bundle": known is not None,
        "features": features,
        "bundle_history": len(history),
        "events": len(events),
        "events_available": found.history is not None,
        "history": items,
    }


@router.get(
    "/schema",
    summary="The user features the model takes, and example users",
    responses=responses(401, 503),
)
async def schema(engine: EngineDep, runtime: RuntimeDep) -> dict[str, Any]:
    features = []
    for spec in engine.specs:
        entry: dict[str, Any] = {"name": spec.name, "kind": spec.kind}
        if spec.kind in ("categorical", "multi"):
            entry["values"] = list(spec.vocab)[:200]
        elif spec.kind == "bucket":
            entry["boundaries"] = list(spec.boundaries)
        features.append(entry)
    return {
        "features": features,
        "has_sequence": engine.has_sequence,
        "example_users": list(engine.users)[:5],
        "max_k": runtime.settings.max_k,
    }
