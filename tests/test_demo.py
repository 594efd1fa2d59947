"""The one-minute demo: `make demo` trains training/configs/demo.toml on the synthetic set,
and that configuration, run through the CLI, still beats popularity by a wide margin.
(How long the whole demo takes on a fresh clone is measured by ``python -m bench.demo``.)"""

from __future__ import annotations

import json
import subprocess
import tomllib
from pathlib import Path

from conftest import run_module

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "training" / "configs" / "demo.toml"


def make_dry_run(*args: str) -> str:
    """``make -n demo`` as on a fresh clone: ``-W pyproject.toml`` makes the install step
    due even where a venv is already installed (as it is when ``make test`` runs this)."""
    result = subprocess.run(
        ["make", "-n", "-W", "pyproject.toml", "demo", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_make_demo_trains_the_demo_config_on_synthetic_and_the_defaults_on_real_data():
    synthetic = make_dry_run()
    assert "--config training/configs/demo.toml --dataset synthetic" in synthetic
    assert "pip install -e .\n" in synthetic and "[dev]" not in synthetic  # runtime only
    real = make_dry_run("DATA=/data/ml-100k")
    assert "--config" not in real and "--dataset ml-100k --data-dir /data/ml-100k" in real
    demo_on_real = make_dry_run("DATA=/d", "CONFIG=training/configs/demo.toml")
    assert "--config training/configs/demo.toml --dataset ml-100k --data-dir /d" in demo_on_real


def test_demo_config_trains_end_to_end_and_beats_popularity(tmp_path):
    config = tomllib.loads(DEMO.read_text())
    assert config["dataset"] == "synthetic"
    out = tmp_path / "artifacts"
    run_module(
        "training", "train", "--config", str(DEMO), "--out", str(out), "--index", "flat",
        "--no-progress",
    )  # fmt: skip
    report = json.loads((out / "current" / "eval_report.json").read_text())
    models = report["models"]
    served, popularity = models[report["selected"]], models["popularity"]
    for stage in ("valid", "test"):
        assert served[stage]["NDCG@10"] >= 5 * popularity[stage]["NDCG@10"], stage
        assert served[stage]["HR@10"] >= 5 * popularity[stage]["HR@10"], stage
    # the file was applied: one tower, within its epoch budget (the defaults: 2, up to 200)
    assert len(served["epochs"]) == config["members"] == 1
    assert served["epochs"][0] <= config["train"]["epochs"]
    assert (out / "current" / "index").is_dir()
