"""Index versions in a bundle: build, manifest section, loading, and the documented errors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import faiss
import numpy as np
import pytest

from index import IndexFileError, IndexSpec, ItemIndex, build_index
from index.store import FAISS_FILE, ITEMS_FILE, KEEP_VERSIONS, VECTORS_FILE
from training.bundle import (
    ITEM_EMBEDDINGS,
    ITEMS,
    MANIFEST,
    BundleError,
    file_entry,
    read_manifest,
    resolve,
    verify,
    write_json_atomic,
)

KINDS = ("flat", "hnsw", "ivf")


@pytest.fixture
def bundle(trained_root: Path, tmp_path: Path) -> Path:
    """A private copy of the trained fixture bundle, before any index is built."""
    shutil.copytree(trained_root, tmp_path / "artifacts", symlinks=True)
    return tmp_path / "artifacts" / "current"


def embeddings(bundle: Path) -> np.ndarray:
    return np.load(resolve(bundle) / ITEM_EMBEDDINGS)


def top_k(vectors: np.ndarray, q: np.ndarray, k: int) -> np.ndarray:
    return np.argsort(-(q.astype(np.float64) @ vectors.T), axis=1, kind="stable")[:, :k]


@pytest.mark.parametrize("kind", KINDS)
def test_build_writes_a_version_and_the_manifest_section(bundle, kind):
    section = build_index(bundle, kind, threads=1)
    root, manifest = resolve(bundle), read_manifest(bundle)
    vectors = embeddings(bundle)
    n, d = vectors.shape
    assert manifest["index"] == section
    assert section["format"] == "towerrec-index/1"
    assert (section["version"], section["path"]) == (1, "index/v0001")
    assert section["kind"] == kind and section["metric"] == "inner_product"
    assert section["params"] == IndexSpec(kind).resolved(n, d).params()
    assert section["faiss_version"] == faiss.__version__
    assert section["dim"] == d == manifest["dims"]["embedding"]
    assert section["items"] == section["active"] == section["ntotal"] == n
    assert section["tombstones"] == 0 and section["normalized"] is False
    assert section["history"][-1]["op"] == "build" and section["history"][-1]["seconds"] >= 0
    directory = root / section["path"]
    assert set(section["files"]) == {FAISS_FILE, VECTORS_FILE, ITEMS_FILE}
    for name, entry in section["files"].items():
        assert entry == file_entry(directory / name)  # SHA-256 and bytes of each file
    np.testing.assert_array_equal(np.load(directory / VECTORS_FILE), vectors)
    bundle_items = json.loads((root / ITEMS).read_text())
    assert json.loads((directory / ITEMS_FILE).read_text()) == [
        {**it, "active": True} for it in bundle_items
    ]
    verify(bundle)  # training's files are untouched


def test_the_quick_start_index_loads(bundle_root):
    """``bundle_root`` got its index from ``python -m index build --kind flat``."""
    index = ItemIndex.load(bundle_root / "current")
    manifest = read_manifest(bundle_root / "current")
    assert index.kind == "flat" and index.version == 1
    assert index.active_count == manifest["dims"]["items"] == len(index.item_ids)


def test_flat_index_loads_memory_mapped_and_is_exact(bundle):
    build_index(bundle, "flat", threads=1)
    vectors = embeddings(bundle)
    index = ItemIndex.load(bundle, mmap=True)
    path = resolve(bundle) / index.section["path"] / FAISS_FILE
    assert str(path) in Path("/proc/self/maps").read_text()  # really mapped, not read
    ids, scores = index.search(vectors[:8], 10)
    np.testing.assert_array_equal(ids, top_k(vectors, vectors[:8], 10))
    np.testing.assert_allclose(
        scores, np.take_along_axis(vectors[:8] @ vectors.T, ids, axis=1), rtol=1e-5, atol=1e-5
    )
    assert (index.kind, index.version, index.dim) == ("flat", 1, vectors.shape[1])
    assert index.item_ids == [it["id"] for it in json.loads((resolve(bundle) / ITEMS).read_text())]


@pytest.mark.parametrize("kind", ["hnsw", "ivf"])
def test_ann_loads_the_same_with_and_without_mmap(bundle, kind):
    build_index(bundle, kind, threads=1)
    q = embeddings(bundle)[:16]
    mapped = ItemIndex.load(bundle, mmap=True).search(q, 10)
    read = ItemIndex.load(bundle, mmap=False).search(q, 10)
    np.testing.assert_array_equal(mapped[0], read[0])
    np.testing.assert_allclose(mapped[1], read[1], rtol=1e-6)


def test_if_missing_keeps_an_index_and_old_versions_are_pruned(bundle):
    first = build_index(bundle, "flat", threads=1)
    assert build_index(bundle, "hnsw", if_missing=True, threads=1) == first
    for _ in range(KEEP_VERSIONS + 1):
        section = build_index(bundle, "flat", threads=1)
    assert section["version"] == KEEP_VERSIONS + 2
    kept = sorted(p.name for p in (resolve(bundle) / "index").iterdir() if p.name[0] == "v")
    assert kept == [f"v{v:04d}" for v in range(3, KEEP_VERSIONS + 3)]
    assert ItemIndex.load(bundle).version == KEEP_VERSIONS + 2


def test_if_missing_rebuilds_an_index_whose_files_are_gone(bundle):
    section = build_index(bundle, "flat", threads=1)
    (resolve(bundle) / section["path"] / VECTORS_FILE).unlink()
    assert build_index(bundle, "flat", if_missing=True, threads=1)["version"] == 2


def test_normalized_index_scores_cosines_but_keeps_raw_vectors(bundle):
    section = build_index(bundle, "flat", normalize=True, threads=1)
    assert section["normalized"] is True
    vectors = embeddings(bundle)
    index = ItemIndex.load(bundle)
    assert index.normalized
    _, scores = index.search(vectors[:4] * 10, 5)  # query scale must not matter
    assert scores.max() <= 1 + 1e-5
    np.testing.assert_array_equal(index.vectors(np.arange(3)), vectors[:3])


def test_no_index_section_is_an_index_file_error(bundle):
    with pytest.raises(IndexFileError, match="no index section"):
        ItemIndex.load(bundle)


# --------------------------------------------------------------------------- corruption


def _rewrite_entry(bundle: Path, name: str, **section_changes) -> None:
    """Make the manifest agree with a changed file (so only the deeper check can fail)."""
    root = resolve(bundle)
    manifest = read_manifest(root)
    section = manifest["index"]
    section["files"][name] = file_entry(root / section["path"] / name)
    section.update(section_changes)
    write_json_atomic(root / MANIFEST, manifest)


def _missing(path: Path, bundle: Path) -> None:
    path.unlink()


def _truncated(path: Path, bundle: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _flipped(path: Path, bundle: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def _other_dim(path: Path, bundle: Path) -> None:
    n = read_manifest(bundle)["index"]["ntotal"]
    other = faiss.IndexIDMap2(faiss.IndexFlatIP(8))
    other.add_with_ids(np.zeros((n, 8), np.float32), np.arange(n, dtype=np.int64))
    faiss.write_index(other, str(path))
    _rewrite_entry(bundle, path.name)


def _fewer_rows(path: Path, bundle: Path) -> None:
    np.save(path, np.load(path)[:-1])
    _rewrite_entry(bundle, path.name)


def _garbage(path: Path, bundle: Path) -> None:
    path.write_bytes(b"not a faiss index" * 10)
    _rewrite_entry(bundle, path.name)


CORRUPTIONS = [
    (FAISS_FILE, _missing, "missing"),
    (VECTORS_FILE, _missing, "missing"),
    (ITEMS_FILE, _missing, "missing"),
    (FAISS_FILE, _truncated, "truncated"),
    (VECTORS_FILE, _truncated, "truncated"),
    (FAISS_FILE, _flipped, "checksum mismatch"),
    (ITEMS_FILE, _flipped, "checksum mismatch"),
    (FAISS_FILE, _other_dim, "dim mismatch"),
    (VECTORS_FILE, _fewer_rows, "count mismatch"),
    (FAISS_FILE, _garbage, "unreadable FAISS index"),
]


@pytest.mark.parametrize(
    ("name", "corrupt", "message"), CORRUPTIONS, ids=[f"{n}-{m}" for n, _, m in CORRUPTIONS]
)
def test_bad_files_raise_index_file_error_naming_the_file(bundle, name, corrupt, message):
    section = build_index(bundle, "flat", threads=1)
    path = resolve(bundle) / section["path"] / name
    corrupt(path, bundle)
    with pytest.raises(IndexFileError) as err:
        ItemIndex.load(bundle)
    assert isinstance(err.value, BundleError)
    assert str(err.value).startswith(f"{path}: {message}")


def test_manifest_count_that_disagrees_with_the_file_is_a_count_mismatch(bundle):
    section = build_index(bundle, "hnsw", threads=1)
    root = resolve(bundle)
    manifest = read_manifest(root)
    manifest["index"]["ntotal"] = section["ntotal"] + 1
    write_json_atomic(root / MANIFEST, manifest)
    with pytest.raises(IndexFileError, match=f"{FAISS_FILE}: count mismatch"):
        ItemIndex.load(bundle)
