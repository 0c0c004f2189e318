"""The MovieLens layouts (``movierec.data.movielens``): GroupLens' CSV files, ml-1m's and ml-10m's
``::`` files, ML-100K as recbole's atomic files and as GroupLens' ``u.*`` files, and the real ML-100K.

Every fixture file is written into pytest's ``tmp_path``; expected values are written out by hand.
"""

from pathlib import Path

import numpy as np
import pyarrow.compute as pc
import pytest
from data_samples import MOVIES_DAT, RB_INTER, _assert_same, _write

from movierec import data

REAL_ML100K = Path(__file__).parent.parent / "data" / "ml-100k"


def test_grouplens_csv_values_and_schema(csv_dir: Path):
    ds = data.load_grouplens_csv(csv_dir)
    assert ds.name == "ml-tiny"
    assert ds.ratings.schema == data.RATINGS_SCHEMA
    assert ds.items.schema == data.ITEMS_SCHEMA
    assert ds.users.schema == data.USERS_SCHEMA
    assert ds.ratings.to_pydict() == {
        "user_id": [1, 1, 2, 2],
        "item_id": [1, 11, 1, 99],
        "rating": [4.0, 3.5, 5.0, 0.5],
        "timestamp": [964982703, 964981247, 964982224, 964983815],
    }
    assert ds.items.to_pylist() == [
        {"item_id": 1, "title": "Toy Story", "year": 1995,
         "genres": ["Adventure", "Animation", "Children", "Comedy", "Fantasy"]},
        {"item_id": 11, "title": "American President, The", "year": 1995, "genres": ["Comedy", "Drama", "Romance"]},
        {"item_id": 99, "title": "Untitled Short", "year": None, "genres": []},
    ]
    assert ds.users.num_rows == 0


def test_ml1m_values_latin1_title_and_user_features(ml1m_dir: Path):
    assert b"Caf\xe9 (1999)" in (ml1m_dir / "movies.dat").read_bytes()  # really latin-1, not UTF-8
    assert data.detect_layout(ml1m_dir) == "ml-1m"
    ds = data.load_dataset(ml1m_dir, cache=False)
    assert ds.name == "ml-1m"
    assert ds.ratings.schema == data.RATINGS_SCHEMA
    assert ds.ratings.to_pydict() == {
        "user_id": [1, 1, 2],
        "item_id": [1193, 661, 1193],
        "rating": [5.0, 3.0, 4.0],
        "timestamp": [978300760, 978302109, 978298413],
    }
    assert ds.items.to_pylist() == [
        {"item_id": 1193, "title": "One Flew Over the Cuckoo's Nest", "year": 1975, "genres": ["Drama"]},
        {"item_id": 661, "title": "James and the Giant Peach", "year": 1996,
         "genres": ["Animation", "Children's", "Musical"]},
        {"item_id": 3000, "title": "Café", "year": 1999, "genres": ["Comedy", "Romance"]},
    ]
    assert ds.users.schema == data.USERS_SCHEMA
    assert ds.users.to_pylist() == [
        {"user_id": 1, "age": 1, "gender": "F", "occupation": "10"},
        {"user_id": 2, "age": 56, "gender": "M", "occupation": "16"},
    ]


def test_ml1m_without_users_file_has_empty_user_table(ml1m_dir: Path):
    (ml1m_dir / "users.dat").unlink()
    ds = data.load_ml1m(ml1m_dir)
    assert ds.users.num_rows == 0 and ds.users.schema == data.USERS_SCHEMA
    assert ds.ratings.num_rows == 3


def test_recbole_ml100k_values(recbole_dir: Path):
    assert data.detect_layout(recbole_dir) == "recbole"
    ds = data.load_dataset(recbole_dir, cache=False)
    assert ds.name == "ml-100k"
    assert ds.ratings.schema == data.RATINGS_SCHEMA
    assert ds.ratings.to_pydict() == {
        "user_id": [196, 186, 22],
        "item_id": [242, 302, 377],
        "rating": [3.0, 3.0, 1.0],
        "timestamp": [881250949, 891717742, 878887116],
    }
    assert ds.items.schema == data.ITEMS_SCHEMA
    assert ds.items.to_pylist() == [
        {"item_id": 242, "title": "Kolya", "year": 1997, "genres": ["Comedy"]},
        {"item_id": 302, "title": "L.A. Confidential", "year": 1997,
         "genres": ["Crime", "Film-Noir", "Mystery", "Thriller"]},
        # empty release_year: the year comes from the title instead
        {"item_id": 377, "title": "Heavyweights", "year": 1994, "genres": ["Children's", "Comedy"]},
    ]
    assert ds.users.schema == data.USERS_SCHEMA
    assert ds.users.to_pylist() == [
        {"user_id": 196, "age": 49, "gender": "M", "occupation": "writer"},
        {"user_id": 186, "age": 39, "gender": "F", "occupation": "executive"},
        {"user_id": 22, "age": 25, "gender": "M", "occupation": "writer"},
    ]


def test_real_ml100k():
    if not (REAL_ML100K / "ml-100k.inter").is_file():
        pytest.skip("data/ml-100k not fetched (run `make data`)")
    ds = data.load_dataset(REAL_ML100K, cache=False)
    stats = ds.stats()
    assert (stats["ratings"], stats["users"], stats["items"]) == (100_000, 943, 1682)
    ratings = ds.ratings.column("rating").to_numpy()
    assert ratings.min() == 1.0 and ratings.max() == 5.0
    assert set(np.unique(ratings)) == {1.0, 2.0, 3.0, 4.0, 5.0}
    assert (ds.items.num_rows, ds.users.num_rows) == (1682, 943)
    toy_story = ds.items.filter(pc.equal(ds.items["item_id"], 1)).to_pylist()
    assert toy_story == [{"item_id": 1, "title": "Toy Story", "year": 1995,
                          "genres": ["Animation", "Children's", "Comedy"]}]


def test_fractional_recbole_timestamp_is_floored(recbole_dir: Path):
    (recbole_dir / "ml-100k.inter").write_text(RB_INTER.replace("881250949", "881250949.5"))
    assert 881250949 in data.load_recbole_ml100k(recbole_dir).ratings["timestamp"].to_pylist()


def test_a_utf8_movies_dat_is_not_garbled(ml1m_dir: Path):
    """ml-1m's movies.dat was always read as latin-1: a UTF-8 copy came out as 'CafÃ©'."""
    (ml1m_dir / "movies.dat").write_text(MOVIES_DAT, encoding="utf-8")
    ds = data.load_dataset(ml1m_dir)
    assert ds.items["title"].to_pylist()[2] == "Café" and ds.warnings == []


def _grouplens_ml100k(ds: data.Dataset, folder: Path) -> Path:
    """``ds`` written in GroupLens' ml-100k.zip layout (u.data, u.item with its year in the title and
    one flag per genre, latin-1, u.genre, u.user), as the real download holds it."""
    r = ds.ratings.to_pydict()
    u_data = "".join(f"{u}\t{i}\t{int(s)}\t{t}\n" for u, i, s, t in zip(r["user_id"], r["item_id"], r["rating"],
                                                                     r["timestamp"]))
    rows = []
    for item in ds.items.to_pylist():
        title = f"{item['title']} ({item['year']})" if item["year"] else item["title"]
        date = f"01-Jan-{item['year']}" if item["year"] else ""
        flags = "|".join("1" if g in item["genres"] else "0" for g in data.ML100K_GENRES)
        rows.append(f"{item['item_id']}|{title}|{date}||http://us.imdb.com/M/title-exact?x|{flags}\n")
    users = "".join(f"{u['user_id']}|{u['age']}|{u['gender']}|{u['occupation']}|00000\n" for u in ds.users.to_pylist())
    genres = "".join(f"{g}|{n}\n" for n, g in enumerate(data.ML100K_GENRES))
    return _write(folder, {"u.data": u_data, "u.item": "".join(rows).encode("latin-1"), "u.user": users,
                           "u.genre": genres, "u1.base": "not read\n"})


def test_grouplens_ml100k_files_load_as_the_recbole_copy_of_the_same_data(ml100k_dir: Path, tmp_path: Path):
    """The most common ML-100K copy (GroupLens' u.* files) gives the same ratings, movies (title,
    year, genres from the flags) and users as the copy the flow fetches."""
    reference = data.load_dataset(ml100k_dir, cache=False)
    folder = _grouplens_ml100k(reference, tmp_path / "ml-100k")
    assert data.detect_layout(folder) == "grouplens-ml100k"
    _assert_same(data.load_dataset(folder, cache=False), reference)


def test_grouplens_ml100k_latin1_titles_and_a_bad_flag_named_by_line(tmp_path: Path):
    files = {"u.data": "1\t1\t5\t881250949\n2\t1\t3\t891717742\n", "u.user": "1|24|M|technician|85711\n",
             "u.item": ("1|Misérables, Les (1995)|01-Jan-1995||http://x|" + "|".join(["0"] * 8 + ["1"] + ["0"] * 10)
                        + "\n").encode("latin-1")}
    folder = _write(tmp_path / "ml-100k", files)
    ds = data.load_dataset(folder, cache=False)
    assert ds.items.to_pylist() == [{"item_id": 1, "title": "Misérables, Les", "year": 1995, "genres": ["Drama"]}]
    assert ds.warnings == []  # u.item is latin-1 by definition: no fallback to report
    bad = ("2|Other (1996)|01-Jan-1996||http://x|" + "|".join(["0"] * 18 + ["x"]) + "\n").encode("latin-1")
    (folder / "u.item").write_bytes(files["u.item"] + bad)
    with pytest.raises(data.DataError, match=r"u\.item, line 2: .*Western \(genre flag\)"):
        data.load_dataset(folder, cache=False)


def test_ml10m_half_stars_without_users(tmp_path: Path):
    folder = _write(tmp_path / "ml-10M100K", {
        "ratings.dat": "1::122::5::838985046\n1::185::4.5::838983525\n2::122::0.5::868245777\n",
        "movies.dat": "122::Boomerang (1992)::Comedy|Romance\n185::Net, The (1995)::Action|Crime|Thriller\n",
        "tags.dat": "15::4973::excellent!::1215184630\n"})
    ds = data.load_dataset(folder, cache=False)
    assert ds.ratings["rating"].to_pylist() == [5.0, 4.5, 0.5] and ds.users.num_rows == 0
    assert ds.items.to_pylist()[1] == {"item_id": 185, "title": "Net, The", "year": 1995,
                                       "genres": ["Action", "Crime", "Thriller"]}
