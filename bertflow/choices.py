"""The named choices of a run (devices, precisions, poolings, long-text modes...) and their parsing.

Each choice is a `Literal` plus the tuple of its valid names; `bertflow.config` validates with them.
Pure: the standard library only.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal, get_args

Device = Literal["auto", "cpu", "cuda", "mps"]
DEVICES: tuple[str, ...] = get_args(Device)
Precision = Literal["fp32", "bf16", "fp16"]
PRECISIONS: tuple[str, ...] = get_args(Precision)
LongText = Literal["truncate", "chunk"]
LONG_TEXTS: tuple[str, ...] = get_args(LongText)
Aggregate = Literal["none", "mean", "max"]
AGGREGATES: tuple[str, ...] = get_args(Aggregate)
# `--quantize`: int8/uint8 scale each dimension by calibrated ranges; binary/ubinary keep the sign bit, 8 per byte.
Quantize = Literal["int8", "uint8", "binary", "ubinary"]
QUANTIZE: tuple[str, ...] = get_args(Quantize)
SCALAR_QUANTIZE = ("int8", "uint8")  # need calibrated ranges
PACKED_QUANTIZE = ("binary", "ubinary")  # one bit per dimension, 8 to a byte
LayerMode = Literal["mean", "concat"]
LAYER_MODES: tuple[str, ...] = get_args(LayerMode)
# Strategies that need nothing but the token states (bertflow.model.pooling implements each).
PoolingName = Literal["cls", "mean", "max", "mean_max", "mean_sqrt_len", "last_token", "first_last_avg"]
POOLINGS: tuple[str, ...] = get_args(PoolingName)
# Strategies that also need a trained head (`--pooler`, see bertflow.model.heads).
HeadPooling = Literal["mean_lstm"]
HEAD_POOLINGS: tuple[str, ...] = get_args(HeadPooling)
# `--pooling none`: no pooling, one vector per token (token-level output).
TOKEN_LEVEL = "none"
# A run's pooling, parsed once: one strategy, several pooled from one forward pass (a vector column
# each, in this order), ("mean_lstm",) with a head, or ("none",) for token-level output.
Pooling = tuple[str, ...]


def one_of(kind: str, value: object, valid: Sequence[str]) -> str:
    """`value` if it is one of `valid`; else a ValueError that lists the valid names."""
    if value not in valid:
        raise ValueError(f"unknown {kind} {value!r}; choose one of {', '.join(valid)}")
    return str(value)


def parse_pooling(value: str | Sequence[str]) -> Pooling:
    """`"mean,cls"` or `["mean", "cls"]` -> ("mean", "cls"), each name checked."""
    names = tuple(p.strip() for p in (value.split(",") if isinstance(value, str) else value))
    if len(names) == 1:
        return (one_of("pooling", names[0], POOLINGS + HEAD_POOLINGS + (TOKEN_LEVEL,)),)
    for name in names:
        one_of("pooling", name, POOLINGS)
    if len(set(names)) != len(names):
        raise ValueError(f"pooling {','.join(names)!r} repeats a strategy")
    return names


def pooling_label(pooling: Pooling) -> str:
    """How manifests, fingerprints, tags and log lines write a pooling: `mean,cls,max`."""
    return ",".join(pooling)


def embedding_column(pooling: Pooling, name: str) -> str:
    """`embedding` for a single pooling, `embedding_<name>` for each of several."""
    return "embedding" if len(pooling) == 1 else f"embedding_{name}"


def stored_dtype(quantize: str | None) -> str:
    """numpy's name of the values a vector is stored as: float32, or int8/uint8 under `--quantize`."""
    return "float32" if quantize is None else ("int8" if quantize in ("int8", "binary") else "uint8")


def stored_width(dim: int, quantize: str | None) -> int:
    """Values stored per vector of `dim` dimensions: `dim`, or bytes of packed bits."""
    return (dim + 7) // 8 if quantize in PACKED_QUANTIZE else dim


# `bertflow publish --sync`: which rows of the table a publish replaces (see `bertflow.pipeline.publish`).
Sync = Literal["partition", "mirror"]
SYNCS: tuple[Sync, ...] = get_args(Sync)
