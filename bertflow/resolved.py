"""A run as resolved against its model: every default filled in; what the manifest records, as is.

`ResolvedConfig` (with the model's `ModelRef` and any `FittedRef`) comes from
`bertflow.model.resolve.resolve_config(EmbedConfig)`; its two fingerprints say which outputs a
rerun may continue and which rows `--reuse` may copy. Pure: pydantic only.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence

from pydantic import BaseModel, ConfigDict

from bertflow.choices import (
    TOKEN_LEVEL,
    Aggregate,
    Device,
    LayerMode,
    LongText,
    Pooling,
    Precision,
    Quantize,
    embedding_column,
    pooling_label,
    stored_dtype,
    stored_width,
)
from bertflow.config import CHUNK_COLUMNS, TOKEN_COLUMNS

TEXT_HASH = "blake2b-128"  # how part rows' `text_hash` is computed (`bertflow.io.reuse`): `config.text_hash`
# Output-fingerprint keys added in bertflow 0.3: outputs written before lack them (and their rows a text_hash).
ADDED_IN_0_3 = ("tokenizer_sha256", "text_hash")


def fingerprint_diff(recorded: dict[str, object], now: dict[str, object], keys: Sequence[str] = ()) -> list[str]:
    """The settings (of `keys`, default all on either side) on which two embedding fingerprints differ."""
    names = keys or list({**recorded, **now})
    return [k for k in names if recorded.get(k) != now.get(k)]


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
    devices: tuple[int, ...] | None = None  # CUDA cards of a run without --pool (None: every visible one)
    exclude_special: bool = False
    long_text: LongText = "truncate"
    chunk_tokens: int | None = None  # set when long_text is "chunk"
    stride: int = 0
    aggregate: Aggregate = "none"
    pooler: FittedRef | None = None
    reduction: FittedRef | None = None
    truncate_dim: int | None = None  # the vectors keep their first N dimensions (renormalized when normalizing)
    quantize: Quantize | None = None  # how the vectors are stored: None (float32), int8, uint8, binary, ubinary
    # int8/uint8: each dimension's [min, max] that 256 buckets span (`bertflow.vectors`), as calibrated
    quantize_ranges: tuple[tuple[float, ...], tuple[float, ...]] | None = None
    storage_block: str | None = None
    # How each part row's `text_hash` is computed (`TEXT_HASH`, see `bertflow.io.reuse`); None: the rows carry
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

    @property
    def vector_dtype(self) -> str:
        """numpy's name of the stored vector values: float32, int8 or uint8."""
        return stored_dtype(self.quantize)

    def stored_columns(self) -> dict[str, int]:
        """Vector column name -> values stored per row: the width, or bytes of packed bits (binary)."""
        return {name: stored_width(w, self.quantize) for name, w in self.embedding_columns().items()}

    def ranges_sha256(self) -> str | None:
        """Identity of the int8/uint8 calibration ranges (vectors quantized with other ranges differ)."""
        if self.quantize_ranges is None:
            return None
        return hashlib.sha256(json.dumps(self.quantize_ranges).encode()).hexdigest()

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
            "quantize": self.quantize,
            "quantize_ranges_sha256": self.ranges_sha256(),
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
            **({"quantize": self.quantize, "quantize_ranges_sha256": self.ranges_sha256()} if self.quantize else {}),
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
