"""POST /events: append consumed items to users' histories, each event at most once.

Unknown items are a 422 for the whole call (nothing written). Then each user's events
are recorded on their own (one slot of a Redis Cluster each: there is no cross-user
transaction), and the answer says per user what was recorded, what was a duplicate of an
earlier ``event_id`` and what failed. 503 only when nothing was recorded and something
failed; a retry of the failed events with the same ``event_id`` records each once.
"""

from __future__ import annotations

from fastapi import APIRouter, Body
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from service.core.errors import responses
from service.deps import EngineDep, MetricsDep, SettingsDep, StoreDep
from service.engine import Engine
from service.recommend import error, too_long
from service.schemas import EVENTS_BODY_SCHEMA, Event, EventBatch, EventsResponse

router = APIRouter(tags=["events"])


def _check(events: list[Event], engine: Engine, limit: int) -> None:
    if len(events) > limit:
        raise RequestValidationError([too_long(("body", "events"), events, limit, "MAX_EVENTS")])
    errors = [
        error(("body", "events", n, "item_id"), f"unknown item id {e.item_id!r}", "unknown_item")
        | {"input": e.item_id}
        for n, e in enumerate(events)
        if engine.internal(e.item_id) is None
    ]
    if errors:
        raise RequestValidationError(errors)


def by_user(events: list[Event]) -> dict[str, list[tuple[int, Event]]]:
    """(position, event) per user, in timestamp order when every event has one."""
    order = list(enumerate(events))
    if all(e.timestamp is not None for e in events):
        order.sort(key=lambda pair: pair[1].timestamp)  # stable for ties
    per_user: dict[str, list[tuple[int, Event]]] = {}
    for pos, event in order:
        per_user.setdefault(event.user_id, []).append((pos, event))
    return per_user


@router.post(
    "/events",
    response_model=EventsResponse,
    summary="Record interactions: one event, {events: [...]}, or a bare array",
    responses=responses(400, 401, 413, 415, 422)
    | {
        503: {
            "description": "Nothing was recorded: every user failed (Redis unavailable, or "
            "it refused the users' keys); the body says which",
            "model": EventsResponse,
        }
    },
    openapi_extra={
        "requestBody": {"content": {"application/json": {"schema": EVENTS_BODY_SCHEMA}}}
    },
)
async def post_events(
    engine: EngineDep,
    store: StoreDep,
    settings: SettingsDep,
    metrics: MetricsDep,
    body: EventBatch = Body(...),
) -> JSONResponse:
    _check(body.events, engine, settings.max_events)
    users = await store.append(by_user(body.events))
    answer = EventsResponse(
        recorded=sum(len(u.recorded) for u in users),
        duplicates=sum(len(u.duplicates) for u in users),
        failed=sum(len(u.failed) for u in users),
        durable=store.durable,
        users=users,
    )
    for result in ("recorded", "duplicates", "failed"):
        metrics.events.labels(result=result.rstrip("s")).inc(getattr(answer, result))
    nothing = answer.failed and not answer.recorded
    headers = {"Retry-After": "1"} if nothing else None
    return JSONResponse(answer.model_dump(), status_code=503 if nothing else 200, headers=headers)
