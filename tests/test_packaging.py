"""The distribution's promises: the exact torch pin and importable top-level packages."""

import importlib
import shutil
import subprocess
import sys
import tomllib
import zipfile
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


def test_the_wheel_ships_the_dashboard_assets(tmp_path):
    """/ui serves service/static: package data, so an installed wheel has the page too."""
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    for package in ("training", "index", "service"):
        shutil.copytree(ROOT / package, src / package, ignore=shutil.ignore_patterns("__pycache__"))
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
         "-w", str(tmp_path / "dist"), str(src)],
        check=True, capture_output=True, timeout=600,
    )  # fmt: skip
    (wheel,) = (tmp_path / "dist").glob("towerrec-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for asset in ("index.html", "dashboard.js", "dashboard.css"):
        assert f"service/static/{asset}" in names, sorted(names)
