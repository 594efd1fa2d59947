"""Generic loader: CSV and Parquet tables described by dataset.toml."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from training.data import load_dataset
from training.data.base import DataFormatError
from training.data.generic import load_generic, write_generic
from training.data.synthetic import generate
from training.split import leave_one_out

CONFIG = """
name = "shop"
[interactions]
path = "interactions.{ext}"
[users]
path = "users.{ext}"
features.age = {{ kind = "bucket", boundaries = [18, 30] }}
features.country = {{ kind = "categorical", prefix = 2 }}
[items]
path = "items.{ext}"
title = "name"
features.tags = {{ kind = "multi", separator = ";" }}
"""
INTERACTIONS = pd.DataFrame(
    {
        "user_id": ["007", "2", "2", "007"],
        "item_id": ["a", "b", "c", "b"],
        "timestamp": [100, 101, 102, 99],
        "weight": [1.0, 2.0, 0.5, 1.0],
    }
)
USERS = pd.DataFrame({"user_id": ["2", "9"], "age": ["25", ""], "country": ["FRA", ""]})
ITEMS = pd.DataFrame(
    {"item_id": ["z", "a", "b"], "name": ["Zed", "Apple, red", ""], "tags": ["q", "x;y", ""]}
)


def write(root: Path, ext: str, interactions=INTERACTIONS, users=USERS, items=ITEMS) -> Path:
    (root / "dataset.toml").write_text(CONFIG.format(ext=ext))
    for name, df in (("interactions", interactions), ("users", users), ("items", items)):
        if ext == "csv":
            df.to_csv(root / f"{name}.csv", index=False)
        else:
            df.to_parquet(root / f"{name}.parquet", index=False)
    return root


@pytest.mark.parametrize("ext", ["csv", "parquet"])
def test_generic_tables(tmp_path: Path, ext: str):
    ds = load_generic(write(tmp_path, ext))
    assert ds.name == "shop"
    assert ds.user_ids == ["007", "2", "9"]  # strings kept as is; then table-only ids
    assert ds.item_ids == ["a", "b", "c", "z"]
    assert ds.users.tolist() == [0, 1, 1, 0] and ds.items.tolist() == [0, 1, 2, 1]
    assert ds.timestamps.tolist() == [100, 101, 102, 99]
    assert ds.weights.tolist() == [1.0, 2.0, 0.5, 1.0]
    assert ds.user_features == [
        {"age": None, "country": None},  # no row: missing
        {"age": 25.0, "country": "FRA"},
        {"age": None, "country": None},
    ]
    assert ds.item_features == [{"tags": ["x", "y"]}, {"tags": []}, {"tags": []}, {"tags": ["q"]}]
    assert ds.titles == ["Apple, red", "", "", "Zed"]
    assert [(c.name, c.kind, c.boundaries, c.prefix) for c in ds.user_columns] == [
        ("age", "bucket", [18.0, 30.0], None),
        ("country", "categorical", [], 2),
    ]
    assert load_dataset("generic", tmp_path / "dataset.toml").fingerprint() == ds.fingerprint()


def test_parquet_native_types(tmp_path: Path):
    interactions = pd.DataFrame(
        {
            "user_id": [5, 6],
            "item_id": [50, 60],
            "timestamp": pd.to_datetime(["1970-01-01 00:01:40", "2001-09-09 01:46:40"]),
        }
    )
    items = pd.DataFrame({"item_id": [50], "name": ["Fifty"], "tags": [["x", "y"]]})
    users = pd.DataFrame({"user_id": [5], "age": [None], "country": [None]})
    ds = load_generic(write(tmp_path, "parquet", interactions, users, items))
    assert ds.user_ids == ["5", "6"] and ds.item_ids == ["50", "60"]
    assert ds.timestamps.tolist() == [100, 1_000_000_000] and ds.weights is None
    assert ds.item_features[0] == {"tags": ["x", "y"]}


def test_iso_dates_in_csv(tmp_path: Path):
    write(tmp_path, "csv")
    (tmp_path / "interactions.csv").write_text(
        "user_id,item_id,timestamp\n1,a,2001-09-09T01:46:40Z\n1,b,1970-01-01 00:01:40\n"
    )
    assert load_generic(tmp_path).timestamps.tolist() == [1_000_000_000, 100]


@pytest.mark.parametrize("ext", ["csv", "parquet"])
@pytest.mark.parametrize(
    "column, value, message",
    [
        ("timestamp", "soon", "column 'timestamp': not an integer timestamp"),
        ("timestamp", "100.5", "column 'timestamp': not an integer timestamp"),
        ("weight", "-1", "column 'weight': not a finite number >= 0"),
        ("user_id", "", "column 'user_id': missing id"),
    ],
)
def test_bad_interaction_values_name_file_row_and_column(
    tmp_path: Path, ext: str, column: str, value: str, message: str
):
    bad = INTERACTIONS.astype(str)
    bad.loc[2, column] = value
    write(tmp_path, ext, interactions=bad)
    with pytest.raises(DataFormatError, match=message) as e:
        load_generic(tmp_path)
    line = 4 if ext == "csv" else 3  # CSV: header is line 1; Parquet: 1-based rows
    assert e.value.path == str(tmp_path / f"interactions.{ext}") and e.value.line == line
    assert f"{'line' if ext == 'csv' else 'row'} {line}, column" in str(e.value)


def test_bad_feature_values_and_tables(tmp_path: Path):
    write(tmp_path, "csv", users=USERS.assign(age=["25", "old"]))
    with pytest.raises(DataFormatError, match=r"users.csv:3: line 3, column 'age': not a finite"):
        load_generic(tmp_path)
    write(tmp_path, "csv", users=USERS.assign(age=["NaN", "3"]))
    with pytest.raises(DataFormatError, match=r"users.csv:2: line 2, column 'age': not a finite"):
        load_generic(tmp_path)
    write(tmp_path, "csv", items=ITEMS.drop(columns="tags"))
    with pytest.raises(DataFormatError, match=r"items.csv: missing column\(s\) tags"):
        load_generic(tmp_path)
    write(tmp_path, "csv", items=pd.concat([ITEMS, ITEMS.iloc[:1]]))
    with pytest.raises(DataFormatError, match=r"items.csv:5: .*duplicate id"):
        load_generic(tmp_path)
    write(tmp_path, "csv", interactions=INTERACTIONS.drop(columns="timestamp"))
    with pytest.raises(DataFormatError, match=r"missing column\(s\) timestamp"):
        load_generic(tmp_path)


def test_bad_config(tmp_path: Path):
    with pytest.raises(FileNotFoundError, match="dataset.toml"):
        load_generic(tmp_path)
    write(tmp_path, "csv")
    toml = tmp_path / "dataset.toml"
    toml.write_text(toml.read_text().replace('"multi"', '"tags"'))
    with pytest.raises(DataFormatError, match=r"\[items.features.tags\]: kind must be one of"):
        load_generic(tmp_path)
    toml.write_text("[interactions]\npath = 'nope.csv'\n")
    with pytest.raises(FileNotFoundError, match="nope.csv"):
        load_generic(tmp_path)
    toml.write_text("[interactions\n")
    with pytest.raises(DataFormatError, match="invalid TOML"):
        load_generic(tmp_path)


def test_write_generic_round_trips_the_synthetic_generator(tmp_path: Path):
    ds = generate(n_users=60, n_items=40, seed=2)
    back = load_generic(write_generic(ds, tmp_path))
    assert sorted(back.user_ids) == sorted(ds.user_ids) and back.n_items == ds.n_items
    users = np.asarray(back.user_ids)[back.users]
    items = np.asarray(back.item_ids)[back.items]
    assert users.tolist() == np.asarray(ds.user_ids)[ds.users].tolist()
    assert items.tolist() == np.asarray(ds.item_ids)[ds.items].tolist()
    assert back.timestamps.tolist() == ds.timestamps.tolist()
    original = dict(zip(ds.user_ids, ds.user_features, strict=True))
    for user, features in zip(back.user_ids, back.user_features, strict=True):
        assert features["gender"] == original[user]["gender"]
        assert features["age"] == original[user]["age"] and features["zip"] == original[user]["zip"]
    titles = dict(zip(ds.item_ids, ds.titles, strict=True))
    genres = {i: f["genres"] for i, f in zip(ds.item_ids, ds.item_features, strict=True)}
    for item, title, features in zip(back.item_ids, back.titles, back.item_features, strict=True):
        assert title == titles[item] and features["genres"] == genres[item]
    assert [c.name for c in back.item_columns] == ["genres", "year"]


def test_a_malformed_csv_row_names_the_line(tmp_path: Path):
    write(tmp_path, "csv")
    (tmp_path / "interactions.csv").write_text("user_id,item_id,timestamp\n1,a,1\n1,b,2\n1,c,3,4\n")
    with pytest.raises(DataFormatError, match="line 4") as e:
        load_generic(tmp_path)
    assert e.value.path == str(tmp_path / "interactions.csv") and e.value.line == 4


def test_the_shared_amazon_layout_loads_and_splits():
    """Position timestamps, no user or item features: the shape of the shared sets."""
    root = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "amazon-beauty"
    if not (root / "dataset.toml").is_file():
        pytest.fail(f"the shared amazon-beauty data is expected at {root} (read-only)")
    ds = load_dataset("generic", root)
    assert (ds.n_users, ds.n_items, len(ds.users)) == (22_363, 12_101, 198_502)
    assert ds.user_columns == ds.item_columns == [] and ds.user_features == []
    assert ds.item_features == [] and ds.weights is None and set(ds.titles) == {""}
    raw = pd.read_csv(root / "interactions.csv", dtype=str)
    assert ds.users.tolist() == pd.factorize(raw.user_id)[0].tolist()
    split = leave_one_out(ds)
    assert len(split.eval_users("test")) == ds.n_users  # 5-core: every user has >= 5
    counts = np.bincount(ds.users)
    assert [len(t) for t in split.train] == (counts - 2).tolist()
    # timestamps are positions 0..n-1 in each user's time order: last = test, before = valid
    by_user = raw.assign(t=raw.timestamp.astype(int)).sort_values(["user_id", "t"])
    last = by_user.groupby("user_id", sort=False).tail(2)
    item_of = {k: i for i, k in enumerate(ds.item_ids)}
    user_of = {k: i for i, k in enumerate(ds.user_ids)}
    for user, group in list(last.groupby("user_id"))[:500]:
        u = user_of[user]
        assert split.valid[u] == item_of[group.item_id.iloc[0]]
        assert split.test[u] == item_of[group.item_id.iloc[1]]
