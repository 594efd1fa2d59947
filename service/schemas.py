"""Request and response bodies (pydantic v2).

Requests are strict (no type coercion) and refuse unknown fields. Every string a client
sends must be valid Unicode text (a lone surrogate such as ``"\\ud800"`` is a 422, since
it cannot be stored in Redis or written back as UTF-8), and every number must be finite
(``NaN``, ``Infinity`` and ``1e400``, which JSON parsers read as infinity, are a 422).
Limits that depend on the settings or on the loaded bundle (``k <= MAX_K``, list lengths,
feature names) are checked in ``service.recommend`` and reported in the same 422 shape.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    model_validator,
)


def _unicode(value: str) -> str:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("must be valid Unicode text (no lone surrogates)") from None
    return value


Text = Annotated[str, AfterValidator(_unicode)]
ItemId = Annotated[Text, StringConstraints(min_length=1, max_length=128)]
UserId = Annotated[Text, StringConstraints(min_length=1, max_length=128)]
EventId = Annotated[Text, StringConstraints(min_length=1, max_length=128)]
FiniteFloat = Annotated[float, Field(allow_inf_nan=False)]
FeatureName = Annotated[Text, StringConstraints(min_length=1, max_length=64)]
FeatureValue = Text | int | FiniteFloat | list[Text] | None

Strategy = Literal["sequence", "features", "features+sequence", "id", "popular"]
CacheStatus = Literal["hit", "miss", "off"]


class StrictModel(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid")


class Filter(StrictModel):
    genres_any: list[Annotated[Text, StringConstraints(min_length=1, max_length=64)]] | None = (
        Field(
            None,
            min_length=1,
            max_length=64,
            description="Keep only items having at least one of these genres.",
        )
    )


class RecommendRequest(StrictModel):
    user_id: UserId | None = Field(
        None,
        description="Known user (bundle users or /events); used when no explicit "
        "features / recent_items are given, and for `exclude_seen`.",
    )
    features: dict[FeatureName, FeatureValue] | None = Field(
        None,
        description="User features keyed by the bundle's user feature names; "
        "unknown values map to the unknown bucket and are reported.",
        examples=[{"gender": "F", "age": 25, "occupation": "writer"}],
    )
    recent_items: list[ItemId] | None = Field(
        None,
        description="Recently consumed item ids, oldest first, newest last (at most "
        "MAX_RECENT_ITEMS; an item may repeat: a re-view or re-purchase). Unknown ids are "
        "dropped and reported in `unknown_items`.",
    )
    k: int = Field(10, ge=1, description="Number of items (1..MAX_K).")
    exclude_seen: bool = Field(
        True, description="Drop recent_items and the user's stored history from the answer."
    )
    exclude_items: list[ItemId] | None = Field(
        None, description="Item ids never to return (at most MAX_RECENT_ITEMS)."
    )
    filter: Filter | None = Field(None, description="Item-metadata filter.")


class BatchRequest(StrictModel):
    requests: list[RecommendRequest] = Field(
        ..., min_length=1, description="Up to MAX_BATCH /recommend bodies, answered in order."
    )


class Item(BaseModel):
    item_id: str
    score: float | None = Field(
        None, description="Inner product user·item; null for the popularity fallback."
    )
    title: str | None = None
    genres: list[str] = []


class RecommendResponse(BaseModel):
    items: list[Item]
    model_version: str
    strategy: Strategy
    cache: CacheStatus = Field(
        description="hit / miss of the user-vector cache; off when it was not consulted "
        "(disabled, Redis unavailable, or no vector needed as for `popular`)."
    )
    unknown_items: list[str] = Field(
        [], description="Ids from recent_items / exclude_items the catalog does not know."
    )
    unknown_features: dict[str, FeatureValue] = Field(
        {}, description="Feature values training never saw (encoded as unknown)."
    )
    warnings: list[str] = Field(
        [], description="E.g. fewer than k items left after exclusions and filter."
    )


class BatchResponse(BaseModel):
    responses: list[RecommendResponse]
    model_version: str


class SimilarResponse(BaseModel):
    item_id: str
    items: list[Item]
    model_version: str


class ItemResponse(BaseModel):
    item_id: str
    title: str | None = None
    genres: list[str] = []
    active: bool = True


class Event(StrictModel):
    user_id: UserId
    item_id: ItemId
    timestamp: FiniteFloat | None = Field(
        None,
        description="Unix seconds. When every event of a call has one, each user's events "
        "are appended in timestamp order (ties keep their order); otherwise in the order given.",
    )
    event_id: EventId | None = Field(
        None,
        description="Client-chosen id, unique per user: an event whose id was recorded in "
        "the last EVENT_ID_TTL_S is not recorded again (retries are safe).",
    )


class EventBatch(StrictModel):
    """What POST /events takes: ``{"events": [...]}``, a bare array, or one event. The
    other two forms are read as ``{"events": [...]}``, so errors always name
    ``["body", "events", n, field]``."""

    events: list[Event] = Field(..., min_length=1)

    @model_validator(mode="before")
    @classmethod
    def _one_shape(cls, value: Any) -> Any:
        if isinstance(value, list):
            return {"events": value}
        if isinstance(value, dict) and "events" not in value:
            return {"events": [value]}
        return value


EVENTS_BODY_SCHEMA = {
    "anyOf": [
        {"$ref": "#/components/schemas/EventBatch"},
        {"type": "array", "items": {"$ref": "#/components/schemas/Event"}, "minItems": 1},
        {"$ref": "#/components/schemas/Event"},
    ]
}


class UserEvents(BaseModel):
    """What happened to one user's events (positions index the request's event list)."""

    user_id: str
    status: Literal["recorded", "duplicate", "failed"]
    recorded: list[int] = []
    duplicates: list[int] = Field([], description="event_id already recorded: not again.")
    failed: list[int] = Field(
        [],
        description="Not confirmed (Redis error or timeout): retry them. With event_ids a "
        "retry records each at most once.",
    )
    error: str | None = None


class EventsResponse(BaseModel):
    recorded: int
    duplicates: int
    failed: int
    durable: bool = Field(description="False when histories live in process (no REDIS_URL).")
    users: list[UserEvents]


class CacheState(BaseModel):
    backend: Literal["redis", "redis-cluster", "local", "off"]
    state: Literal["up", "down", "local", "off"]


class Readiness(BaseModel):
    status: Literal["ready", "not ready"]
    model_version: str | None
    cache: CacheState
    redis_required: bool
    last_reload_failed: bool = Field(
        False, description="The last reload failed (details: server log, /admin/reload)."
    )
    reason: str | None = None


class ReloadResponse(BaseModel):
    reloaded: bool
    model_version: str
    previous_version: str | None = None
    message: str = ""


class ErrorDetail(BaseModel):
    detail: str


# --- the item API (PUT / DELETE /items, POST /items/batch) ------------------------------
Genre = Annotated[Text, StringConstraints(min_length=1, max_length=64)]


class ItemWrite(StrictModel):
    """A whole item, as PUT /items/{item_id} takes it (PUT replaces: omitted fields are
    empty, they do not keep old values)."""

    title: Annotated[Text, StringConstraints(max_length=512)] = Field(
        "", description="Display title."
    )
    genres: list[Genre] | None = Field(
        None,
        max_length=64,
        description="Metadata genres (what `filter.genres_any` matches); default: the "
        "`genres` feature when the model has one.",
    )
    features: dict[FeatureName, FeatureValue] = Field(
        ...,
        description="Item features keyed by the bundle's item feature names (at least "
        "one); the item tower embeds the item from them. Unknown values map to the "
        "unknown bucket.",
        examples=[{"genres": ["Drama"], "year": 1999}],
    )


class ItemUpsert(ItemWrite):
    item_id: ItemId


class ItemBatchRequest(StrictModel):
    upsert: list[ItemUpsert] = Field(
        [], description="Items to add (new id) or replace (known id), whole."
    )
    delete: list[ItemId] = Field([], description="Ids of items to remove.")


class ItemWriteResponse(BaseModel):
    """What one write did: one new index version holding all of its changes."""

    index_version: int = Field(description="The index version the change was written as.")
    model_version: str
    added: list[str] = []
    replaced: list[str] = []
    removed: list[str] = []
    active_items: int = Field(description="Items served in the new version.")


def declare_limits(openapi: dict, settings) -> dict:
    """``openapi`` (FastAPI's schema of these models) with the limits that come from the
    settings declared where they apply: ``k <= MAX_K``, ``MAX_RECENT_ITEMS``,
    ``MAX_BATCH``, ``MAX_EVENTS``. The models cannot carry them (they are built at import,
    the settings per app), and the checks stay in the routes, which answer the same 422.
    Idempotent: it sets values, so it may run on every /openapi.json."""
    models = openapi["components"]["schemas"]

    def field(model: str, name: str) -> dict:
        prop = models[model]["properties"][name]
        return next((s for s in prop.get("anyOf", []) if s.get("type") != "null"), prop)

    field("RecommendRequest", "k")["maximum"] = settings.max_k
    for name in ("recent_items", "exclude_items"):
        field("RecommendRequest", name)["maxItems"] = settings.max_recent_items
    field("BatchRequest", "requests")["maxItems"] = settings.max_batch
    field("EventBatch", "events")["maxItems"] = settings.max_events
    body = openapi["paths"]["/events"]["post"]["requestBody"]["content"]["application/json"]
    for shape in body["schema"]["anyOf"]:
        if shape.get("type") == "array":
            shape["maxItems"] = settings.max_events
    return openapi
