"""``python -m movierec.data``: fetch ML-100K, or check a data folder and print its statistics."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from movierec.data.core import DataError
from movierec.data.fetch import DEFAULT_DATA_DIR, fetch_ml100k
from movierec.data.layouts import load_dataset


def main(argv: list[str] | None = None) -> int:
    """``fetch`` or ``check DIR``; bad data is one line on stderr and exit status 2, not a traceback."""
    parser = argparse.ArgumentParser(
        prog="python -m movierec.data",
        description="Fetch MovieLens 100K from PyPI, or check and cache a data directory as Parquet.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    f = sub.add_parser("fetch", help="download ML-100K (from the recbole wheel) into a directory")
    f.add_argument("--dest", type=Path, default=DEFAULT_DATA_DIR)
    f.add_argument("--index-url", default=None, help="package index to download from (default: pip's)")
    c = sub.add_parser("check", help="load a data directory, write its Parquet cache, print statistics")
    c.add_argument("data_dir", type=Path)
    args = parser.parse_args(argv)
    try:
        if args.command == "fetch":
            print(f"ML-100K ready in {fetch_ml100k(args.dest, args.index_url)}")
        else:
            dataset = load_dataset(args.data_dir)
            for note in dataset.warnings:
                print(f"warning: {note}", file=sys.stderr)
            print(json.dumps(dataset.stats(), indent=2))
    except DataError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
