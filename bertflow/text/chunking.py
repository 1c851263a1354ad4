"""Token windows over long texts, and document vectors from their chunks. Pure: numpy only."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def window_bounds(n_tokens: int, content: int, stride: int) -> list[tuple[int, int]]:
    """[start, end) token ranges of at most `content` tokens; consecutive ones share `stride` tokens.

    Every token is covered; the last window ends at the last token. A text with no tokens still
    gets one (empty) window, so every document has at least one row.
    """
    if content <= 0:
        raise ValueError(f"a window must hold at least one token, got {content}")
    if not 0 <= stride < content:
        raise ValueError(f"stride {stride} must be at least 0 and less than the {content} tokens of a window")
    if n_tokens <= content:
        return [(0, n_tokens)]
    step = content - stride
    bounds = []
    start = 0
    while True:
        end = min(start + content, n_tokens)
        bounds.append((start, end))
        if end == n_tokens:
            return bounds
        start += step


def aggregate(
    vectors: np.ndarray, weights: Sequence[int] | np.ndarray, groups: Sequence[int] | np.ndarray, how: str
) -> np.ndarray:
    """One vector per group of consecutive rows: token-weighted mean or element-wise max.

    Args:
        vectors: (N, D) chunk vectors, rows of a group adjacent.
        weights: (N,) tokens per chunk, for the weighted mean.
        groups: (N,) group number per row, non-decreasing from 0.
    """
    group = np.asarray(groups)
    starts = np.flatnonzero(np.r_[True, group[1:] != group[:-1]]) if len(group) else np.zeros(0, int)
    if how == "max":
        return np.maximum.reduceat(vectors, starts, axis=0) if len(starts) else vectors[:0]
    if how == "mean":
        w = np.asarray(weights, dtype=np.float64)[:, None]  # (N, 1)
        total = np.add.reduceat(vectors * w, starts, axis=0) if len(starts) else vectors[:0]
        count = np.add.reduceat(w, starts, axis=0) if len(starts) else w[:0]
        return (total / np.maximum(count, 1e-9)).astype(np.float32)
    raise ValueError(f"unknown aggregate {how!r}; choose one of mean, max")
