"""SOURCE as a whole: list and validate its files, plan shards, read one shard's rows.

Planning reads each file once for its ids (never its texts, for Parquet and CSV) so that bad
input fails before anything is written. Reading a shard touches only its own rows: a byte
range for line formats, a row slice for Parquet and CSV (see `formats`).
"""

from __future__ import annotations

import os
import posixpath
from collections.abc import Callable, Sequence

import numpy as np
import polars as pl

from bertflow.errors import InputError
from bertflow.io import storage
from bertflow.io.formats import FORMATS, SUPPORTED, FileScan, file_format, read_piece, scan_file
from bertflow.io.manifest import IdKind, Piece, ShardSpec
from bertflow.io.reuse import IdIndex, id_keys


def list_source(source: str) -> list[str]:
    """Every input file of SOURCE, sorted; refuse files of unknown type rather than skip them.

    In a directory or glob, names starting with "_" or "." (_SUCCESS, .crc files that data
    tools leave beside their output) are not inputs.
    """
    files = storage.list_files(source)
    if files != [storage.canonical(source)]:
        files = [f for f in files if not posixpath.basename(f).startswith(("_", "."))]
    if not files:
        raise InputError(f"SOURCE {source} holds no files; point it at {SUPPORTED} files")
    unknown = [f for f in files if os.path.splitext(f)[1].lower() not in FORMATS]
    if unknown:
        shown = ", ".join(unknown[:3]) + (f" and {len(unknown) - 3} more" if len(unknown) > 3 else "")
        raise InputError(
            f"cannot read {shown}: unknown extension; supported: {SUPPORTED} "
            "(narrow SOURCE with a glob such as 'dir/*.jsonl')"
        )
    return files


def _id_kind(scans: Sequence[FileScan], id_column: str) -> IdKind:
    kinds: set[tuple[IdKind, str]] = set()
    for scan in scans:
        dtype = scan.ids.dtype
        if dtype.is_integer():
            kinds.add(("int", scan.uri))
        elif dtype in (pl.String, pl.Categorical, pl.Null):
            kinds.add(("str", scan.uri))
        else:
            raise InputError(f"{scan.uri}: id column {id_column!r} holds {dtype}; ids must be integers or strings")
    names = {k for k, _ in kinds}
    if len(names) > 1:
        example = dict(kinds)
        raise InputError(
            f"ids are integers in {example['int']} but strings in {example['str']}; "
            "make the id column one type across SOURCE"
        )
    return names.pop()


def _check_ids(scans: Sequence[FileScan], id_column: str) -> None:
    for scan in scans:
        nulls = scan.ids.null_count()
        if nulls:
            raise InputError(f"{scan.uri}: {nulls} rows have no {id_column!r}; every row needs an id")
    ids = pl.concat([s.ids.cast(pl.String) if s.ids.dtype == pl.Categorical else s.ids for s in scans])
    dup = ids.filter(ids.is_duplicated()).unique(maintain_order=True)
    if len(dup):
        shown = ", ".join(repr(v) for v in dup.head(5).to_list())
        raise InputError(
            f"{len(dup)} ids occur more than once in column {id_column!r} (e.g. {shown}); ids must be unique"
        )


def scan_source(source: str, *, id_column: str, text_column: str, keep: Sequence[str]) -> list[FileScan]:
    """Validate every file of SOURCE (columns, id types, unique ids) and read its ids."""
    files = list_source(source)
    root = storage.canonical(source).rstrip("/") + "/"

    def prefix(uri: str) -> str | None:  # ids of .txt lines stay unique across several files
        if file_format(uri) != "txt" or len(files) == 1:
            return None
        return uri[len(root) :] if uri.startswith(root) else posixpath.basename(uri)

    scans = [scan_file(f, id_column, text_column, keep, prefix(f)) for f in files]
    total = sum(s.rows for s in scans)
    if total == 0:
        raise InputError(f"SOURCE {source} has no rows to embed")
    _id_kind(scans, id_column)
    _check_ids(scans, id_column)
    return scans


def plan_shards(
    source: str, *, id_column: str, text_column: str, keep: Sequence[str], shard_rows: int
) -> list[ShardSpec]:
    """Validate SOURCE and split its rows into shards of at most `shard_rows` rows, in file order."""
    return plan_source(source, id_column=id_column, text_column=text_column, keep=keep, shard_rows=shard_rows)[0]


Split = Callable[[int], list[ShardSpec]]  # rows per shard -> SOURCE's plan


def plan_source(
    source: str, *, id_column: str, text_column: str, keep: Sequence[str], shard_rows: int | Callable[[Split], int]
) -> tuple[list[ShardSpec], IdIndex]:
    """`plan_shards`, and every id of SOURCE indexed by shard (what `--reuse` looks earlier outputs up by).

    `shard_rows` may be a function that chooses the size from SOURCE as scanned (`--shard-rows auto`):
    it gets `split(rows)`, the plan at any size, and returns the size."""
    scans = scan_source(source, id_column=id_column, text_column=text_column, keep=keep)
    id_kind = _id_kind(scans, id_column)
    rows = shard_rows if isinstance(shard_rows, int) else shard_rows(lambda n: _split(scans, id_kind, n))
    plan = _split(scans, id_kind, rows)
    keys, shards = [], []
    for scan in scans:
        keys.append(id_keys(scan.ids, id_kind))
    for spec in plan:
        shards.append(np.full(spec.rows, spec.index, dtype=np.int32))
    return plan, IdIndex.build(np.concatenate(keys), np.concatenate(shards))


def _split(scans: Sequence[FileScan], id_kind: IdKind, shard_rows: int) -> list[ShardSpec]:
    groups: list[list[Piece]] = [[]]
    room = shard_rows
    for scan in scans:
        start = 0
        while start < scan.rows:
            if room == 0:
                groups.append([])
                room = shard_rows
            stop = min(scan.rows, start + room)
            piece = Piece(file=scan.uri, format=scan.format, start=start, stop=stop, id_prefix=scan.id_prefix)
            if scan.row_starts is not None and scan.row_ends is not None:  # line formats have both
                piece = piece.model_copy(
                    update={"byte_start": int(scan.row_starts[start]), "byte_end": int(scan.row_ends[stop - 1])}
                )
            groups[-1].append(piece)
            room -= stop - start
            start = stop
    return [ShardSpec(index=i, count=len(groups), pieces=tuple(g), id_kind=id_kind) for i, g in enumerate(groups)]


def read_shard(spec: ShardSpec, id_column: str, text_column: str, keep: Sequence[str]) -> pl.DataFrame:
    """All rows of a shard, in plan order."""
    frames = [read_piece(p, id_column, text_column, keep) for p in spec.pieces]
    return frames[0] if len(frames) == 1 else pl.concat(frames, how="vertical_relaxed")
