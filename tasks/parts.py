"""Build, serialize and inspect output parts and DEST's bookkeeping files. No Prefect."""

from __future__ import annotations

import io
import json
from collections.abc import Sequence

import numpy as np
import polars as pl

from bertflow.tasks import storage
from bertflow.tasks.errors import DestMismatchError, InputError
from bertflow.tasks.manifest import (
    MANIFEST_NAME,
    PART_METADATA_KEY,
    REJECTS_NAME,
    IdKind,
    Manifest,
    PartInfo,
    Reject,
    ShardResult,
    ShardSpec,
)

ID_DTYPES: dict[IdKind, pl.DataType] = {"int": pl.Int64(), "str": pl.String()}


def part_frame(
    frame: pl.DataFrame, embeddings: np.ndarray, n_tokens: np.ndarray, truncated: np.ndarray, keep: Sequence[str],
    id_kind: IdKind,
) -> pl.DataFrame:
    """The part's table: id, embedding Array(Float32, D), n_tokens, truncated, kept columns."""
    return pl.DataFrame(
        [
            frame["id"].cast(ID_DTYPES[id_kind]),
            pl.Series("embedding", embeddings.astype(np.float32, copy=False)),
            pl.Series("n_tokens", n_tokens, dtype=pl.Int32),
            pl.Series("truncated", truncated, dtype=pl.Boolean),
            *(frame[c] for c in keep),
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


def complete_parts(dest: str, plan: Sequence[ShardSpec], fingerprints: dict[str, str]) -> dict[str, ShardResult]:
    """Parts already in DEST that match the plan, the config and their own footer row count."""
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
        done[spec.name] = ShardResult(
            name=spec.name, pieces=spec.pieces, rows=info.rows, rejected=len(info.rejects), tokens=info.tokens,
            truncated=info.truncated, seconds=info.seconds, sha256=storage.sha256(uri), resumed=True,
            rejects=info.rejects,
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
    for name in list_names(dest):
        if name.startswith(".part-") and name.endswith(".tmp"):
            storage.remove(storage.join(dest, name))


def clear_dest(dest: str) -> None:
    """Remove what bertflow wrote in DEST (parts, rejects, manifest), nothing else."""
    for name in list_names(dest):
        if name in (MANIFEST_NAME, REJECTS_NAME) or (name.startswith("part-") and name.endswith(".parquet")):
            storage.remove(storage.join(dest, name))


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
