"""``python -m index`` end to end on a copy of the trained fixture bundle (subprocesses)."""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
from typer.testing import CliRunner

from index import ItemIndex
from index.cli import app
from training.bundle import ITEMS, read_manifest, resolve

ROOT = Path(__file__).resolve().parents[1]


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "index", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )


def ok(*args: str) -> str:
    result = cli(*args)
    assert result.returncode == 0, result.stderr
    return result.stdout + result.stderr


def test_help_lists_every_command():
    out = ok("--help")
    for command in ("build", "add", "replace", "remove", "compact", "info", "eval"):
        assert command in out


def test_build_update_and_inspect_through_the_cli(trained_root, tmp_path):
    shutil.copytree(trained_root, tmp_path / "artifacts", symlinks=True)
    bundle = str(tmp_path / "artifacts" / "current")
    features = json.loads((resolve(bundle) / ITEMS).read_text())[0]["features"]

    out = ok("build", "--bundle", bundle, "--kind", "hnsw", "-M", "16", "--threads", "1")
    assert "built hnsw M=16 efC=80 efS=64 index v0001" in out and "index/v0001" in out
    out = ok(
        "add",
        "--bundle",
        bundle,
        "--item-id",
        "new-1",
        "--title",
        "New One",
        "--features",
        json.dumps(features),
    )
    assert "added 1 item(s): hnsw index v0002" in out
    lines = [
        {"id": "new-2", "title": "Two", "features": features},
        {"id": "new-3", "title": "Three", "features": {"genres": ["Nonexistent"]}},
    ]
    (tmp_path / "items.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    out = ok("add", "--bundle", bundle, "--from-file", str(tmp_path / "items.jsonl"))
    assert "added 2 item(s)" in out and "not seen in training" in out
    vector = np.full((1, read_manifest(bundle)["index"]["dim"]), 0.5, np.float32)
    np.save(tmp_path / "v.npy", vector)
    ok(
        "replace",
        "--bundle",
        bundle,
        "--item-id",
        "new-1",
        "--vector-file",
        str(tmp_path / "v.npy"),
    )
    assert "removed 1 item(s)" in ok("remove", "--bundle", bundle, "--item-id", "new-2")
    assert "hnsw index v0005" in ok("info", "--bundle", bundle)

    index = ItemIndex.load(bundle)
    assert index.version == 5 and index.section["tombstones"] == 2  # new-2, old new-1 row
    np.testing.assert_array_equal(index.vectors([index.internal_id("new-1")]), vector)
    assert index.metadata(index.internal_id("new-3"))["title"] == "Three"
    assert not index.is_active(index.item_ids.index("new-2"))

    assert "2 tombstones dropped" in ok("compact", "--bundle", bundle)
    assert ItemIndex.load(bundle).section["tombstones"] == 0


# In-process (typer's CliRunner) for the cheap paths: same app, no interpreter start-up.


def test_if_missing_and_user_errors_exit_with_a_clear_message(bundle_root, tmp_path, caplog):
    shutil.copytree(bundle_root, tmp_path / "artifacts", symlinks=True)
    bundle = str(tmp_path / "artifacts" / "current")
    existing = ItemIndex.load(bundle).item_ids[0]
    runner = CliRunner()
    with caplog.at_level(logging.INFO, logger="index"):
        assert runner.invoke(app, ["build", "--bundle", bundle, "--if-missing"]).exit_code == 0
        assert "nothing to do" in caplog.text
        result = runner.invoke(app, ["remove", "--bundle", bundle, "--item-id", "nope"])
        assert result.exit_code == 1 and "item 'nope' is not in the index (v0001)" in caplog.text
        result = runner.invoke(app, ["add", "--bundle", bundle, "--item-id", existing])
        assert result.exit_code == 1 and "already in the index" in caplog.text
    result = runner.invoke(app, ["add", "--bundle", bundle, "--item-id", "x", "--features", "[1"])
    assert result.exit_code == 2 and "not valid JSON" in result.output
    result = runner.invoke(app, ["add", "--bundle", bundle, "--title", "no id"])
    assert result.exit_code == 2 and "--item-id or --from-file" in result.output
    assert read_manifest(bundle)["index"]["version"] == 1


def test_eval_prints_recall_and_latency(bundle_root):
    result = CliRunner().invoke(
        app, ["eval", "--bundle", str(bundle_root / "current"), "--kind", "ivf", "--queries", "50"]
    )
    assert result.exit_code == 0, result.output
    assert "recall@10" in result.output and "p99 ms" in result.output
    assert "items" in result.output and "user-like" in result.output
