"""Sample files of the data layouts, written out by hand, and helpers shared by the tests of
``movierec.data`` (tests/test_data_*.py) and of the synthetic generator; the fixtures that write
them into ``tmp_path`` are in conftest.py."""

from pathlib import Path

import pyarrow as pa

from movierec import data
from movierec.core.settings import ColumnSettings

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


def _assert_same(a: data.Dataset, b: data.Dataset) -> None:
    assert a.name == b.name
    for key in ("ratings", "items", "users"):
        assert getattr(a, key).equals(getattr(b, key)), key


HEADER = "userId,movieId,rating,timestamp\n"


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
