"""Loading ratings from PostgreSQL, by the client that reads them into Arrow, against the Parquet cache.

    .venv/bin/python benchmarks/postgres.py                 # 20M synthetic ratings (ML-20M-sized)
    .venv/bin/python benchmarks/postgres.py --ratings 2000000

A throw-away server (``benchmarks.pgserver``: Debian's ``postgresql`` package, on loopback) gets a
``ratings`` table of ``--ratings`` synthetic ratings (``movierec.data.synthetic.ml20m_like``, loaded
with ADBC's bulk ingest). Then, each ``--repeats`` times, ``SELECT user_id, item_id, rating,
timestamp FROM ratings`` into an Arrow table: ADBC's PostgreSQL driver (what
``movierec.data.load_postgres`` uses; libpq's binary COPY), psycopg 3's binary COPY row by row
(``copy.rows()`` with the column types set), psycopg 3's COPY as CSV parsed by pyarrow; and, for
comparison, reading the same table from a Parquet file (the cache a folder source gets).
Prints the median seconds and rows/s of each, side by side, and writes its RESULTS.md section.
"""

from __future__ import annotations

import argparse
import io
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path

import pgserver
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
from results import emit, markdown_table

from movierec.data import synthetic

QUERY = "SELECT user_id, item_id, rating, timestamp FROM ratings"
PASSWORD = "movierec-bench"


def read_adbc(url: str) -> pa.Table:
    import adbc_driver_postgresql.dbapi as pg

    with pg.connect(url) as conn, conn.cursor() as cur:
        cur.execute(QUERY)
        return cur.fetch_arrow_table()


def _psycopg(url: str):
    import psycopg

    return psycopg.connect(url, password=PASSWORD)


def read_psycopg_binary(url: str) -> pa.Table:
    columns: list[list] = [[], [], [], []]
    with _psycopg(url) as conn, conn.cursor() as cur:
        with cur.copy(f"COPY ({QUERY}) TO STDOUT (FORMAT BINARY)") as copy:
            copy.set_types(["int8", "int8", "float4", "int8"])
            for row in copy.rows():
                for column, value in zip(columns, row):
                    column.append(value)
    return pa.table(dict(zip(["user_id", "item_id", "rating", "timestamp"], columns)))


def read_psycopg_csv(url: str) -> pa.Table:
    buf = io.BytesIO()
    with _psycopg(url) as conn, conn.cursor() as cur:
        with cur.copy(f"COPY ({QUERY}) TO STDOUT (FORMAT CSV)") as copy:
            for block in copy:
                buf.write(block)
    return pacsv.read_csv(io.BytesIO(buf.getvalue()), read_options=pacsv.ReadOptions(
        column_names=["user_id", "item_id", "rating", "timestamp"]))


def timed(fn, repeats: int, rows: int) -> dict:
    seconds = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        table = fn()
        seconds.append(time.perf_counter() - t0)
        assert table.num_rows == rows, (fn, table.num_rows)
    median = statistics.median(seconds)
    return {"median s": f"{median:.2f}", "rows/s": f"{rows / median:,.0f}", "runs": repeats}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ratings", type=int, default=20_000_000, help="rows in the table (default 20M)")
    parser.add_argument("--repeats", type=int, default=3, help="reads per client (default 3; the median counts)")
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args(argv)
    import os

    import adbc_driver_postgresql.dbapi as pg

    ratings = synthetic.ml20m_like(args.ratings, seed=0).ratings
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    os.environ["PGPASSWORD"] = PASSWORD
    with pgserver.local_postgres(port, PASSWORD) as url, tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        with pg.connect(url) as conn, conn.cursor() as cur:
            cur.adbc_ingest("ratings", ratings, mode="create")
            conn.commit()
        ingest = time.perf_counter() - t0
        print(f"ingested {ratings.num_rows:,} rows in {ingest:.1f} s", flush=True)
        parquet = Path(tmp) / "ratings.parquet"
        pq.write_table(ratings, parquet)
        clients = {"ADBC PostgreSQL driver (movierec's)": lambda: read_adbc(url),
                   "psycopg 3, COPY CSV -> pyarrow": lambda: read_psycopg_csv(url),
                   "psycopg 3, binary COPY, row by row": lambda: read_psycopg_binary(url),
                   "Parquet file (the cache of a folder)": lambda: pq.read_table(parquet)}
        rows = []
        for name, fn in clients.items():
            repeats = 1 if "row by row" in name else args.repeats  # minutes per read at 20M
            rows.append({"reads ratings with": name, **timed(fn, repeats, ratings.num_rows)})
            print(rows[-1], flush=True)
    emit("postgres", f"## Ratings from PostgreSQL (`benchmarks/postgres.py`)\n\n{ratings.num_rows:,} synthetic "
         f"ratings (4 columns) in a local PostgreSQL 15 server on loopback (bulk ingest with ADBC: {ingest:.0f} s), "
         f"read into an Arrow table by `{QUERY}`; median of the runs, this machine (2 cores).\n\n"
         + markdown_table(rows, list(rows[0])) + "\n", not args.no_write)
    return 0


if __name__ == "__main__":
    sys.exit(main())
