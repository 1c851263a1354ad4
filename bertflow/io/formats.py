"""Source file formats: what each extension is, how a file is scanned for its ids, how one piece is read.

Add a source format here: an extension in FORMATS, a branch in `scan_file` (ids, validation) and
one in `read_piece` (a row range as columns id, text, *keep). Storage only through `storage`.
"""

from __future__ import annotations

import io
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import IO

import numpy as np
import polars as pl

from bertflow.errors import InputError
from bertflow.io import storage
from bertflow.io.manifest import Format, Piece

FORMATS: dict[str, Format] = {
    ".parquet": "parquet",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".csv": "csv",
    ".txt": "txt",
}
SUPPORTED = ", ".join(FORMATS)


def file_format(uri: str) -> Format:
    ext = os.path.splitext(uri.rstrip("/"))[1].lower()
    try:
        return FORMATS[ext]
    except KeyError:
        raise InputError(f"cannot read {uri}: unknown extension {ext or '(none)'!r}; supported: {SUPPORTED}") from None


@dataclass
class FileScan:
    """What planning learned about one file."""

    uri: str
    format: Format
    ids: pl.Series
    row_starts: np.ndarray | None = None  # line formats: byte offset where each row starts
    row_ends: np.ndarray | None = None  # ... and where it ends (exclusive, before the newline)
    id_prefix: str | None = None

    @property
    def rows(self) -> int:
        return len(self.ids)


def _polars_error(uri: str, fmt: str, e: Exception) -> InputError:
    first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    return InputError(f"{uri} is not a readable {fmt} file ({first}); fix or remove it")


def _missing_columns(uri: str, have: Sequence[str], need: Sequence[str], hint: dict[str, str]) -> None:
    missing = [c for c in need if c not in have]
    if missing:
        col = missing[0]
        flag = hint.get(col, "--keep")
        raise InputError(
            f"{uri} has no column {col!r} (columns: {', '.join(have) or 'none'}); name the right one with {flag}"
        )


def _line_bounds(data: bytes, offset: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Start and end byte offsets of every line (a final newline does not open a new line)."""
    nl = np.flatnonzero(np.frombuffer(data, dtype=np.uint8) == 10)
    starts = np.concatenate([[0], nl + 1])
    ends = np.concatenate([nl, [len(data)]])
    if len(data) == 0 or data.endswith(b"\n"):
        starts, ends = starts[:-1], ends[:-1]
    return starts + offset, ends + offset


def _blank_lines(data: bytes, starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """Lines holding only whitespace (JSON lines readers skip them)."""
    short = np.flatnonzero(ends - starts <= 8)  # only short lines can be blank; check those
    blank = np.zeros(len(starts), dtype=bool)
    blank[short] = [not data[starts[i] : ends[i]].strip() for i in short]
    return blank


def _bad_json_line(uri: str, data: bytes, first_line: int = 1) -> InputError:
    """Find the first malformed line so the message can name it."""
    for number, line in enumerate(data.split(b"\n"), start=first_line):
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            return InputError(f"{uri}: line {number} is not valid JSON ({e.msg if hasattr(e, 'msg') else e})")
        if not isinstance(value, dict):
            return InputError(f"{uri}: line {number} is not a JSON object")
    return InputError(f"{uri} is not valid JSON lines; check its encoding")


def _txt_ids(numbers: np.ndarray, id_prefix: str | None) -> pl.Series:
    series = pl.Series("id", numbers, dtype=pl.Int64)
    if not id_prefix:
        return series
    return pl.select(pl.concat_str(pl.lit(f"{id_prefix}:"), pl.lit(series).cast(pl.String)).alias("id")).to_series()


def _scan_lines(
    uri: str, fmt: Format, id_column: str, text_column: str, keep: Sequence[str], id_prefix: str | None
) -> FileScan:
    """Scan a line format block by block: memory follows the block size, not the file size."""
    starts, ends, ids, columns = [], [], [], set()
    line = 1
    for offset, data in storage.iter_line_blocks(uri):
        s, e = _line_bounds(data, offset)
        lines_in_block = len(s)
        if fmt == "txt":
            ids.append(_txt_ids(np.arange(line, line + len(s)), id_prefix))
        else:
            keep_rows = ~_blank_lines(data, s - offset, e - offset)
            s, e = s[keep_rows], e[keep_rows]
            try:
                frame = pl.scan_ndjson(io.BytesIO(data), infer_schema_length=None)
                schema = frame.collect_schema()
                if id_column not in schema:
                    block_ids = pl.Series("id", [None] * len(s))
                else:
                    block_ids = frame.select(pl.col(id_column).alias("id")).collect().to_series()
            except pl.exceptions.PolarsError:
                raise _bad_json_line(uri, data, line) from None
            if len(block_ids) != len(s):
                raise _bad_json_line(uri, data, line)
            if text_column in schema:
                _check_text_type(uri, text_column, schema[text_column])
            columns.update(schema.names())
            ids.append(block_ids)
        starts.append(s)
        ends.append(e)
        line += lines_in_block
    if fmt == "jsonl" and ids:
        _missing_columns(
            uri,
            sorted(columns),
            [id_column, text_column, *keep],
            {id_column: "--id-column", text_column: "--text-column"},
        )
    # Series only concat "vertical"; relax dtypes across blocks (Int64 + Null, ...) as frames.
    all_ids = (
        pl.concat([s.to_frame() for s in ids], how="vertical_relaxed").to_series()
        if ids
        else pl.Series("id", [], dtype=pl.Int64)
    )
    return FileScan(
        uri,
        fmt,
        all_ids,
        np.concatenate(starts or [np.zeros(0, np.int64)]),
        np.concatenate(ends or [np.zeros(0, np.int64)]),
        id_prefix,
    )


def scan_file(uri: str, id_column: str, text_column: str, keep: Sequence[str], id_prefix: str | None) -> FileScan:
    """Validate one file's columns and read its ids (and line offsets for line formats)."""
    fmt = file_format(uri)
    if fmt == "txt" and keep:
        raise InputError(f"{uri}: .txt files have only line numbers and text; drop --keep")
    if fmt in ("txt", "jsonl"):
        return _scan_lines(uri, fmt, id_column, text_column, keep, id_prefix)
    with storage.open_input(uri) as src:
        try:
            frame = _scan(src, fmt, id_column, text_column)
            schema = frame.collect_schema()
            _missing_columns(
                uri,
                schema.names(),
                [id_column, text_column, *keep],
                {id_column: "--id-column", text_column: "--text-column"},
            )
            _check_text_type(uri, text_column, schema[text_column])
            if fmt == "csv":
                # Parse every column a shard will read (keeping only null flags): a malformed row
                # must fail here, before DEST is touched, and the planned row count must be real.
                checks = [pl.col(c).is_null() for c in (text_column, *keep)]
                ids = frame.select(id_column, *checks).collect(engine="streaming").to_series(0)
            else:
                ids = frame.select(id_column).collect().to_series()
        except pl.exceptions.PolarsError as e:
            raise _polars_error(uri, fmt, e) from None
    return FileScan(uri, fmt, ids.alias("id"))


def _scan(src: str | IO[bytes], fmt: Format, id_column: str, text_column: str) -> pl.LazyFrame:
    if fmt == "parquet":
        return pl.scan_parquet(src)
    # CSV ids stay strings: "007" must not become 7.
    return pl.scan_csv(src, schema_overrides={id_column: pl.String, text_column: pl.String})


def _check_text_type(uri: str, column: str, dtype: pl.DataType) -> None:
    if dtype not in (pl.String, pl.Null, pl.Categorical):
        raise InputError(f"{uri}: text column {column!r} holds {dtype}, not strings; name a text column")


def read_piece(piece: Piece, id_column: str, text_column: str, keep: Sequence[str]) -> pl.DataFrame:
    """The rows of one piece as columns id, text, *keep (source column names renamed)."""
    columns = [id_column, text_column, *keep]
    if piece.format == "txt":
        data = storage.read_bytes(piece.file, piece.byte_start, piece.byte_end)
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as e:
            raise InputError(
                f"{piece.file} is not UTF-8 text (bad byte at offset {(piece.byte_start or 0) + e.start})"
            ) from None
        lines = [line[:-1] if line.endswith("\r") else line for line in text.split("\n")]
        ids = _txt_ids(np.arange(piece.start + 1, piece.stop + 1), piece.id_prefix)
        frame = pl.DataFrame({"id": ids, "text": pl.Series(lines, dtype=pl.String)})
    elif piece.format == "jsonl":
        data = storage.read_bytes(piece.file, piece.byte_start, piece.byte_end)
        try:
            frame = pl.read_ndjson(io.BytesIO(data), infer_schema_length=None)
        except pl.exceptions.PolarsError:
            raise _bad_json_line(piece.file, data) from None
        frame = frame.with_columns(pl.lit(None).alias(c) for c in columns if c not in frame.columns)
        frame = frame.select(pl.col(id_column).alias("id"), pl.col(text_column).cast(pl.String).alias("text"), *keep)
    else:
        with storage.open_input(piece.file) as src:
            try:
                frame = (
                    _scan(src, piece.format, id_column, text_column)
                    .slice(piece.start, piece.rows)
                    .select(pl.col(id_column).alias("id"), pl.col(text_column).cast(pl.String).alias("text"), *keep)
                    .collect()
                )
            except pl.exceptions.PolarsError as e:
                raise _polars_error(piece.file, piece.format, e) from None
    if len(frame) != piece.rows:
        raise InputError(
            f"{piece.file} changed while embedding ({len(frame)} rows where {piece.rows} were planned); rerun"
        )
    return frame
