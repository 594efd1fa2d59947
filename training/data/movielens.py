"""MovieLens loaders (GroupLens formats): 100K, 1M, 20M (also 25M, same CSV layout).

Every rating is one implicit interaction, in file order. External ids are the decimal
strings of the MovieLens ids. Internal ids follow the user / item files (so items
nobody rated are still in the catalog); ML-20M has no user file, so its users are
numbered in order of first appearance in ``ratings.csv``.
"""

from __future__ import annotations

import csv
import re
from pathlib import Path

import numpy as np
import pandas as pd

from training.data.base import DataFormatError, Dataset, FeatureColumn

GENRES_100K = [
    "unknown",
    "Action",
    "Adventure",
    "Animation",
    "Children's",
    "Comedy",
    "Crime",
    "Documentary",
    "Drama",
    "Fantasy",
    "Film-Noir",
    "Horror",
    "Musical",
    "Mystery",
    "Romance",
    "Sci-Fi",
    "Thriller",
    "War",
    "Western",
]
USER_COLUMNS = [
    FeatureColumn("gender", "categorical"),
    FeatureColumn("age", "bucket", boundaries=[18, 25, 35, 45, 50, 56]),
    FeatureColumn("occupation", "categorical"),
    FeatureColumn("zip", "categorical", prefix=1),
]
ITEM_COLUMNS = [
    FeatureColumn("genres", "multi"),
    FeatureColumn("year", "bucket", boundaries=list(range(1920, 2030, 10))),
]
_TITLE_YEAR = re.compile(r"\((\d{4})(?:\s*[-\u2013]\s*\d{0,4})?\)\s*$")  # "(1995)", "(1994-1998)"
_DATE_YEAR = re.compile(r"(\d{4})\s*$")  # "01-Jan-1995"


def _require(path: Path) -> Path:
    if not path.is_file():
        raise FileNotFoundError(f"expected MovieLens file {path.name} in {path.parent} (not found)")
    return path


def _lines(path: Path, sep: str, n_fields: int, encoding: str, header: bool = False):
    """Yield (line number, fields) for non-blank lines, checking the field count."""
    with open(path, encoding=encoding, newline="") as f:
        for number, line in enumerate(f, start=1):
            line = line.rstrip("\r\n")
            if (header and number == 1) or not line.strip():
                continue
            fields = line.split(sep)
            if len(fields) != n_fields:
                message = f"expected {n_fields} fields, got {len(fields)}"
                raise DataFormatError(path, number, message)
            yield number, fields


def _int(path: Path, number: int, text: str, what: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise DataFormatError(path, number, f"{what} is not an integer: {text!r}") from None


def _year(title: str, date: str = "") -> int | None:
    match = _TITLE_YEAR.search(title) or _DATE_YEAR.search(date)
    return int(match.group(1)) if match else None


def _scan_ratings(path: Path, sep: str, encoding: str, header: bool) -> np.ndarray:
    """int64[n, 4]: user, item, timestamp, line number. Raises at the first bad line."""
    rows = []
    for number, (user, item, rating, ts) in _lines(path, sep, 4, encoding, header):
        try:
            float(rating)
        except ValueError:
            raise DataFormatError(path, number, f"rating is not a number: {rating!r}") from None
        rows.append(
            (
                _int(path, number, user, "user id"),
                _int(path, number, item, "item id"),
                _int(path, number, ts, "timestamp"),
                number,
            )
        )
    return np.array(rows, dtype=np.int64).reshape(-1, 4)


def _read_ratings(path: Path, sep: str, encoding: str, header: bool = False) -> np.ndarray:
    """int64[n, 3] (user, item, timestamp): pandas' C parser when it accepts the file,
    else the line-by-line scan, which names the first bad line."""
    if len(sep) == 1:
        try:
            df = pd.read_csv(
                path,
                sep=sep,
                header=0 if header else None,
                encoding=encoding,
                names=["u", "i", "r", "t"],
                dtype={"u": np.int64, "i": np.int64, "r": np.float64, "t": np.int64},
                quoting=csv.QUOTE_NONE,
            )
            return df[["u", "i", "t"]].to_numpy(np.int64)
        except ValueError:
            pass
    return _scan_ratings(path, sep, encoding, header)[:, :3]


def _internal(
    path: Path, ext: np.ndarray, known: list[int], what: str, header: bool, sep: str, encoding: str
) -> np.ndarray:
    """Map external integer ids to positions in ``known``; an unknown id names its line."""
    out = pd.Index(known).get_indexer(ext).astype(np.int64)
    bad = np.flatnonzero(out < 0)
    if bad.size:
        number = int(_scan_ratings(path, sep, encoding, header)[bad[0], 3])
        raise DataFormatError(path, number, f"unknown {what} id {ext[bad[0]]}")
    return out


def _new(path: Path, number: int, seen: dict, key: int, what: str) -> int:
    if key in seen:
        raise DataFormatError(path, number, f"duplicate {what} id {key}")
    return key


def _build(
    name: str,
    root: Path,
    ratings: Path,
    sep: str,
    encoding: str,
    header: bool,
    users: dict[int, dict] | None,
    items: dict[int, tuple[str, dict]],
) -> Dataset:
    data = _read_ratings(ratings, sep, encoding, header)
    item_keys = list(items)
    item_idx = _internal(ratings, data[:, 1], item_keys, "item", header, sep, encoding)
    if users is None:  # no user file: first appearance
        user_idx, uniques = pd.factorize(data[:, 0], sort=False)
        user_keys, user_features = [int(u) for u in uniques], []
    else:
        user_keys = list(users)
        user_idx = _internal(ratings, data[:, 0], user_keys, "user", header, sep, encoding)
        user_features = list(users.values())
    return Dataset(
        name=name,
        user_ids=[str(u) for u in user_keys],
        item_ids=[str(i) for i in item_keys],
        users=np.asarray(user_idx, np.int64),
        items=item_idx,
        timestamps=data[:, 2].copy(),
        user_features=user_features,
        item_features=[features for _, features in items.values()],
        user_columns=list(USER_COLUMNS) if users is not None else [],
        item_columns=list(ITEM_COLUMNS),
        titles=[title for title, _ in items.values()],
        source=str(root),
    )


def _users(path: Path, sep: str, order: tuple[str, ...]) -> dict[int, dict]:
    users: dict[int, dict] = {}
    for number, values in _lines(path, sep, 5, "latin-1"):
        row = dict(zip(order, values, strict=True))
        key = _new(path, number, users, _int(path, number, row["user"], "user id"), "user")
        users[key] = {
            "gender": row["gender"],
            "age": _int(path, number, row["age"], "age"),
            "occupation": row["occupation"],
            "zip": row["zip"],
        }
    return users


def _genre_list(text: str) -> list[str]:
    return [g for g in text.split("|") if g and g != "(no genres listed)"]


def load_ml100k(root: str | Path) -> Dataset:
    root = Path(root)
    ratings, user_file, item_file = (_require(root / n) for n in ("u.data", "u.user", "u.item"))
    genres = GENRES_100K
    if (root / "u.genre").is_file():
        named = [f[0] for _, f in _lines(root / "u.genre", "|", 2, "latin-1")]
        genres = named if len(named) == 19 else genres
    items: dict[int, tuple[str, dict]] = {}
    for number, fields in _lines(item_file, "|", 24, "latin-1"):
        key = _new(item_file, number, items, _int(item_file, number, fields[0], "item id"), "item")
        flags = fields[5:]
        if any(flag not in ("0", "1") for flag in flags):
            raise DataFormatError(item_file, number, "genre flags must be 0 or 1")
        title = fields[1]
        named = [g for g, flag in zip(genres, flags, strict=True) if flag == "1"]
        items[key] = (title, {"genres": named, "year": _year(title, fields[2])})
    users = _users(user_file, "|", ("user", "age", "gender", "occupation", "zip"))
    return _build("ml-100k", root, ratings, "\t", "latin-1", False, users, items)


def load_ml1m(root: str | Path) -> Dataset:
    root = Path(root)
    names = ("ratings.dat", "users.dat", "movies.dat")
    ratings, user_file, item_file = (_require(root / n) for n in names)
    items: dict[int, tuple[str, dict]] = {}
    for number, (mid, title, genres) in _lines(item_file, "::", 3, "latin-1"):
        key = _new(item_file, number, items, _int(item_file, number, mid, "movie id"), "movie")
        items[key] = (title, {"genres": _genre_list(genres), "year": _year(title)})
    users = _users(user_file, "::", ("user", "gender", "age", "occupation", "zip"))
    return _build("ml-1m", root, ratings, "::", "latin-1", False, users, items)


def load_ml20m(root: str | Path) -> Dataset:
    """ML-20M / ML-25M: ``ratings.csv`` and ``movies.csv`` (quoted titles), UTF-8, headers."""
    root = Path(root)
    ratings, item_file = _require(root / "ratings.csv"), _require(root / "movies.csv")
    items: dict[int, tuple[str, dict]] = {}
    with open(item_file, encoding="utf-8", newline="") as f:
        reader = csv.reader(f)
        for row in reader:
            number = reader.line_num
            if number == 1 or not row:
                continue
            if len(row) != 3:
                raise DataFormatError(item_file, number, f"expected 3 fields, got {len(row)}")
            mid = _int(item_file, number, row[0], "movie id")
            key = _new(item_file, number, items, mid, "movie")
            items[key] = (row[1], {"genres": _genre_list(row[2]), "year": _year(row[1])})
    return _build("ml-20m", root, ratings, ",", "utf-8", True, None, items)
