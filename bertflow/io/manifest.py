"""Shard plan and manifest schema: plain pydantic values, no I/O, no Prefect."""

from __future__ import annotations

import hashlib
import json
from datetime import datetime
from typing import Final, Literal

from pydantic import BaseModel, ConfigDict, Field, computed_field

from bertflow.resolved import ResolvedConfig

# 2: the resolved config embedded as `config` (format 1 repeated its fields at the top level)
FORMAT_VERSION: Final = 2
MANIFEST_NAME = "_manifest.json"
REJECTS_NAME = "_rejects.parquet"
REPORT_NAME = "_report.html"  # `bertflow report`, written by every completed run
DELETED_NAME = "_deleted.parquet"  # `--deleted-ids`: ids of the previous output SOURCE no longer has
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


class ReusePart(BaseModel):
    """A part of an earlier output that may hold some of a shard's rows (`--reuse`), with the sha256
    its manifest recorded (checked when it is read)."""

    model_config = ConfigDict(frozen=True)

    uri: str
    sha256: str


class ShardJob(BaseModel):
    """One shard to embed: which rows, with what settings, into which DEST, under which part fingerprint.

    Small and serializable: it is what crosses to a worker (a flow parameter), never the data.
    """

    model_config = ConfigDict(frozen=True)

    spec: ShardSpec
    config: ResolvedConfig
    dest: str
    fingerprint: str
    # `--reuse`: earlier parts holding ids of this shard, newest output first; rows found there with
    # the same text are copied, not embedded. Not part of the fingerprint: a copied row is the same row.
    reuse: tuple[ReusePart, ...] = ()
    # Half precision: the kind of device (`cuda`, `cpu`) DEST's parts are made on; a host of another kind
    # refuses the shard (`bertflow.pipeline.devices`). None: any.
    device_kind: str | None = None


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
    reused: int = 0  # rows copied from an earlier output (`--reuse`), not embedded
    reused_tokens: int = 0  # their tokens
    model_seconds: float = 0.0  # of `seconds`, the time in forward passes and pooling
    device: str | None = None  # what the shard ran on: `cuda:1 (NVIDIA H200)`, `cpu`; None before bertflow 0.4
    host: str | None = None  # the machine that ran it (BERTFLOW_GPU_HOST, else the hostname); None before 0.5
    finished_at: datetime | None = None  # when the part was written; it started `seconds` before
    padded_tokens: int = 0  # token positions the model computed, padding included; 0 before bertflow 0.6
    oom_splits: int = 0  # batches split after the device ran out of memory
    batch_budget: int | None = None  # padded tokens per pass the shard fell back to after one (None: no OOM)
    load_seconds: float = 0.0  # of `seconds`, getting the model onto the device (0: already there)
    warm: bool = False  # the process had the model loaded already, by an earlier shard
    startup_seconds: float = 0.0  # before `seconds`: the process's start, imports (its first shard only)
    gpu_busy: float | None = None  # share of `model_seconds` the card ran kernels (NVML); None: not measured


class DocumentsPart(BaseModel):
    """A shard's document-level part (`--aggregate`): DEST/documents/<name>."""

    name: str
    rows: int
    sha256: str


class ShardResult(BaseModel):
    """A finished shard, as the manifest records it.

    `rows` counts the part's rows: one per document, or one per chunk under `--long-text chunk`.
    """

    name: str
    pieces: tuple[Piece, ...]
    documents: int  # documents embedded (the shard's source rows less the rejected ones)
    rows: int
    rejected: int
    tokens: int
    truncated: int
    seconds: float
    sha256: str
    resumed: bool = False
    reused: int = 0  # rows copied from an earlier output (`--reuse`); rows - reused went through the model
    reused_tokens: int = 0
    model_seconds: float = 0.0  # of `seconds`, the time in forward passes and pooling
    device: str | None = None  # what the shard ran on: `cuda:1 (NVIDIA H200)`, `cpu`; None before bertflow 0.4
    host: str | None = None  # the machine that ran it; None before bertflow 0.5
    finished_at: datetime | None = None  # when its part was written; None before bertflow 0.5
    padded_tokens: int = 0  # token positions the model computed, padding included; 0 before bertflow 0.6
    oom_splits: int = 0  # batches split after the device ran out of memory
    batch_budget: int | None = None  # padded tokens per pass after an out-of-memory (None: none)
    load_seconds: float = 0.0  # of `seconds`, getting the model onto the device (0: already there)
    warm: bool = False  # the process had the model loaded already, by an earlier shard
    startup_seconds: float = 0.0  # before `seconds`: the process's start and imports (its first shard only)
    gpu_busy: float | None = None  # share of `model_seconds` the card ran kernels (NVML); None: not measured
    # Gathered into _rejects.parquet at the end; each part's footer holds its own.
    rejects: list[Reject] = Field(default_factory=list, exclude=True)
    # Listed at the top of the manifest (`documents_parts`), not per shard.
    documents_part: DocumentsPart | None = Field(default=None, exclude=True)


class Totals(BaseModel):
    """Sums over every shard; `rows` equals `documents` except under `--long-text chunk` (chunks)."""

    documents: int
    rows: int
    rejected: int
    tokens: int
    truncated: int
    seconds: float


class ReuseSummary(BaseModel):
    """What `--reuse` (or a scheduled run's previous partition) saved; in the manifest as `reuse`."""

    previous: list[str]  # the earlier outputs rows were looked up in, newest first
    skipped: dict[str, str] = {}  # earlier outputs left out (embedded otherwise, incomplete...), and why
    reused: int  # part rows copied
    embedded: int  # part rows that went through the model
    dropped: int  # ids of the newest previous output that SOURCE no longer has
    deleted: str | None = None  # `--deleted-ids`: the file listing them (`DELETED_NAME`)
    seconds_saved: float  # model time not spent: the reused tokens at `tokens_per_s`
    tokens_per_s: float | None = None  # the model throughput of the estimate: this run's, or the earlier output's


class ShardSizing(BaseModel):
    """How `--shard-rows auto` sized a run's shards (`bertflow.pipeline.sizing`); in the manifest as `shard_sizing`."""

    model_config = ConfigDict(frozen=True)

    shard_rows: int
    target_seconds: float
    rows_per_second: float | None  # None when DEST's own size was kept
    origin: str  # where the rate (or the size) came from


class Publication(BaseModel):
    """One `bertflow publish` of this DEST into a LanceDB table; in the manifest's `published` list."""

    db: str  # the database URI, as given (never storage options)
    table: str
    version: int  # the table's version after the publish
    sync: str
    partition: str
    rows: int  # DEST rows published
    inserted: int
    updated: int  # rows whose vector or columns changed; unchanged rows are not rewritten
    deleted: int
    indexed: list[str] = []  # the vector columns with an ANN index
    published_at: datetime


class Manifest(BaseModel):
    """`DEST/_manifest.json`: written when the run starts ("running") and last ("complete").

    The run's resolved config is embedded as is; columns are derived from it.
    """

    format_version: Literal[2] = FORMAT_VERSION
    bertflow_version: str
    status: Literal["running", "complete"]
    source: str
    config: ResolvedConfig
    fingerprint: dict[str, object]  # the output fingerprint: config.output_fingerprint() when written
    # config.embedding_fingerprint() when written; None in manifests of bertflow 0.2 and earlier
    embedding_fingerprint: dict[str, object] | None = None
    device: str | None = None  # the device the run resolved to ("cpu", "cuda"); None while running
    shards: list[ShardResult] = []
    planned_shards: int
    totals: Totals | None = None
    rejects: str | None = None
    documents_parts: list[DocumentsPart] = []  # `--aggregate`: documents/part-*.parquet, one row per document
    reuse: ReuseSummary | None = None  # set when the run looked rows up in earlier outputs
    shard_sizing: ShardSizing | None = None  # set under `--shard-rows auto`
    partition: str | None = None  # the day a scheduled or `--partition` run embedded ({date} in SOURCE/DEST)
    published: list[Publication] = []  # LanceDB tables this DEST was published to, one entry per table
    created_at: datetime
    completed_at: datetime | None = None

    @computed_field  # type: ignore[prop-decorator]
    @property
    def columns(self) -> list[str]:
        """The columns of every part, in order."""
        return self.config.columns()

    @computed_field  # type: ignore[prop-decorator]
    @property
    def document_columns(self) -> list[str]:
        """The columns of every documents/ part (`--aggregate`); empty without one."""
        return self.config.document_columns()
