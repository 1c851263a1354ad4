"""Batching by padded-token budget and padding of token id lists. Pure: numpy only."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def token_budget_batches(lengths: Sequence[int] | np.ndarray, budget: int) -> list[np.ndarray]:
    """Group row indices, longest first, so each batch pads to at most `budget` tokens.

    A batch costs `len(batch) * max(length in batch)` padded tokens. Sorting by length keeps
    padding small; a single sequence longer than the budget forms a batch of its own.
    Every index appears in exactly one batch.
    """
    if budget <= 0:
        raise ValueError(f"batch token budget must be positive, got {budget}")
    lens = np.asarray(lengths, dtype=np.int64)
    order = np.argsort(-lens, kind="stable")  # longest first; ties keep input order
    batches: list[np.ndarray] = []
    start = 0
    n = len(order)
    while start < n:
        longest = max(int(lens[order[start]]), 1)
        size = max(budget // longest, 1)
        batches.append(order[start : start + size])
        start += size
    return batches


def pad_batch(ids: Sequence[Sequence[int]], pad_id: int) -> tuple[np.ndarray, np.ndarray]:
    """Right-pad token id lists into (ids, attention mask), both (B, T) int64."""
    width = max((len(x) for x in ids), default=0)
    out = np.full((len(ids), width), pad_id, dtype=np.int64)  # (B, T)
    mask = np.zeros((len(ids), width), dtype=np.int64)  # (B, T)
    for row, seq in enumerate(ids):
        out[row, : len(seq)] = seq
        mask[row, : len(seq)] = 1
    return out, mask
