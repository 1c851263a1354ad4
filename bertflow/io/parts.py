"""DEST's files: serialize and inspect parts, list and clear them, read and write the manifest. No Prefect."""

from __future__ import annotations

import io
import json
from collections.abc import Sequence

import polars as pl

from bertflow.errors import DestMismatchError, InputError
from bertflow.io import manifest_v1, storage
from bertflow.io.manifest import (
    DELETED_NAME,
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
from bertflow.io.schema import rejects_frame
from bertflow.resolved import fingerprint_diff


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
    present = set(storage.list_names(dest))
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
        done[spec.name] = shard_result(spec, info, storage.sha256(uri), docs)
    return done


def shard_result(
    spec: ShardSpec, info: PartInfo, sha256: str, documents_part: DocumentsPart | None = None
) -> ShardResult:
    """What the manifest records of a part already in DEST, from its footer."""
    return ShardResult(
        name=spec.name,
        pieces=spec.pieces,
        documents=spec.rows - len(info.rejects),
        rows=info.rows,
        rejected=len(info.rejects),
        tokens=info.tokens,
        truncated=info.truncated,
        seconds=info.seconds,
        sha256=sha256,
        resumed=True,
        rejects=info.rejects,
        documents_part=documents_part,
        reused=info.reused,
        reused_tokens=info.reused_tokens,
        model_seconds=info.model_seconds,
        device=info.device,
        host=info.host,
        finished_at=info.finished_at,
        padded_tokens=info.padded_tokens,
        oom_splits=info.oom_splits,
        batch_budget=info.batch_budget,
        load_seconds=info.load_seconds,
        warm=info.warm,
        startup_seconds=info.startup_seconds,
        gpu_busy=info.gpu_busy,
    )


def read_columns(dest: str, name: str, columns: Sequence[str] | None = None) -> pl.DataFrame:
    """These columns (all with None) of DEST's file `name`: a part, `_rejects.parquet`, `_deleted.parquet`."""
    uri = storage.join(dest, name)
    with storage.translated(uri), storage.open_input(uri) as src:
        return pl.read_parquet(src, columns=list(columns) if columns is not None else None)


def string_columns(dest: str, manifest: Manifest) -> list[str]:
    """The kept columns that hold strings (read from the first part's schema), in `--keep` order."""
    if not manifest.config.keep or not manifest.shards:
        return []
    uri = storage.join(dest, manifest.shards[0].name)
    with storage.translated(uri), storage.open_input(uri) as src:
        schema = pl.read_parquet_schema(src)
    return [c for c in manifest.config.keep if schema.get(c) == pl.String]


def read_manifest(dest: str) -> Manifest | None:
    uri = storage.join(dest, MANIFEST_NAME)
    if not storage.exists(uri):
        return None
    try:
        data = json.loads(storage.read_bytes(uri))
        if isinstance(data, dict) and data.get("format_version") == 1:
            data = manifest_v1.upgrade(data)  # written by bertflow 0.1: still resumes and verifies
        return Manifest.model_validate(data)
    except (ValueError, KeyError, TypeError):
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
    if manifest.config.token_level:
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
    diffs = fingerprint_diff(old, fingerprint)
    if diffs:
        shown = "; ".join(f"{k}: {old.get(k)!r} in DEST, {fingerprint.get(k)!r} now" for k in diffs[:3])
        raise DestMismatchError(
            f"DEST {dest} was made with different settings ({shown}); "
            "use the same options to resume, another DEST, or --overwrite to start over"
        )


def remove_temporaries(dest: str) -> None:
    """Delete hidden temporary files a killed run left behind (local DEST only has them)."""
    for folder in (dest, storage.join(dest, DOCUMENTS_DIR)):
        for name in storage.list_names(folder):
            if name.startswith(".part-") and name.endswith(".tmp"):
                storage.remove(storage.join(folder, name))


def clear_dest(dest: str) -> None:
    """Remove what bertflow wrote in DEST (parts, rejects, manifest), nothing else."""
    for name in storage.list_names(dest):
        if name in (MANIFEST_NAME, REJECTS_NAME, DELETED_NAME) or (
            name.startswith("part-") and name.endswith(".parquet")
        ):
            storage.remove(storage.join(dest, name))
    for name in storage.list_names(storage.join(dest, DOCUMENTS_DIR)):
        if name.startswith("part-") and name.endswith(".parquet"):
            storage.remove(storage.join(dest, DOCUMENTS_DIR, name))


def rejects_bytes(results: Sequence[ShardResult], id_kind: IdKind) -> bytes | None:
    rows: list[Reject] = [r for res in results for r in res.rejects]
    if not rows:
        return None
    buf = io.BytesIO()
    rejects_frame(rows, id_kind).write_parquet(buf)
    return buf.getvalue()


def ids_bytes(ids: pl.Series) -> bytes:
    """A Parquet file of one column, `id` (`_deleted.parquet`)."""
    buf = io.BytesIO()
    pl.DataFrame([ids.alias("id")]).write_parquet(buf)
    return buf.getvalue()


def manifest_bytes(manifest: Manifest) -> bytes:
    return json.dumps(json.loads(manifest.model_dump_json()), indent=2).encode() + b"\n"
