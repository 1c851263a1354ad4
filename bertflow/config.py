"""The one validated configuration of a run, passed down from the CLI or a deployment."""

from __future__ import annotations

from typing import Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from bertflow.model.pooling import HEAD_POOLINGS, LAYER_MODES, POOLINGS, LayerMode

DEFAULT_MODEL = "sentence-transformers/all-MiniLM-L6-v2"

Device = Literal["auto", "cpu", "cuda", "mps"]
DEVICES: tuple[str, ...] = get_args(Device)
Precision = Literal["fp32", "bf16", "fp16"]
PRECISIONS: tuple[str, ...] = get_args(Precision)
LongText = Literal["truncate", "chunk"]
LONG_TEXTS: tuple[str, ...] = get_args(LongText)
Aggregate = Literal["none", "mean", "max"]
AGGREGATES: tuple[str, ...] = get_args(Aggregate)
# `--pooling none`: no pooling, one vector per token (token-level output)
TOKEN_LEVEL = "none"


def split_pooling(pooling: str) -> tuple[str, ...]:
    """`mean,cls,max` -> ("mean", "cls", "max"): the strategies of one run, in column order."""
    return tuple(p.strip() for p in pooling.split(","))


def embedding_column(pooling: str, name: str) -> str:
    """`embedding` for a single pooling, `embedding_<name>` for each of several."""
    return "embedding" if len(split_pooling(pooling)) == 1 else f"embedding_{name}"


CHUNK_COLUMNS = ("chunk_index", "char_start", "char_end")  # leading columns of a chunked part
# Fields whose value must be one of a fixed set: field -> (name in messages, valid values).
_CHOICES: dict[str, tuple[str, tuple[str, ...]]] = {
    "long_text": ("long-text mode", LONG_TEXTS),
    "aggregate": ("aggregate", AGGREGATES),
    "layer_mode": ("layer mode", LAYER_MODES),
    "device": ("device", DEVICES),
    "precision": ("precision", PRECISIONS),
}


def _one_of(kind: str, value: object, valid: tuple[str, ...]) -> str:
    if value not in valid:
        raise ValueError(f"unknown {kind} {value!r}; choose one of {', '.join(valid)}")
    return value  # type: ignore[return-value]


class EmbedConfig(BaseModel):
    """What to embed and how; `None` means "the model's own default"."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    model: str = DEFAULT_MODEL
    pooling: str | None = None  # one strategy, several comma-separated (one pass), or "none"
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
    shard_rows: int = Field(default=10_000, gt=0)
    batch_tokens: int | None = Field(default=None, gt=0)
    device: Device = "auto"
    precision: Precision = "fp32"
    trust_remote_code: bool = False
    pooler: str | None = None  # a head from `bertflow train-pooler`, for pooling mean_lstm
    reduction: str | None = None  # a transform from `bertflow fit-reduction`
    # Name of a Prefect Secret block holding storage options as JSON; each process loads it itself.
    storage_block: str | None = None

    @model_validator(mode="after")
    def _pooler(self) -> EmbedConfig:
        if (self.pooling in HEAD_POOLINGS) != bool(self.pooler):
            raise ValueError(
                "--pooling mean_lstm and --pooler PATH (a head from `bertflow train-pooler`) "
                "go together: give both or neither"
            )
        return self

    @field_validator("pooling", mode="before")
    @classmethod
    def _pooling(cls, v: object) -> object:
        if v is None:
            return v
        names = split_pooling(str(v))
        if len(names) == 1:
            return _one_of("pooling", names[0], POOLINGS + HEAD_POOLINGS + (TOKEN_LEVEL,))
        for name in names:
            _one_of("pooling", name, POOLINGS)
        if len(set(names)) != len(names):
            raise ValueError(f"pooling {v!r} repeats a strategy")
        return ",".join(names)

    @model_validator(mode="after")
    def _long_text(self) -> EmbedConfig:
        if self.long_text != "chunk":
            if self.aggregate != "none":
                raise ValueError("--aggregate needs --long-text chunk (there are no chunks to aggregate)")
            if self.chunk_tokens is not None or self.stride:
                raise ValueError("--chunk-tokens and --stride need --long-text chunk")
        elif self.chunk_tokens is not None and self.stride >= self.chunk_tokens:
            raise ValueError(f"--stride {self.stride} must be less than --chunk-tokens {self.chunk_tokens}")
        several = self.pooling is not None and len(split_pooling(self.pooling)) > 1
        if (several or self.pooling == TOKEN_LEVEL) and (self.pooler or self.reduction):
            raise ValueError("--pooler and --reduction work with one pooling strategy, not a list or none")
        if self.pooling == TOKEN_LEVEL and self.long_text == "chunk":
            raise ValueError("--pooling none writes every token already; drop --long-text chunk")
        return self

    @field_validator(*_CHOICES, mode="before")
    @classmethod
    def _choice(cls, v: object, info: ValidationInfo) -> object:
        kind, valid = _CHOICES[info.field_name]
        return _one_of(kind, v, valid)

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
        reserved = {
            "id",
            "embedding",
            "n_tokens",
            "truncated",
            *CHUNK_COLUMNS,
            "tokens",
            "offsets",
            "special",
            "token_embeddings",
        }
        clash = sorted(set(v) & reserved)
        if clash:
            raise ValueError(f"--keep {','.join(clash)} clashes with an output column; rename it")
        return v

    @model_validator(mode="after")
    def _first_last(self) -> EmbedConfig:
        if self.pooling and "first_last_avg" in split_pooling(self.pooling) and self.layers != (-1,):
            raise ValueError("first_last_avg uses the first and last layers itself; drop --layers")
        return self

    @model_validator(mode="after")
    def _columns(self) -> EmbedConfig:
        if self.id_column == self.text_column:
            raise ValueError(f"id column and text column are both {self.id_column!r}")
        overlap = sorted({self.id_column, self.text_column} & set(self.keep))
        if overlap:
            raise ValueError(f"--keep {','.join(overlap)} is already the id or text column")
        return self


class ResolvedConfig(BaseModel):
    """EmbedConfig with every default filled in from the model; what the manifest records."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    model: str
    model_path: str
    model_sha256: str
    dimension: int
    pooling: str
    layers: tuple[int, ...]
    layer_mode: LayerMode
    normalize: bool
    max_length: int
    id_column: str
    text_column: str
    keep: tuple[str, ...]
    shard_rows: int
    batch_tokens: int | None
    device: Device
    precision: Precision
    trust_remote_code: bool
    pooler: str | None = None
    pooler_sha256: str | None = None
    reduction: str | None = None
    reduction_sha256: str | None = None
    storage_block: str | None = None
    exclude_special: bool = False
    long_text: LongText = "truncate"
    chunk_tokens: int | None = None  # set when long_text is "chunk"
    stride: int = 0
    aggregate: Aggregate = "none"
    dimensions: dict[str, int] = {}  # width of each pooling of a list

    @property
    def poolings(self) -> tuple[str, ...]:
        return split_pooling(self.pooling)

    def embedding_columns(self) -> dict[str, int]:
        """Vector column name -> width, as written."""
        if len(self.poolings) == 1:
            return {"embedding": self.dimension}
        return {embedding_column(self.pooling, p): self.dimensions[p] for p in self.poolings}

    def columns(self) -> list[str]:
        """The columns of a part, in order."""
        if self.pooling == TOKEN_LEVEL:
            vectors = ["tokens", "offsets", "special", "token_embeddings"]
        else:
            vectors = list(self.embedding_columns())
        chunk = list(CHUNK_COLUMNS) if self.long_text == "chunk" else []
        return ["id", *chunk, *vectors, "n_tokens", "truncated", *self.keep]

    def document_columns(self) -> list[str]:
        """The columns of a documents/ part (`--aggregate`), in order; empty without one."""
        if self.aggregate == "none":
            return []
        return ["id", *self.embedding_columns(), "n_tokens", "n_chunks", *self.keep]

    def output_fingerprint(self) -> dict[str, object]:
        """The settings that change the embeddings written; a rerun must match them."""
        return {
            "model_sha256": self.model_sha256,
            "pooling": self.pooling,
            "layers": list(self.layers),
            "layer_mode": self.layer_mode,
            "normalize": self.normalize,
            "max_length": self.max_length,
            "precision": self.precision,
            "id_column": self.id_column,
            "text_column": self.text_column,
            "keep": list(self.keep),
            "shard_rows": self.shard_rows,
            # only when used, so DESTs made without them keep their fingerprints
            **({"pooler_sha256": self.pooler_sha256} if self.pooler_sha256 else {}),
            **({"reduction_sha256": self.reduction_sha256} if self.reduction_sha256 else {}),
            **({"exclude_special": True} if self.exclude_special else {}),
            **(
                {
                    "long_text": self.long_text,
                    "chunk_tokens": self.chunk_tokens,
                    "stride": self.stride,
                    "aggregate": self.aggregate,
                }
                if self.long_text == "chunk"
                else {}
            ),
        }
