"""Publish a DEST into a LanceDB table: upsert its rows, delete what the user's sync mode says is gone,
index the vectors, record the table version in DEST's manifest.

Rows carry the part's columns, the `partition` they came from and a `row_hash` of everything else, so a
rerun rewrites only rows whose vector or columns changed. The key is `id` (with `chunk_index` in a chunked
DEST); under `--sync partition` it is (`partition`, id): each partition's rows are its own, and publishing
partition P replaces P's rows and touches no other partition's. Under `--sync mirror` the table mirrors one
full-snapshot DEST. Ids an incremental run listed as dropped (`--deleted-ids`) are deleted in both modes.

Parts are read one at a time and upserted in batches of at most BATCH_ROWS (each a table version), so
memory follows the largest part, not DEST; then the deletes, then the indexes. Every version stays readable,
so a crash mid-publish leaves the previous one intact (readers of the newest may see a half-done publish until
the rerun), and a rerun (upserts are idempotent) completes it.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from datetime import datetime, timezone

import numpy as np
import polars as pl
import pyarrow as pa

from bertflow.config import PublishConfig
from bertflow.errors import InputError
from bertflow.io import parts, storage, vectorstore
from bertflow.io.manifest import DELETED_NAME, MANIFEST_NAME, Manifest, Publication
from bertflow.io.vectorstore import TableRecord, sql_literal
from bertflow.io.verify import verify_parts
from bertflow.resolved import ResolvedConfig, fingerprint_diff

BATCH_ROWS = 50_000  # rows per upsert: one table version each
DELETE_TERMS = 500  # ids (or id/chunk terms) per delete statement


def publishable(dest: str) -> Manifest:
    """DEST's manifest, if DEST can be published: complete, verified, one float vector per row."""
    manifest = parts.read_pooled(dest, "publish")
    if manifest.config.quantize is not None:
        raise InputError(
            f"DEST {dest} holds {manifest.config.quantize} vectors (--quantize); LanceDB indexes float vectors and "
            "compresses them itself (IVF-PQ): publish a DEST embedded without --quantize"
        )
    # verify_parts: every part present and unchanged since the run (sha256, rows), memory flat in DEST; the
    # keys' uniqueness is checked on the small key columns in `publish`, which reads them anyway.
    problems = verify_parts(dest)
    if problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise InputError(
            f"DEST {dest} fails verify: {problems[0]}{more}; run `bertflow verify {dest}`, "
            "and rerun its embed command to repair it"
        )
    return manifest


RESERVED = ("partition", "row_hash")  # columns publish adds to every row


def check_target(target: PublishConfig, config: ResolvedConfig) -> None:
    """Refuse, before anything is written, a publish that cannot work: a kept column publish would overwrite,
    a full-text column that is not kept, storage options LanceDB cannot take, or a table whose vectors or
    sync mode differ (the embed flow checks this when it starts, not after hours of embedding)."""
    clash = sorted(set(RESERVED) & set(config.keep))
    if clash:
        raise InputError(f"kept column {clash[0]}: publish adds a column of that name; rename it or keep it out")
    if target.fts_column is not None and target.fts_column not in config.keep:
        kept = ", ".join(config.keep) or "none"
        raise InputError(f"--fts-column {target.fts_column}: not a kept column of DEST (kept: {kept})")
    table = vectorstore.open_table(vectorstore.connect(target.db), target.db, target.table)
    if table is not None and not target.replace:
        _check_table(vectorstore.record(table, target.db), _record_for(config, target), target.table, target.db)


def _record_for(config: ResolvedConfig, target: PublishConfig) -> TableRecord:
    return TableRecord(
        config=config,
        fingerprint=config.output_fingerprint(),
        embedding_fingerprint=config.embedding_fingerprint(),
        sync=target.sync,
        key=table_key(config, target.sync),
    )


def table_key(config: ResolvedConfig, sync: str) -> list[str]:
    return [
        *(["partition"] if sync == "partition" else []),
        "id",
        *(["chunk_index"] if config.chunked else []),
    ]


def row_hashes(frame: pl.DataFrame, vectors: list[str]) -> np.ndarray:
    """(N,) uint64: a hash of each row's vectors (their bytes) and other columns (their JSON)."""
    others = frame.select([c for c in frame.columns if c not in vectors]).rows()
    arrays = [frame[v].to_numpy() for v in vectors]  # (N, D) each
    out = np.empty(len(frame), np.uint64)
    for i, row in enumerate(others):
        h = hashlib.blake2b(json.dumps(row, default=str).encode(), digest_size=8)
        for a in arrays:
            h.update(a[i].tobytes())
        out[i] = int.from_bytes(h.digest(), "little")
    return out


def _batches(dest: str, manifest: Manifest, partition: str) -> Iterator[pa.Table]:
    """DEST's rows as Arrow tables of at most BATCH_ROWS, with `partition` and `row_hash`, part by part."""
    vectors = list(manifest.config.embedding_columns())
    for shard in manifest.shards:
        frame = parts.read_columns(dest, shard.name, manifest.columns)
        for start in range(0, len(frame), BATCH_ROWS):
            rows = frame.slice(start, BATCH_ROWS)
            rows = rows.with_columns(
                pl.lit(partition, pl.String).alias("partition"),
                pl.Series("row_hash", row_hashes(rows, vectors), pl.UInt64),
            )
            yield rows.to_arrow()


def _keys(dest: str, manifest: Manifest) -> pl.DataFrame:
    """The id (and chunk_index) of every row of DEST: small columns only."""
    key = ["id", *(["chunk_index"] if manifest.config.chunked else [])]
    frames = [parts.read_columns(dest, shard.name, key) for shard in manifest.shards]
    return pl.concat(frames) if frames else pl.DataFrame(schema=dict.fromkeys(key, pl.Int64))


def _stale_filters(table: object, db: str, manifest: Manifest, keys: pl.DataFrame, scope: str | None) -> list[str]:
    """Delete filters for the table's rows in `scope` whose key DEST no longer has."""
    key = list(keys.columns)
    held = pl.from_arrow(vectorstore.scan_keys(table, db, key, scope))
    assert isinstance(held, pl.DataFrame)
    if held.is_empty():
        return []
    stale = held.cast(keys.schema).join(keys, on=key, how="anti")
    within = f"({scope}) AND " if scope else ""
    if not manifest.config.chunked:
        return [f"{within}id IN ({', '.join(sql_literal(i) for i in ids)})" for ids in _chunks(stale["id"].to_list())]
    # A document's chunks are 0..n-1: the stale ones of an id are those from its first stale index on.
    first = stale.group_by("id", maintain_order=True).agg(pl.col("chunk_index").min())
    terms = [f"(id = {sql_literal(i)} AND chunk_index >= {c})" for i, c in first.iter_rows()]
    return [f"{within}({' OR '.join(group)})" for group in _chunks(terms)]


def _chunks(items: list, size: int = DELETE_TERMS) -> Iterator[list]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _dropped_filters(dest: str, manifest: Manifest, sync: str) -> list[str]:
    """Delete filters for the ids an incremental run recorded as dropped (DEST/_deleted.parquet): under
    --sync partition, only in the partition of the earlier output they were dropped from (an id dropped on
    day 2 and back on day 3 keeps its day-3 row when day 2 is published again)."""
    if manifest.reuse is None or manifest.reuse.deleted is None or not manifest.reuse.previous:
        return []
    ids = parts.read_columns(dest, DELETED_NAME, ["id"])["id"].to_list()
    within = ""
    if sync == "partition":
        earlier = manifest.reuse.previous[0]
        found = parts.read_manifest(earlier)
        within = f"partition = {sql_literal(_partition_of(earlier, found))} AND "
    return [f"{within}id IN ({', '.join(sql_literal(i) for i in group)})" for group in _chunks(ids)]


def _partition_of(dest: str, manifest: Manifest | None, given: str | None = None) -> str:
    """The `partition` value of DEST's rows: as given, else the day it was embedded for, else DEST itself."""
    return given or (manifest.partition if manifest else None) or storage.canonical(dest)


def _check_table(rec: TableRecord, wanted: TableRecord, name: str, db: str) -> None:
    """Refuse to mix vectors made otherwise, or a sync mode the table was not built for."""
    diffs = fingerprint_diff(rec.embedding_fingerprint, wanted.embedding_fingerprint)
    if diffs:
        k = diffs[0]
        raise InputError(
            f"table {name} in {db} holds vectors embedded with {k} {rec.embedding_fingerprint.get(k)!r}, DEST with "
            f"{wanted.embedding_fingerprint.get(k)!r}: publish to another --table, or --replace to rebuild it"
        )
    if rec.sync != wanted.sync or rec.key != wanted.key:
        raise InputError(
            f"table {name} in {db} is kept with --sync {rec.sync} (key {', '.join(rec.key)}): publish with "
            f"--sync {rec.sync}, to another --table, or --replace to rebuild it"
        )


def publish(dest: str, target: PublishConfig) -> Publication:
    """Publish DEST into `target.table` of `target.db`; record it in DEST's manifest; return the record."""
    manifest = publishable(dest)
    partition = _partition_of(dest, manifest, target.partition)
    check_target(target, manifest.config)
    keys = _keys(dest, manifest)
    ordered = keys.sort(keys.columns)  # sorted, not hashed: memory stays a few times the key columns
    if ordered.select(pl.all_horizontal([pl.col(c) == pl.col(c).shift(1) for c in keys.columns]).any()).item():
        raise InputError(f"DEST {dest} fails verify: a key occurs in two rows; run `bertflow verify {dest}`")
    wanted = _record_for(manifest.config, target)
    conn = vectorstore.connect(target.db)
    table = vectorstore.open_table(conn, target.db, target.table)
    inserted = updated = deleted = 0
    for batch in _batches(dest, manifest, partition):
        if table is None or target.replace:
            table = vectorstore.create_table(conn, target.db, target.table, batch.schema, wanted, target.replace)
            target = target.model_copy(update={"replace": False})
        elif table.schema.names != batch.schema.names:
            raise InputError(
                f"table {target.table} in {target.db} has columns {', '.join(table.schema.names)}; DEST's rows have "
                f"{', '.join(batch.schema.names)} (another --keep?): publish to another --table, or --replace"
            )
        added, changed = vectorstore.upsert(table, target.db, vectorstore.conform(table, batch), wanted.key)
        inserted, updated = inserted + added, updated + changed
    if table is None:  # an empty DEST
        raise InputError(f"DEST {dest} has no rows to publish")
    scope = f"partition = {sql_literal(partition)}" if target.sync == "partition" else None
    gone = [
        *_stale_filters(table, target.db, manifest, _keys(dest, manifest), scope),
        *_dropped_filters(dest, manifest, target.sync),
    ]
    for where in gone:
        deleted += vectorstore.delete(table, target.db, where)
    indexed = _index(table, manifest, target, wanted.key, bool(inserted or updated or deleted))
    done = Publication(
        db=target.db,
        table=target.table,
        version=table.version,
        sync=target.sync,
        partition=partition,
        rows=manifest.totals.rows if manifest.totals else 0,
        inserted=inserted,
        updated=updated,
        deleted=deleted,
        indexed=indexed,
        published_at=datetime.now(timezone.utc),
    )
    _record(dest, manifest, done)
    return done


def _index(table: object, manifest: Manifest, target: PublishConfig, key: list[str], changed: bool) -> list[str]:
    """An ANN index on each vector column and scalar indexes on the key once the table has `index_rows`
    rows (new rows are added to existing ones; the ANN index is trained again when the table has grown
    `vectorstore.RETRAIN_GROWTH`-fold); a full-text index on `fts_column` if asked. Compaction
    and index updates only when there is something to do: a republish that changed nothing skips them."""
    db = target.db
    if changed or vectorstore.unindexed_rows(table):
        vectorstore.optimize(table, db)
    rows = table.count_rows()  # type: ignore[attr-defined]
    columns = manifest.config.embedding_columns()
    have = vectorstore.indexed_columns(table)
    if rows >= target.index_rows:
        vectorstore.build_key_indexes(table, db, key)
        for column, dim in columns.items():  # built, or retrained once the table outgrew its partitions
            if vectorstore.stale_index(table, column, rows):
                vectorstore.build_index(table, db, column, rows, dim)
            vectorstore.drop_superseded(table, db, column)
    if target.fts_column is not None and target.fts_column not in have:
        vectorstore.build_text_index(table, db, target.fts_column)
    have = vectorstore.indexed_columns(table)
    return [c for c in columns if c in have]


def _record(dest: str, manifest: Manifest, done: Publication) -> None:
    """DEST's manifest with this publish in `published` (one entry per database and table)."""
    others = [p for p in manifest.published if (p.db, p.table) != (done.db, done.table)]
    updated = manifest.model_copy(update={"published": [*others, done]})
    storage.write_atomic(storage.join(dest, MANIFEST_NAME), parts.manifest_bytes(updated))
