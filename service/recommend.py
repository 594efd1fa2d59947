"""/recommend, top to bottom: resolve the inputs, read the user store, encode what the
cache did not have, search the index, render.

Resolution order for one request:
1. explicit inputs — ``features`` and/or ``recent_items`` (known ids only) — strategy
   ``features``, ``sequence`` or ``features+sequence``; the vector is cached under a hash
   of those inputs;
2. else a ``user_id`` with server-side state: the bundle's users.json profile (features,
   history, id embedding) and/or events posted to /events — strategy ``id``; the vector
   is cached per user, tagged with the event history it was computed from. A user unknown
   to the bundle but with events is resolved from the event sequence alone (still ``id``);
3. else ``popular`` (popularity.json), with the same exclusions and filter.

Whatever the model has no input for is fed as "unknown": missing features -> the
unknown bucket, no sequence -> no sequence branch, no known id -> id 0.
"""

from __future__ import annotations

import asyncio
import math
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from fastapi.exceptions import RequestValidationError

from service import render
from service.batcher import Batcher
from service.core.config import Settings
from service.deps import Serving
from service.engine import Engine, Job, Query, Subset
from service.metrics import Metrics
from service.schemas import RecommendRequest
from service.store import UserStore, VectorKey, input_digest

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
        msg = f"Input should be less than or equal to {settings.max_k} (MAX_K)"
        errors.append(error((*loc, "k"), msg, "less_than_equal", req.k, {"le": settings.max_k}))
    for name in ("recent_items", "exclude_items"):
        value = getattr(req, name)
        if value is not None and len(value) > settings.max_recent_items:
            errors.append(
                too_long((*loc, name), value, settings.max_recent_items, "MAX_RECENT_ITEMS")
            )
    return errors


_KIND_TYPES = {
    "categorical": ((str, int), "a string"),
    "bucket": ((int, float), "a finite number"),
    "multi": ((list,), "a list of strings"),
}


def _finite(value: Any) -> bool:
    try:
        return math.isfinite(float(value))
    except OverflowError:  # an integer beyond float range, e.g. 10**400
        return False


def check_features(features: dict[str, Any] | None, loc: Loc, engine: Engine) -> list[dict]:
    """Names must be the bundle's user features, values of the kind's type."""
    return feature_errors(engine.spec_by_name, features, loc, "user")


def feature_errors(
    specs: dict[str, Any], features: dict[str, Any] | None, loc: Loc, side: str
) -> list[dict]:
    """422 errors for ``features`` against ``specs`` (name -> FeatureSpec) of one tower
    side (``user`` / ``item``): unknown names, values not of the kind's type."""
    errors: list[dict] = []
    known_names = ", ".join(specs) or f"(this model has no {side} features)"
    for name, value in (features or {}).items():
        spec, where = specs.get(name), (*loc, "features", name)
        if spec is None:
            msg = f"unknown {side} feature {name!r}; known: {known_names}"
            errors.append(error(where, msg, "extra_forbidden", value))
            continue
        types, label = _KIND_TYPES[spec.kind]
        wrong = isinstance(value, bool) or not isinstance(value, types)
        if value is not None and (wrong or (spec.kind == "bucket" and not _finite(value))):
            msg = f"feature {name!r} ({spec.kind}) should be {label}"
            errors.append(error(where, msg, "type_error", value))
    return errors


@dataclass
class Plan:
    """One request on its way: what it asks, what the store had, what it computes."""

    k: int
    exclude: set[int]
    allowed: Subset | None
    user_id: str | None
    exclude_seen: bool
    strategy: str = "popular"
    query: Query | None = None
    read_history: bool = False  # the user's events are needed (id strategy or exclusion)
    vector_key: VectorKey | None = None
    history: list[str] | None = None  # the events the vector is computed from
    vector: np.ndarray | None = None
    cache: str = "off"
    unknown_items: list[str] = field(default_factory=list)
    unknown_features: dict[str, Any] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)


def _known(engine: Engine, ids: list[str], unknown: list[str] | None = None) -> list[int]:
    """Internal ids of the known items, in order (repeats kept); unknown ids collected."""
    out = []
    for item_id in ids:
        i = engine.internal(item_id)
        if i is not None:
            out.append(i)
        elif unknown is not None:
            unknown.append(item_id)
    return out


def _unknown_values(features: dict[str, Any], engine: Engine) -> dict[str, Any]:
    return {n: v for n, v in features.items() if not engine.spec_by_name[n].encode(v)[1]}


def resolve(req: RecommendRequest, engine: Engine, store: UserStore) -> Plan:
    """The request's inputs against the bundle (already validated)."""
    p = Plan(req.k, set(), None, req.user_id, req.exclude_seen)
    recent = _known(engine, req.recent_items or [], p.unknown_items)
    p.exclude.update(_known(engine, req.exclude_items or [], p.unknown_items))
    if req.filter is not None and req.filter.genres_any:
        missing = [g for g in req.filter.genres_any if g not in engine.genres]
        if missing:
            p.warnings.append(f"unknown genres in filter.genres_any: {', '.join(missing)}")
        p.allowed = engine.genre_filter(req.filter.genres_any)
    features = {k: v for k, v in (req.features or {}).items() if v not in (None, "", [])}
    p.unknown_features = _unknown_values(features, engine)
    if features and not engine.has_features:
        p.warnings.append("this model has no user-feature branch; features were ignored")
    if recent and not engine.has_sequence:
        p.warnings.append("this model has no sequence encoder; recent_items only exclude")
    features = features if engine.has_features else {}
    sequence = recent[-engine.cfg.max_len :] if engine.has_sequence else []
    if req.exclude_seen:
        p.exclude.update(recent)  # exclusion uses the set; the sequence keeps repeats
    if features or sequence:
        names = [n for n, on in (("features", features), ("sequence", sequence)) if on]
        p.strategy, p.query = "+".join(names), Query(features=features, sequence=sequence)
        digest = input_digest(features, [engine.item_ids[i] for i in sequence])
        p.vector_key = store.inputs_key(digest, engine.version)
    elif req.user_id is not None:
        p.vector_key = store.user_key(req.user_id, engine.version)
    p.read_history = req.user_id is not None and (p.query is None or req.exclude_seen)
    return p


async def lookup(p: Plan, engine: Engine, store: UserStore) -> None:
    """Read the user's events and the cached vector (one round trip); settle the strategy
    of a request resolved from its user id, and what it excludes."""
    user = p.user_id if p.read_history else None
    if user is None and p.vector_key is None:
        return
    found = await store.read(user, p.vector_key, engine.cfg.vector_dim)
    events = found.history or []
    if user is not None and found.history is None:
        p.warnings.append("event history unavailable (redis): used the bundle history only")
    bundle_user = engine.user(p.user_id) if p.user_id is not None else None
    if p.query is None and p.user_id is not None and (bundle_user is not None or events):
        index, features, history = bundle_user or (0, {}, [])
        sequence = (history + _known(engine, events))[-engine.cfg.max_len :]
        p.strategy, p.history = "id", found.history
        p.query = Query(
            features=dict(features) if engine.has_features else {},
            sequence=sequence if engine.has_sequence else [],
            user_index=index,
        )
    if p.exclude_seen and p.user_id is not None:
        p.exclude.update(bundle_user[2] if bundle_user else [])
        p.exclude.update(_known(engine, events))
    if p.query is not None:
        p.cache, p.vector = found.cache, found.vector


async def encode_misses(plans: list[Plan], engine: Engine, batcher: Batcher, store: UserStore):
    """Vectors for the plans the cache did not answer: one shared forward pass, then
    cached (a miss only: ``off`` means the store could not say which history it is for)."""
    todo = [p for p in plans if p.query is not None and p.vector is None]
    if not todo:
        return
    vectors = await batcher.encode(engine, [p.query for p in todo])
    for p, vector in zip(todo, vectors, strict=True):
        p.vector = vector
    saves = [store.save(p.vector_key, p.vector, p.history) for p in todo if p.cache == "miss"]
    if saves:
        await asyncio.gather(*saves)


def answer(plans: list[Plan], engine: Engine, metrics: Metrics, dashboard=None) -> list[str]:
    """Search every plan with a vector (one index search), rank the others by popularity,
    and render each RecommendResponse body; each answer is shown to ``dashboard``
    (service.dashboard: exposure, sampled recall checks)."""
    searched = [p for p in plans if p.vector is not None]
    jobs = [Job(p.vector, p.k, p.exclude, p.allowed) for p in searched]
    found = {}
    if jobs:
        started = time.perf_counter()
        found = dict(zip(map(id, searched), engine.search(jobs), strict=True))
        metrics.search.observe(time.perf_counter() - started)
    out = []
    for p in plans:
        metrics.count_strategy(p.strategy)
        metrics.count_cache(p.cache)
        ids, scores = found.get(id(p)) or (engine.popular(p.k, p.exclude, p.allowed), None)
        if dashboard is not None:
            dashboard.served(engine, p, ids, scores)
        if len(ids) < p.k:
            p.warnings.append(f"only {len(ids)} items left after exclusions and filter (k={p.k})")
        out.append(
            render.recommendation(
                engine.fragments.items(ids, scores),
                model_version=engine.version,
                strategy=p.strategy,
                cache=p.cache,
                unknown_items=p.unknown_items,
                unknown_features=p.unknown_features,
                warnings=p.warnings,
            )
        )
    return out


def validate(
    requests: list[RecommendRequest], locs: list[Loc], engine: Engine, settings: Settings
) -> None:
    """422 naming every field the bundle or the settings refuse (all requests at once)."""
    errors = []
    for req, loc in zip(requests, locs, strict=True):
        errors += check_limits(req, loc, settings) + check_features(req.features, loc, engine)
    if errors:
        raise RequestValidationError(errors)


async def recommend(
    requests: list[RecommendRequest], locs: list[Loc], serving: Serving
) -> list[str]:
    """RecommendResponse bodies for ``requests``, in order."""
    engine, store = serving.engine, serving.store
    validate(requests, locs, engine, serving.settings)
    plans = [resolve(req, engine, store) for req in requests]
    if len(plans) == 1:
        await lookup(plans[0], engine, store)
    else:
        await asyncio.gather(*(lookup(p, engine, store) for p in plans))
    await encode_misses(plans, engine, serving.batcher, store)
    return answer(plans, engine, serving.metrics, serving.dashboard)
