"""Shared fixtures: a small trained bundle, and real Redis: ``redis_backend`` runs a test
once on a single redis-server and once on a 3-master Redis Cluster (tests/redis_backend.py)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from redis_backend import RedisBackend
from redis_cluster import redis_cluster, redis_cluster_session  # noqa: F401 (fixtures)
from redis_server import RedisServer

ROOT = Path(__file__).resolve().parents[1]
ML100K = ROOT.parent / "shared" / "data" / "ml-100k"


# A small, really trained synthetic bundle: the same command a user runs, sized for tests.
SYNTHETIC_ARGS = [
    "--dataset",
    "synthetic",
    "--encoder",
    "sasrec",
    "--epochs",
    "40",
    "--patience",
    "8",
    "--dim",
    "32",
    "--max-len",
    "20",
    "--members",  # one tower: the ensemble has its own test (test_training.py)
    "1",
    "--no-progress",
]


def run_module(*args: str, timeout: float = 900) -> subprocess.CompletedProcess:
    """Run ``python -m <args>`` from the project root; fail the test with its stderr."""
    result = subprocess.run(
        [sys.executable, "-m", *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout
    )
    assert result.returncode == 0, f"python -m {' '.join(args)} failed:\n{result.stderr[-4000:]}"
    return result


@pytest.fixture(scope="session", autouse=True)
def one_faiss_thread():
    """One OpenMP thread: on a busy 2-core box FAISS's spinning threads slow tests 100x."""
    import faiss

    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    yield
    faiss.omp_set_num_threads(before)


@pytest.fixture(scope="session")
def trained_root(tmp_path_factory) -> Path:
    """An artifacts root whose ``current`` is a freshly trained synthetic bundle (no index).
    Read-only: copy it (``shutil.copytree(..., symlinks=True)``) before modifying."""
    root = tmp_path_factory.mktemp("trained") / "artifacts"
    run_module("training", "train", "--out", str(root), *SYNTHETIC_ARGS)
    return root


@pytest.fixture(scope="session")
def bundle_root(trained_root, tmp_path_factory) -> Path:
    """``trained_root`` plus a flat FAISS index, as the quick start builds it. Read-only."""
    root = tmp_path_factory.mktemp("indexed") / "artifacts"
    shutil.copytree(trained_root, root, symlinks=True)
    run_module("index", "build", "--bundle", str(root / "current"), "--kind", "flat")
    return root


@pytest.fixture(scope="session")
def ml100k() -> Path:
    """The real MovieLens-100K beside the project (never copied into it)."""
    assert (ML100K / "u.data").is_file(), (
        f"MovieLens-100K not found at {ML100K}: CI and developer machines have it at "
        "../shared/data/ml-100k relative to the project root"
    )
    return ML100K


@pytest.fixture(params=["single", "cluster"])
def redis_backend(request) -> Iterator[RedisBackend]:
    """Real Redis, empty, once as one redis-server and once as a 3-master Redis Cluster
    (the session's cluster, flushed). Use it for every cache and events test."""
    if request.param == "cluster":
        yield RedisBackend(request.getfixturevalue("redis_cluster"))
    else:
        with RedisServer() as server:
            yield RedisBackend(server)
