"""What a user asks a run to do, validated once, passed down from the CLI or a deployment.

`EmbedConfig` is the request (`None`: the model's own default); `bertflow.resolved.ResolvedConfig`
is the same with every default filled in from the model, and is what the manifest records.
Choices and their names live in `bertflow.choices`. Pure: pydantic only.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from bertflow.choices import (
    AGGREGATES,
    DEVICES,
    HEAD_POOLINGS,
    LAYER_MODES,
    LONG_TEXTS,
    PRECISIONS,
    QUANTIZE,
    SCALAR_QUANTIZE,
    TOKEN_LEVEL,
    Aggregate,
    Device,
    LayerMode,
    LongText,
    Pooling,
    Precision,
    Quantize,
    Sync,
    one_of,
    parse_pooling,
)

DEFAULT_MODEL = "sentence-transformers/all-MiniLM-L6-v2"

CHUNK_COLUMNS = ("chunk_index", "char_start", "char_end")  # leading columns of a chunked part
TOKEN_COLUMNS = ("tokens", "offsets", "special", "token_embeddings")  # vector columns of a token-level part

# Fields whose value must be one of a fixed set: field -> (name in messages, valid values).
_CHOICES: dict[str, tuple[str, tuple[str, ...]]] = {
    "long_text": ("long-text mode", LONG_TEXTS),
    "aggregate": ("aggregate", AGGREGATES),
    "layer_mode": ("layer mode", LAYER_MODES),
    "device": ("device", DEVICES),
    "precision": ("precision", PRECISIONS),
}


class EmbedConfig(BaseModel):
    """What to embed and how; `None` means "the model's own default"."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    model: str = DEFAULT_MODEL
    revision: str | None = None  # branch, tag or commit of a Hub id (default: main)
    prompt: str | None = None  # text put before every text (e.g. "passage: ")
    prompt_name: str | None = None  # or one of the model's named prompts (config_sentence_transformers.json)
    pooling: Pooling | None = None
    exclude_special: bool = False
    long_text: LongText = "truncate"
    chunk_tokens: int | None = Field(default=None, gt=2)
    stride: int = Field(default=0, ge=0)
    aggregate: Aggregate = "none"
    layers: tuple[int, ...] = (-1,)
    layer_mode: LayerMode = "mean"
    normalize: bool | None = None
    max_length: int | None = Field(default=None, gt=1)
    id_column: str = "id"
    text_column: str = "text"
    keep: tuple[str, ...] = ()
    # Rows per part, or "auto": sized so a shard takes about `shard_seconds` (bertflow.pipeline.sizing)
    shard_rows: int | Literal["auto"] = 10_000
    shard_seconds: float = Field(default=300.0, gt=0)
    batch_tokens: int | None = Field(default=None, gt=0)
    device: Device = "auto"
    # CUDA cards a run without --pool embeds on, one model per card (default: every visible card)
    devices: tuple[int, ...] | None = None
    precision: Precision = "fp32"
    trust_remote_code: bool = False
    pooler: str | None = None  # a head from `bertflow train-pooler`, for pooling mean_lstm
    reduction: str | None = None  # a transform from `bertflow fit-reduction`
    truncate_dim: int | None = Field(default=None, gt=0)  # keep the first N dimensions (Matryoshka models)
    quantize: Quantize | None = None  # compact vectors: int8/uint8 (calibrated ranges), binary/ubinary (bits)
    quantize_ranges: str | None = None  # a DEST whose recorded int8/uint8 ranges this run uses as well
    # Name of a Prefect Secret block holding storage options as JSON; each process loads it itself.
    storage_block: str | None = None

    @field_validator("pooling", mode="before")
    @classmethod
    def _pooling(cls, v: object) -> object:
        if v is None or isinstance(v, str | list | tuple):
            return v if v is None else parse_pooling(v)
        raise ValueError(f"pooling {v!r}: give a name such as mean, or several comma-separated")

    @field_validator(*_CHOICES, mode="before")
    @classmethod
    def _choice(cls, v: object, info: ValidationInfo) -> object:
        kind, valid = _CHOICES[info.field_name or ""]
        return one_of(kind, v, valid)

    @field_validator("devices", mode="before")
    @classmethod
    def _devices(cls, v: object) -> object:
        if v is None:
            return None
        items = v.split(",") if isinstance(v, str) else v
        if not isinstance(items, list | tuple):
            raise ValueError(f"devices {v!r}: give CUDA card indices, comma-separated (0,1)")
        cards = []
        for item in items:
            text = str(item).strip().removeprefix("cuda:")
            if not text.isdigit():
                raise ValueError(f"devices {v!r}: {item!r} is not a card index; give indices such as 0,1")
            cards.append(int(text))
        if not cards or len(set(cards)) != len(cards):
            raise ValueError(f"devices {v!r}: give each card once, at least one (0,1)")
        return tuple(cards)

    @field_validator("quantize", mode="before")
    @classmethod
    def _quantize(cls, v: object) -> object:
        return v if v is None else one_of("quantization", v, QUANTIZE)

    @field_validator("shard_rows", mode="before")
    @classmethod
    def _shard_rows(cls, v: object) -> object:
        return count_or_auto(v, "a row count")

    @field_validator("layers")
    @classmethod
    def _layers(cls, v: tuple[int, ...]) -> tuple[int, ...]:
        if not v:
            raise ValueError("layers is empty; give negative indices such as -1 or -4,-3,-2,-1")
        if any(i >= 0 for i in v):
            raise ValueError(
                f"layers {','.join(map(str, v))} must be negative indices counted from the top (-1 is the last layer)"
            )
        if len(set(v)) != len(v):
            raise ValueError(f"layers {','.join(map(str, v))} repeats a layer")
        return v

    @field_validator("keep")
    @classmethod
    def _keep(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        reserved = {"id", "embedding", "n_tokens", "truncated", *CHUNK_COLUMNS, *TOKEN_COLUMNS}
        clash = sorted(set(v) & reserved)
        if clash:
            raise ValueError(f"--keep {','.join(clash)} clashes with an output column; rename it")
        return v

    @model_validator(mode="after")
    def _combinations(self) -> EmbedConfig:
        pooling = self.pooling or ()
        if (pooling == HEAD_POOLINGS) != bool(self.pooler):
            raise ValueError(
                "--pooling mean_lstm and --pooler PATH (a head from `bertflow train-pooler`) "
                "go together: give both or neither"
            )
        if self.long_text != "chunk":
            if self.aggregate != "none":
                raise ValueError("--aggregate needs --long-text chunk (there are no chunks to aggregate)")
            if self.chunk_tokens is not None or self.stride:
                raise ValueError("--chunk-tokens and --stride need --long-text chunk")
        elif self.chunk_tokens is not None and self.stride >= self.chunk_tokens:
            raise ValueError(f"--stride {self.stride} must be less than --chunk-tokens {self.chunk_tokens}")
        token_level = pooling == (TOKEN_LEVEL,)
        if (len(pooling) > 1 or token_level) and (self.pooler or self.reduction or self.truncate_dim or self.quantize):
            raise ValueError(
                "--pooler, --reduction, --truncate-dim and --quantize work with one pooling strategy, not a list or none"
            )
        if self.quantize and self.aggregate != "none":
            raise ValueError(
                "--aggregate averages float chunk vectors; with --quantize they are no longer floats: drop one"
            )
        if self.quantize_ranges and self.quantize not in SCALAR_QUANTIZE:
            raise ValueError("--quantize-ranges gives int8/uint8 calibration ranges: add --quantize int8 or uint8")
        if self.truncate_dim and self.reduction:
            raise ValueError("--truncate-dim and --reduction both set the vectors' width: pick one")
        if token_level and self.long_text == "chunk":
            raise ValueError("--pooling none writes every token already; drop --long-text chunk")
        if "first_last_avg" in pooling and self.layers != (-1,):
            raise ValueError("first_last_avg uses the first and last layers itself; drop --layers")
        if self.id_column == self.text_column:
            raise ValueError(f"id column and text column are both {self.id_column!r}")
        if self.prompt is not None and self.prompt_name is not None:
            raise ValueError("--prompt and --prompt-name both give the prompt: pass one")
        if token_level and (self.prompt or self.prompt_name):
            raise ValueError("--pooling none writes the text's own tokens: drop --prompt/--prompt-name")
        overlap = sorted({self.id_column, self.text_column} & set(self.keep))
        if overlap:
            raise ValueError(f"--keep {','.join(overlap)} is already the id or text column")
        return self


class PublishConfig(BaseModel):
    """Where `bertflow publish` (or the embed flow's last step) writes a DEST: a LanceDB table, and how."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    db: str  # a LanceDB database: a local directory or s3://bucket/path
    table: str = Field("embeddings", pattern=r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$", max_length=128)
    sync: Sync = "partition"
    partition: str | None = None  # the rows' `partition` value (default: DEST's partition, else DEST itself)
    index_rows: int = Field(100_000, ge=1)  # an ANN index on each vector column from this many rows
    fts_column: str | None = None  # a kept text column to give a full-text index
    replace: bool = False  # rebuild a table that holds vectors embedded otherwise


def count_or_auto(v: object, what: str) -> int | Literal["auto"]:
    """A positive count (an int, or its digits) or `auto`; ValueError naming `what` otherwise."""
    if isinstance(v, str) and v.strip().lower() == "auto":
        return "auto"
    if isinstance(v, str) and v.strip().isdigit():
        v = int(v)
    if not isinstance(v, int) or isinstance(v, bool) or v < 1:
        raise ValueError(f"{v!r} is not {what}: give a positive number or auto")
    return v
