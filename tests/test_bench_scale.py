"""bench.scale's bookkeeping: what it reads from a training log, and its verdicts."""

from __future__ import annotations

from datetime import datetime

import pytest

from bench.scale import SCENARIOS, exponent, growth, parse_log, section, table

LOG = (
    "2026-12-02 06:00:10,500 training.pipeline loaded synthetic: 690 users, 26744 items, "
    "100050 interactions from /tmp/x/dataset.toml\n"
    "2026-12-02 06:00:10,600 training.memory memory estimate: peak ~1.5 GiB (GiB: ...)\n"
    "train:   0%|          | 0/200 [00:00<?, ?it/s]\r"
    "train:   1%|          | 2/200 [00:20<33:00, 10.0s/it, loss=9.1]\r"
    "train:   2%|          | 4/200 [00:40<32:40, 10.0s/it, loss=8.9]\n"
    "train:   0%|          | 0/200 [00:00<?, ?it/s]\r"
    "train:   1%|          | 2/200 [01:00<1:39:00, 30.0s/it, loss=9.0]\n"
    "2026-12-02 06:02:30,500 training.pipeline sasrec: valid NDCG@10 0.0500, test ...\n"
)


def test_parse_log_reads_shape_load_estimate_and_epochs():
    row = parse_log(LOG, datetime(2026, 12, 2, 6, 0, 0))
    assert (row["users"], row["items"], row["interactions"]) == (690, 26744, 100050)
    assert row["load_s"] == pytest.approx(10.5) and row["estimate_mb"] == 1.5 * 1024
    assert row["epochs"] == 6  # two members' bars: 4 + 2 epochs in 40 + 60 s
    assert row["epoch_s"] == pytest.approx(100 / 6)
    assert row["towers_s"] == pytest.approx(140.0)
    partial = parse_log(LOG.split("train:")[0], datetime(2026, 12, 2, 6, 0, 0))
    assert "epochs" not in partial and partial["load_s"] == pytest.approx(10.5)


def test_exponent_and_verdicts():
    rows = {
        "100k": {"scenario": "100k", "interactions": 1e5, "epoch_cpu_s": 2.0, "peak_rss_mb": 900},
        "1m": {"scenario": "1m", "interactions": 1e6, "epoch_cpu_s": 20.0, "peak_rss_mb": 1000},
        "20m": {"scenario": "20m", "interactions": 2e7, "load_s": 50.0, "status": "timeout"},
    }
    assert exponent(list(rows.values()), "interactions", "epoch_cpu_s")[0] == pytest.approx(1.0)
    lines = growth(rows)
    assert any("CPU seconds per epoch" in line and "linear" in line for line in lines)
    assert any("peak RSS" in line and "constant" in line for line in lines)
    assert any("load time" in line and "not enough" in line for line in lines)


def test_a_partial_row_says_where_it_stopped():
    row = {"scenario": "20m", "status": "timeout", "wall_s": 1500.0, "load_s": 80.0}
    text = table([row])
    assert "partial: stopped at 25 min" in text and "| 80 |" in text
    doc = section({"20m": row | {"date": "2026-12-02 07:00 UTC", "bench_command": "b"}})
    assert doc.startswith("## Scale") and "`b`" in doc and set(SCENARIOS) >= {"20m"}


def test_the_probe_builds_the_default_run_and_times_it(tmp_path):
    """The probe drives trainer internals directly: this catches it drifting from them."""
    from bench.scale import Scenario, probe

    tiny = Scenario("tiny", "synthetic", users=40, items=60, interactions=1_200)
    row = probe(tiny, tmp_path, steps=1)
    assert (row["users"], row["items"]) == (40, 60)
    assert row["steps_per_epoch"] >= 1 and row["step_cpu_s"] > 0
    assert row["projected_epoch_cpu_s"] >= row["steps_per_epoch"] * row["step_cpu_s"]
