"""Reading a delimited text file into Arrow with fixed column types.

Files are parsed with pyarrow (fast path); only when pyarrow rejects a file do we re-scan it line
by line, to tell the user the exact file, line and problem.
"""

from __future__ import annotations

import csv
import io
import re
import warnings
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv

from movierec.data.core import DataError, DataWarning, check_file, line_of_row

_INT = re.compile(r"^\s*[+-]?\d+\s*$")
_FLOAT = re.compile(r"^\s*[+-]?(\d+\.?\d*([eE][+-]?\d+)?|\.\d+([eE][+-]?\d+)?|nan|inf)\s*$", re.I)


def _parse_value(text: str, typ: pa.DataType) -> None:
    """Raise ValueError where pyarrow would refuse ``text`` as ``typ`` (stricter than int()/float())."""
    if pa.types.is_integer(typ) and not (_INT.match(text) and -(2**63) <= int(text) < 2**63):
        raise ValueError(text)
    if pa.types.is_floating(typ) and not _FLOAT.match(text):
        raise ValueError(text)


def _locate_bad_line(
    path: Path, text: str, delimiter: str, names: list[str], types: dict[str, pa.DataType], *, first_line: int
) -> str:
    """Slow path, run only after pyarrow refused a file: find the first offending line and say why."""
    quoting = csv.QUOTE_MINIMAL if delimiter == "," else csv.QUOTE_NONE
    reader = csv.reader(io.StringIO(text), delimiter=delimiter, quoting=quoting)
    consumed = 0  # lines the reader has taken: a quoted field may span several
    while True:
        line = first_line + consumed
        try:
            row = next(reader)
        except StopIteration:
            return f"{path}: could not be parsed"
        except csv.Error as exc:  # the csv module's own limits, e.g. a field over 128 KiB
            if "field larger than field limit" in str(exc):
                return (f"{path}, line {line}: a field longer than {csv.field_size_limit():,} characters (a quote "
                        "opened and never closed makes the rest of the file one field)")
            return f"{path}, line {line}: {exc}"
        consumed = reader.line_num
        if not row:
            continue
        if len(row) != len(names):
            return f"{path}, line {line}: expected {len(names)} fields ({', '.join(names)}), got {len(row)}"
        for name, value in zip(names, row):
            typ = types.get(name)
            if typ is None:
                continue
            try:
                _parse_value(value, typ)
            except ValueError:
                return f"{path}, line {line}: column '{name}' expected {typ}, got {value!r}"


def _first_undecodable(data: bytes, encoding: str) -> tuple[int, int]:
    """(1-based line, byte value) of the first byte that ``encoding`` cannot decode."""
    try:
        data.decode(encoding)
    except UnicodeDecodeError as exc:
        return data.count(b"\n", 0, exc.start) + 1, data[exc.start]
    return 0, 0


def read_table(
    path: Path,
    types: dict[str, pa.DataType],
    *,
    delimiter: str = ",",
    names: list[str] | None = None,
    encodings: tuple[str, ...] = ("utf8", "latin-1"),
    separator: str | None = None,
    typed_header: bool = False,
    warn_fallback: bool = True,
    nullable: tuple[str, ...] = (),
) -> pa.Table:
    """Read a delimited file into Arrow with the given column types, or fail with a precise DataError.

    ``names`` gives column names for headerless files; otherwise the header must contain every
    column in ``types``. ``separator`` is a multi-character field separator (ml-1m's ``::``),
    rewritten to ``delimiter`` before parsing because pyarrow takes single characters only.
    ``typed_header`` drops recbole's ``:type`` suffixes from header names. Text is read in the
    first of ``encodings`` it is valid in (UTF-8, then latin-1, which every byte string is): a
    fallback is reported as a DataWarning naming the first line that is not UTF-8, unless
    ``warn_fallback`` is off (a layout whose files are documented as latin-1). Only an
    empty field is a missing value: ``nan`` or ``NULL`` in a number column is reported as such;
    only the ``nullable`` columns may have one.
    """
    check_file(path)
    if separator:  # small files only (ml-1m): rewrite in memory
        source = pa.py_buffer(path.read_bytes().replace(separator.encode(), delimiter.encode()))
    else:  # parsed straight from the file by pyarrow's multi-threaded reader, no Python-side copy
        source = path
    skip = 0
    if names is None:
        with open(path, "rb") as f:
            header = f.readline().decode(encodings[0], errors="replace").rstrip("\r\n").lstrip("\ufeff")
        if separator:
            header = header.replace(separator, delimiter)
        names = [h.strip().strip('"') for h in header.split(delimiter)]
        if typed_header:
            names = [n.split(":", 1)[0] for n in names]
        missing = [c for c in types if c not in names]
        if missing:
            raise DataError(
                f"{path}, line 1: missing column(s) {', '.join(missing)}; "
                f"expected header with {', '.join(types)}, got {header!r}"
            )
        skip = 1
    quote = '"' if delimiter == "," else False
    for attempt, encoding in enumerate(encodings):
        try:
            table = pacsv.read_csv(
                source,
                read_options=pacsv.ReadOptions(column_names=names, skip_rows=skip, block_size=16 << 20,
                                               encoding=encoding),
                parse_options=pacsv.ParseOptions(delimiter=delimiter, quote_char=quote),
                convert_options=pacsv.ConvertOptions(column_types=types, include_columns=list(types),
                                                     null_values=[""], true_values=[], false_values=[]),
            )
            break
        except pa.ArrowInvalid as exc:
            raw = source.to_pybytes() if separator else path.read_bytes()
            line, byte = _first_undecodable(raw, encoding)
            if line and attempt + 1 < len(encodings):
                if warn_fallback:
                    warnings.warn(DataWarning(f"{path}, line {line}: not valid {encoding} (byte 0x{byte:02x}); "
                                              f"read as {encodings[attempt + 1]}"), stacklevel=2)
                continue
            # Slow path, only for broken files: find the first offending line and say why.
            text = raw.decode(encoding, errors="replace")
            body = text.split("\n", 1)[1] if skip and "\n" in text else "" if skip else text
            if not body.strip():
                raise DataError(f"{path}: no data rows") from exc
            raise DataError(_locate_bad_line(path, body, delimiter, names, types, first_line=skip + 1)) from exc
    if table.num_rows == 0:
        raise DataError(f"{path}: no data rows")
    for name in types:
        nulls = table[name].null_count if name not in nullable else 0
        if nulls:
            first = int(np.flatnonzero(table[name].is_null().to_numpy(zero_copy_only=False))[0])
            line = line_of_row(path, first, skip == 1, encoding)
            raise DataError(f"{path}, line {line}: column '{name}' is empty, expected {types[name]}")
    return table
