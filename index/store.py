"""Index versions inside a bundle: write atomically, point the manifest at them, load safely.

Layout (docs/BUNDLE.md, "The index section")::

    <bundle>/index/.lock          writers hold an exclusive flock on it
    <bundle>/index/v0001/         one immutable version
        index.faiss               the FAISS index (ids = internal item ids)
        vectors.npy               float32 [N, d] raw item-tower vectors, row = internal id
        items.json                [{id, title, genres, features, active}] per internal id

A version is written into ``index/.vNNNN.<random>/``, fsynced, renamed to ``index/vNNNN``,
and only then the manifest's ``index`` section is replaced (``write_json_atomic``): a reader
sees the old version or the new one, never a mix. The newest ``KEEP_VERSIONS`` versions are
kept so a reader that has just read the manifest can still open the files it names.
"""

from __future__ import annotations

import contextlib
import fcntl
import gc
import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from index import factory
from index.errors import IndexFileError
from index.factory import IndexSpec
from training.bundle import (
    MANIFEST,
    BundleError,
    file_entry,
    load_array,
    read_manifest,
    resolve,
    sha256_file,
    write_json_atomic,
)

SECTION_FORMAT = "towerrec-index/1"
INDEX_DIR = "index"
FAISS_FILE, VECTORS_FILE, ITEMS_FILE = "index.faiss", "vectors.npy", "items.json"
FILES = (FAISS_FILE, VECTORS_FILE, ITEMS_FILE)
KEEP_VERSIONS = 3
HISTORY = 50  # operations remembered in the section
_VERSION_DIR = re.compile(r"^v(\d{4,})$")
_SECTION_PATH = re.compile(rf"^{INDEX_DIR}/v\d{{4,}}$")


@dataclass
class Snapshot:
    """One index version in memory: what a writer changes and ``ItemIndex`` serves."""

    index: faiss.Index
    vectors: np.ndarray  # raw item-tower vectors [N, d], row = internal id
    items: list[dict[str, Any]]  # per internal id: {id, title, genres, features, active}
    spec: IndexSpec  # resolved
    normalized: bool
    section: dict[str, Any] = field(default_factory=dict)  # manifest section it came from
    vectors_file: Path | None = None  # set while ``vectors`` equals this file (hard-link it)

    @property
    def dim(self) -> int:
        return int(self.vectors.shape[1])

    @property
    def active_count(self) -> int:
        return sum(1 for it in self.items if it["active"])

    def tombstones(self) -> np.ndarray:
        """Inactive ids still inside the FAISS index (HNSW only: it cannot delete)."""
        stored = factory.indexed_ids(self.index)
        if stored is None or len(stored) == 0:
            return np.empty(0, dtype=np.int64)
        active = np.fromiter((it["active"] for it in self.items), bool, len(self.items))
        return np.sort(stored[~active[stored]])


# ----------------------------------------------------------------------------- writing


def section_of(bundle: str | Path) -> dict[str, Any] | None:
    """The manifest's ``index`` section, or None before the first build."""
    return read_manifest(bundle).get("index")


@contextlib.contextmanager
def writer_lock(bundle: str | Path) -> Iterator[Path]:
    """Serialise writers of one bundle's index (exclusive ``flock``); yields the bundle dir."""
    root = resolve(bundle)
    (root / INDEX_DIR).mkdir(exist_ok=True)
    with open(root / INDEX_DIR / ".lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield root
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def write_version(root: Path, snap: Snapshot, op: dict[str, Any]) -> dict[str, Any]:
    """Persist ``snap`` as the next version and point the manifest at it (hold the lock).

    ``op`` describes what happened (``{"op": "add", "items": [...]}``); it is appended to
    the section's ``history``. Returns the new section.
    """
    index_root = root / INDEX_DIR
    _remove_stale_temporaries(index_root)
    version = max(_versions(index_root), default=0) + 1
    name = f"v{version:04d}"
    tmp = Path(tempfile.mkdtemp(dir=index_root, prefix=f".{name}."))
    try:
        _write_files(tmp, snap)
        files = {f: file_entry(tmp / f) for f in FILES}
        os.rename(tmp, index_root / name)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _fsync_dir(index_root)
    section = _section(snap, version, f"{INDEX_DIR}/{name}", files, op)
    manifest = read_manifest(root)
    manifest["index"] = section
    write_json_atomic(root / MANIFEST, manifest)
    _prune(index_root, keep=KEEP_VERSIONS)
    snap.section, snap.vectors_file = section, index_root / name / VECTORS_FILE
    return section


def _write_files(tmp: Path, snap: Snapshot) -> None:
    faiss.write_index(snap.index, str(tmp / FAISS_FILE))
    if snap.vectors_file is not None and snap.vectors_file.is_file():
        try:  # vectors unchanged (e.g. a removal): share the bytes with the old version
            os.link(snap.vectors_file, tmp / VECTORS_FILE)
        except OSError:
            shutil.copyfile(snap.vectors_file, tmp / VECTORS_FILE)
    else:
        np.save(tmp / VECTORS_FILE, np.ascontiguousarray(snap.vectors, dtype=np.float32))
    (tmp / ITEMS_FILE).write_text(json.dumps(snap.items, ensure_ascii=False))
    for name in FILES:
        with open(tmp / name, "rb+") as f:
            os.fsync(f.fileno())


def _section(
    snap: Snapshot, version: int, path: str, files: dict[str, Any], op: dict[str, Any]
) -> dict[str, Any]:
    now = datetime.now(UTC).isoformat()
    previous = snap.section or {}
    tombstones = len(snap.tombstones())
    history = [*previous.get("history", []), {"version": version, "at": now, **op}]
    return {
        "format": SECTION_FORMAT,
        "version": version,
        "path": path,
        "kind": snap.spec.kind,
        "params": snap.spec.params(),
        "metric": "inner_product",
        "normalized": snap.normalized,
        "faiss_version": faiss.__version__,
        "dim": snap.dim,
        "items": len(snap.items),  # rows of vectors.npy / items.json (internal ids)
        "active": snap.active_count,
        "ntotal": int(snap.index.ntotal),  # vectors inside the FAISS index
        "tombstones": tombstones,
        "files": files,
        "built_at": now if op["op"] in ("build", "compact") else previous.get("built_at", now),
        "updated_at": now,
        "history": history[-HISTORY:],
    }


def _versions(index_root: Path) -> list[int]:
    return sorted(
        int(m.group(1))
        for p in index_root.iterdir()
        if p.is_dir() and (m := _VERSION_DIR.match(p.name))
    )


def _remove_stale_temporaries(index_root: Path) -> None:
    """Temporary dirs left by a writer that crashed (we hold the lock: none is live)."""
    for p in index_root.glob(".v*.*"):
        if p.is_dir():
            shutil.rmtree(p, ignore_errors=True)


def _prune(index_root: Path, keep: int) -> None:
    for version in _versions(index_root)[:-keep]:
        shutil.rmtree(index_root / f"v{version:04d}", ignore_errors=True)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# ----------------------------------------------------------------------------- reading


def read_flags(kind: str, mmap: bool) -> int:
    """``read_index`` flags that memory-map what this FAISS build can map for ``kind``.

    flat, hnsw: ``IO_FLAG_MMAP_IFC`` maps the stored vectors (HNSW's graph links are still
    read into RAM); ivf: ``IO_FLAG_MMAP`` maps the inverted lists (the two flags cannot be
    combined for IVF). Mapped indexes are read-only: writers load with ``mmap=False``.
    """
    if not mmap:
        return 0
    if kind == "ivf":
        return faiss.IO_FLAG_MMAP | faiss.IO_FLAG_READ_ONLY
    return faiss.IO_FLAG_MMAP_IFC | faiss.IO_FLAG_READ_ONLY


def load_version(bundle: str | Path, *, mmap: bool = True, verify: bool = True) -> Snapshot:
    """Open the version the manifest points at, checking every file against the section.

    Raises ``IndexFileError`` naming the file: missing, truncated, checksum mismatch,
    unreadable, dim mismatch or count mismatch.
    """
    root = resolve(bundle)
    manifest = read_manifest(root)
    section = manifest.get("index")
    if not section:
        raise IndexFileError(
            f"{root / MANIFEST}: no index section (run `python -m index build --bundle {root}`)"
        )
    if section.get("format") != SECTION_FORMAT:
        raise IndexFileError(
            f"{root / MANIFEST}: index format {section.get('format')!r}, "
            f"expected {SECTION_FORMAT!r}"
        )
    if not _SECTION_PATH.match(str(section.get("path", ""))):
        raise IndexFileError(
            f"{root / MANIFEST}: index path {section.get('path')!r} is not index/vNNNN"
        )
    directory = root / section["path"]
    for name in FILES:
        check_file(directory / name, section["files"].get(name), verify)
    spec = IndexSpec.from_params(section["kind"], section["params"])
    index = _read_faiss(directory / FAISS_FILE, spec.kind, mmap, section)
    vectors = _read_vectors(directory / VECTORS_FILE, mmap, section)
    items = _read_items(directory / ITEMS_FILE, section)
    embedding_dim = manifest.get("dims", {}).get("embedding")
    if embedding_dim is not None and embedding_dim != section["dim"]:
        raise IndexFileError(
            f"{directory / FAISS_FILE}: dim mismatch: index d={section['dim']}, "
            f"bundle embedding dim {embedding_dim}"
        )
    factory.set_search_defaults(index, spec)
    return Snapshot(
        index, vectors, items, spec, bool(section["normalized"]), section, directory / VECTORS_FILE
    )


def check_file(path: Path, entry: dict[str, Any] | None, verify: bool = True) -> None:
    """Existence, size and (when ``verify``) SHA-256 of one file against its manifest entry."""
    if entry is None:
        raise IndexFileError(f"{path}: not listed in the manifest's index section")
    if not path.is_file():
        raise IndexFileError(f"{path}: missing")
    size = path.stat().st_size
    if size < entry["bytes"]:
        raise IndexFileError(f"{path}: truncated: {size} bytes, manifest says {entry['bytes']}")
    if size != entry["bytes"]:
        raise IndexFileError(f"{path}: size mismatch: {size} bytes, manifest says {entry['bytes']}")
    if verify and sha256_file(path) != entry["sha256"]:
        raise IndexFileError(f"{path}: checksum mismatch (SHA-256 differs from the manifest)")


def _read_faiss(path: Path, kind: str, mmap: bool, section: dict[str, Any]) -> faiss.Index:
    try:
        index = faiss.read_index(str(path), read_flags(kind, mmap))
    except RuntimeError as e:
        reason = str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__
        raise IndexFileError(f"{path}: unreadable FAISS index ({reason})") from e
    if index.d != section["dim"]:
        raise IndexFileError(
            f"{path}: dim mismatch: file has d={index.d}, manifest says {section['dim']}"
        )
    if index.ntotal != section["ntotal"]:
        raise IndexFileError(
            f"{path}: count mismatch: file holds {index.ntotal} vectors, "
            f"manifest says {section['ntotal']}"
        )
    return index


def _read_vectors(path: Path, mmap: bool, section: dict[str, Any]) -> np.ndarray:
    try:
        vectors = load_array(path, mmap=mmap)
    except BundleError as e:
        raise IndexFileError(str(e)) from e
    if vectors.ndim != 2 or vectors.dtype != np.float32:
        raise IndexFileError(
            f"{path}: expected float32 [N, d], got {vectors.dtype} {vectors.shape}"
        )
    if vectors.shape[1] != section["dim"]:
        raise IndexFileError(
            f"{path}: dim mismatch: d={vectors.shape[1]}, manifest says {section['dim']}"
        )
    if vectors.shape[0] != section["items"]:
        raise IndexFileError(
            f"{path}: count mismatch: {vectors.shape[0]} rows, manifest says {section['items']}"
        )
    return vectors


@contextlib.contextmanager
def gc_paused() -> Iterator[None]:
    """The cyclic garbage collector off for a while (restored as it was). Parsing a large
    catalog creates millions of dicts and lists; with the collector on, its collections
    re-scan all of them again and again and cost several times the parse itself
    (docs/BENCHMARKS.md, "Large catalog"). Nothing parsed from JSON forms a cycle."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _read_items(path: Path, section: dict[str, Any]) -> list[dict[str, Any]]:
    try:
        with gc_paused():
            items = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise IndexFileError(f"{path}: invalid JSON ({e})") from e
    if not isinstance(items, list) or len(items) != section["items"]:
        got = len(items) if isinstance(items, list) else type(items).__name__
        raise IndexFileError(
            f"{path}: count mismatch: {got} items, manifest says {section['items']}"
        )
    active = sum(1 for it in items if it.get("active"))
    if active != section["active"]:
        raise IndexFileError(
            f"{path}: count mismatch: {active} active items, manifest says {section['active']}"
        )
    return items
