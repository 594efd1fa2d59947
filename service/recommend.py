"""/recommend logic: validate against the bundle, resolve the user, cache, compute, answer.

Resolution order for one request:
1. explicit inputs — ``features`` and/or ``recent_items`` (known ids only) — strategy
   ``features``, ``sequence`` or ``features+sequence``; cache key ``h:<sha256>`` of the
   canonical JSON of those inputs;
2. else a ``user_id`` with server-side state: the bundle's users.json profile (features,
   history, id embedding) and/or events posted to /events — strategy ``id``; cache key
   ``u:<user_id>``. A user unknown to the bundle but with events is resolved the same way
   from the event sequence alone (still ``id``: it was resolved from the user id);
3. else ``popular`` (popularity.json), with the same exclusions and filter.

Whatever the model has no input for is fed as "unknown": missing features -> the
unknown bucket, no sequence -> no sequence branch, no known id -> id 0.

``exclude_seen`` (default) removes ``recent_items`` and the stored history of ``user_id``
(bundle history + events); ``exclude_items`` is always removed. ``k`` above MAX_K is a
422; a ``k`` larger than what is left after exclusions and filter returns fewer items and
says so in ``warnings``.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from fastapi.exceptions import RequestValidationError

from service import render
from service.cache import from_bytes, history_fingerprint, input_digest, to_bytes
from service.config import Settings
from service.engine import Engine, Job, Query, Subset
from service.runtime import Runtime
from service.schemas import RecommendRequest

Loc = tuple[str | int, ...]


def error(
    loc: Loc, msg: str, type_: str = "value_error", input_: Any = None, ctx: dict | None = None
) -> dict:
    """One error in the shape of pydantic's (what FastAPI puts in a 422 ``detail``)."""
    out = {"type": type_, "loc": loc, "msg": msg, "input": input_}
    if ctx:
        out["ctx"] = ctx
    return out


def too_long(loc: Loc, value: list, limit: int, setting: str) -> dict:
    return error(
        loc,
        f"List should have at most {limit} items after validation, not {len(value)} ({setting})",
        "too_long",
        value,
        {"field_type": "List", "max_length": limit, "actual_length": len(value)},
    )


def check_limits(req: RecommendRequest, loc: Loc, settings: Settings) -> list[dict]:
    errors = []
    if req.k > settings.max_k:
        errors.append(
            error(
                (*loc, "k"),
                f"Input should be less than or equal to {settings.max_k} (MAX_K)",
                "less_than_equal",
                req.k,
                {"le": settings.max_k},
            )
        )
    for name in ("recent_items", "exclude_items"):
        value = getattr(req, name)
        if value is not None and len(value) > settings.max_recent_items:
            errors.append(
                too_long((*loc, name), value, settings.max_recent_items, "MAX_RECENT_ITEMS")
            )
    return errors


_KIND_TYPES = {
    "categorical": ((str, int), "a string"),
    "bucket": ((int, float), "a number"),
    "multi": ((list,), "a list of strings"),
}


def check_features(
    features: dict[str, Any] | None, loc: Loc, engine: Engine
) -> tuple[list[dict], dict[str, Any]]:
    """(errors, unknown values). Names must be the bundle's user features; values of the
    kind's type; values training never saw are reported, not refused."""
    errors: list[dict] = []
    unknown: dict[str, Any] = {}
    if not features:
        return errors, unknown
    known_names = ", ".join(engine.spec_by_name) or "(this model has no user features)"
    for name, value in features.items():
        spec = engine.spec_by_name.get(name)
        if spec is None:
            errors.append(
                error(
                    (*loc, "features", name),
                    f"unknown user feature {name!r}; known: {known_names}",
                    "extra_forbidden",
                    value,
                )
            )
            continue
        if value is None:
            continue
        types, label = _KIND_TYPES[spec.kind]
        if isinstance(value, bool) or not isinstance(value, types):
            errors.append(
                error(
                    (*loc, "features", name),
                    f"feature {name!r} ({spec.kind}) should be {label}",
                    "type_error",
                    value,
                )
            )
            continue
        _, known = spec.encode(value)
        if not known:
            unknown[name] = value
    return errors, unknown


@dataclass
class Plan:
    strategy: str
    k: int
    exclude: set[int]
    allowed: Subset | None
    query: Query | None = None
    cache_key: str | None = None
    history_key: str | None = None
    events: list[str] | None = None  # the event history the vector was computed from
    vector: np.ndarray | None = None
    cache: str = "off"
    unknown_items: list[str] = field(default_factory=list)
    unknown_features: dict[str, Any] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)


def validate(
    req: RecommendRequest, loc: Loc, engine: Engine, settings: Settings
) -> tuple[list[dict], dict[str, Any]]:
    errors = check_limits(req, loc, settings)
    feature_errors, unknown = check_features(req.features, loc, engine)
    return errors + feature_errors, unknown


async def plan(
    req: RecommendRequest, engine: Engine, runtime: Runtime, unknown_features: dict[str, Any]
) -> Plan:
    """Everything but the compute: resolve the inputs, read history and cache."""
    cache, history = runtime.cache, runtime.history
    unknown_items: list[str] = []
    recent: list[int] = []
    for item_id in req.recent_items or []:
        i = engine.internal(item_id)
        if i is None:
            unknown_items.append(item_id)
        else:
            recent.append(i)
    exclude: set[int] = set()
    for item_id in req.exclude_items or []:
        i = engine.internal(item_id)
        if i is None:
            unknown_items.append(item_id)
        else:
            exclude.add(i)
    allowed = None
    warnings: list[str] = []
    if req.filter is not None and req.filter.genres_any:
        missing = [g for g in req.filter.genres_any if g not in engine.genres]
        if missing:
            warnings.append(f"unknown genres in filter.genres_any: {', '.join(missing)}")
        allowed = engine.genre_filter(req.filter.genres_any)

    features = {k: v for k, v in (req.features or {}).items() if v not in (None, "", [])}
    use_features = bool(features) and engine.has_features
    use_sequence = bool(recent) and engine.has_sequence
    if features and not engine.has_features:
        warnings.append("this model has no user-feature branch; features were ignored")
    if recent and not engine.has_sequence:
        warnings.append("this model has no sequence encoder; recent_items only exclude")

    p = Plan(
        strategy="popular",
        k=req.k,
        exclude=exclude,
        allowed=allowed,
        unknown_items=unknown_items,
        unknown_features=unknown_features,
        warnings=warnings,
    )
    if req.exclude_seen:
        exclude.update(recent)
    bundle_user = engine.user(req.user_id) if req.user_id is not None else None
    events: list[str] | None = []

    if use_features or use_sequence:
        p.strategy = (
            "features+sequence"
            if use_features and use_sequence
            else "features"
            if use_features
            else "sequence"
        )
        sequence = recent[-engine.cfg.max_len :] if use_sequence else []
        p.query = Query(features=features if use_features else {}, sequence=sequence)
        p.cache_key = None
        if cache.enabled:
            digest = input_digest(
                features if use_features else {}, [engine.item_ids[i] for i in sequence]
            )
            p.cache_key = cache.key(engine.version, "h", digest)
        if req.user_id is not None and req.exclude_seen:
            events, raw, p.cache = await history.get_with_vector(req.user_id, cache, p.cache_key)
        elif p.cache_key is not None:
            raw, p.cache = await cache.get(p.cache_key)
        else:
            raw = None
    elif req.user_id is not None:
        key = cache.key(engine.version, "u", req.user_id) if cache.enabled else None
        events, raw, status = await history.get_with_vector(req.user_id, cache, key)
        if bundle_user is not None or events:
            p.strategy = "id"
            seq = (bundle_user[2] if bundle_user else []) + _known(engine, events or [])
            p.query = Query(
                features=dict(bundle_user[1]) if bundle_user and engine.has_features else {},
                sequence=seq[-engine.cfg.max_len :] if engine.has_sequence else [],
                user_index=bundle_user[0] if bundle_user else 0,
            )
            p.cache_key, p.cache = key, status
            if events is not None:
                p.history_key, p.events = history.key(req.user_id), events
        else:
            raw = None
    else:
        raw = None

    if events is None:
        warnings.append("event history unavailable (redis down): used the bundle history only")
        events = []
    if req.exclude_seen and req.user_id is not None:
        if bundle_user is not None:
            exclude.update(bundle_user[2])
        exclude.update(_known(engine, events))

    if p.query is None:
        p.cache = "off"
    elif raw is not None:
        p.vector = from_bytes(raw, engine.cfg.vector_dim)
        if p.vector is None:
            p.cache = "miss"
    if p.cache == "hit":
        runtime.metrics.cache_hits.inc()
    elif p.cache == "miss":
        runtime.metrics.cache_misses.inc()
    return p


def _known(engine: Engine, ids: list[str]) -> list[int]:
    out = []
    for item_id in ids:
        i = engine.internal(item_id)
        if i is not None:
            out.append(i)
    return out


def _render(engine: Engine, p: Plan, ids: list[int], scores: list[float] | None) -> str:
    if len(ids) < p.k:
        p.warnings.append(f"only {len(ids)} items left after exclusions and filter (k={p.k})")
    return render.recommendation(
        engine.fragments.items(ids, scores),
        model_version=engine.version,
        strategy=p.strategy,
        cache=p.cache,
        unknown_items=p.unknown_items,
        unknown_features=p.unknown_features,
        warnings=p.warnings,
    )


async def answer(plans: list[Plan], engine: Engine, runtime: Runtime) -> list[str]:
    """Compute every plan that needs the model in one batch, then render the answers
    (RecommendResponse JSON bodies)."""
    computed = [p for p in plans if p.query is not None]
    jobs = [
        Job(
            query=None if p.vector is not None else p.query,
            vector=p.vector,
            k=p.k,
            exclude=p.exclude,
            allowed=p.allowed,
        )
        for p in computed
    ]
    results = await runtime.batcher.run(engine, jobs)
    by_plan = {id(p): r for p, r in zip(computed, results, strict=True)}

    writes = []
    for p in computed:
        if p.vector is None and p.cache == "miss" and p.cache_key is not None:
            writes.append(
                runtime.cache.set(
                    p.cache_key,
                    to_bytes(by_plan[id(p)].vector),
                    history_key=p.history_key,
                    history_fp=history_fingerprint(p.events) if p.history_key else None,
                )
            )
    if len(writes) == 1:  # the common case: no task for gather to create
        await writes[0]
    elif writes:
        await asyncio.gather(*writes)

    out = []
    for p in plans:
        runtime.metrics.count_strategy(p.strategy)
        if p.query is None:
            out.append(_render(engine, p, engine.popular(p.k, p.exclude, p.allowed), None))
        else:
            r = by_plan[id(p)]
            out.append(_render(engine, p, r.ids, r.scores))
    return out


async def recommend(
    requests: list[RecommendRequest], engine: Engine, runtime: Runtime, locs: list[Loc]
) -> list[str]:
    """Validate all requests (422 naming every bad field), then answer them together
    (RecommendResponse JSON bodies, in order)."""
    errors: list[dict] = []
    unknowns = []
    for req, loc in zip(requests, locs, strict=True):
        errs, unknown = validate(req, loc, engine, runtime.settings)
        errors.extend(errs)
        unknowns.append(unknown)
    if errors:
        raise RequestValidationError(errors)
    if len(requests) == 1:  # the common case: no task for gather to create
        plans = [await plan(requests[0], engine, runtime, unknowns[0])]
    else:
        pairs = zip(requests, unknowns, strict=True)
        plans = await asyncio.gather(*(plan(req, engine, runtime, u) for req, u in pairs))
    return await answer(list(plans), engine, runtime)
