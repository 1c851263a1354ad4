"""Shard plan and manifest schema: plain pydantic values, no I/O, no Prefect."""

from __future__ import annotations

import hashlib
import json
from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

FORMAT_VERSION = 1
MANIFEST_NAME = "_manifest.json"
REJECTS_NAME = "_rejects.parquet"
# `--aggregate`: one document-level part per shard, same name, in this folder of DEST
DOCUMENTS_DIR = "documents"
# Key of the Parquet footer entry that makes each part self-describing (see `PartInfo`).
PART_METADATA_KEY = "bertflow"

IdKind = Literal["int", "str"]
Format = Literal["parquet", "jsonl", "csv", "txt"]


class Piece(BaseModel):
    """Rows [start, stop) of one source file; line formats also carry their byte range."""

    model_config = ConfigDict(frozen=True)

    file: str
    format: Format
    start: int
    stop: int
    byte_start: int | None = None
    byte_end: int | None = None
    id_prefix: str | None = None  # .txt in a multi-file source: ids are "<file>:<line>"

    @property
    def rows(self) -> int:
        return self.stop - self.start


class ShardSpec(BaseModel):
    """One unit of work: a deterministic part name and the source rows that go into it."""

    model_config = ConfigDict(frozen=True)

    index: int
    count: int
    pieces: tuple[Piece, ...]
    id_kind: IdKind

    @property
    def name(self) -> str:
        return part_name(self.index)

    @property
    def rows(self) -> int:
        return sum(p.rows for p in self.pieces)


def part_name(index: int) -> str:
    return f"part-{index:05d}.parquet"


def shard_fingerprint(spec: ShardSpec, output: dict[str, object]) -> str:
    """Identity of a part: the rows it covers and the settings that shaped its vectors."""
    payload = {"pieces": [p.model_dump() for p in spec.pieces], "output": output}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


class Reject(BaseModel):
    model_config = ConfigDict(frozen=True)

    id: int | str
    reason: str


class PartInfo(BaseModel):
    """Stored in each part's Parquet footer: what a rerun needs to trust the part."""

    fingerprint: str
    rows: int
    tokens: int
    truncated: int
    seconds: float
    rejects: list[Reject] = []


class DocumentsPart(BaseModel):
    """A shard's document-level part (`--aggregate`): DEST/documents/<name>."""

    name: str
    rows: int
    sha256: str


class ShardResult(BaseModel):
    """A finished shard, as the manifest records it."""

    name: str
    pieces: tuple[Piece, ...]
    rows: int
    rejected: int
    tokens: int
    truncated: int
    seconds: float
    sha256: str
    resumed: bool = False
    # Gathered into _rejects.parquet at the end; each part's footer holds its own.
    rejects: list[Reject] = Field(default_factory=list, exclude=True)
    # Listed at the top of the manifest (`documents`), not per shard.
    documents: DocumentsPart | None = Field(default=None, exclude=True)


class Totals(BaseModel):
    rows: int
    skipped: int
    tokens: int
    truncated: int
    seconds: float


class ModelInfo(BaseModel):
    name: str
    path: str
    sha256: str
    dimension: int
    max_length: int


class FittedInfo(BaseModel):
    """A trained head (`--pooler`) or fitted reduction (`--reduction`) the vectors went through."""

    uri: str
    sha256: str


class Manifest(BaseModel):
    """`DEST/_manifest.json`: written when the run starts ("running") and last ("complete")."""

    format_version: int = FORMAT_VERSION
    bertflow_version: str
    status: Literal["running", "complete"]
    source: str
    model: ModelInfo
    pooling: str
    layers: list[int]
    layer_mode: str
    normalize: bool
    precision: str
    device: str | None = None
    id_column: str
    text_column: str
    keep: list[str]
    shard_rows: int
    columns: list[str]
    fingerprint: dict[str, object]
    shards: list[ShardResult] = []
    planned_shards: int
    totals: Totals | None = None
    rejects: str | None = None
    created_at: datetime
    completed_at: datetime | None = None
    pooler: FittedInfo | None = None
    reduction: FittedInfo | None = None
    embedding_columns: dict[str, int] | None = None  # vector column -> width; None in older manifests
    exclude_special: bool = False
    long_text: str = "truncate"
    chunk_tokens: int | None = None
    stride: int | None = None
    aggregate: str | None = None
    documents: list[DocumentsPart] = []  # `--aggregate`: documents/part-*.parquet, one row per id
    document_columns: list[str] = []
