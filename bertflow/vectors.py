"""What is done to finished vectors: L2 normalisation (every vector goes through `normalize` when
normalizing is on), Matryoshka truncation, and scalar or binary quantization with its inverse.

Quantization follows sentence-transformers' `quantize_embeddings`, so its outputs are interchangeable:
int8/uint8 map each dimension's calibrated range [min, max] onto 256 equal buckets; binary/ubinary keep one
bit per dimension (value > 0), packed 8 to a byte, big-endian (`np.packbits`), binary offset by -128.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeVar

import numpy as np
import torch
import torch.nn.functional as F

from bertflow.choices import PACKED_QUANTIZE, stored_dtype, stored_width

T = TypeVar("T", torch.Tensor, np.ndarray)
# (2, D): each dimension's [min, max]; as `calibrate` returns them or as the manifest records them
Ranges = np.ndarray | Sequence[Sequence[float]]


def normalize(x: T) -> T:
    """L2-normalize rows; a zero row stays zero. A tensor stays on its device; an array is computed in numpy."""
    if isinstance(x, np.ndarray):
        return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)
    return F.normalize(x, p=2, dim=-1)


def truncate(x: np.ndarray, dim: int | None, renormalize: bool) -> np.ndarray:
    """The first `dim` dimensions of each row (Matryoshka), L2-normalized again when `renormalize`; as is without `dim`."""
    if dim is None or dim >= x.shape[-1]:
        return x
    head = np.ascontiguousarray(x[..., :dim])
    return normalize(head) if renormalize else head


def calibrate(x: np.ndarray) -> np.ndarray:
    """(2, D) float32: each dimension's min and max over the rows of `x` (N, D)."""
    if len(x) == 0:
        raise ValueError("no vectors to calibrate quantization ranges on")
    return np.stack([x.min(axis=0), x.max(axis=0)]).astype(np.float32)


def _steps(ranges: Ranges) -> tuple[np.ndarray, np.ndarray]:
    r = np.asarray(ranges, dtype=np.float32)
    starts = r[0]
    steps = (r[1] - starts) / 255
    return starts, np.where(steps == 0, np.float32(1.0), steps)  # a constant dimension maps to its start


def quantize(x: np.ndarray, how: str | None, ranges: Ranges | None = None) -> np.ndarray:
    """(N, D) float -> (N, stored_width) int8 or uint8; `x` as is when `how` is None.

    int8/uint8 need the calibrated `ranges` (see `calibrate`); values outside them are clipped.
    """
    if how is None:
        return x
    if len(x) == 0:  # a part whose rows were all rejected: no values, the stored width all the same
        return np.zeros((0, stored_width(x.shape[-1], how)), stored_dtype(how))
    if how in PACKED_QUANTIZE:
        bits = np.packbits(x > 0, axis=-1)
        return (bits.astype(np.int16) - 128).astype(np.int8) if how == "binary" else bits
    if ranges is None or np.shape(ranges) != (2, x.shape[-1]):
        raise ValueError(f"{how} quantization needs ranges of shape (2, {x.shape[-1]})")
    starts, steps = _steps(ranges)
    levels = np.clip(np.floor((x - starts) / steps), 0, 255)  # bucket 0..255
    return (levels - 128).astype(np.int8) if how == "int8" else levels.astype(np.uint8)


def dequantize(q: np.ndarray, how: str, ranges: Ranges | None = None, dim: int | None = None) -> np.ndarray:
    """The float vectors a quantized block stands for: the middle of each value's bucket within its
    dimension's range (int8/uint8), or ±1 per bit (binary/ubinary; `dim` drops the padding bits of the last byte)."""
    if how in PACKED_QUANTIZE:
        raw = q.astype(np.int16) + 128 if how == "binary" else q
        bits = np.unpackbits(raw.astype(np.uint8), axis=-1)
        bits = bits[..., :dim] if dim is not None else bits
        return bits.astype(np.float32) * 2 - 1
    if ranges is None:
        raise ValueError(f"{how} vectors need the ranges they were quantized with")
    starts, steps = _steps(ranges)
    levels = q.astype(np.float32) + (128 if how == "int8" else 0)
    return starts + (levels + 0.5) * steps


_POPCOUNT = np.array([bin(i).count("1") for i in range(256)], dtype=np.uint8)


def hamming(q: np.ndarray, query: np.ndarray) -> np.ndarray:
    """(N,) bits that differ between each packed row of `q` (N, B) and the packed `query` (B,)."""
    diff = np.bitwise_xor(q.view(np.uint8), query.view(np.uint8))
    return _POPCOUNT[diff].sum(axis=-1, dtype=np.int32)
