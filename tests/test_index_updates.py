"""Incremental updates (add / replace / remove / compact) round-tripped through save + load."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from index import IndexSpec, ItemIndex, UnknownItemError, build_index
from index.updates import add_items, compact, remove_items, replace_items
from training.bundle import ITEM_EMBEDDINGS, ITEMS, load_towers, read_manifest, resolve
from training.model import feature_tensors

KINDS = ("flat", "hnsw", "ivf")


@pytest.fixture
def copy(trained_root: Path, tmp_path: Path) -> Path:
    shutil.copytree(trained_root, tmp_path / "artifacts", symlinks=True)
    return tmp_path / "artifacts" / "current"


def built(bundle: Path, kind: str) -> Path:
    spec = IndexSpec(kind)
    if kind == "ivf":  # scan every list: these tests are about ids, not recall
        nlist = IndexSpec("ivf").resolved(len(np.load(resolve(bundle) / ITEM_EMBEDDINGS)), 1).nlist
        spec = IndexSpec("ivf", nlist=nlist, nprobe=nlist)
    build_index(bundle, spec, threads=1)
    return bundle


def tower_vector(bundle: Path, features: dict) -> np.ndarray:
    """The item tower on features alone (id 0 = unknown item), computed independently."""
    model = load_towers(bundle)
    with torch.inference_mode():
        feats = feature_tensors(model.cfg.specs("item"), [features])
        return model.item_tower(torch.zeros(1, dtype=torch.long), feats).numpy()[0]


def catalog_features(bundle: Path) -> dict:
    return json.loads((resolve(bundle) / ITEMS).read_text())[0]["features"]


def all_results(index: ItemIndex, q: np.ndarray) -> np.ndarray:
    """Every id the index returns for ``q`` with k = all active items (no exact fallback)."""
    ids, _ = index.search(q, index.active_count)
    assert index.stats["exact_fallbacks"] == 0
    return ids


@pytest.mark.parametrize("kind", KINDS)
def test_add_from_features_round_trips(copy, kind):
    bundle = built(copy, kind)
    n = read_manifest(bundle)["index"]["items"]
    features = catalog_features(bundle)
    section = add_items(bundle, [{"id": "new-1", "title": "Brand new", "features": features}])
    assert (section["version"], section["items"], section["active"]) == (2, n + 1, n + 1)
    assert section["history"][-1] | {"at": None} == {
        "version": 2,
        "at": None,
        "op": "add",
        "items": ["new-1"],
        "internal_ids": [n],
    }

    index = ItemIndex.load(bundle)
    assert index.internal_id("new-1") == n and index.is_active(n)
    assert index.item_ids[n] == "new-1"
    assert index.metadata(n) == {
        "id": "new-1",
        "title": "Brand new",
        "genres": features.get("genres", []),
    }
    vector = index.vectors(np.array([n]))[0]
    np.testing.assert_allclose(vector, tower_vector(bundle, features), rtol=1e-5, atol=1e-6)
    ids = all_results(index, vector[None])
    assert n in ids[0].tolist()
    _, scores = index.search(vector[None], index.active_count)
    position = ids[0].tolist().index(n)
    assert scores[0, position] == pytest.approx(float(vector @ vector), rel=1e-4)


@pytest.mark.parametrize("kind", KINDS)
def test_remove_hides_items_and_compact_keeps_ids(copy, kind):
    bundle = built(copy, kind)
    before = ItemIndex.load(bundle)
    gone = before.item_ids[:2]
    gone_internal = [before.internal_id(x) for x in gone]
    keep = before.item_ids[5]
    section = remove_items(bundle, gone)
    n = section["items"]
    assert section["active"] == n - 2
    assert section["tombstones"] == (2 if kind == "hnsw" else 0)
    assert section["ntotal"] == (n if kind == "hnsw" else n - 2)

    index = ItemIndex.load(bundle)
    for external, internal in zip(gone, gone_internal, strict=True):
        assert not index.is_active(internal)
        with pytest.raises(UnknownItemError, match="was removed"):
            index.internal_id(external)
    q = index.vectors(np.arange(10))
    for strategy in ("overfetch", "selector"):
        index.exclusion = strategy
        ids = all_results(index, q)
        assert not set(ids.ravel().tolist()) & set(gone_internal)
        assert (ids >= 0).all()  # every active item still reachable
        ids, _ = index.search(q, 10, exclude=[{index.internal_id(keep)}] * len(q))
        assert (ids >= 0).all() and not set(ids.ravel().tolist()) & set(gone_internal)

    section = compact(bundle)
    assert section["tombstones"] == 0 and section["ntotal"] == n - 2
    compacted = ItemIndex.load(bundle)
    assert compacted.internal_id(keep) == before.internal_id(keep)
    assert not set(all_results(compacted, q).ravel().tolist()) & set(gone_internal)


@pytest.mark.parametrize("kind", KINDS)
def test_replace_with_a_vector_moves_the_item_to_a_new_row(copy, kind):
    bundle = built(copy, kind)
    before = ItemIndex.load(bundle)
    target = before.item_ids[3]
    old = before.internal_id(target)
    new_vector = -before.vectors(np.array([old]))[0] * 2
    section = replace_items(bundle, [{"id": target}], vectors=new_vector[None])
    n = section["items"] - 1
    assert section["active"] == before.active_count

    index = ItemIndex.load(bundle)
    assert index.internal_id(target) == n and not index.is_active(old)
    np.testing.assert_array_equal(index.vectors(np.array([n]))[0], new_vector)
    assert index.metadata(n) == before.metadata(old)
    ids = all_results(index, index.vectors(np.arange(5)))
    assert old not in ids.ravel().tolist() and n in ids[0].tolist()
    similar, _ = index.similar(target, 10)
    assert n not in similar.tolist() and old not in similar.tolist()
    rows = json.loads((resolve(bundle) / section["path"] / "items.json").read_text())
    assert rows[old]["replaced_by"] == n and rows[n]["active"]


def test_replace_from_features_recomputes_the_vector_and_genres(copy):
    bundle = built(copy, "flat")
    target = ItemIndex.load(bundle).item_ids[0]
    features = dict(catalog_features(bundle))
    features["genres"] = features.get("genres", [])[:1] or ["Drama"]
    replace_items(bundle, [{"id": target, "features": features, "title": "Retitled"}])
    index = ItemIndex.load(bundle)
    internal = index.internal_id(target)
    np.testing.assert_allclose(
        index.vectors(np.array([internal]))[0], tower_vector(bundle, features), atol=1e-6
    )
    assert index.metadata(internal)["title"] == "Retitled"
    assert index.metadata(internal)["genres"] == features["genres"]


def test_update_errors_are_clear(copy):
    bundle = built(copy, "flat")
    existing = ItemIndex.load(bundle).item_ids[0]
    with pytest.raises(ValueError, match="already in the index"):
        add_items(bundle, [{"id": existing, "features": {}}])
    with pytest.raises(UnknownItemError, match="'nope' is not in the index"):
        remove_items(bundle, ["nope"])
    with pytest.raises(UnknownItemError):
        replace_items(bundle, [{"id": "nope", "features": {}}])
    with pytest.raises(ValueError, match="needs new features"):
        replace_items(bundle, [{"id": existing}])
    with pytest.raises(ValueError, match="d="):
        add_items(bundle, [{"id": "x"}], vectors=np.zeros((1, 3), np.float32))
    assert read_manifest(bundle)["index"]["version"] == 1  # nothing was written
    remove_items(bundle, [existing])
    add_items(bundle, [{"id": existing, "features": {}}])  # a removed id may come back
    assert (
        ItemIndex.load(bundle).internal_id(existing) == read_manifest(bundle)["index"]["items"] - 1
    )


def test_a_loaded_version_keeps_serving_while_a_new_one_is_written(copy):
    bundle = built(copy, "flat")
    old = ItemIndex.load(bundle, mmap=True)
    victim = old.item_ids[0]
    q = old.vectors(np.arange(4))
    expected = old.search(q, 10)
    remove_items(bundle, [victim])
    again = old.search(q, 10)  # the mapped files of v0001 are still intact
    np.testing.assert_array_equal(again[0], expected[0])
    assert victim in [old.item_ids[i] for i in all_results(old, q).ravel()]
    new = ItemIndex.load(bundle)
    assert new.version == 2 and 0 not in all_results(new, q).ravel().tolist()


def test_compact_with_a_spec_retunes_ivf_for_a_catalog_that_grew(copy):
    bundle = built(copy, "ivf")
    n = read_manifest(bundle)["index"]["items"]
    first = read_manifest(bundle)["index"]["params"]["nlist"]
    dim = read_manifest(bundle)["index"]["dim"]
    grown = 40 * n
    vectors = np.random.default_rng(0).standard_normal((grown, dim)).astype(np.float32)
    add_items(bundle, [{"id": f"extra-{i}", "features": {}} for i in range(grown)], vectors)
    assert read_manifest(bundle)["index"]["params"]["nlist"] == first  # add keeps it
    section = compact(bundle, spec=IndexSpec("ivf"))
    expected = IndexSpec("ivf").resolved(n + grown, dim)
    assert section["params"]["nlist"] == expected.nlist > first
    assert section["active"] == n + grown
    index = ItemIndex.load(bundle)
    assert index.internal_id("extra-7") == n + 7  # ids kept
    ids, _ = index.search(vectors[7:8], 5)
    assert n + 7 in ids[0].tolist()
