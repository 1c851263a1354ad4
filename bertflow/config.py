"""The one validated configuration of a run, passed down from the CLI or a deployment.

`EmbedConfig` is what a user asks for (`None`: the model's own default); `ResolvedConfig` is the
same with every default filled in from the model, and is what the manifest records, as is.
Choices and their names live in `bertflow.choices`. Pure: pydantic only.
"""

from __future__ import annotations

from collections.abc import Sequence

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from bertflow.choices import (
    AGGREGATES,
    DEVICES,
    HEAD_POOLINGS,
    LAYER_MODES,
    LONG_TEXTS,
    PRECISIONS,
    TOKEN_LEVEL,
    Aggregate,
    Device,
    LayerMode,
    LongText,
    Pooling,
    Precision,
    embedding_column,
    one_of,
    parse_pooling,
    pooling_label,
)

DEFAULT_MODEL = "sentence-transformers/all-MiniLM-L6-v2"

# Output-fingerprint keys added in bertflow 0.3: outputs written before lack them (and their rows a text_hash).
ADDED_IN_0_3 = ("tokenizer_sha256", "text_hash")
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


def fingerprint_diff(recorded: dict[str, object], now: dict[str, object], keys: Sequence[str] = ()) -> list[str]:
    """The settings (of `keys`, default all on either side) on which two embedding fingerprints differ."""
    names = keys or list({**recorded, **now})
    return [k for k in names if recorded.get(k) != now.get(k)]


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
    shard_rows: int = Field(default=10_000, gt=0)
    batch_tokens: int | None = Field(default=None, gt=0)
    device: Device = "auto"
    precision: Precision = "fp32"
    trust_remote_code: bool = False
    pooler: str | None = None  # a head from `bertflow train-pooler`, for pooling mean_lstm
    reduction: str | None = None  # a transform from `bertflow fit-reduction`
    truncate_dim: int | None = Field(default=None, gt=0)  # keep the first N dimensions (Matryoshka models)
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
        if (len(pooling) > 1 or token_level) and (self.pooler or self.reduction or self.truncate_dim):
            raise ValueError(
                "--pooler, --reduction and --truncate-dim work with one pooling strategy, not a list or none"
            )
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


class ModelRef(BaseModel):
    """The encoder of a run: the name asked for, the directory it resolved to, its weights' sha256."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    path: str
    sha256: str
    # the Hub commit the name resolved to (every shard run loads exactly it); None for a local directory
    revision: str | None = None
    # sha256 over the tokenizer's files (`TOKENIZER_FILES`); None in manifests of bertflow 0.2 and earlier
    tokenizer_sha256: str | None = None
    # sha256 over config.json (activation, norm epsilon, position embeddings), and the model's own .py
    # files when its code is trusted; None in manifests of bertflow 0.2 and earlier
    config_sha256: str | None = None


class FittedRef(BaseModel):
    """A trained head (`--pooler`) or fitted reduction (`--reduction`): where it is, its weights' sha256."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    uri: str
    sha256: str


class ResolvedConfig(BaseModel):
    """EmbedConfig with every default filled in from the model; what the manifest records."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    model: ModelRef
    pooling: Pooling
    # put before every text; include_prompt False (the model's Pooling config): its tokens are left out of
    # mean/max, as sentence-transformers does
    prompt: str | None = None
    prompt_name: str | None = None
    include_prompt: bool = True
    dimensions: dict[str, int]  # width of each pooling's vector, in pooling order
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
    exclude_special: bool = False
    long_text: LongText = "truncate"
    chunk_tokens: int | None = None  # set when long_text is "chunk"
    stride: int = 0
    aggregate: Aggregate = "none"
    pooler: FittedRef | None = None
    reduction: FittedRef | None = None
    truncate_dim: int | None = None  # the vectors keep their first N dimensions (renormalized when normalizing)
    storage_block: str | None = None
    # How each part row's `text_hash` is computed (`bertflow.io.reuse.TEXT_HASH`); None: the rows carry
    # none (outputs of bertflow 0.2 and earlier, which cannot be reused).
    text_hash: str | None = None

    @property
    def dimension(self) -> int:
        """Width of the first (for one pooling: the only) vector column."""
        return self.dimensions[self.pooling[0]]

    @property
    def token_level(self) -> bool:
        return self.pooling == (TOKEN_LEVEL,)

    @property
    def chunked(self) -> bool:
        return self.long_text == "chunk"

    @property
    def aggregated(self) -> bool:
        """Whether a documents/ part (one row per document) is written beside each chunk part."""
        return self.aggregate != "none"

    def embedding_columns(self) -> dict[str, int]:
        """Vector column name -> width, as written; empty for token-level output."""
        if self.token_level:
            return {}
        return {embedding_column(self.pooling, p): self.dimensions[p] for p in self.pooling}

    def columns(self) -> list[str]:
        """The columns of a part, in order."""
        vectors = list(TOKEN_COLUMNS) if self.token_level else list(self.embedding_columns())
        chunk = list(CHUNK_COLUMNS) if self.chunked else []
        hashed = ["text_hash"] if self.text_hash else []
        return ["id", *chunk, *vectors, "n_tokens", "truncated", *hashed, *self.keep]

    def document_columns(self) -> list[str]:
        """The columns of a documents/ part (`--aggregate`), in order; empty without one."""
        if not self.aggregated:
            return []
        hashed = ["text_hash"] if self.text_hash else []
        return ["id", *self.embedding_columns(), "n_tokens", "n_chunks", *hashed, *self.keep]

    def embedding_fingerprint(self) -> dict[str, object]:
        """Everything that changes a vector, most telling first: equal fingerprints, interchangeable vectors.

        `--reuse` copies rows only from outputs with an equal one. It leaves out what only shapes the
        table (columns kept, shard size) and `aggregate` (documents/ rows are recomputed from chunks).
        """
        return {
            "model_sha256": self.model.sha256,
            "tokenizer_sha256": self.model.tokenizer_sha256,
            "model_config_sha256": self.model.config_sha256,
            "pooling": pooling_label(self.pooling),
            "prompt": self.prompt,
            "include_prompt": self.include_prompt if self.prompt else None,
            "layers": list(self.layers),
            "layer_mode": self.layer_mode,
            "max_length": self.max_length,
            "long_text": self.long_text,
            "chunk_tokens": self.chunk_tokens,
            "stride": self.stride,
            "exclude_special": self.exclude_special,
            "normalize": self.normalize,
            "precision": self.precision,
            "pooler_sha256": self.pooler.sha256 if self.pooler else None,
            "reduction_sha256": self.reduction.sha256 if self.reduction else None,
            "truncate_dim": self.truncate_dim,
        }

    def output_fingerprint(self) -> dict[str, object]:
        """The settings that shape DEST: its vectors and its table. A rerun into the same DEST must match them.

        Keys keep the names and the "only when used" rule of the outputs written before, so their
        reruns still match (the embedding fingerprint is the newer, complete list).
        """
        return {
            "model_sha256": self.model.sha256,
            "pooling": pooling_label(self.pooling),
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
            **({"pooler_sha256": self.pooler.sha256} if self.pooler else {}),
            **({"reduction_sha256": self.reduction.sha256} if self.reduction else {}),
            **({"truncate_dim": self.truncate_dim} if self.truncate_dim else {}),
            **({"exclude_special": True} if self.exclude_special else {}),
            **({"tokenizer_sha256": self.model.tokenizer_sha256} if self.model.tokenizer_sha256 else {}),
            **({"text_hash": self.text_hash} if self.text_hash else {}),
            **({"prompt": self.prompt, "include_prompt": self.include_prompt} if self.prompt else {}),
            **(
                {
                    "long_text": self.long_text,
                    "chunk_tokens": self.chunk_tokens,
                    "stride": self.stride,
                    "aggregate": self.aggregate,
                }
                if self.chunked
                else {}
            ),
        }
