"""Build, serialize and inspect output parts and DEST's bookkeeping files. No Prefect."""

from __future__ import annotations

import io
import json
from collections.abc import Sequence

import numpy as np
import polars as pl

from bertflow.config import TOKEN_LEVEL
from bertflow.errors import DestMismatchError, InputError
from bertflow.io import storage
from bertflow.io.manifest import (
    DOCUMENTS_DIR,
    MANIFEST_NAME,
    PART_METADATA_KEY,
    REJECTS_NAME,
    DocumentsPart,
    IdKind,
    Manifest,
    PartInfo,
    Reject,
    ShardResult,
    ShardSpec,
)
from bertflow.text.chunking import aggregate

ID_DTYPES: dict[IdKind, pl.DataType] = {"int": pl.Int64(), "str": pl.String()}


def vector_series(embeddings: np.ndarray, columns: dict[str, int] | None = None) -> list[pl.Series]:
    """(N, sum D) vectors split into one Array(Float32, D) column per name (default: `embedding`)."""
    columns = columns or {"embedding": embeddings.shape[1]}
    out, at = [], 0
    for name, width in columns.items():
        block = embeddings[:, at : at + width].astype(np.float32, copy=False)  # (N, D)
        out.append(pl.Series(name, block, dtype=pl.Array(pl.Float32, width)))
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
) -> pl.DataFrame:
    """The part's table: id, `leading` (chunk columns), vectors Array(Float32, D), n_tokens, truncated, kept columns.

    Args:
        columns: vector column name -> width, splitting `embeddings` in order; default one `embedding`.
    """
    return pl.DataFrame(
        [
            frame["id"].cast(ID_DTYPES[id_kind]),
            *leading,
            *vector_series(embeddings, columns),
            pl.Series("n_tokens", n_tokens, dtype=pl.Int32),
            pl.Series("truncated", truncated, dtype=pl.Boolean),
            *(frame[c] for c in keep),
        ]
    )


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
            *(frame[c] for c in keep),
        ]
    )


def document_frame(
    table: pl.DataFrame, columns: dict[str, int], keep: Sequence[str], how: str, normalize: bool
) -> pl.DataFrame:
    """One row per id from a chunk part: each vector column aggregated over the id's chunks
    (token-weighted mean by n_tokens, or element-wise max), n_tokens summed, kept columns of the id."""
    groups = table["id"].rle_id().to_numpy()  # (C,) the chunks of an id are adjacent
    starts = np.flatnonzero(np.r_[True, groups[1:] != groups[:-1]]) if len(groups) else np.zeros(0, np.int64)
    first = table[starts]  # (N rows) the first chunk of each id
    weights = table["n_tokens"].to_numpy()
    vectors = []
    for name, width in columns.items():
        v = aggregate(table[name].to_numpy().reshape(len(table), width), weights, groups, how)  # (N, D)
        if normalize:  # the document vector is normalized like its chunks
            v = v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12)
        vectors.append(pl.Series(name, v.astype(np.float32), dtype=pl.Array(pl.Float32, width)))
    tokens = np.add.reduceat(weights, starts) if len(starts) else np.zeros(0, np.int32)
    return pl.DataFrame(
        [
            first["id"],
            *vectors,
            pl.Series("n_tokens", tokens, dtype=pl.Int32),
            pl.Series("n_chunks", np.diff(np.r_[starts, len(groups)]), dtype=pl.Int32),
            *(first[c] for c in keep),
        ]
    )


def serialize_part(table: pl.DataFrame, info: PartInfo) -> bytes:
    buf = io.BytesIO()
    table.write_parquet(buf, metadata={PART_METADATA_KEY: info.model_dump_json()})
    return buf.getvalue()


def read_part_info(uri: str) -> tuple[PartInfo, int] | None:
    """The footer's PartInfo and row count, or None if the file is not a finished bertflow part."""
    try:
        with storage.translated(uri), storage.open_input(uri) as src:
            meta = pl.read_parquet_metadata(src)
        with storage.translated(uri), storage.open_input(uri) as src:
            rows = pl.scan_parquet(src).select(pl.len()).collect().item()
    except pl.exceptions.PolarsError:
        return None
    raw = meta.get(PART_METADATA_KEY)
    if raw is None:
        return None
    return PartInfo.model_validate_json(raw), rows


def complete_parts(
    dest: str, plan: Sequence[ShardSpec], fingerprints: dict[str, str], documents: bool = False
) -> dict[str, ShardResult]:
    """Parts already in DEST that match the plan, the config and their own footer row count.

    Args:
        documents: the run aggregates chunks (`--aggregate`): a shard also needs its documents/ part.
    """
    present = set(list_names(dest))
    done: dict[str, ShardResult] = {}
    for spec in plan:
        if spec.name not in present:
            continue
        uri = storage.join(dest, spec.name)
        found = read_part_info(uri)
        if found is None:
            continue
        info, rows = found
        if info.fingerprint != fingerprints[spec.name] or rows != info.rows:
            continue
        docs = None
        if documents:  # the shard is complete only with its document-level part too
            docs_uri = storage.join(dest, DOCUMENTS_DIR, spec.name)
            found = read_part_info(docs_uri) if storage.exists(docs_uri) else None
            if found is None or found[0].fingerprint != fingerprints[spec.name] or found[1] != found[0].rows:
                continue
            docs = DocumentsPart(name=f"{DOCUMENTS_DIR}/{spec.name}", rows=found[1], sha256=storage.sha256(docs_uri))
        done[spec.name] = ShardResult(
            name=spec.name,
            pieces=spec.pieces,
            rows=info.rows,
            rejected=len(info.rejects),
            tokens=info.tokens,
            truncated=info.truncated,
            seconds=info.seconds,
            sha256=storage.sha256(uri),
            resumed=True,
            rejects=info.rejects,
            documents=docs,
        )
    return done


def list_names(dest: str) -> list[str]:
    """Names of the files directly in DEST (empty if DEST does not exist yet)."""
    fs, path = storage.filesystem(dest)
    with storage.translated(dest):
        if not fs.exists(path):
            return []
        return [e.rstrip("/").rsplit("/", 1)[-1] for e in fs.ls(path, detail=False)]


def read_manifest(dest: str) -> Manifest | None:
    uri = storage.join(dest, MANIFEST_NAME)
    if not storage.exists(uri):
        return None
    try:
        return Manifest.model_validate_json(storage.read_bytes(uri))
    except ValueError:
        raise InputError(f"{uri} is not a bertflow manifest; choose another DEST or pass --overwrite") from None


def read_pooled(dest: str, verb: str) -> Manifest:
    """DEST's manifest, for a command that reads its vectors (`verb` it: "search", "fit on"): DEST
    must be complete and hold one vector per row, not every token's."""
    manifest = read_manifest(dest)
    if manifest is None:
        raise InputError(f"DEST {dest} has no _manifest.json; {verb} a DEST written by `bertflow embed`")
    if manifest.status != "complete":
        raise InputError(
            f"DEST {dest} is not complete (status {manifest.status!r}); rerun its embed command to finish it"
        )
    if manifest.pooling == TOKEN_LEVEL:
        raise InputError(
            f"DEST {dest} holds every token's vector (--pooling none), not one per row; "
            f"{verb} a DEST embedded with a pooling"
        )
    return manifest


def check_compatible(dest: str, existing: Manifest | None, fingerprint: dict[str, object]) -> None:
    """Refuse to mix outputs of different settings in one DEST."""
    if existing is None:
        return
    old = existing.fingerprint
    # keys on either side: a DEST made with --reduction/--pooler has keys a run without them lacks
    diffs = [k for k in {**old, **fingerprint} if old.get(k) != fingerprint.get(k)]
    if diffs:
        shown = "; ".join(f"{k}: {old.get(k)!r} in DEST, {fingerprint.get(k)!r} now" for k in diffs[:3])
        raise DestMismatchError(
            f"DEST {dest} was made with different settings ({shown}); "
            "use the same options to resume, another DEST, or --overwrite to start over"
        )


def remove_temporaries(dest: str) -> None:
    """Delete hidden temporary files a killed run left behind (local DEST only has them)."""
    for folder in (dest, storage.join(dest, DOCUMENTS_DIR)):
        for name in list_names(folder):
            if name.startswith(".part-") and name.endswith(".tmp"):
                storage.remove(storage.join(folder, name))


def clear_dest(dest: str) -> None:
    """Remove what bertflow wrote in DEST (parts, rejects, manifest), nothing else."""
    for name in list_names(dest):
        if name in (MANIFEST_NAME, REJECTS_NAME) or (name.startswith("part-") and name.endswith(".parquet")):
            storage.remove(storage.join(dest, name))
    for name in list_names(storage.join(dest, DOCUMENTS_DIR)):
        if name.startswith("part-") and name.endswith(".parquet"):
            storage.remove(storage.join(dest, DOCUMENTS_DIR, name))


def rejects_bytes(results: Sequence[ShardResult], id_kind: IdKind) -> bytes | None:
    rows: list[Reject] = [r for res in results for r in res.rejects]
    if not rows:
        return None
    table = pl.DataFrame(
        {"id": [r.id for r in rows], "reason": [r.reason for r in rows]},
        schema={"id": ID_DTYPES[id_kind], "reason": pl.String},
    )
    buf = io.BytesIO()
    table.write_parquet(buf)
    return buf.getvalue()


def manifest_bytes(manifest: Manifest) -> bytes:
    return json.dumps(json.loads(manifest.model_dump_json()), indent=2).encode() + b"\n"
