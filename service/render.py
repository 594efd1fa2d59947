"""Answers rendered straight to JSON bytes.

/recommend and /similar-items are the hot paths. Building one pydantic model per item
and serialising them was a visible share of a cache hit (~25 µs of ~400), yet the item
part of an answer (id, title, genres) never changes within a bundle: ``ItemFragments``
encodes it once per engine, and an answer is a join of those fragments and the scores.
The pydantic models in ``service.schemas`` remain the contract (OpenAPI); tests validate
rendered bodies against them.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

_dumps = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode


class ItemFragments:
    """``{"item_id":..,"title":..,"genres":[..],"score":`` per internal id, pre-encoded."""

    def __init__(self, metadata: Sequence[dict[str, Any]]):
        self._heads = [
            '{"item_id":' + _dumps(m["id"]) + ',"title":' + _dumps(m["title"])
            + ',"genres":' + _dumps(m["genres"]) + ',"score":'
            for m in metadata
        ]  # fmt: skip

    def extended(self, metadata: Sequence[dict[str, Any]]) -> ItemFragments:
        """A new instance: these fragments, then those of ``metadata`` (rows appended by
        an index write; this one is not changed)."""
        out = ItemFragments(metadata)
        out._heads = self._heads + out._heads
        return out

    def items(self, ids: Sequence[int], scores: Sequence[float] | None) -> str:
        """The JSON array of ``ids`` with their scores (null scores when None)."""
        heads = self._heads
        if scores is None:
            return "[" + ",".join(heads[i] + "null}" for i in ids) + "]"
        pairs = zip(ids, scores, strict=True)
        return "[" + ",".join(heads[i] + repr(float(s)) + "}" for i, s in pairs) + "]"


def _list(values: list | dict) -> str:
    return _dumps(values) if values else ("{}" if isinstance(values, dict) else "[]")


def recommendation(
    items_json: str,
    *,
    model_version: str,
    strategy: str,
    cache: str,
    unknown_items: list[str],
    unknown_features: dict[str, Any],
    warnings: list[str],
) -> str:
    """One RecommendResponse body."""
    return (
        '{"items":' + items_json + ',"model_version":' + _dumps(model_version)
        + ',"strategy":"' + strategy + '","cache":"' + cache
        + '","unknown_items":' + _list(unknown_items)
        + ',"unknown_features":' + _list(unknown_features)
        + ',"warnings":' + _list(warnings) + "}"
    )  # fmt: skip


def batch(responses: list[str], model_version: str) -> str:
    """One BatchResponse body from rendered RecommendResponse bodies."""
    joined = ",".join(responses)
    return '{"responses":[' + joined + '],"model_version":' + _dumps(model_version) + "}"


def similar(item_id: str, items_json: str, model_version: str) -> str:
    """One SimilarResponse body."""
    return (
        '{"item_id":' + _dumps(item_id) + ',"items":' + items_json
        + ',"model_version":' + _dumps(model_version) + "}"
    )  # fmt: skip
