"""Check a DEST against its manifest (and optionally its SOURCE): every row exactly once."""

from __future__ import annotations

import polars as pl

from bertflow.io import parts, sources, storage
from bertflow.io.manifest import DELETED_NAME, DOCUMENTS_DIR, REJECTS_NAME, Manifest
from bertflow.io.schema import VALUE_TYPES


def _keys(uri: str, chunked: bool) -> pl.DataFrame:
    """`id` as text, and `chunk_index` in chunk mode, where an id has one row per window."""
    with storage.translated(uri), storage.open_input(uri) as src:
        cols = ["id", "chunk_index"] if chunked else ["id"]
        return pl.scan_parquet(src).select(pl.col("id").cast(pl.String), *cols[1:]).collect()


def _check_part(
    dest: str,
    name: str,
    sha256: str,
    want_rows: int,
    columns: list[str],
    vectors: dict[str, int],
    value_type: type[pl.DataType],
    problems: list[str],
    chunked: bool = False,
) -> pl.DataFrame | None:
    uri = storage.join(dest, name)
    if not storage.exists(uri):
        problems.append(f"{name}: listed in the manifest but missing")
        return None
    if storage.sha256(uri) != sha256:
        problems.append(f"{name}: sha256 differs from the manifest (file changed after the run)")
    with storage.translated(uri), storage.open_input(uri) as src:
        frame = pl.scan_parquet(src)
        schema = frame.collect_schema()
        rows = frame.select(pl.len()).collect().item()
    if schema.names() != columns:
        problems.append(f"{name}: columns {schema.names()} differ from the manifest's {columns}")
    for column, width in vectors.items():
        expected = pl.Array(value_type, width)
        if schema.get(column) != expected:
            problems.append(f"{name}: {column} is {schema.get(column)}, expected {expected}")
    if rows != want_rows:
        problems.append(f"{name}: {rows} rows, manifest says {want_rows}")
    if "id" not in schema or (chunked and "chunk_index" not in schema):
        return None
    return _keys(uri, chunked)


def verify_dest(dest: str, source: str | None = None) -> list[str]:
    """Problems found in DEST (empty when everything holds).

    In chunk mode (`--long-text chunk`) an id has a row per window: (id, chunk_index) is unique, and
    each id in `documents/` (`--aggregate`) once.
    """
    manifest = parts.read_manifest(dest)
    if manifest is None:
        return [f"{dest} has no _manifest.json: the run never started or DEST is wrong"]
    problems: list[str] = []
    _check_listing(dest, manifest, problems)
    keys = _check_parts(dest, manifest, problems)
    chunked = manifest.config.chunked
    part_ids = keys["id"].unique(maintain_order=True)
    if chunked:
        dup = keys.filter(keys.is_duplicated())
        if len(dup):
            problems.append(f"{len(dup)} (id, chunk_index) pairs occur more than once, e.g. {dup.head(5).rows()}")
    if manifest.config.aggregated:
        _check_documents(dest, manifest, manifest.config.embedding_columns(), part_ids, problems)
    rejected = _check_rejects(dest, manifest, len(keys), problems)
    all_ids = pl.concat([part_ids if chunked else keys["id"], *rejected])
    dup_ids = all_ids.filter(all_ids.is_duplicated()).unique(maintain_order=True)
    if len(dup_ids):
        problems.append(
            f"{len(dup_ids)} ids occur more than once across parts and rejects, e.g. {dup_ids.head(5).to_list()}"
        )
    if source is not None:
        _check_source(source, manifest, all_ids, problems)
    return problems


def verify_parts(dest: str) -> list[str]:
    """The part of `verify_dest` whose memory does not grow with DEST (no ids are gathered): the manifest
    complete and listing every part, each part present, unchanged (sha256) and of its recorded rows."""
    manifest = parts.read_manifest(dest)
    if manifest is None:
        return [f"{dest} has no _manifest.json: the run never started or DEST is wrong"]
    problems: list[str] = []
    _check_listing(dest, manifest, problems)
    for shard in manifest.shards:
        uri = storage.join(dest, shard.name)
        if not storage.exists(uri):
            problems.append(f"{shard.name}: listed in the manifest but missing")
            continue
        if storage.sha256(uri) != shard.sha256:
            problems.append(f"{shard.name}: sha256 differs from the manifest (file changed after the run)")
        found = parts.read_part_info(uri)
        if found is None or found[1] != shard.rows:
            problems.append(f"{shard.name}: {found[1] if found else 'no readable'} rows, manifest says {shard.rows}")
    return problems


def _check_listing(dest: str, manifest: Manifest, problems: list[str]) -> None:
    """The manifest is complete and lists every part in DEST, and every planned shard."""
    if manifest.status != "complete":
        problems.append(f"manifest status is {manifest.status!r}: the run has not finished; rerun it to resume")
    listed = {s.name for s in manifest.shards}
    for name in storage.list_names(dest):
        if name.startswith("part-") and name.endswith(".parquet") and name not in listed:
            problems.append(f"{name}: in DEST but not in the manifest")
    if manifest.status == "complete" and len(manifest.shards) != manifest.planned_shards:
        problems.append(f"manifest lists {len(manifest.shards)} shards of {manifest.planned_shards} planned")
    listed_deleted = manifest.reuse is not None and manifest.reuse.deleted is not None
    if listed_deleted != storage.exists(storage.join(dest, DELETED_NAME)):
        where = "listed in the manifest but missing" if listed_deleted else "in DEST but not in the manifest"
        problems.append(f"{DELETED_NAME}: {where}")


def _check_parts(dest: str, manifest: Manifest, problems: list[str]) -> pl.DataFrame:
    """Every listed part intact; the keys (`id`, and `chunk_index` when chunked) of all their rows."""
    chunked = manifest.config.chunked
    vectors, value_type = manifest.config.stored_columns(), VALUE_TYPES[manifest.config.vector_dtype]
    found = [
        k
        for s in manifest.shards
        if (k := _check_part(dest, s.name, s.sha256, s.rows, manifest.columns, vectors, value_type, problems, chunked))
        is not None
    ]
    if found:
        return pl.concat(found)
    return pl.DataFrame(schema={"id": pl.String} | ({"chunk_index": pl.Int32} if chunked else {}))


def _check_rejects(dest: str, manifest: Manifest, embedded: int, problems: list[str]) -> list[pl.Series]:
    """`_rejects.parquet` present exactly when listed, and the totals match the files; its ids."""
    rejected: list[pl.Series] = []
    rejects_uri = storage.join(dest, REJECTS_NAME)
    if manifest.rejects:
        if storage.exists(rejects_uri):
            rejected.append(_keys(rejects_uri, False)["id"])
        else:
            problems.append(f"{REJECTS_NAME}: listed in the manifest but missing")
    elif storage.exists(rejects_uri):
        problems.append(f"{REJECTS_NAME}: in DEST but not in the manifest")
    if manifest.totals is not None:
        if manifest.totals.rows != embedded:
            problems.append(f"totals.rows is {manifest.totals.rows} but the parts hold {embedded} rows")
        n_rejected = sum(len(i) for i in rejected)
        if manifest.rejects and manifest.totals.rejected != n_rejected:
            problems.append(f"totals.rejected is {manifest.totals.rejected} but {REJECTS_NAME} holds {n_rejected} rows")
    return rejected


def _check_source(source: str, manifest: Manifest, all_ids: pl.Series, problems: list[str]) -> None:
    """Every id of SOURCE is in a part or in rejects, and nothing else is."""
    scans = sources.scan_source(
        source,
        id_column=manifest.config.id_column,
        text_column=manifest.config.text_column,
        keep=manifest.config.keep,
    )
    want = pl.concat([s.ids.cast(pl.String) for s in scans])
    missing = want.filter(~want.is_in(all_ids.implode()))
    extra = all_ids.filter(~all_ids.is_in(want.implode()))
    if len(missing):
        problems.append(
            f"{len(missing)} source ids are in no part and not in rejects, e.g. {missing.head(5).to_list()}"
        )
    if len(extra):
        problems.append(f"{len(extra)} ids in DEST are not in SOURCE, e.g. {extra.head(5).to_list()}")


def _check_documents(
    dest: str, manifest: Manifest, vectors: dict[str, int], part_ids: pl.Series, problems: list[str]
) -> None:
    """documents/ (`--aggregate`): every listed part intact, each id of the chunk parts exactly once."""
    listed = {d.name for d in manifest.documents_parts}
    for name in storage.list_names(storage.join(dest, DOCUMENTS_DIR)):
        if name.startswith("part-") and name.endswith(".parquet") and f"{DOCUMENTS_DIR}/{name}" not in listed:
            problems.append(f"{DOCUMENTS_DIR}/{name}: in DEST but not in the manifest")
    if manifest.status == "complete" and len(manifest.documents_parts) != len(manifest.shards):
        problems.append(
            f"manifest lists {len(manifest.documents_parts)} document parts for {len(manifest.shards)} shards"
        )
    columns = manifest.document_columns
    found = [  # documents/ vectors are never quantized (`--aggregate` refuses `--quantize`)
        k
        for d in manifest.documents_parts
        if (k := _check_part(dest, d.name, d.sha256, d.rows, columns, vectors, pl.Float32, problems)) is not None
    ]
    ids = pl.concat([k["id"] for k in found]) if found else pl.Series("id", [], pl.String)
    if len(ids) != len(part_ids) or not ids.sort().equals(part_ids.sort()):
        problems.append(
            f"{DOCUMENTS_DIR}/ holds {len(ids)} rows for {len(part_ids)} ids of the chunk parts; "
            "each id must have exactly one"
        )
