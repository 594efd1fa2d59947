"""Your own data: an interactions table plus optional user and item feature tables,
described by a small TOML file, ``dataset.toml`` next to them::

    name = "shop"                      # optional, defaults to the directory name

    [interactions]                     # columns: user_id, item_id, timestamp[, weight]
    path = "interactions.csv"          # .csv or .parquet, relative to this file

    [users]                            # optional, one row per user_id
    path = "users.parquet"
    features.country = { kind = "categorical" }
    features.zip = { kind = "categorical", prefix = 2 }
    features.age = { kind = "bucket", boundaries = [18, 25, 35, 50] }

    [items]                            # optional, one row per item_id
    path = "items.csv"
    title = "name"                     # optional column with display titles
    features.tags = { kind = "multi", separator = "|" }
    features.price = { kind = "bucket", boundaries = [5, 10, 20, 50] }

Ids are read as strings ("007" stays "007"). Timestamps are integers (any unit) or
ISO-8601 dates / datetime columns (converted to epoch seconds). A ``weight`` column, if
present, must hold finite numbers >= 0. Feature columns are named after the feature;
empty cells are missing values. ``multi`` columns hold separated strings (or lists in
Parquet). Internal ids follow first appearance in the interactions, then the rows of
the feature tables that have no interaction; ids missing from a feature table get
missing features. Errors name the file, the line (CSV, header = line 1) or the
1-based row (Parquet), and the column.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from training.data.base import DataFormatError, Dataset, FeatureColumn

CONFIG = "dataset.toml"
KINDS = ("categorical", "bucket", "multi")
_FEATURE_KEYS = {"kind", "boundaries", "prefix", "separator"}


def _read_csv(path: Path) -> pd.DataFrame:
    """Every cell as a string, read by Arrow's multi-threaded parser; a file it rejects
    is read again by pandas' C parser, whose error names the line."""
    try:
        return pd.read_csv(path, dtype=str, keep_default_na=False, engine="pyarrow")
    except (pd.errors.ParserError, ValueError):
        pass
    try:
        return pd.read_csv(path, dtype=str, keep_default_na=False)
    except pd.errors.ParserError as e:
        match = re.search(r"line (\d+)", str(e))
        raise DataFormatError(path, int(match.group(1)) if match else None, str(e)) from None


class _Table:
    def __init__(self, path: Path, required: tuple[str, ...]):
        if not path.is_file():
            raise FileNotFoundError(f"expected data file {path} (not found)")
        if path.suffix == ".parquet":
            self.df = pd.read_parquet(path)
        elif path.suffix == ".csv":
            self.df = _read_csv(path)
        else:
            raise DataFormatError(path, None, "expected a .csv or .parquet file")
        self.path = path
        missing = [c for c in required if c not in self.df.columns]
        if missing:
            raise DataFormatError(
                path,
                None,
                f"missing column(s) {', '.join(missing)}; "
                f"found {', '.join(map(str, self.df.columns))}",
            )

    def error(self, row: int, column: str, message: str) -> DataFormatError:
        line = row + 2 if self.path.suffix == ".csv" else row + 1
        kind = "line" if self.path.suffix == ".csv" else "row"
        return DataFormatError(self.path, line, f"{kind} {line}, column {column!r}: {message}")

    def first_bad(self, bad: np.ndarray | pd.Series, column: str, message: str) -> None:
        bad = np.asarray(bad, dtype=bool)
        if bad.any():
            row = int(np.argmax(bad))
            raise self.error(row, column, f"{message}: {self.df[column].iloc[row]!r}")

    def ids(self, column: str) -> pd.Series:
        """The column as strings, every cell checked to hold an id."""
        values = self.df[column]
        if pd.api.types.is_float_dtype(values):
            raise DataFormatError(
                self.path,
                None,
                f"column {column!r}: float ids are ambiguous; store ids as integers or strings",
            )
        text = values.astype(str)
        self.first_bad(values.isna() | (text.str.strip() == ""), column, "missing id")
        return text


def _missing(value: Any) -> bool:
    return (
        value is None
        or (isinstance(value, float) and np.isnan(value))
        or (isinstance(value, str) and not value.strip())
    )


def _timestamps(table: _Table) -> np.ndarray:
    column = table.df["timestamp"]
    if pd.api.types.is_integer_dtype(column):
        return column.to_numpy(np.int64)
    if pd.api.types.is_string_dtype(column):
        try:  # the common case, fast; anything else takes the checked path below
            return column.astype(np.int64).to_numpy()
        except (TypeError, ValueError, OverflowError):
            pass
    if not pd.api.types.is_datetime64_any_dtype(column):
        numbers = pd.to_numeric(column, errors="coerce")
        if numbers.notna().any():
            table.first_bad(
                numbers.isna() | (numbers % 1 != 0), "timestamp", "not an integer timestamp"
            )
            return numbers.to_numpy(np.int64)
    dates = pd.to_datetime(column, utc=True, errors="coerce", format="ISO8601")
    table.first_bad(dates.isna(), "timestamp", "not an integer or an ISO-8601 date")
    return ((dates - pd.Timestamp(0, tz="UTC")) // pd.Timedelta(seconds=1)).to_numpy(np.int64)


def _weights(table: _Table) -> np.ndarray | None:
    if "weight" not in table.df.columns:
        return None
    weights = pd.to_numeric(table.df["weight"], errors="coerce").to_numpy(np.float64)
    table.first_bad(~np.isfinite(weights) | (weights < 0), "weight", "not a finite number >= 0")
    return weights.astype(np.float32)


def _columns(config_path: Path, section: str, spec: dict) -> list[tuple[FeatureColumn, str]]:
    """(FeatureColumn, multi separator) per configured feature."""
    out = []
    for name, options in spec.items():
        where = f"[{section}.features.{name}]"
        if not isinstance(options, dict) or options.get("kind") not in KINDS:
            raise DataFormatError(config_path, None, f"{where}: kind must be one of {KINDS}")
        unknown = set(options) - _FEATURE_KEYS
        if unknown:
            raise DataFormatError(config_path, None, f"{where}: unknown keys {sorted(unknown)}")
        if options["kind"] == "bucket" and not options.get("boundaries"):
            raise DataFormatError(config_path, None, f"{where}: bucket needs boundaries")
        column = FeatureColumn(
            name,
            options["kind"],
            boundaries=[float(b) for b in options.get("boundaries", [])],
            prefix=options.get("prefix"),
        )
        out.append((column, str(options.get("separator", "|"))))
    return out


def _value(table: _Table, row: int, column: FeatureColumn, separator: str, value: Any) -> Any:
    if column.kind == "multi":
        if isinstance(value, (list, tuple, np.ndarray)):
            return [str(v) for v in value if not _missing(v)]
        return (
            [] if _missing(value) else [v.strip() for v in str(value).split(separator) if v.strip()]
        )
    if _missing(value):
        return None
    if column.kind == "categorical":
        return str(value).strip()
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = float("nan")
    if not np.isfinite(number):
        raise table.error(row, column.name, f"not a finite number: {value!r}")
    return number


def _features(config_path: Path, section: str, config: dict, key: str):
    """(ids, per-row feature dicts, columns, titles) of an optional feature table."""
    if section not in config:
        return pd.Series([], dtype=object), [], [], []
    options = config[section]
    if "path" not in options:
        raise DataFormatError(config_path, None, f"[{section}] needs a path")
    columns = _columns(config_path, section, options.get("features", {}))
    title = options.get("title")
    required = (key, *(c.name for c, _ in columns), *([title] if title else []))
    table = _Table(config_path.parent / options["path"], required)
    ids = table.ids(key)
    duplicated = ids.duplicated().to_numpy()
    table.first_bad(duplicated, key, "duplicate id")
    cells = {c.name: table.df[c.name].tolist() for c, _ in columns}
    rows = [
        {c.name: _value(table, r, c, sep, cells[c.name][r]) for c, sep in columns}
        for r in range(len(ids))
    ]
    titles = ["" if _missing(t) else str(t) for t in table.df[title]] if title else []
    return ids, rows, [c for c, _ in columns], titles


def _index(seen: pd.Series, extra: pd.Series) -> tuple[np.ndarray, pd.Index]:
    """(internal id per ``seen`` row, every id in internal order): first appearance in
    ``seen``, then the ``extra`` ids it does not hold."""
    codes, uniques = pd.factorize(seen)
    uniques = pd.Index(uniques, dtype=object)
    extra = pd.Index(extra, dtype=object)
    return codes.astype(np.int64), uniques.append(extra[~extra.isin(uniques)])


def _attach(
    index: pd.Index, keys: pd.Series, rows: list[dict], columns: list[FeatureColumn]
) -> list[dict]:
    """Per internal id feature dicts; ids without a table row get missing values."""
    if not columns:
        return []
    out = [{c.name: [] if c.kind == "multi" else None for c in columns} for _ in range(len(index))]
    for position, row in zip(index.get_indexer(keys), rows, strict=True):
        out[position] = row
    return out


def load_generic(source: str | Path) -> Dataset:
    """Load a dataset from a directory holding ``dataset.toml``, or from the TOML path."""
    source = Path(source)
    config_path = source / CONFIG if source.is_dir() else source
    if not config_path.is_file():
        raise FileNotFoundError(f"expected a dataset config {config_path} (see docs/DATA.md)")
    try:
        config = tomllib.loads(config_path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as e:
        raise DataFormatError(config_path, None, f"invalid TOML: {e}") from None
    if "path" not in config.get("interactions", {}):
        raise DataFormatError(config_path, None, "[interactions] needs a path")

    log = _Table(
        config_path.parent / config["interactions"]["path"], ("user_id", "item_id", "timestamp")
    )
    log_users, log_items = log.ids("user_id"), log.ids("item_id")
    timestamps, weights = _timestamps(log), _weights(log)

    user_keys, user_rows, user_columns, _ = _features(config_path, "users", config, "user_id")
    item_keys, item_rows, item_columns, titles = _features(config_path, "items", config, "item_id")
    users, user_index = _index(log_users, user_keys)
    items, item_index = _index(log_items, item_keys)

    title_list = [""] * len(item_index)
    for position, title in zip(item_index.get_indexer(item_keys), titles, strict=False):
        title_list[position] = title
    return Dataset(
        name=str(config.get("name", config_path.parent.name)),
        user_ids=user_index.tolist(),
        item_ids=item_index.tolist(),
        users=users,
        items=items,
        timestamps=timestamps,
        user_features=_attach(user_index, user_keys, user_rows, user_columns),
        item_features=_attach(item_index, item_keys, item_rows, item_columns),
        user_columns=user_columns,
        item_columns=item_columns,
        titles=title_list,
        source=str(config_path),
        weights=weights,
    )


def _toml_feature(column: FeatureColumn, separator: str) -> str:
    options = [f'kind = "{column.kind}"']
    if column.boundaries:
        options.append(f"boundaries = {[float(b) for b in column.boundaries]}")
    if column.prefix is not None:
        options.append(f"prefix = {column.prefix}")
    if column.kind == "multi":
        options.append(f'separator = "{separator}"')
    return f"features.{column.name} = {{ {', '.join(options)} }}"


def write_generic(ds: Dataset, root: str | Path, separator: str = "|") -> Path:
    """Write ``ds`` in this layout (CSV tables and ``dataset.toml``) so that
    ``load_generic(root)`` reads the same interactions, ids, features and titles back;
    used to hand the synthetic generator's logs to the trainer as a user's files."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    user_ids, item_ids = (
        np.asarray(ds.user_ids, dtype=object),
        np.asarray(ds.item_ids, dtype=object),
    )
    log = {"user_id": user_ids[ds.users], "item_id": item_ids[ds.items], "timestamp": ds.timestamps}
    if ds.weights is not None:
        log["weight"] = ds.weights
    pd.DataFrame(log).to_csv(root / "interactions.csv", index=False)
    config = [f'name = "{ds.name}"', "", "[interactions]", 'path = "interactions.csv"']

    def table(section: str, key: str, ids, rows, columns, titles=()) -> None:
        if not columns and not any(titles):
            return
        frame = {key: ids}
        for c in columns:
            values = [row.get(c.name) for row in rows]
            if c.kind == "multi":
                values = [separator.join(v or []) for v in values]
            frame[c.name] = ["" if v is None else v for v in values]
        config.extend(["", f"[{section}]", f'path = "{section}.csv"'])
        if any(titles):
            frame["title"] = list(titles)
            config.append('title = "title"')
        config.extend(_toml_feature(c, separator) for c in columns)
        pd.DataFrame(frame).to_csv(root / f"{section}.csv", index=False)

    table("users", "user_id", ds.user_ids, ds.user_features, ds.user_columns)
    table("items", "item_id", ds.item_ids, ds.item_features, ds.item_columns, ds.titles)
    (root / CONFIG).write_text("\n".join(config) + "\n", encoding="utf-8")
    return root
