"""The distribution's promises: the exact torch pin and importable top-level packages."""

import importlib
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_torch_is_pinned_exactly():
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    torch_specs = [d.split("#")[0].strip() for d in deps if d.startswith("torch")]
    assert torch_specs == ["torch==2.13.0"]


def test_top_level_packages_import():
    for name in ("training", "index", "service"):
        assert importlib.import_module(name).__name__ == name


def test_ci_runs_the_readme_test_command():
    assert "make test" in (ROOT / ".ci" / "run").read_text()
    assert "make test" in (ROOT / "README.md").read_text()
