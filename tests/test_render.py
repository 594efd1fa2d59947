"""Hand-rendered answers are valid JSON and validate against the documented models."""

from __future__ import annotations

import json

from service import render
from service.schemas import BatchResponse, RecommendResponse, SimilarResponse

META = [
    {"id": "1", "title": 'Quote " and \\ backslash', "genres": ["Drama"]},
    {"id": "ü-2", "title": "Amélie (2001) – 東京", "genres": []},
    {"id": "3", "title": None, "genres": ["Sci-Fi", "War"]},
]


def test_items_keep_metadata_and_scores_exactly():
    fragments = render.ItemFragments(META)
    items = json.loads(fragments.items([2, 0, 1], [0.5, -1.25e-7, 3.0]))
    assert items == [
        {"item_id": "3", "title": None, "genres": ["Sci-Fi", "War"], "score": 0.5},
        {"item_id": "1", "title": META[0]["title"], "genres": ["Drama"], "score": -1.25e-7},
        {"item_id": "ü-2", "title": META[1]["title"], "genres": [], "score": 3.0},
    ]
    assert json.loads(fragments.items([1], None))[0]["score"] is None
    assert fragments.items([], []) == "[]"


def test_bodies_validate_against_the_response_models():
    fragments = render.ItemFragments(META)
    plain = render.recommendation(
        fragments.items([0, 1], [0.9, 0.1]),
        model_version="v1",
        strategy="id",
        cache="hit",
        unknown_items=[],
        unknown_features={},
        warnings=[],
    )
    noisy = render.recommendation(
        fragments.items([2], None),
        model_version='v"2',
        strategy="popular",
        cache="off",
        unknown_items=["x", "ÿ"],
        unknown_features={"occupation": "astronaut", "age": 200},
        warnings=['only 1 items left "quoted"'],
    )
    parsed = RecommendResponse.model_validate_json(noisy)
    assert parsed.unknown_features == {"occupation": "astronaut", "age": 200}
    assert parsed.model_version == 'v"2' and parsed.items[0].score is None
    assert RecommendResponse.model_validate_json(plain).items[1].item_id == "ü-2"
    both = BatchResponse.model_validate_json(render.batch([plain, noisy], "v1"))
    assert [r.strategy for r in both.responses] == ["id", "popular"]
    similar = SimilarResponse.model_validate_json(
        render.similar("1", fragments.items([1], [0.25]), "v1")
    )
    assert similar.items[0].score == 0.25
