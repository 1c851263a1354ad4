"""LanceDB tables, the only module that imports lancedb: connecting with bertflow's storage options, the
record a table keeps of how its vectors were made, upserts, deletes and indexes.

A table lives in a LanceDB database: a local directory or `s3://bucket/path`. S3 credentials and endpoint
come from the same places as for the parts (AWS_* variables, `--storage-option`, a storage block) and are
handed to LanceDB for this connection only; they are never written into the table.
"""

from __future__ import annotations

import contextlib
import math
import os
import re
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import pyarrow as pa
from pydantic import BaseModel

from bertflow.errors import InputError, StorageError, TransientStorageError, one_line
from bertflow.io import storage
from bertflow.resolved import ResolvedConfig

METADATA_KEY = b"bertflow"  # the table schema's entry holding `TableRecord` as JSON
METRIC = "cosine"
# --storage-option keys (s3fs' names) -> LanceDB's (object_store's) names.
_S3_OPTIONS = {
    "key": "aws_access_key_id",
    "secret": "aws_secret_access_key",
    "token": "aws_session_token",
    "endpoint_url": "aws_endpoint",
    "region_name": "aws_region",
}
_S3_ENVIRONMENT = {
    "AWS_ACCESS_KEY_ID": "aws_access_key_id",
    "AWS_SECRET_ACCESS_KEY": "aws_secret_access_key",
    "AWS_SESSION_TOKEN": "aws_session_token",
    "AWS_ENDPOINT_URL_S3": "aws_endpoint",
    "AWS_ENDPOINT_URL": "aws_endpoint",
    "AWS_REGION": "aws_region",
    "AWS_DEFAULT_REGION": "aws_region",
}


class TableRecord(BaseModel):
    """What a bertflow table records of its vectors: search embeds a query with `config`, and a publish whose
    embedding fingerprint differs is refused (vectors of two models never share a column)."""

    config: ResolvedConfig
    fingerprint: dict[str, object]  # the output fingerprint of the DESTs published (search checks the model)
    embedding_fingerprint: dict[str, object]
    sync: str
    key: list[str]  # the columns that identify a row


def lance_options(db: str, options: Mapping[str, str] | None = None, env: Mapping[str, str] = os.environ) -> dict:
    """LanceDB's storage options for `db`, from bertflow's (`--storage-option`) and the AWS_* environment;
    a plain-HTTP endpoint (a local S3 such as MinIO) is allowed explicitly, as object_store requires."""
    if not db.startswith(("s3://", "s3a://")):
        return {}
    out: dict[str, str] = {}
    for name, key in _S3_ENVIRONMENT.items():
        if env.get(name) and key not in out:
            out[key] = env[name]
    given = storage.current_options() if options is None else options
    if "key" in given:  # explicit credentials: not mixed with a session token of the environment's
        out.pop("aws_session_token", None)
    for name, value in given.items():
        if name not in _S3_OPTIONS:
            known = ", ".join(_S3_OPTIONS)
            raise InputError(f"--storage-option {name}: LanceDB on S3 takes {known}; set the rest in AWS_* variables")
        out[_S3_OPTIONS[name]] = value
    if out.get("aws_endpoint", "").startswith("http://"):
        out["allow_http"] = "true"
    return out


def _failure(db: str, err: Exception) -> StorageError:
    return StorageError(f"LanceDB database {db}: {one_line(err)}")


# LanceDB raises OSError for object-store I/O and RuntimeError naming a "conflict" when another writer
# committed first; both pass when tried again (the task's retries), the rest does not.
_TRANSIENT = ("conflict", "timed out", "timeout", "connection", "slowdown", "503", "500 internal")


@contextlib.contextmanager
def guarded(db: str) -> Iterator[None]:
    """LanceDB's errors as bertflow's: transient ones retryable, the rest one line."""
    try:
        yield
    except (InputError, StorageError):
        raise
    except (OSError, RuntimeError, ValueError) as e:
        text = one_line(e)
        if isinstance(e, OSError) or any(word in text.lower() for word in _TRANSIENT):
            raise TransientStorageError(f"LanceDB database {db}: {text}") from e
        raise _failure(db, e) from e


def connect(db: str) -> Any:
    """The LanceDB connection to `db` (lancedb.DBConnection)."""
    # LanceDB's Rust side logs warnings ("No existing dataset ... it will be created") straight to stderr.
    os.environ.setdefault("LANCEDB_LOG", "error")
    import lancedb

    storage.check_uri(db)
    try:
        return lancedb.connect(db, storage_options=lance_options(db))
    except (OSError, ValueError, RuntimeError) as e:
        raise _failure(db, e) from e


def open_table(conn: Any, db: str, name: str) -> Any | None:
    """The table `name`, or None when the database has none of that name."""
    try:
        if name not in conn.table_names(limit=None):
            return None
        return conn.open_table(name)
    except (OSError, ValueError, RuntimeError) as e:
        raise _failure(db, e) from e


def record(table: Any, db: str) -> TableRecord:
    """The table's bertflow record; a table bertflow did not write is refused."""
    raw = (table.schema.metadata or {}).get(METADATA_KEY)
    if raw is None:
        raise InputError(f"table {table.name} in {db} was not written by `bertflow publish`: publish to another table")
    try:
        return TableRecord.model_validate_json(raw)
    except ValueError:
        raise InputError(
            f"table {table.name} in {db}: its bertflow record is unreadable (another bertflow version?); "
            "publish to another table, or --replace"
        ) from None


def create_table(conn: Any, db: str, name: str, rows: pa.Schema, rec: TableRecord, replace: bool) -> Any:
    """An empty table for rows of this schema, the record in its metadata (replacing one of that name if
    asked). When another publish created it first (backfill runs days at once), that table, once checked."""
    meta = {METADATA_KEY: rec.model_dump_json().encode()}
    schema = schema_for(rows).with_metadata(meta)
    with guarded(db):
        try:
            return conn.create_table(name, schema=schema, mode="overwrite" if replace else "create")
        except ValueError as e:
            if "already exists" not in str(e):
                raise
    table = conn.open_table(name)
    theirs = record(table, db)
    if theirs.embedding_fingerprint != rec.embedding_fingerprint or theirs.key != rec.key:
        raise InputError(f"table {name} in {db} was just created by another publish with other settings: rerun")
    return table


def conform(table: Any, rows: pa.Table) -> pa.Table:
    """Rows cast to the table's schema; a column whose type changed is refused."""
    try:
        return rows.cast(table.schema.remove_metadata())
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, ValueError) as e:
        raise InputError(
            f"table {table.name}: DEST's rows do not fit its columns ({one_line(e)}); "
            "publish to another --table, or --replace"
        ) from None


def upsert(table: Any, db: str, rows: pa.Table, key: Sequence[str]) -> tuple[int, int]:
    """Insert rows whose key is new, rewrite rows whose `row_hash` changed, leave the rest; (inserted, updated)."""
    with guarded(db):
        result = (
            table.merge_insert(list(key))
            .when_matched_update_all(where="target.row_hash != source.row_hash")
            .when_not_matched_insert_all()
            .execute(rows)
        )
    return result.num_inserted_rows, result.num_updated_rows


def scan_keys(table: Any, db: str, key: Sequence[str], where: str | None) -> pa.Table:
    """The key columns of the table's rows (those matching `where`)."""
    query = table.search().select(list(key)).limit(None)
    if where:
        query = query.where(where)
    with guarded(db):
        return query.to_arrow()


def delete(table: Any, db: str, where: str) -> int:
    """Delete the rows matching `where`; how many there were."""
    with guarded(db):
        count = table.count_rows(where)
        if count:
            table.delete(where)
    return count


def sql_literal(value: object) -> str:
    """A value as a SQL literal for LanceDB's filters."""
    if isinstance(value, str):
        return "'" + value.replace("'", "''") + "'"
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"no SQL literal for {value!r}")
    return str(value)


def index_plan(rows: int, dim: int) -> dict:
    """IVF-PQ parameters for `rows` vectors of `dim` dimensions: about sqrt(rows) partitions (LanceDB's own
    rule, so each holds ~sqrt(rows) vectors), and sub-vectors of 8 dimensions where `dim` allows (384 -> 48
    sub-vectors, 8 bits each: 48 bytes per vector), else the widest of 4, 2, 1 that divides it."""
    width = next(w for w in (8, 4, 2, 1) if dim % w == 0)
    return {
        "index_type": "IVF_PQ",
        "metric": METRIC,
        "num_partitions": max(1, min(4096, round(math.sqrt(rows)))),
        "num_sub_vectors": dim // width,
    }


def indexed_columns(table: Any) -> set[str]:
    """Columns that have an index of any kind."""
    return {column for index in table.list_indices() for column in index.columns}


# An IVF index is retrained once the table has this many times the rows it was trained on: by the
# sqrt(rows) rule its partitions would then be twice as many, each holding twice the vectors it should.
RETRAIN_GROWTH = 4


def _trained(table: Any, column: str) -> dict[str, int]:
    """`column`'s vector indexes: name -> the rows it was trained on (bertflow names them
    `COLUMN_ivfpq_ROWS`; 0 for one named otherwise: made elsewhere, or by an older bertflow)."""
    found = {}
    for index in table.list_indices():
        if index.columns == [column] and str(index.index_type).lower().startswith("ivf"):
            m = re.fullmatch(re.escape(column) + r"_ivfpq_(\d+)", index.name)
            found[index.name] = int(m.group(1)) if m else 0
    return found


def trained_rows(table: Any, column: str) -> int | None:
    """The rows `column`'s vector index was trained on; 0 if it cannot say (never retrained); None: no index."""
    trained = _trained(table, column)
    return max(trained.values()) if trained else None


def stale_index(table: Any, column: str, rows: int) -> bool:
    """Whether `column` needs its vector index built: it has none, or it grew RETRAIN_GROWTH-fold since."""
    trained = trained_rows(table, column)
    return trained is None or (trained > 0 and rows >= RETRAIN_GROWTH * trained)


def build_index(table: Any, db: str, column: str, rows: int, dim: int) -> None:
    """Train `column`'s IVF-PQ index on the table's `rows`; searches use the one it replaces until then."""
    with guarded(db):
        table.create_index(
            vector_column_name=column, replace=True, name=f"{column}_ivfpq_{rows}", **index_plan(rows, dim)
        )


def drop_superseded(table: Any, db: str, column: str) -> None:
    """Drop bertflow's vector indexes on `column` older than its newest (one retrain's leftover, or two
    publishes retraining at once); every publish calls it, so a drop that failed is done by the next."""
    with guarded(db):
        table.checkout_latest()  # another publish may have built or dropped one since this table was opened
        ours = {name: rows for name, rows in _trained(table, column).items() if rows > 0}
        newest = max(ours.values(), default=0)
        for name, rows in ours.items():
            if rows < newest:
                try:
                    table.drop_index(name)
                except Exception:  # dropped by a publish beside this one: fine; anything else is raised
                    table.checkout_latest()
                    if name in {i.name for i in table.list_indices()}:
                        raise


def build_key_indexes(table: Any, db: str, key: Sequence[str]) -> None:
    """Scalar indexes on the key (BTREE on ids, BITMAP on `partition`'s few values), so upserts, deletes
    and `--where` on them find rows without scanning the table."""
    have = indexed_columns(table)
    with guarded(db):
        for column in key:
            if column not in have:
                table.create_scalar_index(column, index_type="BITMAP" if column == "partition" else "BTREE")


def build_text_index(table: Any, db: str, column: str) -> None:
    with guarded(db):
        table.create_fts_index(column, replace=True)


def unindexed_rows(table: Any) -> int:
    """Rows the table's indexes do not cover yet (added since they were built or last optimized)."""
    return sum(table.index_stats(i.name).num_unindexed_rows for i in table.list_indices())


def optimize(table: Any, db: str) -> None:
    """Compact small fragments and add new rows to existing indexes (old versions kept LanceDB's 7 days)."""
    with guarded(db):
        table.optimize()


def schema_for(frame_schema: pa.Schema) -> pa.Schema:
    """A table schema from a part's Arrow schema: large strings stored as strings (LanceDB reads both)."""
    fields = [
        pa.field(f.name, pa.string() if pa.types.is_large_string(f.type) or pa.types.is_string_view(f.type) else f.type)
        for f in frame_schema
    ]
    return pa.schema(fields)
