"""The one validated configuration of a run, passed down from the CLI or a deployment."""

from __future__ import annotations

from typing import Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from bertflow.tasks.pooling import HEAD_POOLINGS, LAYER_MODES, POOLINGS, HeadPooling, LayerMode, Pooling

DEFAULT_MODEL = "sentence-transformers/all-MiniLM-L6-v2"

Device = Literal["auto", "cpu", "cuda", "mps"]
DEVICES: tuple[str, ...] = get_args(Device)
Precision = Literal["fp32", "bf16", "fp16"]
PRECISIONS: tuple[str, ...] = get_args(Precision)


def _one_of(kind: str, value: object, valid: tuple[str, ...]) -> str:
    if value not in valid:
        raise ValueError(f"unknown {kind} {value!r}; choose one of {', '.join(valid)}")
    return value  # type: ignore[return-value]


class EmbedConfig(BaseModel):
    """What to embed and how; `None` means "the model's own default"."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    model: str = DEFAULT_MODEL
    pooling: Pooling | HeadPooling | None = None
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

    @model_validator(mode="after")
    def _pooler(self) -> EmbedConfig:
        if (self.pooling in HEAD_POOLINGS) != bool(self.pooler):
            raise ValueError("--pooling mean_lstm and --pooler PATH (a head from `bertflow train-pooler`) "
                             "go together: give both or neither")
        return self

    @field_validator("pooling", mode="before")
    @classmethod
    def _pooling(cls, v: object) -> object:
        return v if v is None else _one_of("pooling", v, POOLINGS + HEAD_POOLINGS)

    @field_validator("layer_mode", mode="before")
    @classmethod
    def _layer_mode(cls, v: object) -> object:
        return _one_of("layer mode", v, LAYER_MODES)

    @field_validator("device", mode="before")
    @classmethod
    def _device(cls, v: object) -> object:
        return _one_of("device", v, DEVICES)

    @field_validator("precision", mode="before")
    @classmethod
    def _precision(cls, v: object) -> object:
        return _one_of("precision", v, PRECISIONS)

    @field_validator("layers")
    @classmethod
    def _layers(cls, v: tuple[int, ...]) -> tuple[int, ...]:
        if not v:
            raise ValueError("layers is empty; give negative indices such as -1 or -4,-3,-2,-1")
        if any(i >= 0 for i in v):
            raise ValueError(
                f"layers {','.join(map(str, v))} must be negative indices counted from the top "
                "(-1 is the last layer)"
            )
        if len(set(v)) != len(v):
            raise ValueError(f"layers {','.join(map(str, v))} repeats a layer")
        return v

    @field_validator("keep")
    @classmethod
    def _keep(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        reserved = {"id", "embedding", "n_tokens", "truncated"}
        clash = sorted(set(v) & reserved)
        if clash:
            raise ValueError(f"--keep {','.join(clash)} clashes with an output column; rename it")
        return v

    @model_validator(mode="after")
    def _first_last(self) -> EmbedConfig:
        if self.pooling == "first_last_avg" and self.layers != (-1,):
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
    pooling: Pooling | HeadPooling
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
        }
