"""bench.profile_hit drives real cache hits through the app (Redis and in-process) and
prints one CPU figure per layer."""

import re
import subprocess
import sys

import test_service_support as support
from conftest import ROOT

served_root = support.served_root  # fixture


def test_profile_hit_prints_a_cpu_figure_for_every_layer(served_root):
    result = subprocess.run(
        [sys.executable, "-m", "bench.profile_hit", "--bundle", str(served_root / "current")]
        + ["--requests", "20", "--rounds", "1", "--users", "10"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    rows = dict(re.findall(r"^\| (.+?) \| (\d+) \| [\d-]+ \|$", result.stdout, re.M))
    for name in (
        "hit, redis store (full app)",
        "hit, in-process store (full app)",
        "store.read() redis (one pipeline)",
        "recommend.recommend() direct, in-process",
        "naive endpoint (bench.naive)",
        "hit, redis store, 32 at a time",
        "hit, in-process store, 32 at a time",
    ):
        assert int(rows[name]) > 0, result.stdout
    assert len(rows) == 18, result.stdout
