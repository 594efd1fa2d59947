"""Memory: the out-of-memory estimate on hand-made shapes, and a guard that a large
catalog trains and evaluates without any dense item-item matrix."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import tracemalloc
from pathlib import Path

import numpy as np
import pytest

from training import memory
from training.baselines import run_baselines
from training.data.generic import write_generic
from training.data.synthetic import generate
from training.memory import GiB, MemoryRiskError, Shape, check, estimate
from training.metrics import evaluate
from training.split import leave_one_out

ROOT = Path(__file__).resolve().parents[1]
ML20M = Shape(n_interactions=20_000_000, n_users=138_493, n_items=26_744)


def test_the_estimate_follows_the_data_shape():
    small = estimate(Shape(n_interactions=100_000, n_users=943, n_items=1682))
    assert small.skipped == {} and small.peak < 2 * GiB
    big = estimate(ML20M)
    assert "ease" in big.skipped and "26744 items" in big.skipped["ease"]
    assert "baselines" in big.parts and big.peak < 8 * GiB
    # linear in interactions: twice the log, twice the data and loading terms
    double = estimate(Shape(40_000_000, 138_493, 26_744))
    assert double.parts["data"] - big.parts["data"] == pytest.approx(40 * 20_000_000)
    assert double.parts["load"] == 2 * big.parts["load"]
    # the full softmax's [positions, n_items] step is what a 20k catalog pays for
    full = estimate(Shape(1_000_000, 6_000, 20_000, loss="full")).parts["training step"]
    sampled = estimate(Shape(1_000_000, 6_000, 20_000, loss="sampled")).parts["training step"]
    assert full > 2 * sampled
    assert "ease" not in estimate(Shape(20_000_000, 138_493, 26_744, baselines=False)).skipped


def test_check_logs_warns_and_refuses(caplog, monkeypatch):
    est = estimate(Shape(n_interactions=1_000_000, n_users=6_040, n_items=3_706))
    monkeypatch.delenv(memory.OVERRIDE, raising=False)
    with caplog.at_level(logging.INFO, logger="training.memory"):
        check(est, available=100 * GiB)
    assert caplog.records[-1].levelno == logging.INFO
    assert f"memory estimate: peak ~{est.peak / GiB:.1f} GiB" in caplog.text
    assert "available 100.0 GiB" in caplog.text
    check(est, available=int(est.peak / 0.9))
    assert caplog.records[-1].levelno == logging.WARNING and "OUT-OF-MEMORY RISK" in caplog.text
    with pytest.raises(MemoryRiskError, match="would likely run out of memory.*--batch-size"):
        check(est, available=est.peak // 2)
    monkeypatch.setenv(memory.OVERRIDE, "1")
    check(est, available=est.peak // 2)  # told to try anyway: a warning, no error
    assert caplog.records[-1].levelno == logging.WARNING


def test_available_memory_is_read_from_the_machine():
    available = memory.available_bytes()
    assert available is not None and 0 < available < 2**50


@pytest.fixture(scope="module")
def large_catalog(tmp_path_factory) -> Path:
    """A 30k-item synthetic catalog, small enough a log to train on in seconds."""
    ds = generate(n_users=1_000, n_items=30_000, min_length=5, max_length=15, seed=4)
    return write_generic(ds, tmp_path_factory.mktemp("catalog30k"))


def test_baselines_and_evaluation_hold_no_dense_item_matrix(large_catalog):
    from training.data.generic import load_generic

    split = leave_one_out(load_generic(large_catalog))
    assert split.n_items == 30_000
    tracemalloc.start()
    try:
        results, skipped = run_baselines(split)
        rng = np.random.default_rng(0)
        evaluate(lambda u, h: rng.random((len(u), split.n_items)), split, "test")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # one dense [30k, 30k] float32 matrix would be 3.6 GB
    assert peak < 400 * 2**20, f"traced peak {peak / 2**20:.0f} MiB"
    assert list(results) == ["popularity", "item-knn", "markov"] and list(skipped) == ["ease"]


def test_a_30k_item_catalog_trains_evaluates_and_reports_the_skipped_baseline(
    large_catalog, tmp_path
):
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "training", "train", "--dataset", "generic"]
    cmd += ["--data-dir", str(large_catalog), "--out", str(out), "--epochs", "1"]
    cmd += ["--members", "1", "--no-progress"]
    result = subprocess.run(
        cmd, cwd=ROOT, capture_output=True, text=True, timeout=600,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )  # fmt: skip
    stderr = result.stderr
    assert result.returncode == 0, stderr[-3000:]
    assert "memory estimate: peak ~" in stderr and "baseline ease will be skipped" in stderr
    report = json.loads((out / "current" / "eval_report.json").read_text())
    assert report["n_items"] == 30_000 and "ease" in report["skipped_baselines"]
    assert {"popularity", "markov", "item-knn"} <= set(report["models"])
    assert "ease" not in report["models"]
    md = (out / "current" / "eval_report.md").read_text()
    assert "## Skipped baselines" in md and "**ease**" in md
    # the child's own peak RSS, as the trainer measured it: far below one dense
    # [30k, 30k] float32 matrix (3.6 GB)
    assert report["peak_memory_mb"] < 2_000, report["peak_memory_mb"]
