"""Build an index version from a bundle's ``item_embeddings.npy`` (``python -m index build``)."""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from index import factory, store
from index.errors import IndexFileError
from index.factory import IndexSpec
from index.store import Snapshot
from training.bundle import (
    ITEM_EMBEDDINGS,
    ITEMS,
    BundleError,
    load_array,
    load_json,
    read_manifest,
    verify,
)

log = logging.getLogger("index")


def build_index(
    bundle: str | Path,
    spec: IndexSpec | str = "flat",
    *,
    normalize: bool = False,
    if_missing: bool = False,
    threads: int | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """Build ``spec`` over the bundle's item embeddings as a new index version.

    ``normalize`` indexes L2-normalised vectors (cosine) instead of the raw inner product
    the towers were trained for. ``if_missing`` keeps a loadable existing index. ``threads``
    are FAISS build threads (default: all cores). Returns the manifest's new index section.
    """
    spec = IndexSpec(kind=spec) if isinstance(spec, str) else spec
    with store.writer_lock(bundle) as root:
        if if_missing and (existing := _usable_section(root)):
            log.info(
                "bundle already has a %s index v%04d (%d items): nothing to do",
                existing["kind"],
                existing["version"],
                existing["active"],
            )
            return existing
        vectors, items = _catalog(root)
        spec = spec.resolved(len(vectors), vectors.shape[1])
        used = threads or os.cpu_count() or 1
        start = time.perf_counter()
        with omp_threads(used):
            index = factory.build(
                spec,
                factory.prepare(vectors, normalize),
                np.arange(len(vectors), dtype=np.int64),
                progress,
            )
        seconds = time.perf_counter() - start
        snap = Snapshot(
            index,
            vectors,
            [{**it, "active": True} for it in items],
            spec,
            normalize,
            vectors_file=None,
        )
        source = read_manifest(root)["files"][ITEM_EMBEDDINGS]["sha256"]
        section = store.write_version(
            root,
            snap,
            {
                "op": "build",
                "seconds": round(seconds, 3),
                "threads": used,
                "item_embeddings_sha256": source,
            },
        )
    log.info(
        "built %s index v%04d: %d items, d=%d, %.1f s, %s → %s",
        spec.label(),
        section["version"],
        section["items"],
        section["dim"],
        seconds,
        human_bytes(section["files"][store.FAISS_FILE]["bytes"]),
        root / section["path"],
    )
    return section


@contextlib.contextmanager
def omp_threads(n: int) -> Iterator[None]:
    """FAISS's (process-wide) OpenMP thread count set to ``n`` for the block, then restored."""
    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(n)
    try:
        yield
    finally:
        faiss.omp_set_num_threads(before)


def _usable_section(root: Path) -> dict[str, Any] | None:
    """The current section if its files load and check out; else None (and say why)."""
    if store.section_of(root) is None:
        return None
    try:
        return store.load_version(root, mmap=True, verify=True).section
    except IndexFileError as e:
        log.warning("existing index is unusable (%s): rebuilding", e)
        return None


def _catalog(root: Path) -> tuple[np.ndarray, list[dict[str, Any]]]:
    """The bundle's verified item embeddings and items.json, checked against each other."""
    verify(root, [ITEM_EMBEDDINGS, ITEMS])
    vectors = load_array(root / ITEM_EMBEDDINGS)
    items = load_json(root, ITEMS)
    if vectors.ndim != 2 or len(vectors) != len(items):
        raise BundleError(
            f"{root / ITEM_EMBEDDINGS}: shape {vectors.shape} does not match "
            f"{len(items)} items in {ITEMS}"
        )
    if len(items) == 0:
        raise BundleError(f"{root / ITEMS}: the catalog is empty")
    return np.ascontiguousarray(vectors, dtype=np.float32), items


def human_bytes(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} GB"
