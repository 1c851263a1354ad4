"""Keys that let a run find its rows in earlier outputs (`--reuse`), and reading those rows.

Every part row carries `text_hash`, a blake2b-128 digest of exactly what was embedded: the
document's text, or under `--long-text chunk` the window's token ids (a window's span of text
alone can tokenize otherwise in context, "##ing" against "ing"). A row of an earlier output with
an equal embedding fingerprint and the same id and text_hash holds the vector this run would
compute, and is copied instead.

Ids are looked up by a 64-bit key (polars' hash of the id in its output type): cheap to sort and
search for millions of ids. Keys only narrow the search; rows are matched on the ids themselves.
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import polars as pl

from bertflow.errors import InputError
from bertflow.io import storage
from bertflow.io.manifest import IdKind, ReusePart
from bertflow.io.schema import ID_DTYPES

_KEY_SEED = 0x6265727466  # fixed, so keys of one process agree across calls


def text_hashes(texts: Sequence[str]) -> pl.Series:
    """The `text_hash` column: 16-byte blake2b digests of the UTF-8 texts."""
    return pl.Series(
        "text_hash",
        [hashlib.blake2b(t.encode(), digest_size=16).digest() for t in texts],
        dtype=pl.Binary,
    )


def token_hashes(windows: Sequence[Sequence[int]]) -> pl.Series:
    """The `text_hash` column of chunk rows: blake2b-128 of each window's token ids (special tokens
    included) as little-endian int32."""
    return pl.Series(
        "text_hash",
        [hashlib.blake2b(np.asarray(w, dtype="<i4").tobytes(), digest_size=16).digest() for w in windows],
        dtype=pl.Binary,
    )


def id_keys(ids: pl.Series, id_kind: IdKind) -> np.ndarray:
    """(N,) uint64 lookup keys of ids, equal for equal ids of either side (SOURCE or a part)."""
    return ids.cast(ID_DTYPES[id_kind]).hash(seed=_KEY_SEED).to_numpy()


@dataclass(frozen=True)
class IdIndex:
    """Every id of SOURCE as a key, sorted, with the index of the shard it is in."""

    keys: np.ndarray  # (N,) uint64, ascending
    shards: np.ndarray  # (N,) int32

    @classmethod
    def build(cls, keys: np.ndarray, shards: np.ndarray) -> IdIndex:
        order = np.argsort(keys, kind="stable")
        return cls(keys[order], shards[order])

    def lookup(self, keys: np.ndarray) -> np.ndarray:
        """(M,) shard of each key, -1 where SOURCE has no such id."""
        if not len(self.keys):
            return np.full(len(keys), -1, dtype=np.int32)
        at = np.minimum(np.searchsorted(self.keys, keys), len(self.keys) - 1)
        return np.where(self.keys[at] == keys, self.shards[at], -1).astype(np.int32)


def read_part_ids(uri: str) -> pl.Series:
    """The `id` column of a part, and nothing else of it."""
    with storage.translated(uri), storage.open_input(uri) as src:
        return pl.read_parquet(src, columns=["id"])["id"]


def read_matches(parts: Sequence[ReusePart], keys: pl.DataFrame, columns: Sequence[str]) -> pl.DataFrame | None:
    """Rows of `parts` whose key columns (those of `keys`) equal a row of `keys`: for each key the row of
    the first part (in the given order: newest output first) that has it; `columns` and the keys.
    None when no part has any.

    Each part is checked against the sha256 its manifest recorded: a changed part is never half-used.
    """
    on = keys.columns
    wanted = list(dict.fromkeys([*on, *columns]))
    found: list[pl.DataFrame] = []
    left = keys.unique()
    for part in parts:
        if left.is_empty():
            break
        data = storage.read_bytes(part.uri)
        if hashlib.sha256(data).hexdigest() != part.sha256:
            raise InputError(
                f"{part.uri} changed after its run (sha256 differs from its manifest); check its output with "
                "`bertflow verify`, and rerun without it"
            )
        rows = pl.read_parquet(io.BytesIO(data), columns=wanted).join(left, on=on, how="semi")
        if rows.is_empty():
            continue
        found.append(rows)
        left = left.join(rows.select(on), on=on, how="anti")
    if not found:
        return None
    return pl.concat(found, how="vertical_relaxed")
