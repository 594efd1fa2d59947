"""POST /events: append consumed items to users' histories (strict: unknown items -> 422)."""

from __future__ import annotations

from fastapi import APIRouter, Body, HTTPException, Request
from fastapi.exceptions import RequestValidationError

from service.cache import CacheUnavailable
from service.deps import engine_of, runtime_of
from service.recommend import error, too_long
from service.schemas import Event, EventBatch, EventsResponse

router = APIRouter(tags=["events"])


@router.post(
    "/events",
    response_model=EventsResponse,
    summary="Record interactions: one event or {events: [...]}",
)
async def post_events(request: Request, body: EventBatch | Event = Body(...)) -> EventsResponse:
    engine, runtime = engine_of(request), runtime_of(request)
    batch = isinstance(body, EventBatch)
    events = body.events if batch else [body]
    limit = runtime.settings.max_events
    if len(events) > limit:
        raise _invalid([too_long(("body", "events"), events, limit, "MAX_EVENTS")])
    errors = []
    for n, event in enumerate(events):
        if engine.internal(event.item_id) is None:
            loc = ("body", "events", n, "item_id") if batch else ("body", "item_id")
            errors.append(
                error(loc, f"unknown item id {event.item_id!r}", "unknown_item", event.item_id)
            )
    if errors:
        raise _invalid(errors)  # nothing of this batch is written

    if all(event.timestamp is not None for event in events):
        events = sorted(events, key=lambda event: event.timestamp)  # stable for ties
    per_user: dict[str, list[str]] = {}
    for event in events:
        per_user.setdefault(event.user_id, []).append(event.item_id)
    invalidate = (
        [runtime.cache.key(engine.version, "u", user) for user in per_user]
        if runtime.cache.enabled
        else []
    )
    try:
        await runtime.history.append(per_user, invalidate)
    except CacheUnavailable as e:
        raise HTTPException(
            503,
            f"event store (redis) unavailable, nothing recorded: {e}",
            headers={"Retry-After": "1"},
        ) from e
    return EventsResponse(
        accepted=len(events), users=len(per_user), durable=runtime.history.durable
    )


def _invalid(errors: list[dict]) -> RequestValidationError:
    return RequestValidationError(errors)
