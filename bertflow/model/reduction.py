"""Corpus-fitted reductions of embeddings: PCA and whitening, fitted in one streaming pass.

Pure numpy: no Prefect, no I/O. N rows, D input dimension, K output dimension.
Moments are merged batch by batch (Chan et al.'s parallel update), so memory is O(D^2)
however many rows the fit reads. The covariance uses 1/(N-1), as `np.cov` does.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Literal, get_args

import numpy as np
from pydantic import BaseModel, ConfigDict
from safetensors.numpy import load as load_arrays
from safetensors.numpy import save as save_arrays

Method = Literal["pca", "whiten"]
METHODS: tuple[str, ...] = get_args(Method)
REDUCTION_FORMAT = 1
# Directions with less variance than this (relative to the largest) cannot be whitened stably.
RANK_TOLERANCE = 1e-9


@dataclass(frozen=True)
class Moments:
    """Row count, mean (D,) and centered scatter matrix (D, D) of the rows seen so far, float64."""

    n: int
    mean: np.ndarray
    scatter: np.ndarray

    @classmethod
    def empty(cls, d: int) -> Moments:
        return cls(0, np.zeros(d), np.zeros((d, d)))

    @classmethod
    def of(cls, x: np.ndarray) -> Moments:
        x = np.asarray(x, dtype=np.float64)  # (N, D)
        if len(x) == 0:
            return cls.empty(x.shape[1])
        mean = x.mean(0)
        centered = x - mean
        return cls(len(x), mean, centered.T @ centered)

    def merge(self, other: Moments) -> Moments:
        if self.n == 0:
            return other
        if other.n == 0:
            return self
        n = self.n + other.n
        delta = other.mean - self.mean  # (D,)
        mean = self.mean + delta * (other.n / n)
        scatter = self.scatter + other.scatter + np.outer(delta, delta) * (self.n * other.n / n)
        return Moments(n, mean, scatter)


class ReductionConfig(BaseModel):
    """`reduction.json`: the transform's shape and the embedding space it was fitted in."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    format_version: int = REDUCTION_FORMAT
    method: Method
    dim: int
    input_dim: int
    rows: int
    explained_variance: float  # fraction of the total variance the kept directions carry
    source: str  # the DEST it was fitted on
    # The fitted DEST's settings that shape its vectors; an embed run must match them.
    model: str
    input: dict[str, object]


@dataclass(frozen=True)
class Reduction:
    """y = (x - mean) @ components: (N, D) -> (N, K)."""

    mean: np.ndarray  # (D,)
    components: np.ndarray  # (D, K)

    def apply(self, x: np.ndarray) -> np.ndarray:
        return ((np.asarray(x, dtype=np.float64) - self.mean) @ self.components).astype(np.float32)  # (N, K)


def fit(moments: Moments, method: Method, dim: int) -> tuple[Reduction, float]:
    """The top-`dim` principal directions (scaled to unit variance for `whiten`); (reduction, explained)."""
    if method not in METHODS:
        raise ValueError(f"unknown reduction method {method!r}; choose one of {', '.join(METHODS)}")
    d = len(moments.mean)
    if not 0 < dim <= d:
        raise ValueError(f"--dim {dim} must be between 1 and the embeddings' dimension {d}")
    if moments.n < 2:
        raise ValueError(f"cannot fit on {moments.n} rows; embed more rows first")
    cov = moments.scatter / (moments.n - 1)  # (D, D)
    values, vectors = np.linalg.eigh(cov)  # ascending
    values, vectors = values[::-1], vectors[:, ::-1]
    rank = int((values > values[0] * RANK_TOLERANCE).sum()) if values[0] > 0 else 0
    if dim > rank:
        raise ValueError(
            f"--dim {dim}: the {moments.n} rows span only {rank} directions; use --dim {rank} or fewer, "
            "or fit on more rows"
        )
    vectors = vectors[:, :dim].copy()  # (D, K)
    # eigh's signs are arbitrary: make each direction's largest entry positive, so refits agree.
    flip = np.sign(vectors[np.abs(vectors).argmax(0), np.arange(dim)])
    vectors *= flip
    if method == "whiten":
        vectors /= np.sqrt(values[:dim])
    explained = float(values[:dim].sum() / values.clip(min=0).sum())
    return Reduction(moments.mean.copy(), vectors), explained


def reduction_to_bytes(reduction: Reduction, config: ReductionConfig) -> tuple[bytes, bytes]:
    """(safetensors arrays, JSON config) of a reduction."""
    weights = save_arrays(
        {"mean": np.ascontiguousarray(reduction.mean), "components": np.ascontiguousarray(reduction.components)}
    )
    return weights, (json.dumps(config.model_dump(mode="json"), indent=2) + "\n").encode()


def reduction_from_bytes(weights: bytes, config: ReductionConfig) -> Reduction:
    arrays = load_arrays(weights)
    reduction = Reduction(arrays["mean"], arrays["components"])
    if reduction.components.shape != (config.input_dim, config.dim) or reduction.mean.shape != (config.input_dim,):
        raise ValueError(f"arrays of shape {reduction.components.shape} do not match reduction.json")
    return reduction
