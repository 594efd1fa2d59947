"""MovieLens loaders on tiny files written in each official format."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from training.data import load_dataset
from training.data.base import DataFormatError
from training.data.movielens import GENRES_100K, load_ml1m, load_ml20m, load_ml100k

ML100K = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "ml-100k"


def write(path: Path, lines: list[str], encoding: str = "latin-1") -> Path:
    path.write_bytes(("\n".join(lines) + "\n").encode(encoding))
    return path


def flags(*names: str) -> str:
    return "|".join("1" if g in names else "0" for g in GENRES_100K)


@pytest.fixture
def ml100k(tmp_path: Path) -> Path:
    write(
        tmp_path / "u.data", ["2\t10\t4\t881250949", "1\t20\t3\t881250950", "2\t20\t5\t881250948"]
    )
    write(tmp_path / "u.user", ["1|24|M|technician|85711", "2|53|F|other|94043"])
    write(
        tmp_path / "u.item",
        [
            f"10|Amélie (2001)|01-Jan-2001||http://x|{flags('Comedy', 'Romance')}",
            f"20|Heat|15-Dec-1995||http://y|{flags('Action', 'Crime')}",
            f"30|unknown|||http://z|{flags('unknown')}",
        ],
    )
    return tmp_path


def test_ml100k_tiny(ml100k: Path):
    ds = load_ml100k(ml100k)
    assert ds.name == "ml-100k" and ds.user_ids == ["1", "2"] and ds.item_ids == ["10", "20", "30"]
    assert ds.users.tolist() == [1, 0, 1] and ds.items.tolist() == [0, 1, 1]  # file order
    assert ds.timestamps.tolist() == [881250949, 881250950, 881250948]
    assert ds.titles == ["Amélie (2001)", "Heat", "unknown"]  # latin-1 decoded
    assert ds.item_features == [
        {"genres": ["Comedy", "Romance"], "year": 2001},
        {"genres": ["Action", "Crime"], "year": 1995},  # year from the release date
        {"genres": ["unknown"], "year": None},
    ]
    assert ds.user_features[0] == {
        "gender": "M",
        "age": 24,
        "occupation": "technician",
        "zip": "85711",
    }
    assert [c.name for c in ds.user_columns] == ["gender", "age", "occupation", "zip"]
    assert ds.user_columns[1].boundaries == [18, 25, 35, 45, 50, 56]
    assert ds.user_columns[3].prefix == 1
    assert [(c.name, c.kind) for c in ds.item_columns] == [("genres", "multi"), ("year", "bucket")]


def test_ml100k_uses_u_genre_names(ml100k: Path):
    write(ml100k / "u.genre", [f"G{i}|{i}" for i in range(19)])
    assert load_ml100k(ml100k).item_features[0]["genres"] == ["G5", "G14"]


@pytest.mark.parametrize(
    "line, what",
    [
        ("1\t10\t4", "expected 4 fields, got 3"),
        ("1\t10\t4\t5\t6", "expected 4 fields, got 5"),
        ("x\t10\t4\t881250949", "user id is not an integer"),
        ("1\t10\t4\t8812509.5", "timestamp is not an integer"),
        ("3\t10\t4\t881250949", "unknown user id 3"),
        ("1\t99\t4\t881250949", "unknown item id 99"),
    ],
)
def test_ml100k_malformed_rating_names_file_and_line(ml100k: Path, line: str, what: str):
    write(ml100k / "u.data", ["1\t10\t4\t881250949", "", line, "2\t20\t5\t881250948"])
    with pytest.raises(DataFormatError, match=what) as e:
        load_ml100k(ml100k)
    assert e.value.line == 3 and e.value.path == str(ml100k / "u.data")
    assert f"u.data:3: {what}" in str(e.value)


def test_ml100k_malformed_item_and_user(ml100k: Path):
    write(ml100k / "u.item", ["10|Short|line"])
    with pytest.raises(DataFormatError, match=r"u.item:1: expected 24 fields"):
        load_ml100k(ml100k)
    write(ml100k / "u.item", [f"10|A (2001)|||x|{flags()}"])
    write(ml100k / "u.user", ["1|24|M|technician|85711", "1|30|F|other|1"])
    with pytest.raises(DataFormatError, match=r"u.user:2: duplicate user id 1"):
        load_ml100k(ml100k)


def test_missing_file_is_named(ml100k: Path):
    (ml100k / "u.item").unlink()
    with pytest.raises(FileNotFoundError, match="u.item"):
        load_ml100k(ml100k)


def test_ml1m_tiny(tmp_path: Path):
    write(
        tmp_path / "ratings.dat",
        ["1::1193::5::978300760", "2::661::3::978302109", "1::661::4::978300761"],
    )
    write(tmp_path / "users.dat", ["1::F::1::10::48067", "2::M::56::16::70072"])
    write(
        tmp_path / "movies.dat",
        [
            "1193::One Flew Over the Cuckoo's Nest (1975)::Drama",
            "661::James and the Giant Peach (1996)::Animation|Musical",
            "5::Père Noël (1982)::Comedy",
        ],
    )
    ds = load_ml1m(tmp_path)
    assert ds.n_users == 2 and ds.item_ids == ["1193", "661", "5"]
    assert ds.users.tolist() == [0, 1, 0] and ds.items.tolist() == [0, 1, 1]
    assert ds.user_features[1] == {"gender": "M", "age": 56, "occupation": "16", "zip": "70072"}
    assert ds.item_features[1] == {"genres": ["Animation", "Musical"], "year": 1996}
    assert ds.titles[2] == "Père Noël (1982)"
    write(tmp_path / "ratings.dat", ["1::1193::5::978300760", "1:1193:5:978300760"])
    with pytest.raises(DataFormatError, match=r"ratings.dat:2: expected 4 fields, got 1"):
        load_ml1m(tmp_path)


def test_ml20m_tiny(tmp_path: Path):
    write(
        tmp_path / "ratings.csv",
        [
            "userId,movieId,rating,timestamp",
            "7,2,3.5,1112486027",
            "3,1,4.0,1112484676",
            "7,1,4.0,1112484580",
        ],
        "utf-8",
    )
    write(
        tmp_path / "movies.csv",
        [
            "movieId,title,genres",
            "1,Toy Story (1995),Adventure|Animation|Children|Comedy|Fantasy",
            '2,"City of Lost Children, The (Cité des enfants perdus, La) (1995)",Adventure|Drama',
            "3,Babylon 5 (1994-1998),(no genres listed)",
            "4,No year,Drama",
        ],
        "utf-8",
    )
    ds = load_ml20m(tmp_path)
    assert ds.user_ids == ["7", "3"] and ds.user_columns == [] and ds.user_features == []
    assert ds.users.tolist() == [0, 1, 0] and ds.items.tolist() == [1, 0, 0]
    assert ds.titles[1].startswith("City of Lost Children, The (Cité")
    assert [f["year"] for f in ds.item_features] == [1995, 1995, 1994, None]
    assert ds.item_features[2]["genres"] == []
    write(
        tmp_path / "ratings.csv",
        ["userId,movieId,rating,timestamp", "7,2,3.5,1112486027", "3,9,4.0,1112484676"],
        "utf-8",
    )
    with pytest.raises(DataFormatError, match=r"ratings.csv:3: unknown item id 9"):
        load_ml20m(tmp_path)


def test_load_dataset_accepts_the_directory_or_its_parent(ml100k: Path):
    assert load_dataset("ml-100k", ml100k).n_items == 3
    holder = ml100k / "holder"
    (holder / "ml-100k").mkdir(parents=True)
    for f in ml100k.glob("u.*"):
        (holder / "ml-100k" / f.name).write_bytes(f.read_bytes())
    assert load_dataset("ml-100k", holder).n_users == 2
    with pytest.raises(ValueError, match="unknown dataset"):
        load_dataset("ml-7")


def test_real_ml100k_counts():
    if not (ML100K / "u.data").is_file():
        pytest.fail(f"the real ML-100K is expected at {ML100K} (u.data, u.user, u.item)")
    ds = load_ml100k(ML100K)
    assert (ds.n_users, ds.n_items, len(ds.users)) == (943, 1682, 100_000)
    assert np.bincount(ds.users).min() >= 20
    assert ds.item_features[0] == {"genres": ["Animation", "Children's", "Comedy"], "year": 1995}
