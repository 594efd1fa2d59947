"""Datasets by name: every loader returns a :class:`~training.data.base.Dataset`."""

from __future__ import annotations

from pathlib import Path

from training.data.base import DataFormatError, Dataset, FeatureColumn
from training.data.download import DownloadError
from training.data.download import download as fetch
from training.data.generic import load_generic
from training.data.movielens import load_ml1m, load_ml20m, load_ml100k
from training.data.synthetic import generate

DATASETS = ("ml-100k", "ml-1m", "ml-20m", "synthetic", "generic")
CACHE = Path("~/.cache/towerrec/datasets")
_MOVIELENS = {  # name -> (loader, a file its directory must hold)
    "ml-100k": (load_ml100k, "u.data"),
    "ml-1m": (load_ml1m, "ratings.dat"),
    "ml-20m": (load_ml20m, "ratings.csv"),
}

__all__ = [
    "DATASETS",
    "Dataset",
    "DataFormatError",
    "DownloadError",
    "FeatureColumn",
    "generate",
    "load_dataset",
    "load_generic",
    "load_ml100k",
    "load_ml1m",
    "load_ml20m",
]


def load_dataset(name: str, data_dir: str | Path | None = None, **kwargs) -> Dataset:
    """Load ``name``. MovieLens: ``data_dir`` is the extracted directory (or its parent);
    without it the official archive is downloaded into ~/.cache/towerrec/datasets.
    ``synthetic``: keyword arguments go to :func:`generate`. ``generic``: ``data_dir`` is
    the directory holding ``dataset.toml`` (or the TOML file itself)."""
    if name == "synthetic":
        return generate(**kwargs)
    if name == "generic":
        if data_dir is None:
            raise ValueError("the generic dataset needs data_dir (a directory with dataset.toml)")
        return load_generic(data_dir)
    if name not in _MOVIELENS:
        raise ValueError(f"unknown dataset {name!r}; expected one of {DATASETS}")
    loader, probe = _MOVIELENS[name]
    if data_dir is None:
        return loader(fetch(name, CACHE.expanduser()))
    data_dir = Path(data_dir)
    if not (data_dir / probe).is_file() and (data_dir / name / probe).is_file():
        data_dir = data_dir / name
    return loader(data_dir)
