"""The artifact bundle: the contract between training/, index/ and service/ (docs/BUNDLE.md).

A bundle is a directory ``<root>/<version>/`` holding ``manifest.json`` and the files it
lists with their SHA-256; ``<root>/current`` is a relative symlink to the live version.
Bundles are written into a temporary directory and renamed into place; ``current`` moves
last, so a reader never sees half a bundle. Nothing here unpickles: weights are
safetensors, arrays are ``.npy`` read with ``allow_pickle=False``, the rest is JSON.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import shutil
import tempfile
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

FORMAT = "towerrec-bundle/1"
MANIFEST = "manifest.json"
CURRENT = "current"

MODEL_FILE = "model.safetensors"
ITEM_EMBEDDINGS = "item_embeddings.npy"
ITEMS = "items.json"  # [{id, title, genres, features}] in internal-id order
USERS = "users.json"  # [{id, features, history}] in internal-id order; history = item ids
POPULARITY = "popularity.json"  # item ids, most popular first
CURVE = "training_curve.png"
REPORT_JSON, REPORT_MD = "eval_report.json", "eval_report.md"


class BundleError(RuntimeError):
    """A bundle that is missing, incomplete or does not match its manifest; names the file."""


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def new_version() -> str:
    return datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ") + "-" + secrets.token_hex(3)


def resolve(path: str | Path) -> Path:
    """The real version directory behind ``path`` (a bundle dir, ``current``, or a root)."""
    path = Path(path)
    if (path / CURRENT).exists() and not (path / MANIFEST).exists():
        path = path / CURRENT
    real = path.resolve()
    if not (real / MANIFEST).is_file():
        raise BundleError(f"{path}: no {MANIFEST} (not a bundle, or training has not run)")
    return real


def read_manifest(bundle: str | Path) -> dict[str, Any]:
    path = resolve(bundle) / MANIFEST
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise BundleError(f"{path}: invalid JSON ({e})") from e
    if manifest.get("format") != FORMAT:
        raise BundleError(f"{path}: format {manifest.get('format')!r}, expected {FORMAT!r}")
    return manifest


def write_json_atomic(path: Path, data: Any) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w") as f:
        json.dump(data, f, indent=2, ensure_ascii=False)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def file_entry(path: Path) -> dict[str, Any]:
    return {"sha256": sha256_file(path), "bytes": path.stat().st_size}


def verify(bundle: str | Path, names: list[str] | None = None) -> None:
    """Check that the listed files exist and match their checksums."""
    root = resolve(bundle)
    files = read_manifest(root)["files"]
    for name in names or list(files):
        path = root / name
        if name not in files:
            raise BundleError(f"{path}: not listed in {MANIFEST}")
        if not path.is_file():
            raise BundleError(f"{path}: missing")
        if path.stat().st_size != files[name]["bytes"]:
            raise BundleError(
                f"{path}: {path.stat().st_size} bytes, manifest says {files[name]['bytes']}"
            )
        if sha256_file(path) != files[name]["sha256"]:
            raise BundleError(f"{path}: SHA-256 does not match {MANIFEST}")


def write_bundle(
    root: str | Path, manifest: dict[str, Any], write_files: Callable[[Path], None]
) -> Path:
    """Create ``root/<version>`` atomically and point ``root/current`` at it.

    ``write_files(tmp_dir)`` writes the payload; every file it writes is checksummed
    into ``manifest["files"]``.
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    version = manifest.setdefault("version", new_version())
    manifest = {"format": FORMAT, "created_at": datetime.now(UTC).isoformat()} | manifest
    tmp = Path(tempfile.mkdtemp(dir=root, prefix=f".{version}."))
    try:
        write_files(tmp)
        manifest["files"] = {p.name: file_entry(p) for p in sorted(tmp.iterdir()) if p.is_file()}
        write_json_atomic(tmp / MANIFEST, manifest)
        final = root / version
        os.rename(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    point_current(root, version)
    return final


def point_current(root: Path, version: str) -> None:
    """Atomically repoint ``root/current`` (a relative symlink) at ``version``."""
    link = root / f".{CURRENT}.{secrets.token_hex(4)}"
    os.symlink(version, link)
    os.replace(link, root / CURRENT)


def load_json(bundle: str | Path, name: str) -> Any:
    path = resolve(bundle) / name
    try:
        return json.loads(path.read_text())
    except FileNotFoundError as e:
        raise BundleError(f"{path}: missing") from e
    except json.JSONDecodeError as e:
        raise BundleError(f"{path}: invalid JSON ({e})") from e


def load_array(path: Path, *, mmap: bool = False) -> np.ndarray:
    try:
        return np.load(path, allow_pickle=False, mmap_mode="r" if mmap else None)
    except FileNotFoundError as e:
        raise BundleError(f"{path}: missing") from e
    except ValueError as e:
        raise BundleError(f"{path}: unreadable array ({e})") from e


def load_towers(bundle: str | Path):
    """Rebuild the two towers (eval mode) from the manifest config and safetensors weights."""
    from safetensors.torch import load_file

    from training.model import TowerConfig, TwoTower

    root = resolve(bundle)
    verify(root, [MODEL_FILE])
    cfg = TowerConfig.from_dict(read_manifest(root)["model"])
    model = TwoTower(cfg)
    try:
        model.load_state_dict(load_file(root / MODEL_FILE))
    except RuntimeError as e:
        raise BundleError(f"{root / MODEL_FILE}: weights do not fit the manifest ({e})") from e
    return model.eval()
