"""One shard under `--reuse`: which of its rows an earlier output already holds, and the part put together
from the rows copied and the rows embedded.

A document row is copied when an earlier part has its id with the same `text_hash`; it is then
neither tokenized nor embedded. Under `--long-text chunk` every document is tokenized (windows are
only known then) and a window is copied when an earlier part has the same id, chunk_index and
`text_hash` (of its token ids), so an edit at the end of a long text re-embeds only the windows
it touched. Copied rows keep their previous vectors bit for bit; every other column comes
from this run (its SOURCE row, its tokenization).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import polars as pl

from bertflow.io import reuse
from bertflow.io.manifest import ShardJob
from bertflow.io.schema import ID_DTYPES
from bertflow.resolved import ResolvedConfig
from bertflow.text.tokenize import Chunks, Tokenized


@dataclass(frozen=True)
class Reuse:
    """The rows of a part copied from an earlier output."""

    rows: np.ndarray  # (R,) int64: positions among the part's rows (documents, or windows), ascending
    previous: pl.DataFrame  # (R rows) their earlier values, in `rows` order
    total: int  # the part's rows in all

    def fresh(self) -> np.ndarray:
        """(total - R,) positions of the rows to embed."""
        keep = np.ones(self.total, dtype=bool)
        keep[self.rows] = False
        return np.flatnonzero(keep)


def vector_columns(config: ResolvedConfig) -> list[str]:
    """The columns that hold what the model computed: copied, never recomputed."""
    # token-level rows: their token strings and spans come from this run's tokenization
    return ["token_embeddings"] if config.token_level else list(config.embedding_columns())


def previous_rows(job: ShardJob, frame: pl.DataFrame, hashes: pl.Series) -> pl.DataFrame | None:
    """Rows of the job's earlier parts this shard may copy: documents with the same id and text, or
    under chunking every window of the same ids (windows are matched once tokenized)."""
    if not job.reuse:
        return None
    config = job.config
    ids = frame["id"].cast(ID_DTYPES[job.spec.id_kind])
    if config.chunked:
        keys = pl.DataFrame([ids])
        columns = ["chunk_index", "text_hash", "n_tokens", *vector_columns(config)]
    else:
        keys = pl.DataFrame([ids, hashes])
        columns = ["n_tokens", "truncated", *vector_columns(config)]
    return reuse.read_matches(job.reuse, keys, columns)


def match_documents(frame: pl.DataFrame, previous: pl.DataFrame | None) -> Reuse | None:
    """The documents of `frame` that `previous` (matched on id and text_hash) holds."""
    if previous is None or previous.is_empty():
        return None
    rows = (
        frame.select(pl.col("id").cast(previous["id"].dtype), pl.int_range(pl.len(), dtype=pl.Int64).alias("_row"))
        .join(previous.drop("text_hash"), on="id", how="inner")
        .sort("_row")
    )
    return Reuse(rows["_row"].to_numpy(), rows.drop("_row"), len(frame))


def window_hashes(chunks: Chunks) -> pl.Series:
    """`text_hash` of each window: the digest of its token ids, its exact input."""
    return reuse.token_hashes(chunks.tok.ids)


def match_windows(
    frame: pl.DataFrame, chunks: Chunks, hashes: pl.Series, previous: pl.DataFrame | None
) -> Reuse | None:
    """The windows that `previous` holds with the same id, chunk_index and token ids (`text_hash`)."""
    if previous is None or previous.is_empty():
        return None
    windows = pl.DataFrame(
        [
            frame["id"].cast(previous["id"].dtype)[chunks.doc],
            pl.Series("chunk_index", chunks.chunk_index, dtype=pl.Int32),
            hashes,
            pl.Series("n_tokens", chunks.tok.n_tokens, dtype=pl.Int32),
            pl.Series("_row", np.arange(len(chunks.doc)), dtype=pl.Int64),
        ]
    )
    on = ["id", "chunk_index", "text_hash", "n_tokens"]
    rows = windows.join(previous.cast({"chunk_index": pl.Int32, "n_tokens": pl.Int32}), on=on, how="inner").sort("_row")
    if rows.is_empty():
        return None
    return Reuse(rows["_row"].to_numpy(), rows.drop("_row"), len(chunks.doc))


def take(tok: Tokenized, rows: np.ndarray) -> Tokenized:
    """The rows `rows` of `tok` (what the model is fed when the others are copied)."""
    return Tokenized([tok.ids[i] for i in rows.tolist()], tok.n_tokens[rows], tok.truncated[rows])


def scatter(fresh: np.ndarray, reused: np.ndarray | None, found: Reuse | None) -> np.ndarray:
    """A column for all rows: `fresh` (rows embedded, in order) placed among `reused` (the copied rows')."""
    if found is None or reused is None:
        return fresh
    out = np.empty((found.total, *fresh.shape[1:]), dtype=fresh.dtype)
    out[found.fresh()] = fresh
    out[found.rows] = reused
    return out


def copied_vectors(config: ResolvedConfig, found: Reuse) -> np.ndarray | list[np.ndarray]:
    """The copied rows' vectors as stored: (R, sum W) in pooling order (float32, or int8/uint8 under
    `--quantize`, which the earlier output shares: its fingerprint matched), or per row its tokens' vectors."""
    prev = found.previous
    if config.token_level:
        return [
            np.asarray(v.to_numpy(), dtype=np.float32).reshape(-1, config.dimension) for v in prev["token_embeddings"]
        ]
    kind = config.vector_dtype
    blocks = [prev[c].to_numpy().reshape(len(prev), w) for c, w in config.stored_columns().items()]
    return np.hstack(blocks).astype(kind, copy=False) if blocks else np.zeros((len(prev), 0), kind)


def all_vectors(
    config: ResolvedConfig, vectors: np.ndarray | list[np.ndarray], found: Reuse | None
) -> np.ndarray | list[np.ndarray]:
    """The part's vectors for every row: the model's for the rows embedded, the earlier output's for the rest."""
    if found is None:
        return vectors
    copied = copied_vectors(config, found)
    if isinstance(vectors, list) and isinstance(copied, list):
        out: list[np.ndarray] = [np.zeros(0, np.float32)] * found.total
        for i, v in zip(found.fresh().tolist(), vectors):
            out[i] = v
        for i, v in zip(found.rows.tolist(), copied):
            out[i] = v
        return out
    if isinstance(vectors, np.ndarray) and isinstance(copied, np.ndarray):
        return scatter(vectors.reshape(len(vectors), copied.shape[1]), copied, found)
    raise TypeError("vectors of the rows embedded and of the rows copied differ in kind")
