"""Loading, validating, caching and fetching MovieLens data, plus the synthetic generator.

Every fixture file is written into pytest's ``tmp_path``; expected values are written out by hand.
"""

import hashlib
import importlib.util
import os
import re
import zipfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from movierec import data, synthetic
from movierec.data import DataError, layouts
from movierec.settings import ColumnSettings

REAL_ML100K = Path(__file__).parent.parent / "data" / "ml-100k"

# --------------------------------------------------------------------------- fixture files

RATINGS_CSV = (
    "userId,movieId,rating,timestamp\n"
    "1,1,4.0,964982703\n"
    "1,11,3.5,964981247\n"
    "2,1,5.0,964982224\n"
    "2,99,0.5,964983815\n"
)
MOVIES_CSV = (
    "movieId,title,genres\n"
    "1,Toy Story (1995),Adventure|Animation|Children|Comedy|Fantasy\n"
    '11,"American President, The (1995)",Comedy|Drama|Romance\n'
    "99,Untitled Short,(no genres listed)\n"
)

RATINGS_DAT = "1::1193::5::978300760\n1::661::3::978302109\n2::1193::4::978298413\n"
MOVIES_DAT = (
    "1193::One Flew Over the Cuckoo's Nest (1975)::Drama\n"
    "661::James and the Giant Peach (1996)::Animation|Children's|Musical\n"
    "3000::Café (1999)::Comedy|Romance\n"
)
USERS_DAT = "1::F::1::10::48067\n2::M::56::16::70072\n"

RB_INTER = (
    "user_id:token\titem_id:token\trating:float\ttimestamp:float\n"
    "196\t242\t3\t881250949\n"
    "186\t302\t3\t891717742\n"
    "22\t377\t1\t878887116\n"
)
RB_ITEM = (
    "item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq\n"
    "242\tKolya\t1997\tComedy\n"
    "302\tL.A. Confidential\t1997\tCrime Film-Noir Mystery Thriller\n"
    "377\tHeavyweights (1994)\t\tChildren's Comedy\n"
)
RB_USER = (
    "user_id:token\tage:token\tgender:token\toccupation:token\tzip_code:token\n"
    "196\t49\tM\twriter\t55105\n"
    "186\t39\tF\texecutive\t00000\n"
    "22\t25\tM\twriter\t40206\n"
)


def _write(directory: Path, files: dict[str, str | bytes]) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    for name, content in files.items():
        (directory / name).write_bytes(content if isinstance(content, bytes) else content.encode())
    return directory


@pytest.fixture
def csv_dir(tmp_path: Path) -> Path:
    return _write(tmp_path / "ml-tiny", {"ratings.csv": RATINGS_CSV, "movies.csv": MOVIES_CSV})


@pytest.fixture
def ml1m_dir(tmp_path: Path) -> Path:
    files = {"ratings.dat": RATINGS_DAT, "movies.dat": MOVIES_DAT.encode("latin-1"), "users.dat": USERS_DAT}
    return _write(tmp_path / "ml-1m", files)


@pytest.fixture
def recbole_dir(tmp_path: Path) -> Path:
    files = {"ml-100k.inter": RB_INTER, "ml-100k.item": RB_ITEM, "ml-100k.user": RB_USER}
    return _write(tmp_path / "ml-100k", files)


def _assert_same(a: data.Dataset, b: data.Dataset) -> None:
    assert a.name == b.name
    for key in ("ratings", "items", "users"):
        assert getattr(a, key).equals(getattr(b, key)), key


# --------------------------------------------------------------------------- the three layouts


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


def test_load_dataset_detects_grouplens_csv(csv_dir: Path):
    assert data.detect_layout(csv_dir) == "grouplens-csv"
    _assert_same(data.load_dataset(csv_dir, cache=False), data.load_grouplens_csv(csv_dir))
    assert not (csv_dir / ".parquet-cache").exists()


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


def test_split_title_year():
    assert data.split_title_year(["Toy Story (1995)", "Heat", "Se7en  (1995) ", "1984 (1984)"]) == (
        ["Toy Story", "Heat", "Se7en", "1984"],
        [1995, None, 1995, 1984],
    )


# --------------------------------------------------------------------------- bad input

HEADER = "userId,movieId,rating,timestamp\n"


@pytest.mark.parametrize(
    "ratings, fragments",
    [
        (None, ["file not found"]),
        ("", ["file is empty"]),
        (HEADER, ["no data rows"]),
        ("userId,movieId,timestamp\n1,1,10\n", ["line 1", "missing column(s) rating"]),
        (HEADER + "1,1,4.0,10\n1,2,abc,11\n", ["line 3", "column 'rating'", "'abc'"]),
        (HEADER + "1,1,4.0,10\n1,2,3.0,11\n1,3,12\n", ["line 4", "expected 4 fields", "got 3"]),
        (HEADER + "1,1,4.0,10\n1,2,3.0,11\n1,3,2.0,12,99\n", ["line 4", "expected 4 fields", "got 5"]),
        (HEADER + "1,,4.0,10\n", ["line 2", "column 'movieId' is empty"]),
        (HEADER + "1,1,4.0,10\n1,2,7,11\n", ["line 3", "rating 7 out of range"]),
        (HEADER + "1,1,0,10\n", ["line 2", "rating", "out of range"]),
    ],
    ids=["missing", "empty", "header-only", "missing-column", "non-numeric", "too-few-fields",
         "too-many-fields", "empty-value", "rating-7", "rating-0"],
)
def test_bad_ratings_csv_names_file_line_and_problem(tmp_path: Path, ratings, fragments):
    d = _write(tmp_path / "bad", {"movies.csv": MOVIES_CSV})
    if ratings is not None:
        (d / "ratings.csv").write_text(ratings)
    with pytest.raises(DataError) as info:
        data.load_grouplens_csv(d)
    message = str(info.value)
    assert str(d / "ratings.csv") in message
    for fragment in fragments:
        assert fragment in message


def test_bad_movies_csv_names_that_file(tmp_path: Path):
    movies = "movieId,title,genres\n1,Heat (1995)\nx,A,B\n"
    d = _write(tmp_path / "bad", {"ratings.csv": RATINGS_CSV, "movies.csv": movies})
    with pytest.raises(DataError) as info:
        data.load_grouplens_csv(d)
    assert str(d / "movies.csv") + ", line 2: expected 3 fields (movieId, title, genres), got 2" in str(info.value)


def test_bad_ml1m_lines_are_counted_without_a_header(ml1m_dir: Path):
    (ml1m_dir / "ratings.dat").write_text("1::1193::5::978300760\n1::661::x::978302109\n")
    with pytest.raises(DataError, match=r"ratings\.dat, line 2: column 'rating' expected float, got 'x'"):
        data.load_ml1m(ml1m_dir)
    (ml1m_dir / "ratings.dat").write_text("1::1193::6::978300760\n")
    with pytest.raises(DataError, match=r"ratings\.dat, line 1: rating .*6.* out of range"):
        data.load_ml1m(ml1m_dir)
    (ml1m_dir / "ratings.dat").write_text(RATINGS_DAT)
    (ml1m_dir / "users.dat").write_text("1::F::1::10::48067\n2::M::56::16\n")
    with pytest.raises(DataError, match=r"users\.dat, line 2: expected 5 fields .*got 4"):
        data.load_ml1m(ml1m_dir)


def test_bad_recbole_value_names_file_and_line(recbole_dir: Path):
    (recbole_dir / "ml-100k.user").write_text(RB_USER.replace("\t39\t", "\tthirty\t"))
    with pytest.raises(DataError) as info:
        data.load_recbole_ml100k(recbole_dir)
    assert str(recbole_dir / "ml-100k.user") + ", line 3: column 'age' expected int32, got 'thirty'" in str(info.value)


def test_detect_layout_rejects_unsupported_directory(tmp_path: Path):
    d = _write(tmp_path / "nothing", {"ratings.csv": RATINGS_CSV})  # movies.csv missing: no complete layout
    for call in (data.detect_layout, data.load_dataset):
        with pytest.raises(DataError) as info:
            call(d)
        message = str(info.value)
        assert str(d) in message and "no supported MovieLens layout" in message
        assert "ratings.csv + movies.csv" in message
    with pytest.raises(DataError, match="not a directory"):
        data.detect_layout(d / "ratings.csv")


# --------------------------------------------------------------------------- Parquet cache


def test_parquet_cache_reused_and_invalidated(csv_dir: Path, monkeypatch: pytest.MonkeyPatch):
    first = data.load_dataset(csv_dir)
    cache = csv_dir / ".parquet-cache"
    assert cache.is_dir()
    (fingerprint,) = [p for p in cache.iterdir()]
    assert sorted(p.name for p in fingerprint.iterdir()) == ["items.parquet", "meta.json", "ratings.parquet",
                                                             "users.parquet"]
    assert not list(csv_dir.glob(".tmp-*"))

    # The second load must come from the cache: the parser is not allowed to run.
    def refuse(directory):
        raise AssertionError("parsed again instead of reading the cache")

    files, optional, loader = data.LAYOUTS["grouplens-csv"]
    monkeypatch.setitem(data.LAYOUTS, "grouplens-csv", (files, optional, refuse))
    _assert_same(data.load_dataset(csv_dir), first)
    monkeypatch.setitem(data.LAYOUTS, "grouplens-csv", (files, optional, loader))

    # New content and a new size: the stale cache is replaced, the new row shows up.
    (csv_dir / "ratings.csv").write_text(RATINGS_CSV + "3,11,2.5,964990000\n")
    second = data.load_dataset(csv_dir)
    assert second.ratings.num_rows == 5
    assert second.ratings.slice(4).to_pylist() == [
        {"user_id": 3, "item_id": 11, "rating": 2.5, "timestamp": 964990000}
    ]
    (new_fingerprint,) = [p for p in cache.iterdir()]
    assert new_fingerprint.name != fingerprint.name
    _assert_same(data.load_dataset(csv_dir), second)


# --------------------------------------------------------------------------- Dataset


def test_to_bytes_from_bytes_round_trip(ml1m_dir: Path):
    ds = data.load_ml1m(ml1m_dir)
    blobs = ds.to_bytes()
    assert set(blobs) == {"meta", "ratings", "items", "users", "feedback"}
    assert all(isinstance(b, bytes) for b in blobs.values())
    back = data.Dataset.from_bytes(blobs)
    _assert_same(back, ds)
    assert (back.name, back.duplicates_dropped, back.warnings) == (ds.name, ds.duplicates_dropped, ds.warnings)
    assert back.items.column("title").to_pylist()[2] == "Café"


def test_head_keeps_earliest_ratings():
    ratings = pa.table(
        {
            "user_id": [5, 1, 3, 2, 4],
            "item_id": [10, 11, 12, 13, 14],
            "rating": pa.array([1, 2, 3, 4, 5], pa.float32()),
            "timestamp": [500, 100, 300, 100, 200],
        },
        schema=data.RATINGS_SCHEMA,
    )
    ds = data.Dataset("toy", ratings, data.ITEMS_SCHEMA.empty_table(), data.USERS_SCHEMA.empty_table())
    top = ds.head(3)
    assert top.name == "toy[:3]"
    # timestamp 100 twice (user 1 before user 2 on the tie), then 200.
    assert top.ratings.column("item_id").to_pylist() == [11, 13, 14]
    assert top.ratings.column("timestamp").to_pylist() == [100, 100, 200]
    assert top.items is ds.items and top.users is ds.users
    assert ds.head(0) is ds and ds.head(5) is ds and ds.head(99) is ds
    assert ds.head(4).ratings.num_rows == 4


def test_stats(csv_dir: Path):
    s = data.load_grouplens_csv(csv_dir).stats()
    assert s["ratings"] == 4 and s["users"] == 2 and s["items"] == 3
    assert s["density"] == pytest.approx(4 / 6)
    assert s["mean_rating"] == pytest.approx(13.0 / 4)
    assert (s["first_timestamp"], s["last_timestamp"]) == (964981247, 964983815)
    assert (s["items_with_metadata"], s["users_with_features"]) == (3, 0)


# --------------------------------------------------------------------------- fetching ML-100K

FAKE_FILES = {"ml-100k.inter": b"inter bytes\n", "ml-100k.item": b"item bytes\n", "ml-100k.user": b"user bytes\n"}
FAKE_SHA256 = {name: hashlib.sha256(content).hexdigest() for name, content in FAKE_FILES.items()}


def _fake_wheel(path: Path, files: dict[str, bytes] = FAKE_FILES) -> Path:
    """A minimal but valid recbole 1.2.1 wheel (pip insists on the .dist-info metadata)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w") as zf:
        for name, content in files.items():
            zf.writestr(data.ML100K_MEMBER_DIR + name, content)
        zf.writestr("recbole-1.2.1.dist-info/METADATA", "Metadata-Version: 2.1\nName: recbole\nVersion: 1.2.1\n")
        zf.writestr("recbole-1.2.1.dist-info/WHEEL",
                    "Wheel-Version: 1.0\nGenerator: tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
        zf.writestr("recbole-1.2.1.dist-info/RECORD", "")
    return path


def test_fake_checksums_are_the_hand_computed_ones():
    assert FAKE_SHA256["ml-100k.inter"] == hashlib.sha256(b"inter bytes\n").hexdigest()
    assert FAKE_SHA256["ml-100k.inter"] != FAKE_SHA256["ml-100k.item"]


def test_extract_ml100k_verifies_every_file(tmp_path: Path):
    wheel = _fake_wheel(tmp_path / "recbole-1.2.1-py3-none-any.whl")
    dest = tmp_path / "out" / "ml-100k"
    assert data.extract_ml100k(wheel, dest, checksums=FAKE_SHA256) == dest
    assert {p.name: p.read_bytes() for p in dest.iterdir()} == FAKE_FILES
    assert [p.name for p in dest.parent.iterdir()] == ["ml-100k"]  # no temporary folder left behind


def test_extract_ml100k_wrong_checksum_leaves_dest_empty(tmp_path: Path):
    wheel = _fake_wheel(tmp_path / "recbole-1.2.1-py3-none-any.whl")
    dest = tmp_path / "out" / "ml-100k"
    # inter (checked first) matches, item does not: not even inter may land.
    bad = {**FAKE_SHA256, "ml-100k.item": "0" * 64}
    with pytest.raises(DataError) as info:
        data.extract_ml100k(wheel, dest, checksums=bad)
    message = str(info.value)
    assert str(wheel) in message and "recbole/dataset_example/ml-100k/ml-100k.item" in message
    assert f"sha256 {FAKE_SHA256['ml-100k.item']}, expected {'0' * 64}" in message
    assert not dest.exists() or not list(dest.iterdir())
    assert list(dest.parent.iterdir()) == []


def test_extract_ml100k_missing_member(tmp_path: Path):
    wheel = _fake_wheel(tmp_path / "w.whl", {"ml-100k.inter": b"inter bytes\n"})
    with pytest.raises(DataError, match="member recbole/dataset_example/ml-100k/ml-100k.item missing"):
        data.extract_ml100k(wheel, tmp_path / "dest", checksums=FAKE_SHA256)
    assert not (tmp_path / "dest").exists()


@pytest.fixture
def local_index(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A PEP 503 ``file://`` index holding the fake wheel, with pip cut off from every other source.

    fetch_ml100k passes only ``--index-url``: pip's config files and PIP_* variables (extra index
    URLs, find-links, constraints) would still be consulted, so they are switched off here.
    """
    if importlib.util.find_spec("pip") is None:
        pytest.skip("pip is not installed")
    simple = tmp_path / "index" / "simple"
    _fake_wheel(simple / "recbole" / "recbole-1.2.1-py3-none-any.whl")
    (simple / "recbole" / "index.html").write_text(
        '<html><body><a href="recbole-1.2.1-py3-none-any.whl">recbole-1.2.1-py3-none-any.whl</a></body></html>\n'
    )
    for key in list(os.environ):
        if key.startswith("PIP_"):
            monkeypatch.delenv(key)
    monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)
    monkeypatch.setenv("PIP_DISABLE_PIP_VERSION_CHECK", "1")
    monkeypatch.setenv("PIP_NO_CACHE_DIR", "1")
    return simple.as_uri()


def test_fetch_ml100k_from_local_index(tmp_path: Path, local_index: str):
    dest = tmp_path / "data" / "ml-100k"
    assert data.fetch_ml100k(dest, index_url=local_index, wheel_sha256=None, checksums=FAKE_SHA256) == dest
    assert {p.name: p.read_bytes() for p in dest.iterdir()} == FAKE_FILES
    # Already there and intact: returns at once, without asking the (now unreachable) index.
    missing_index = (tmp_path / "no-such-index").as_uri()
    assert data.fetch_ml100k(dest, index_url=missing_index, wheel_sha256=None, checksums=FAKE_SHA256) == dest


def test_fetch_ml100k_rejects_wheel_with_wrong_sha256(tmp_path: Path, local_index: str):
    dest = tmp_path / "data" / "ml-100k"
    with pytest.raises(DataError) as info:
        data.fetch_ml100k(dest, index_url=local_index, checksums=FAKE_SHA256)  # default: the real wheel's hash
    message = str(info.value)
    assert "recbole-1.2.1-py3-none-any.whl: sha256" in message
    assert f"expected {data.RECBOLE_WHEEL_SHA256}" in message
    assert not dest.exists() or not list(dest.iterdir())


def test_fetch_ml100k_reports_pip_failure(tmp_path: Path, local_index: str):
    empty_index = tmp_path / "empty-index"
    empty_index.mkdir()
    with pytest.raises(DataError, match=r"pip download recbole==1\.2\.1 failed"):
        data.fetch_ml100k(tmp_path / "dest", index_url=empty_index.as_uri(), wheel_sha256=None,
                          checksums=FAKE_SHA256)
    assert not (tmp_path / "dest").exists()


# --------------------------------------------------------------------------- the real ML-100K


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


# --------------------------------------------------------------------------- synthetic data


def _pairs(ds: data.Dataset) -> np.ndarray:
    return ds.ratings.column("user_id").to_numpy() * 1_000_000 + ds.ratings.column("item_id").to_numpy()


def _check_synthetic(ds: data.Dataset, n_ratings: int, n_users: int, n_items: int) -> None:
    r = ds.ratings
    assert r.schema == data.RATINGS_SCHEMA
    assert r.num_rows == n_ratings
    assert len(np.unique(_pairs(ds))) == n_ratings
    stars = r.column("rating").to_numpy()
    assert set(np.unique(stars)) <= {1.0, 2.0, 3.0, 4.0, 5.0}
    assert 1 <= r.column("user_id").to_numpy().min() and r.column("user_id").to_numpy().max() <= n_users
    assert 1 <= r.column("item_id").to_numpy().min() and r.column("item_id").to_numpy().max() <= n_items
    assert (ds.users.num_rows, ds.items.num_rows) == (n_users, n_items)
    assert ds.items.schema == data.ITEMS_SCHEMA and ds.users.schema == data.USERS_SCHEMA
    # Popularity is skewed: the top 10% of items carry well over 10% (here: > 30%) of the ratings.
    counts = np.sort(np.bincount(r.column("item_id").to_numpy(), minlength=n_items + 1)[1:])[::-1]
    assert counts[: n_items // 10].sum() > 0.3 * n_ratings


def test_generate_exact_count_unique_pairs_and_skew():
    ds = synthetic.generate(n_users=300, n_items=200, n_ratings=5000, seed=1)
    assert ds.name == "synthetic-300u-200i-5000r"
    _check_synthetic(ds, 5000, 300, 200)
    assert len(np.unique(ds.ratings.column("rating").to_numpy())) == 5  # all star levels used


def test_generate_is_deterministic_per_seed():
    a = synthetic.generate(n_users=100, n_items=80, n_ratings=1000, seed=7)
    b = synthetic.generate(n_users=100, n_items=80, n_ratings=1000, seed=7)
    c = synthetic.generate(n_users=100, n_items=80, n_ratings=1000, seed=8)
    _assert_same(a, b)
    assert not a.ratings.equals(c.ratings)


def test_generate_at_the_density_limit():
    ds = synthetic.generate(n_users=10, n_items=10, n_ratings=50, seed=0)
    assert ds.ratings.num_rows == 50 and len(np.unique(_pairs(ds))) == 50


@pytest.mark.parametrize(
    "sizes",
    [(10, 10, 51), (0, 10, 5), (10, 0, 5), (10, 10, 0), (10, 10, -1), (1, 1, 1)],
)
def test_generate_rejects_impossible_sizes(sizes):
    n_users, n_items, n_ratings = sizes
    with pytest.raises(ValueError):
        synthetic.generate(n_users=n_users, n_items=n_items, n_ratings=n_ratings)


def test_ml20m_like_shape():
    # scale = 20_000 / 20_000_263: users 138_493 * scale = 138.49 -> 138; items 26_744 * sqrt(scale) = 845.7 -> 846.
    ds = synthetic.ml20m_like(20_000, seed=3)
    _check_synthetic(ds, 20_000, 138, 846)
    _assert_same(ds, synthetic.ml20m_like(20_000, seed=3))
    assert not ds.ratings.equals(synthetic.ml20m_like(20_000, seed=4).ratings)
    # 500 ratings: 138_493 * scale = 3.5 users -> floored to 100; 26_744 * sqrt(scale) = 133.7 -> 134 items.
    small = synthetic.ml20m_like(500)
    assert small.ratings.num_rows == 500 and (small.users.num_rows, small.items.num_rows) == (100, 134)
    # 100 ratings: 26_744 * sqrt(scale) = 59.8 items -> floored to 100 as well.
    tiny = synthetic.ml20m_like(100)
    assert tiny.ratings.num_rows == 100 and (tiny.users.num_rows, tiny.items.num_rows) == (100, 100)
    with pytest.raises(ValueError):
        synthetic.ml20m_like(0)


# --------------------------------------------------------------------------- regressions found in review


def test_line_numbers_after_a_blank_line(tmp_path: Path):
    d = _write(tmp_path / "blank", {"ratings.csv": HEADER + "1,1,4.0,10\n\n1,11,7,20\n", "movies.csv": MOVIES_CSV})
    with pytest.raises(DataError, match="line 4: rating"):
        data.load_grouplens_csv(d)


def test_int64_overflow_names_the_line(tmp_path: Path):
    d = _write(tmp_path / "big", {"ratings.csv": HEADER + "1,1,4.0,10\n1,99999999999999999999,3.5,20\n",
                                  "movies.csv": MOVIES_CSV})
    with pytest.raises(DataError, match="line 3"):
        data.load_grouplens_csv(d)


def test_fractional_recbole_timestamp_is_floored(recbole_dir: Path):
    (recbole_dir / "ml-100k.inter").write_text(RB_INTER.replace("881250949", "881250949.5"))
    assert 881250949 in data.load_recbole_ml100k(recbole_dir).ratings["timestamp"].to_pylist()


def test_cache_invalidated_by_users_dat(ml1m_dir: Path):
    data.load_dataset(ml1m_dir)
    (ml1m_dir / "users.dat").write_text(USERS_DAT + "3::M::25::12::12345\n")
    assert data.load_dataset(ml1m_dir).users.num_rows == 3


def test_ml20m_like_rejects_negative_size():
    with pytest.raises(ValueError):
        synthetic.ml20m_like(-5)


# --------------------------------------------------------------------------- hardening (issue 13)


def test_doubled_ml100k_keeps_each_pairs_latest_rating_and_no_pair_crosses_the_split(ml100k_dir, tmp_path):
    """ML-100K with every row written twice loaded silently, and 80% of test pairs were also in
    train. The second copies here are one second later with another rating for half the rows and
    identical otherwise: the later (or, on a tie, the second) row must win."""
    from movierec import pipeline
    from movierec.features import encode

    lines = (ml100k_dir / "ml-100k.inter").read_text().splitlines()
    header, rows = lines[0], lines[1:]
    copies = []
    for n, row in enumerate(rows):
        user, item, rating, ts = row.split("\t")
        copies.append(f"{user}\t{item}\t{6 - float(rating)}\t{int(float(ts)) + n % 2}")
    d = tmp_path / "doubled"
    d.mkdir()
    (d / "ml-100k.inter").write_text("\n".join([header, *rows, *copies]) + "\n")
    for name in ("ml-100k.item", "ml-100k.user"):
        (d / name).write_bytes((ml100k_dir / name).read_bytes())
    ds = data.load_dataset(d)
    assert ds.ratings.num_rows == 100_000 and ds.duplicates_dropped == 100_000
    assert ds.stats()["duplicate_ratings_dropped"] == 100_000
    assert "100,000 duplicate (user, movie) ratings dropped" in ds.warnings[0]
    kept = {(r["user_id"], r["item_id"]): r["rating"] for r in ds.ratings.to_pylist()}
    original = [row.split("\t") for row in rows[:6]]
    assert [kept[(int(u), int(i))] for u, i, _, _ in original] == [6 - float(r) for _, _, r, _ in original]
    enc = encode(ds)
    for protocol in ("tfrs", "msr", "temporal"):
        split = pipeline.split_for(enc, protocol, 42)
        pairs = enc.user_idx.astype(np.int64) * enc.n_items + enc.item_idx
        assert not np.intersect1d(pairs[split.train], pairs[split.test]).size, protocol
    assert data.load_dataset(d).warnings == ds.warnings  # from the cache, reported again


def test_a_latin1_movies_csv_loads_with_a_warning_naming_the_line(tmp_path: Path):
    """It said only 'could not be parsed'."""
    d = _write(tmp_path / "latin", {"ratings.csv": RATINGS_CSV, "movies.csv": MOVIES_CSV.replace(
        "Untitled Short", "Café Short").encode("latin-1")})
    ds = data.load_dataset(d)
    assert "Café Short" in ds.items["title"].to_pylist()
    assert ds.warnings == [f"{d / 'movies.csv'}, line 4: not valid utf8 (byte 0xe9); read as latin-1"]


def test_a_utf8_movies_dat_is_not_garbled(ml1m_dir: Path):
    """ml-1m's movies.dat was always read as latin-1: a UTF-8 copy came out as 'CafÃ©'."""
    (ml1m_dir / "movies.dat").write_text(MOVIES_DAT, encoding="utf-8")
    ds = data.load_dataset(ml1m_dir)
    assert ds.items["title"].to_pylist()[2] == "Café" and ds.warnings == []


@pytest.mark.parametrize("row, fragments", [
    ("1,2,nan,11", ["line 3", "rating is not a number (nan)"]),  # said "column is empty"
    ("1,2,NULL,11", ["line 3", "column 'rating' expected float, got 'NULL'"]),
    ("-1,2,3.0,11", ["line 3", "userId -1 out of range", "0 to 4611686018427387904"]),  # the file's names
    ("1,4611686018427387905,3.0,11", ["line 3", "movieId 4611686018427387905 out of range"]),
    ("1,2,inf,11", ["line 3", "rating inf out of range"]),  # not np.float32(inf)
])
def test_values_the_api_would_refuse_are_refused_when_loading(tmp_path: Path, row, fragments):
    d = _write(tmp_path / "bad", {"ratings.csv": HEADER + "1,1,4.0,10\n" + row + "\n", "movies.csv": MOVIES_CSV})
    with pytest.raises(DataError) as info:
        data.load_dataset(d)
    for fragment in fragments:
        assert fragment in str(info.value)


def test_movies_missing_or_repeated_in_the_movies_file_are_counted(tmp_path: Path):
    movies = MOVIES_CSV + "1,Toy Story again (1995),Comedy\n"
    ratings = RATINGS_CSV + "3,500,4.0,964990000\n3,501,4.0,964990001\n"
    ds = data.load_dataset(_write(tmp_path / "odd", {"ratings.csv": ratings, "movies.csv": movies}))
    assert "1 movie rows repeat an earlier movie id: the first of each is kept" in ds.warnings
    assert "2 of 5 rated movies have no row in the movies file: they are recommended without title, genres or " \
        "year" in ds.warnings
    assert ds.items.num_rows == 3 and "Toy Story" in ds.items["title"].to_pylist()


def _load_in_child(directory: str) -> int:
    return data.load_dataset(Path(directory)).ratings.num_rows


def test_concurrent_first_loads_all_succeed_and_leave_one_cache(csv_dir: Path):
    """12 of 50 concurrent first loads failed with 'Directory not empty' and left .tmp-* folders."""
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(8) as pool:
        counts = list(pool.map(_load_in_child, [str(csv_dir)] * 24))
    assert counts == [4] * 24
    assert len(list((csv_dir / ".parquet-cache").iterdir())) == 1
    assert not list(csv_dir.glob(".tmp-*"))


def test_a_cache_written_by_an_older_loader_is_not_read(csv_dir: Path, monkeypatch: pytest.MonkeyPatch):
    """A cache of the format before duplicates were dropped broke every load (KeyError in meta.json):
    the format is part of the cache key, so an older format's cache is never read."""
    monkeypatch.setattr(layouts, "CACHE_FORMAT", 1)
    data.load_dataset(csv_dir)
    (old,) = (csv_dir / ".parquet-cache").iterdir()
    (old / "meta.json").write_text('{"name": "ml-tiny", "layout": "grouplens-csv"}')  # as format 1 wrote it
    monkeypatch.undo()
    assert data.load_dataset(csv_dir).duplicates_dropped == 0
    assert [p.name for p in (csv_dir / ".parquet-cache").iterdir()] != [old.name]


# --------------------------------------------------------------------------- GroupLens' own ML-100K files, zips


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


def _zip(folder: Path, dest: Path, prefix: str) -> Path:
    with zipfile.ZipFile(dest, "w") as zf:
        for f in sorted(folder.iterdir()):
            if f.is_file():
                zf.write(f, f"{prefix}{f.name}")
    return dest


def test_a_zip_passed_as_it_is_loads_like_its_folder_and_is_unpacked_once(ml1m_dir: Path, tmp_path: Path,
                                                                            monkeypatch: pytest.MonkeyPatch):
    """`--data-dir ml-1m.zip`: GroupLens' zips hold a top folder (ml-1m/...)."""
    archive = _zip(ml1m_dir, tmp_path / "ml-1m.zip", "ml-1m/")
    _assert_same(data.load_dataset(archive), data.load_dataset(ml1m_dir, cache=False))
    extracted = list((tmp_path / ".ml-1m.zip.unpacked").iterdir())
    assert len(extracted) == 1 and (extracted[0] / "ml-1m" / "ratings.dat").is_file()
    monkeypatch.setattr(zipfile.ZipFile, "extractall", lambda *a: pytest.fail("unpacked again"))
    data.load_dataset(archive)  # unchanged zip: the unpacked copy (and its Parquet cache) is reused


def test_a_bad_zip_says_what_is_wrong_with_it(ml1m_dir: Path, tmp_path: Path):
    broken = tmp_path / "broken.zip"
    broken.write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(data.DataError, match="broken.zip: not a readable zip file"):
        data.load_dataset(broken)
    unrelated = _zip(_write(tmp_path / "notes", {"README.txt": "hello"}), tmp_path / "notes.zip", "notes/")
    with pytest.raises(data.DataError, match="notes.zip: no supported MovieLens layout inside"):
        data.load_dataset(unrelated)
    evil = tmp_path / "evil.zip"
    with zipfile.ZipFile(evil, "w") as zf:
        zf.writestr("../outside.txt", "x")
    with pytest.raises(data.DataError, match="would unpack outside its folder"):
        data.load_dataset(evil)
    assert not (tmp_path.parent / "outside.txt").exists()


def test_a_zip_bomb_is_refused_before_anything_is_unpacked_and_nothing_is_left(tmp_path: Path):
    """A 0.5 MB zip of zeros unpacked to 512 MiB before its layout was found missing, and stayed on
    disk. Now the layout is read from member names, a member compressed more than
    MAX_COMPRESSION_RATIO times is refused, and only the layout's files are unpacked."""
    zeros = bytes(8 << 20)  # 8 MiB of zeros: about 8 KB deflated
    no_data = tmp_path / "no-data.zip"
    with zipfile.ZipFile(no_data, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("stuff/zeros.bin", zeros)
    with pytest.raises(DataError, match="no-data.zip: no supported MovieLens layout inside"):
        data.load_dataset(no_data)
    bomb = tmp_path / "bomb.zip"
    with zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("ml/ratings.csv", HEADER.encode() + zeros)
        zf.writestr("ml/movies.csv", MOVIES_CSV)
    with pytest.raises(DataError, match=r"bomb.zip: member 'ml/ratings.csv' would unpack [\d,]+ bytes to 8,388,640, "
                                        "more than 50 times"):
        data.load_dataset(bomb)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bomb.zip", "no-data.zip"]  # nothing unpacked, nothing left
    extra = tmp_path / "extra.zip"
    with zipfile.ZipFile(extra, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("ml/ratings.csv", HEADER + "1,1,4,10\n")
        zf.writestr("ml/movies.csv", MOVIES_CSV)
        zf.writestr("ml/zeros.bin", zeros)  # not part of the layout: never unpacked
    assert data.load_dataset(extra).ratings.num_rows == 1
    (unpacked,) = (tmp_path / ".extra.zip.unpacked").iterdir()
    assert sorted(p.name for p in (unpacked / "ml").iterdir() if p.is_file()) == ["movies.csv", "ratings.csv"]


# --------------------------------------------------------------------------- The Movies Dataset (Kaggle)

METADATA_HEADER = ("adult,belongs_to_collection,budget,genres,homepage,id,imdb_id,original_language,original_title,"
                   "overview,popularity,poster_path,production_companies,production_countries,release_date,revenue,"
                   "runtime,spoken_languages,status,tagline,title,video,vote_average,vote_count\n")


def _metadata_row(tmdb: str, title: str, date: str, genres: str, overview: str = "A film.") -> str:
    return (f'False,,0,"{genres}",,{tmdb},tt0114709,en,{title},"{overview}",21.9,/x.jpg,[],[],{date},0,81.0,[],'
            f"Released,,{title},False,7.7,5415\n")


@pytest.fixture
def movies_dataset_dir(tmp_path: Path) -> Path:
    """Kaggle's The Movies Dataset in its real formats, with the dirty rows the real file has."""
    metadata = (METADATA_HEADER
                + _metadata_row("862", "Toy Story", "1995-10-30",
                                "[{'id': 16, 'name': 'Animation'}, {'id': 35, 'name': 'Comedy'}]")
                + _metadata_row("8844", "Jumanji", "1995-12-15", "[{'id': 12, 'name': 'Adventure'}]",
                                overview="Two lines\nin one overview, quoted")
                # a row whose columns are shifted, as three rows of the real file: a date where the id is
                + " - Written by Ørnås,0.065736,/ff9qCepilowshEtG2GYWwzt2bs4.jpg,\"[{'name': 'Carousel Productions',"
                  " 'id': 11176}]\",\"[{'iso_3166_1': 'CA'}]\",1997-08-20,0,104.0,\"[{'iso_639_1': 'en'}]\",Released,"
                  ",1,,,,,,,,,,,,\n"
                + _metadata_row("862", "Toy Story again", "1995-10-30", "[]")  # a repeated id
                + _metadata_row("949", "Heat", "1995-12-15", "not a list")  # genres that do not parse
                + "False,,0,broken line\n")
    links = "movieId,imdbId,tmdbId\n1,0114709,862\n2,0113497,8844\n6,0113277,949\n7,0114319,\n9,0112346,99999\n"
    ratings = ("userId,movieId,rating,timestamp\n1,1,4.0,1260759144\n1,2,3.5,1260759179\n2,6,5.0,1260759182\n"
               "2,7,2.0,1260759185\n3,9,1.0,1260759187\n")
    return _write(tmp_path / "the-movies-dataset", {"movies_metadata.csv": metadata, "links_small.csv": links,
                                                    "ratings_small.csv": ratings, "ratings.csv": "not read\n",
                                                    "links.csv": "not read\n"})


def test_the_movies_dataset_joins_through_links_and_counts_every_dropped_row(movies_dataset_dir: Path):
    assert data.detect_layout(movies_dataset_dir) == "movies-dataset-small"
    ds = data.load_dataset(movies_dataset_dir, cache=False)
    assert ds.ratings.num_rows == 5 and ds.ratings["item_id"].to_pylist() == [1, 2, 6, 7, 9]
    assert ds.items.to_pylist() == [
        {"item_id": 1, "title": "Toy Story", "year": 1995, "genres": ["Animation", "Comedy"]},
        {"item_id": 2, "title": "Jumanji", "year": 1995, "genres": ["Adventure"]},
        {"item_id": 6, "title": "Heat", "year": 1995, "genres": []},
    ]
    notes = "\n".join(ds.warnings)
    for words in ("movies_metadata.csv: 1 lines with too few or too many fields skipped",
                  "movies_metadata.csv: 1 rows without a numeric id dropped",
                  "movies_metadata.csv: 1 rows repeating an earlier id dropped",
                  "movies_metadata.csv: 1 rows with unreadable genres kept without genres",
                  "links_small.csv: 1 movies without a TMDB id",
                  "links_small.csv: 1 movies whose TMDB id is not in movies_metadata.csv",
                  "2 of 5 rated movies have no row in the movies file"):
        assert words in notes, (words, notes)


def test_the_movies_dataset_full_ratings_where_the_small_files_are_absent(movies_dataset_dir: Path):
    (movies_dataset_dir / "ratings.csv").write_text("userId,movieId,rating,timestamp\n4,1,3.0,1260759144\n")
    (movies_dataset_dir / "links.csv").write_text("movieId,imdbId,tmdbId\n1,0114709,862.0\n")
    for small in ("ratings_small.csv", "links_small.csv"):
        (movies_dataset_dir / small).unlink()
    ds = data.load_dataset(movies_dataset_dir, cache=False)
    assert ds.ratings["user_id"].to_pylist() == [4]
    assert ds.items["title"].to_pylist() == ["Toy Story"]  # tmdbId "862.0", as pandas exports write it


def test_a_metadata_file_without_the_expected_columns_is_named(movies_dataset_dir: Path):
    (movies_dataset_dir / "movies_metadata.csv").write_text("movie,name\n1,Toy Story\n")
    with pytest.raises(data.DataError, match="movies_metadata.csv: not The Movies Dataset's metadata file"):
        data.load_dataset(movies_dataset_dir, cache=False)


# --------------------------------------------------------------------------- a user's own interactions file

COLUMNS = ColumnSettings(user="customer", item="sku", rating="stars", timestamp="ts", title="name",
                         genres="tags")


def _interactions(tmp_path: Path) -> tuple[Path, Path]:
    import pyarrow.parquet as pq

    ratings = pa.table({"customer": [10, 10, 11, 12, 12], "sku": [7, 8, 7, 9, 9], "stars": [4.0, 2.5, 5.0, 3.0, 1.0],
                        "ts": [100, 101, 102, 103, 104], "note": ["a", "b", "c", "d", "e"]})
    items = pa.table({"sku": [7, 8, 9], "name": ["Heat (1995)", "Casino", None],
                      "tags": [["Crime", "Drama"], [], None]})
    pq.write_table(ratings, tmp_path / "ratings.parquet")
    pq.write_table(items, tmp_path / "items.parquet")
    return tmp_path / "ratings.parquet", tmp_path / "items.parquet"


def test_an_interactions_file_with_its_own_column_names_and_an_items_file(tmp_path: Path):
    ratings, items = _interactions(tmp_path)
    ds = data.load_interactions(ratings, COLUMNS, str(items))
    assert ds.ratings.schema == data.RATINGS_SCHEMA
    # user 12 rated sku 9 twice: the latest (1.0 at ts 104) is kept, and said
    assert ds.ratings.to_pydict() == {"user_id": [10, 10, 11, 12], "item_id": [7, 8, 7, 9],
                                      "rating": [4.0, 2.5, 5.0, 1.0], "timestamp": [100, 101, 102, 104]}
    assert ds.duplicates_dropped == 1
    assert ds.items.to_pylist() == [{"item_id": 7, "title": "Heat", "year": 1995, "genres": ["Crime", "Drama"]},
                                    {"item_id": 8, "title": "Casino", "year": None, "genres": []},
                                    {"item_id": 9, "title": "", "year": None, "genres": []}]


def test_a_csv_interactions_file_without_timestamps_and_text_genres(tmp_path: Path):
    _write(tmp_path, {"plays.csv": "customer,sku,stars\n1,5,4\n2,5,3.5\n",
                      "catalogue.csv": "sku,name,tags\n5,Alien (1979),Horror;Sci-Fi\n6,Blank,\n"})
    columns = ColumnSettings(user="customer", item="sku", rating="stars", timestamp="", title="name",
                             genres="tags", genres_separator=";")
    ds = data.load_interactions(tmp_path / "plays.csv", columns, str(tmp_path / "catalogue.csv"))
    assert ds.ratings["timestamp"].to_pylist() == [0, 0]
    assert ds.items["genres"].to_pylist() == [["Horror", "Sci-Fi"], []]


def test_an_interactions_file_that_does_not_match_its_mapping_says_how(tmp_path: Path):
    ratings, _ = _interactions(tmp_path)
    with pytest.raises(data.DataError, match=r"ratings.parquet: missing column\(s\) user; the file has customer, "
                                             "sku, stars, ts, note"):
        data.load_interactions(ratings, ColumnSettings(user="user", item="sku", rating="stars", timestamp="ts"))
    with pytest.raises(data.DataError, match="ratings.parquet: column 'note' is string, expected int64"):
        data.load_interactions(ratings, ColumnSettings(user="note", item="sku", rating="stars", timestamp="ts"))
    _write(tmp_path, {"bad.csv": "customer,sku,stars,ts\n1,5,4,100\n2,5,lots,101\n"})
    with pytest.raises(data.DataError, match=r"bad.csv, line 3: column 'stars'"):
        data.load_interactions(tmp_path / "bad.csv", COLUMNS)
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"customer": [1, 2], "sku": [5, 5], "stars": [4.0, 9.0], "ts": [1, 2]}),
                   tmp_path / "nine.parquet")
    with pytest.raises(data.DataError, match=r"nine.parquet, row 2: stars 9 out of range"):  # rows, not lines
        data.load_interactions(tmp_path / "nine.parquet", COLUMNS)
    _write(tmp_path, {"clicks.csv": "customer,sku\n1,5\n2,x5\n"})
    with pytest.raises(data.DataError, match=r"clicks.csv, line 3: column 'sku'"):
        data.load_interactions(tmp_path / "clicks.csv", ColumnSettings(user="customer", item="sku", rating="",
                                                                        timestamp=""))


def test_a_field_over_the_csv_modules_limit_is_named_by_line(tmp_path: Path):
    """The slow path re-reads a refused file with Python's csv module, whose 128 KiB field limit
    stopped it with a raw `_csv.Error`."""
    d = _write(tmp_path / "long", {"ratings.csv": HEADER + '1,2,4,10\n1,3,"' + "x" * 200_000 + '",11\n',
                                   "movies.csv": MOVIES_CSV})
    with pytest.raises(DataError, match=r"ratings.csv, line 3: a field longer than 131,072 characters \(a quote "):
        data.load_dataset(d, cache=False)


def test_a_ratings_file_without_a_timestamp_column_names_the_option_that_reads_it_without_times(tmp_path: Path):
    """README says such files work, but the loader stopped at "missing column(s) timestamp" and
    did not say that --timestamp-column "" reads them."""
    _write(tmp_path, {"plays.csv": "user,item,rating\n1,5,4\n2,5,3.5\n"})
    for name in ("plays.csv", "plays.parquet"):
        if name.endswith(".parquet"):
            import pyarrow.parquet as pq

            pq.write_table(pa.table({"user": [1, 2], "item": [5, 5], "rating": [4.0, 3.5]}), tmp_path / name)
        with pytest.raises(data.DataError, match=(
                rf"{name}: missing column\(s\) timestamp; the file has user, item, rating \(timestamp: name the time "
                r'column with --timestamp-column, or --timestamp-column "" for a file without times\)')):
            data.load_interactions(tmp_path / name, ColumnSettings())
        assert data.load_interactions(tmp_path / name, ColumnSettings(timestamp="")).ratings.num_rows == 2


def test_parquet_times_are_seconds_whatever_their_unit_and_true_false_ids_are_refused(tmp_path: Path):
    """A timestamp[ns] column loaded as nanoseconds (the PostgreSQL path took seconds); a bool id
    column was cast to ids 0 and 1 without a word."""
    import datetime

    import pyarrow.parquet as pq

    when = [datetime.datetime(2020, 1, 1), datetime.datetime(2020, 1, 2, 0, 0, 1)]
    for typ in (pa.timestamp("ns"), pa.timestamp("ms", tz="UTC"), pa.date32()):
        values = [w.date() for w in when] if typ == pa.date32() else when
        pq.write_table(pa.table({"customer": [1, 2], "sku": [5, 5], "stars": [4.0, 3.0],
                                 "ts": pa.array(values, typ)}), tmp_path / "timed.parquet")
        times = data.load_interactions(tmp_path / "timed.parquet", COLUMNS).ratings["timestamp"].to_pylist()
        assert times == ([1577836800, 1577923200] if typ == pa.date32() else [1577836800, 1577923201]), typ
    pq.write_table(pa.table({"customer": [True, False], "sku": [5, 5], "stars": [4.0, 3.0], "ts": [1, 2]}),
                   tmp_path / "flags.parquet")
    with pytest.raises(DataError, match=r"flags.parquet: column 'customer' is bool \(true/false\), expected int64"):
        data.load_interactions(tmp_path / "flags.parquet", COLUMNS)


def test_bad_data_stops_the_start_step_with_its_one_useful_line(tmp_path: Path, metaflow_root: str):
    """It printed Metaflow's "Internal error" and a 40-line traceback before the line naming the file."""
    from conftest import FLOW
    from metaflow import Runner

    from movierec.pipeline import InputError

    _write(tmp_path, {"bad.csv": "user,item,rating,timestamp\n1,5,4,10\n2,x,3,11\n"})
    with Runner(FLOW, show_output=False, pylint=False, cwd=metaflow_root).run(data_dir=str(tmp_path / "bad.csv"),
                                                                              protocol="tfrs") as running:
        status, out = running.status, running.stdout + running.stderr
    assert status == "failed"
    assert f"Bad input data:\n{tmp_path / 'bad.csv'}, line 3: column 'item' expected int64, got 'x'" in re.sub(
        r"(?m)^.*\] ", "", out), out
    assert "Internal error" not in out and "Traceback" not in out, out
    assert issubclass(InputError, DataError)  # still one for callers outside a flow


def test_an_interactions_file_without_ratings_is_implicit_only_data(tmp_path: Path):
    """No rating column: every interaction is 1.0, "interacted"; the data says it is implicit all the
    way to the flow's artifact (to_bytes) and its statistics, which then have no mean rating."""
    ratings, _ = _interactions(tmp_path)
    ds = data.load_interactions(ratings, ColumnSettings(user="customer", item="sku", rating="", timestamp="ts"))
    assert ds.implicit and ds.ratings.schema == data.RATINGS_SCHEMA
    assert ds.ratings.to_pydict() == {"user_id": [10, 10, 11, 12], "item_id": [7, 8, 7, 9],
                                      "rating": [1.0] * 4, "timestamp": [100, 101, 102, 104]}
    stats = ds.stats()
    assert stats["implicit"] is True and "mean_rating" not in stats
    assert data.Dataset.from_bytes(ds.to_bytes()).implicit
    assert data.Dataset.from_bytes(ds.head(2).to_bytes()).implicit
    _write(tmp_path, {"clicks.csv": "customer,sku\n1,5\n2,5\n1,5\n"})
    clicks = data.load_interactions(tmp_path / "clicks.csv", ColumnSettings(user="customer", item="sku", rating="",
                                                                             timestamp=""))
    assert clicks.implicit and clicks.ratings.num_rows == 2 and clicks.duplicates_dropped == 1
    assert not data.load_interactions(ratings, COLUMNS).implicit


def test_ratings_users_send_join_implicit_only_data_as_interactions(tmp_path: Path):
    ratings, _ = _interactions(tmp_path)
    ds = data.load_interactions(ratings, ColumnSettings(user="customer", item="sku", rating="", timestamp="ts"))
    sent = pa.table({"user_id": [99, 10, 98], "item_id": [7, 9, 8], "rating": [2.5, 5.0, 3.0],
                     "timestamp": [200, 201, 202]})
    merged = data.with_feedback(ds, sent, "store.sqlite3")
    assert merged.implicit and merged.ratings == ds.ratings  # kept apart, for training only
    assert merged.feedback.to_pydict() == {"user_id": [10, 98], "item_id": [9, 8], "rating": [1.0, 1.0],
                                           "timestamp": [201, 202]}  # the two above 2.5 stars
    assert ("store.sqlite3: 2 ratings users sent added, for training only (the split leaves out those of its test "
            "pairs) (as interactions: the data has no ratings; 1 of 2.5 stars or less left out)") in merged.warnings


def test_ratings_users_send_are_taken_by_column_name_each_pairs_latest_and_unknown_movies_dropped(tmp_path: Path):
    """One rating of a movie missing from the next data stopped every retrain ("1 ratings of movies
    not in the data"); the store's table may carry more columns than the four ratings ones."""
    ratings, items = _interactions(tmp_path)
    ds = data.load_interactions(ratings, COLUMNS, str(items))
    sent = pa.table({"written_by": ["api", "api", "api", "web"], "timestamp": [300, 200, 250, 260],
                     "item_id": [7, 7, 4242, 8], "user_id": [99, 99, 99, 10], "rating": [2.0, 5.0, 4.0, 3.5]})
    merged = data.with_feedback(ds, sent, "store.sqlite3")
    assert merged.feedback.schema == data.RATINGS_SCHEMA
    assert merged.feedback.to_pydict() == {"user_id": [99, 10], "item_id": [7, 8], "rating": [2.0, 3.5],
                                           "timestamp": [300, 260]}
    assert merged.warnings[-1] == (
        "store.sqlite3: 2 ratings users sent added, for training only (the split leaves out those of its test pairs) "
        "(1 earlier ratings of a movie the same user rated again left out; 1 ratings of movies not in the data "
        "dropped (first: movie 4242))")
    back = data.Dataset.from_bytes(merged.to_bytes())
    assert back.feedback == merged.feedback and back.stats()["feedback_ratings"] == 2
    with pytest.raises(data.DataError, match="store.sqlite3: the ratings store has no column.s. rating, expected "
                                             "user_id, item_id, rating, timestamp"):
        data.with_feedback(ds, sent.drop_columns(["rating"]), "store.sqlite3")


def test_the_start_step_loads_an_interactions_file_as_the_settings_map_it(tmp_path: Path):
    from dataclasses import replace

    from movierec import pipeline
    from movierec.settings import DataSettings, Settings

    ratings, items = _interactions(tmp_path)
    settings = Settings(data=DataSettings(dir=str(ratings), items_file=str(items), columns=COLUMNS))
    assert pipeline.load_data(settings).stats()["ratings"] == 4
    no_time = replace(settings, protocol="temporal",
                      data=replace(settings.data, columns=replace(COLUMNS, timestamp="")))
    with pytest.raises(ValueError, match="the temporal protocol splits by time: give --timestamp-column"):
        pipeline.load_data(no_time)
    with pytest.raises(ValueError, match="--items-file goes with an interactions file"):
        pipeline.load_data(Settings(data=DataSettings(items_file=str(items))))
    with pytest.raises(ValueError, match=r'--rating-column "" \(implicit-only data\) goes with an interactions file'):
        pipeline.load_data(Settings(data=DataSettings(dir=str(tmp_path), columns=ColumnSettings(rating=""))))
