"""Request and response bodies (pydantic v2).

Requests are strict (no type coercion) and refuse unknown fields. Limits that depend on
the settings or on the loaded bundle (``k <= MAX_K``, list lengths, feature names) are
checked in ``service.validation`` and reported in the same 422 shape as pydantic's own.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, field_validator

ItemId = Annotated[str, StringConstraints(min_length=1, max_length=128)]
UserId = Annotated[str, StringConstraints(min_length=1, max_length=128)]
FeatureValue = str | int | float | list[str] | None

Strategy = Literal["sequence", "features", "features+sequence", "id", "popular"]
CacheStatus = Literal["hit", "miss", "off"]


class StrictModel(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid")


def _no_duplicates(values: list[str] | None) -> list[str] | None:
    if values is None:
        return values
    seen: set[str] = set()
    dupes = [v for v in values if v in seen or seen.add(v)]
    if dupes:
        raise ValueError(f"duplicate item ids: {', '.join(sorted(set(dupes)))}")
    return values


class Filter(StrictModel):
    genres_any: list[Annotated[str, StringConstraints(min_length=1, max_length=64)]] | None = Field(
        None,
        min_length=1,
        max_length=64,
        description="Keep only items having at least one of these genres.",
    )


class RecommendRequest(StrictModel):
    user_id: UserId | None = Field(
        None,
        description="Known user (bundle users or /events); used when no explicit "
        "features / recent_items are given, and for `exclude_seen`.",
    )
    features: dict[str, FeatureValue] | None = Field(
        None,
        description="User features keyed by the bundle's user feature names; "
        "unknown values map to the unknown bucket and are reported.",
        examples=[{"gender": "F", "age": 25, "occupation": "writer"}],
    )
    recent_items: list[ItemId] | None = Field(
        None,
        description="Recently consumed item ids, newest last (at most MAX_RECENT_ITEMS, "
        "no duplicates). Unknown ids are dropped and reported in `unknown_items`.",
    )
    k: int = Field(10, ge=1, description="Number of items (1..MAX_K).")
    exclude_seen: bool = Field(
        True, description="Drop recent_items and the user's stored history from the answer."
    )
    exclude_items: list[ItemId] | None = Field(
        None, description="Item ids never to return (at most MAX_RECENT_ITEMS)."
    )
    filter: Filter | None = Field(None, description="Item-metadata filter.")

    @field_validator("recent_items")
    @classmethod
    def _unique_recent(cls, value: list[str] | None) -> list[str] | None:
        return _no_duplicates(value)


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
    timestamp: float | None = Field(
        None,
        description="Unix seconds. When every event of a call has one, they are "
        "appended in timestamp order (ties keep their order); otherwise in the order given.",
    )


class EventBatch(StrictModel):
    events: list[Event] = Field(..., min_length=1)


class EventsResponse(BaseModel):
    accepted: int
    users: int
    durable: bool = Field(description="False when histories live in process (no REDIS_URL).")


class ReloadResponse(BaseModel):
    reloaded: bool
    model_version: str
    previous_version: str | None = None
    message: str = ""
