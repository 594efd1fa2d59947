"""Fixtures and helpers shared by the service tests (this module holds no tests).

- ``served_root``: a copy of the ``bundle_root`` fixture with a flat index built by
  ``python -m index build`` (skipped when the bundle already has one).
- ``two_versions``: a root holding that version and a second one (same catalog, other
  weights, own index); tests copy it and repoint ``current`` themselves.
- ``serve(settings)``: the app's lifespan + an ``httpx.AsyncClient`` over ``ASGITransport``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import pytest

from service.app import create_app
from service.core.config import Settings
from training import bundle

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def build_index(bundle_dir: Path) -> None:
    """``python -m index build`` on one bundle version (the documented way)."""
    subprocess.run(
        [sys.executable, "-m", "index", "build", "--bundle", str(bundle_dir), "--kind", "flat"],
        check=True,
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )


def copy_root(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst, symlinks=True)
    return dst


@pytest.fixture(scope="session")
def served_root(request, tmp_path_factory) -> Path:
    """The session's bundle (``bundle_root``) with an index. ``TOWERREC_TEST_ARTIFACTS``
    names a prebuilt artifacts root to use instead (quick local iterations)."""
    prebuilt = os.environ.get("TOWERREC_TEST_ARTIFACTS")
    source = Path(prebuilt) if prebuilt else request.getfixturevalue("bundle_root")
    root = copy_root(source, tmp_path_factory.mktemp("served") / "artifacts")
    if bundle.read_manifest(root / bundle.CURRENT).get("index") is None:
        build_index(root / bundle.CURRENT)
    return root


def write_second_version(root: Path, seed: int = 1) -> str:
    """Export another version of the current bundle (same catalog and users, re-initialised
    weights) with ``training.export.export_bundle``, index it, and return its version.
    ``current`` ends up pointing at it (the exporter moves it)."""
    import torch

    from training.export import export_bundle
    from training.model import TowerConfig, TwoTower

    current = bundle.resolve(root)
    manifest = bundle.read_manifest(current)
    torch.manual_seed(seed)
    model = TwoTower(TowerConfig.from_dict(manifest["model"]))
    out = export_bundle(
        root,
        model,
        items=bundle.load_json(current, bundle.ITEMS),
        users=bundle.load_json(current, bundle.USERS),
        popularity=bundle.load_json(current, bundle.POPULARITY),
        dataset=manifest["dataset"],
        train_config={"test": "second version"},
    )
    build_index(out)
    return out.name


@pytest.fixture(scope="session")
def two_versions(served_root, tmp_path_factory) -> tuple[Path, str, str]:
    """(root, first version, second version); ``current`` points at the first."""
    root = copy_root(served_root, tmp_path_factory.mktemp("two") / "artifacts")
    first = bundle.resolve(root).name
    second = write_second_version(root)
    bundle.point_current(root, first)
    return root, first, second


def settings(root: Path, **overrides) -> Settings:
    base = {
        "artifacts_dir": str(root / bundle.CURRENT),
        "reload_poll_s": 0,
        "redis_url": None,
        "log_level": "warning",
    }
    return Settings(**(base | overrides))


@asynccontextmanager
async def serve(s: Settings) -> AsyncIterator[tuple[httpx.AsyncClient, object]]:
    app = create_app(s)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(
            transport=transport, base_url="http://testserver", timeout=30
        ) as client:
            yield client, app


def catalog(root: Path) -> dict:
    """The bundle's items / users / popularity, for picking real ids in tests."""
    current = bundle.resolve(root)
    manifest = bundle.read_manifest(current)
    return {
        "items": bundle.load_json(current, bundle.ITEMS),
        "users": bundle.load_json(current, bundle.USERS),
        "popularity": bundle.load_json(current, bundle.POPULARITY),
        "manifest": manifest,
        "version": manifest["version"],
        "dim": manifest["model"]["dim"],
        "user_features": [f["name"] for f in manifest["model"]["user_features"]],
    }


def ids(response_json: dict) -> list[str]:
    return [it["item_id"] for it in response_json["items"]]


def locs(response: httpx.Response) -> list[list]:
    return [err["loc"] for err in response.json()["detail"]]
