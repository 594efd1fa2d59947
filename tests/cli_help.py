"""Checks that a deployment file's command is a real entry point of the package."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def assert_real_command(cmd: list[str]) -> None:
    """``python -m <pkg> <command> --flags``: the command exists and takes every flag."""
    assert cmd[:2] == ["python", "-m"] and cmd[2] in ("training", "index", "service"), cmd
    module, sub = cmd[2], cmd[3]
    result = subprocess.run(
        [sys.executable, "-m", module, sub, "--help"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env={"COLUMNS": "200", "PATH": "/usr/bin:/bin"},
    )
    assert result.returncode == 0, result.stderr
    for flag in (a for a in cmd[4:] if a.startswith("--")):
        assert flag in result.stdout, f"{module} {sub} has no option {flag}"
