"""Incremental updates without retraining or a full rebuild; each one is a new version.

Internal ids are rows of an append-only ``vectors.npy``; a row is never rewritten:

- **add**: new rows; the vectors come from the item tower on the features alone
  (``index.embed``) or are given. HNSW links them into the graph, IVF assigns them to the
  existing centroids (no retraining), flat appends.
- **remove**: the row becomes inactive. flat and ivf delete it from FAISS (``remove_ids``);
  HNSW cannot delete, so the row stays in the graph as a *tombstone* that every search
  filters out, until ``compact`` rebuilds the graph.
- **replace**: remove + add: the old row becomes inactive and the item gets a new internal
  id with the new vector and (optionally) new title / genres / features. Lookups go through
  the external id, which keeps pointing at the live row.
- **compact**: rebuild the FAISS structure from the active rows (drops HNSW tombstones,
  retrains IVF centroids on the current catalog); ids do not change.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import numpy as np

from index import embed, factory, store
from index.build import human_bytes
from index.errors import UnknownItemError
from index.store import Snapshot

log = logging.getLogger("index")
TOMBSTONE_WARNING = 0.10  # suggest `compact` when this share of HNSW vectors is dead


def add_items(
    bundle: str | Path, items: list[dict[str, Any]], vectors: np.ndarray | None = None
) -> dict[str, Any]:
    """Add new items ``[{id, title, genres?, features}]``; returns the new section.

    ``vectors`` (raw item-tower vectors [n, d]) skips the tower. An id that is already
    active is an error; a removed id may be added again (it gets a new internal id).
    """
    with store.writer_lock(bundle) as root:
        snap = store.load_version(root, mmap=False)
        records = [_record(it) for it in items]
        _check_new([r["id"] for r in records], _active_ids(snap))
        new_ids = _append(snap, records, _vectors_for(root, snap, records, vectors))
        section = store.write_version(
            root, snap, {"op": "add", "items": _ids(records), "internal_ids": new_ids}
        )
    _log("added", len(records), section, root)
    return section


def replace_items(
    bundle: str | Path, items: list[dict[str, Any]], vectors: np.ndarray | None = None
) -> dict[str, Any]:
    """Give existing items a new vector: from new ``features``, or from ``vectors``.

    ``items`` are ``[{id, features?, title?, genres?}]``; omitted fields keep their values.
    The old internal id becomes inactive, the item gets a new one.
    """
    with store.writer_lock(bundle) as root:
        snap = store.load_version(root, mmap=False)
        active = _active_ids(snap)
        old = [_lookup(active, str(it["id"]), snap) for it in items]
        if len(set(old)) != len(old):
            raise ValueError("the same item is listed twice")
        if vectors is None and not all(it.get("features") for it in items):
            raise ValueError("replace needs new features for every item, or vectors")
        records = [_record(_merge(snap.items[i], it)) for i, it in zip(old, items, strict=True)]
        fresh = _vectors_for(root, snap, records, vectors)
        _deactivate(snap, old)
        new_ids = _append(snap, records, fresh)
        for before, after in zip(old, new_ids, strict=True):
            snap.items[before]["replaced_by"] = after
        section = store.write_version(
            root, snap, {"op": "replace", "items": _ids(records), "internal_ids": new_ids}
        )
    _log("replaced", len(records), section, root)
    return section


def remove_items(bundle: str | Path, item_ids: list[str]) -> dict[str, Any]:
    """Deactivate items (flat/ivf: deleted from FAISS; hnsw: tombstoned)."""
    with store.writer_lock(bundle) as root:
        snap = store.load_version(root, mmap=False)
        active = _active_ids(snap)
        internal = [_lookup(active, str(x), snap) for x in item_ids]
        if len(set(internal)) != len(internal):
            raise ValueError("the same item is listed twice")
        _deactivate(snap, internal)
        section = store.write_version(
            root, snap, {"op": "remove", "items": list(item_ids), "internal_ids": internal}
        )
    _log("removed", len(internal), section, root)
    if section["tombstones"] > TOMBSTONE_WARNING * max(section["ntotal"], 1):
        log.warning(
            "%d of %d HNSW vectors are tombstones: run `python -m index compact --bundle %s`",
            section["tombstones"],
            section["ntotal"],
            root,
        )
    return section


def apply_changes(
    bundle: str | Path,
    upserts: list[dict[str, Any]],
    deletes: list[str],
    vectors: np.ndarray | None = None,
) -> dict[str, Any]:
    """Upsert and remove items in ONE new version (what the service's item API writes).

    ``upserts`` are full items ``[{id, title, genres?, features}]``: an id that is not
    active is added, an active id is replaced (remove + add, as ``replace_items``).
    ``vectors[j]`` is the item-tower vector of ``upserts[j]`` computed by the caller
    (outside the lock); a replaced item whose ``features`` did not change keeps its
    current vector instead (a title or genre edit must not throw away the vector training
    learned for it). ``deletes`` must all be active (``UnknownItemError`` listing the
    unknown ones, nothing written). Decided under the writer lock, so two writers of the
    same id never both "add" it. Returns the new section plus ``added`` / ``replaced`` /
    ``removed`` id lists.
    """
    records = [_record(it) for it in upserts]
    ids, deletes = _ids(records), [str(x) for x in deletes]
    if not ids and not deletes:
        raise ValueError("nothing to do: no item to upsert or delete")
    if len(set(ids)) != len(ids) or len(set(deletes)) != len(deletes):
        raise ValueError("the same item is listed twice")
    both = sorted(set(ids) & set(deletes))
    if both:
        raise ValueError(f"item(s) both upserted and deleted: {', '.join(both[:10])}")
    if records and vectors is None:
        raise ValueError("apply_changes needs a vector per upserted item")
    with store.writer_lock(bundle) as root:
        snap = store.load_version(root, mmap=False)
        active = _active_ids(snap)
        missing = [x for x in deletes if x not in active]
        if missing:
            raise UnknownItemError(
                missing,
                f"item(s) not in the index (v{snap.section['version']:04d}): "
                + ", ".join(repr(x) for x in missing[:10]),
            )
        old = [active.get(r["id"]) for r in records]
        new_ids: list[int] = []
        if records:
            fresh = np.array(
                np.asarray(vectors, np.float32).reshape(len(records), -1), dtype=np.float32
            )
            if fresh.shape[1] != snap.dim:
                raise ValueError(f"vectors have d={fresh.shape[1]}, the index has d={snap.dim}")
            for j, i in enumerate(old):
                if i is not None and snap.items[i].get("features") == records[j]["features"]:
                    fresh[j] = np.asarray(snap.vectors[i], dtype=np.float32)
        _deactivate(snap, [i for i in old if i is not None] + [active[x] for x in deletes])
        if records:
            new_ids = _append(snap, records, fresh)
            for before, after in zip(old, new_ids, strict=True):
                if before is not None:
                    snap.items[before]["replaced_by"] = after
        added = [r["id"] for r, i in zip(records, old, strict=True) if i is None]
        replaced = [r["id"] for r, i in zip(records, old, strict=True) if i is not None]
        op = {
            "op": "upsert",
            "items": ids + deletes,
            "added": added,
            "replaced": replaced,
            "removed": deletes,
            "internal_ids": new_ids,
        }
        section = store.write_version(root, snap, op)
    log.info(
        "item changes: %d added, %d replaced, %d removed → index v%04d (%d active)",
        len(added),
        len(replaced),
        len(deletes),
        section["version"],
        section["active"],
    )
    return {**section, "added": added, "replaced": replaced, "removed": deletes}


def compact(
    bundle: str | Path, progress: bool = False, spec: factory.IndexSpec | None = None
) -> dict[str, Any]:
    """Rebuild the FAISS index from the active rows with the same kind and parameters, or
    with ``spec`` (its automatic IVF parameters resolved for the current catalog: a
    catalog that grew by adds keeps the nlist of its first build otherwise)."""
    with store.writer_lock(bundle) as root:
        snap = store.load_version(root, mmap=False)
        active = np.array([i for i, it in enumerate(snap.items) if it["active"]], np.int64)
        spec = snap.spec if spec is None else spec.resolved(len(active), snap.dim)
        if spec.kind == "ivf" and spec.nlist > len(active):
            spec = factory.IndexSpec.from_params("ivf", {**spec.params(), "nlist": None})
            spec = spec.resolved(len(active), snap.dim)
        start = time.perf_counter()
        x = factory.prepare(np.asarray(snap.vectors)[active], snap.normalized)
        dropped = len(snap.tombstones())
        snap.index, snap.spec = factory.build(spec, x, active, progress), spec
        seconds = time.perf_counter() - start
        section = store.write_version(
            root,
            snap,
            {"op": "compact", "seconds": round(seconds, 3), "tombstones_dropped": dropped},
        )
    log.info(
        "compacted %s index v%04d: %d active items, %d tombstones dropped, %.1f s → %s",
        spec.label(),
        section["version"],
        section["active"],
        dropped,
        seconds,
        root / section["path"],
    )
    return section


# ----------------------------------------------------------------------------- helpers


def _record(item: dict[str, Any]) -> dict[str, Any]:
    """A catalog row ``{id, title, genres, features, active}`` from user input."""
    if "id" not in item or str(item["id"]).strip() == "":
        raise ValueError(f"item without an id: {item!r}")
    features = item.get("features") or {}
    if not isinstance(features, dict):
        raise ValueError(f"item {item['id']!r}: features must be a JSON object")
    genres = item.get("genres")
    if genres is None:
        genres = features.get("genres") or []
    return {
        "id": str(item["id"]),
        "title": str(item.get("title") or ""),
        "genres": list(genres),
        "features": features,
        "active": True,
    }


def _merge(current: dict[str, Any], change: dict[str, Any]) -> dict[str, Any]:
    """The current catalog row with the given fields replaced (genres follow features)."""
    merged = {k: current[k] for k in ("id", "title", "genres", "features") if k in current}
    merged |= {k: v for k, v in change.items() if k != "id" and v is not None}
    if "genres" not in change and "genres" in (change.get("features") or {}):
        merged["genres"] = change["features"]["genres"]
    return merged


def _ids(records: list[dict[str, Any]]) -> list[str]:
    return [r["id"] for r in records]


def _active_ids(snap: Snapshot) -> dict[str, int]:
    return {it["id"]: i for i, it in enumerate(snap.items) if it["active"]}


def _lookup(active: dict[str, int], item_id: str, snap: Snapshot) -> int:
    if item_id not in active:
        state = "was removed from" if any(it["id"] == item_id for it in snap.items) else "is not in"
        raise UnknownItemError(
            item_id, f"item {item_id!r} {state} the index (v{snap.section['version']:04d})"
        )
    return active[item_id]


def _check_new(new: list[str], active: dict[str, int]) -> None:
    clash = sorted(set(new) & set(active))
    if clash:
        raise ValueError(
            f"item id(s) already in the index: {', '.join(clash[:10])} "
            "(use `replace` to change an item)"
        )
    if len(set(new)) != len(new):
        raise ValueError("the same new item id is listed twice")


def _vectors_for(
    root: Path, snap: Snapshot, records: list[dict[str, Any]], given: np.ndarray | None
) -> np.ndarray:
    """Given vectors (checked) or item-tower vectors from the records' features."""
    if given is None:
        for r in records:
            if not r["features"]:
                log.warning("item %r has no features: it gets the unknown-item vector", r["id"])
        return embed.item_vectors(root, [r["features"] for r in records])
    given = np.asarray(given, dtype=np.float32).reshape(len(records), -1)
    if given.shape[1] != snap.dim:
        raise ValueError(f"vectors have d={given.shape[1]}, the index has d={snap.dim}")
    if not np.isfinite(given).all():
        raise ValueError("vectors contain NaN or infinity")
    return given


def _append(snap: Snapshot, records: list[dict[str, Any]], vectors: np.ndarray) -> list[int]:
    start = len(snap.items)
    ids = np.arange(start, start + len(records), dtype=np.int64)
    factory.add(snap.index, factory.prepare(vectors, snap.normalized), ids)
    snap.vectors = np.concatenate([np.asarray(snap.vectors), vectors]).astype(np.float32)
    snap.vectors_file = None  # vectors changed: write a new file
    snap.items.extend(records)
    return ids.tolist()


def _deactivate(snap: Snapshot, internal: list[int]) -> None:
    for i in internal:
        snap.items[i]["active"] = False
    if snap.spec.kind != "hnsw":  # HNSW cannot delete: the rows become tombstones
        removed = snap.index.remove_ids(np.asarray(internal, dtype=np.int64))
        if removed != len(internal):
            raise RuntimeError(f"FAISS removed {removed} of {len(internal)} vectors")


def _log(verb: str, n: int, section: dict[str, Any], root: Path) -> None:
    log.info(
        "%s %d item(s): %s index v%04d, %d items (%d active, %d tombstones), %s → %s",
        verb,
        n,
        section["kind"],
        section["version"],
        section["items"],
        section["active"],
        section["tombstones"],
        human_bytes(section["files"][store.FAISS_FILE]["bytes"]),
        root / section["path"],
    )
