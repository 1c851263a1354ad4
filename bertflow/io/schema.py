"""The output schema in one place: the columns of parts, documents/ parts and _rejects.parquet, and their types.

Column names come from the run's `ResolvedConfig` (`columns()`, `document_columns()`); this module
builds the polars tables with the types the data contract fixes. Pure: polars and numpy.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import polars as pl

from bertflow.io.manifest import IdKind, Reject
from bertflow.text.chunking import aggregate
from bertflow.vectors import normalize as l2_normalize

ID_DTYPES: dict[IdKind, pl.DataType] = {"int": pl.Int64(), "str": pl.String()}


# numpy's name of the stored vector values -> the inner type of their Array column
VALUE_TYPES: dict[str, type[pl.DataType]] = {"float32": pl.Float32, "int8": pl.Int8, "uint8": pl.UInt8}


def vector_series(embeddings: np.ndarray, columns: dict[str, int] | None = None) -> list[pl.Series]:
    """(N, sum W) vectors split into one Array(T, W) column per name (default: `embedding`): T is Float32,
    or Int8/UInt8 for quantized vectors (`--quantize`), W the stored width (bytes of packed bits for binary)."""
    columns = columns or {"embedding": embeddings.shape[1]}
    kind = embeddings.dtype.name if embeddings.dtype.name in ("int8", "uint8") else "float32"
    out, at = [], 0
    for name, width in columns.items():
        block = embeddings[:, at : at + width].astype(kind, copy=False)  # (N, W)
        out.append(pl.Series(name, block, dtype=pl.Array(VALUE_TYPES[kind], width)))
        at += width
    return out


def part_frame(
    frame: pl.DataFrame,
    embeddings: np.ndarray,
    n_tokens: np.ndarray,
    truncated: np.ndarray,
    keep: Sequence[str],
    id_kind: IdKind,
    columns: dict[str, int] | None = None,
    leading: Sequence[pl.Series] = (),
    text_hash: pl.Series | None = None,
) -> pl.DataFrame:
    """The part's table: id, `leading` (chunk columns), vectors Array(Float32, D) (or quantized), n_tokens, truncated,
    text_hash, kept columns.

    Args:
        columns: vector column name -> width, splitting `embeddings` in order; default one `embedding`.
        text_hash: the rows' `text_hash` (`bertflow.io.reuse.text_hashes`); None for no such column.
    """
    return pl.DataFrame(
        [
            frame["id"].cast(ID_DTYPES[id_kind]),
            *leading,
            *vector_series(embeddings, columns),
            pl.Series("n_tokens", n_tokens, dtype=pl.Int32),
            pl.Series("truncated", truncated, dtype=pl.Boolean),
            *_hashed(text_hash),
            *(frame[c] for c in keep),
        ]
    )


def _hashed(text_hash: pl.Series | None) -> list[pl.Series]:
    return [] if text_hash is None else [text_hash.alias("text_hash").cast(pl.Binary)]


def token_frame(
    frame: pl.DataFrame,
    tokens: list[list[str]],
    offsets: list[list[tuple[int, int]]],
    special: list[list[bool]],
    states: list[np.ndarray],
    n_tokens: np.ndarray,
    truncated: np.ndarray,
    keep: Sequence[str],
    id_kind: IdKind,
    width: int,
    text_hash: pl.Series | None = None,
) -> pl.DataFrame:
    """Token-level part (`--pooling none`): per row its tokens, char spans, special flags and vectors."""
    n = len(states)
    flat = np.concatenate(states).reshape(-1, width) if n else np.zeros((0, width), np.float32)  # (sum T, H)
    rows = pl.Series("row", np.repeat(np.arange(n), n_tokens), dtype=pl.Int64)
    vectors = pl.DataFrame(
        [rows, pl.Series("token_embeddings", flat.astype(np.float32, copy=False), dtype=pl.Array(pl.Float32, width))]
    )
    grouped = pl.DataFrame({"row": np.arange(n)}, schema={"row": pl.Int64}).join(
        vectors.group_by("row", maintain_order=True).agg("token_embeddings"),
        on="row",
        how="left",
        maintain_order="left",
    )  # a row without tokens has no group: an empty list, not null
    list_type = pl.List(pl.Array(pl.Float32, width))
    token_embeddings = grouped["token_embeddings"].fill_null(pl.Series([[]], dtype=list_type)).cast(list_type)
    return pl.DataFrame(
        [
            frame["id"].cast(ID_DTYPES[id_kind]),
            pl.Series("tokens", tokens, dtype=pl.List(pl.String)),
            pl.Series("offsets", [[list(o) for o in row] for row in offsets], dtype=pl.List(pl.Array(pl.Int64, 2))),
            pl.Series("special", special, dtype=pl.List(pl.Boolean)),
            token_embeddings,
            pl.Series("n_tokens", n_tokens, dtype=pl.Int32),
            pl.Series("truncated", truncated, dtype=pl.Boolean),
            *_hashed(text_hash),
            *(frame[c] for c in keep),
        ]
    )


def document_frame(
    table: pl.DataFrame,
    columns: dict[str, int],
    keep: Sequence[str],
    how: str,
    normalize: bool,
    text_hash: pl.Series | None = None,
) -> pl.DataFrame:
    """One row per id from a chunk part: each vector column aggregated over the id's chunks
    (token-weighted mean by n_tokens, or element-wise max), n_tokens summed, kept columns of the id.

    Args:
        text_hash: the hash of each document's whole text, in the order of the part's ids.
    """
    groups = table["id"].rle_id().to_numpy()  # (C,) the chunks of an id are adjacent
    starts = np.flatnonzero(np.r_[True, groups[1:] != groups[:-1]]) if len(groups) else np.zeros(0, np.int64)
    first = table[starts]  # (N rows) the first chunk of each id
    weights = table["n_tokens"].to_numpy()
    vectors = []
    for name, width in columns.items():
        v = aggregate(table[name].to_numpy().reshape(len(table), width), weights, groups, how)  # (N, D)
        if normalize:  # the document vector is normalized like its chunks
            v = l2_normalize(v)
        vectors.append(pl.Series(name, v.astype(np.float32), dtype=pl.Array(pl.Float32, width)))
    tokens = np.add.reduceat(weights, starts) if len(starts) else np.zeros(0, np.int32)
    return pl.DataFrame(
        [
            first["id"],
            *vectors,
            pl.Series("n_tokens", tokens, dtype=pl.Int32),
            pl.Series("n_chunks", np.diff(np.r_[starts, len(groups)]), dtype=pl.Int32),
            *_hashed(text_hash),
            *(first[c] for c in keep),
        ]
    )


def rejects_frame(rejects: Sequence[Reject], id_kind: IdKind) -> pl.DataFrame:
    """`_rejects.parquet`: id and reason of every document not embedded."""
    return pl.DataFrame(
        {"id": [r.id for r in rejects], "reason": [r.reason for r in rejects]},
        schema={"id": ID_DTYPES[id_kind], "reason": pl.String},
    )
