"""Check a DEST against its manifest (and optionally its SOURCE): every row exactly once."""

from __future__ import annotations

import polars as pl

from bertflow.tasks import parts, sources, storage
from bertflow.tasks.manifest import REJECTS_NAME, Manifest


def _ids(uri: str) -> pl.Series:
    with storage.translated(uri), storage.open_input(uri) as src:
        return pl.scan_parquet(src).select("id").collect().to_series()


def _check_part(dest: str, manifest: Manifest, shard, problems: list[str]) -> pl.Series | None:
    uri = storage.join(dest, shard.name)
    if not storage.exists(uri):
        problems.append(f"{shard.name}: listed in the manifest but missing")
        return None
    if storage.sha256(uri) != shard.sha256:
        problems.append(f"{shard.name}: sha256 differs from the manifest (file changed after the run)")
    with storage.translated(uri), storage.open_input(uri) as src:
        frame = pl.scan_parquet(src)
        schema = frame.collect_schema()
        rows = frame.select(pl.len()).collect().item()
    if schema.names() != manifest.columns:
        problems.append(f"{shard.name}: columns {schema.names()} differ from the manifest's {manifest.columns}")
    expected = pl.Array(pl.Float32, manifest.model.dimension)
    if schema.get("embedding") != expected:
        problems.append(f"{shard.name}: embedding is {schema.get('embedding')}, expected {expected}")
    if rows != shard.rows:
        problems.append(f"{shard.name}: {rows} rows, manifest says {shard.rows}")
    return _ids(uri) if "id" in schema else None


def verify_dest(dest: str, source: str | None = None) -> list[str]:
    """Problems found in DEST (empty when everything holds)."""
    manifest = parts.read_manifest(dest)
    if manifest is None:
        return [f"{dest} has no _manifest.json: the run never started or DEST is wrong"]
    problems: list[str] = []
    if manifest.status != "complete":
        problems.append(f"manifest status is {manifest.status!r}: the run has not finished; rerun it to resume")
    listed = {s.name for s in manifest.shards}
    for name in parts.list_names(dest):
        if name.startswith("part-") and name.endswith(".parquet") and name not in listed:
            problems.append(f"{name}: in DEST but not in the manifest")
    if manifest.status == "complete" and len(manifest.shards) != manifest.planned_shards:
        problems.append(f"manifest lists {len(manifest.shards)} shards of {manifest.planned_shards} planned")

    found = [ids for s in manifest.shards if (ids := _check_part(dest, manifest, s, problems)) is not None]
    embedded = sum(len(i) for i in found)
    rejects_uri = storage.join(dest, REJECTS_NAME)
    if manifest.rejects:
        if storage.exists(rejects_uri):
            found.append(_ids(rejects_uri))
        else:
            problems.append(f"{REJECTS_NAME}: listed in the manifest but missing")
    elif storage.exists(rejects_uri):
        problems.append(f"{REJECTS_NAME}: in DEST but not in the manifest")
    if manifest.totals is not None:
        if manifest.totals.rows != embedded:
            problems.append(f"totals.rows is {manifest.totals.rows} but the parts hold {embedded} rows")
        rejected = sum(len(i) for i in found) - embedded
        if manifest.rejects and manifest.totals.skipped != rejected:
            problems.append(f"totals.skipped is {manifest.totals.skipped} but {REJECTS_NAME} holds {rejected} rows")

    all_ids = pl.concat([i.cast(pl.String) for i in found]) if found else pl.Series("id", [], pl.String)
    dup = all_ids.filter(all_ids.is_duplicated()).unique(maintain_order=True)
    if len(dup):
        problems.append(f"{len(dup)} ids occur more than once across parts and rejects, e.g. {dup.head(5).to_list()}")

    if source is not None:
        scans = sources.scan_source(
            source, id_column=manifest.id_column, text_column=manifest.text_column, keep=manifest.keep
        )
        want = pl.concat([s.ids.cast(pl.String) for s in scans])
        missing = want.filter(~want.is_in(all_ids.implode()))
        extra = all_ids.filter(~all_ids.is_in(want.implode()))
        if len(missing):
            problems.append(f"{len(missing)} source ids are in no part and not in rejects, e.g. {missing.head(5).to_list()}")
        if len(extra):
            problems.append(f"{len(extra)} ids in DEST are not in SOURCE, e.g. {extra.head(5).to_list()}")
    return problems

