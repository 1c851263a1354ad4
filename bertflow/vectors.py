"""L2 normalisation, the one function every vector goes through when normalizing is on; Matryoshka truncation."""

from __future__ import annotations

from typing import TypeVar

import numpy as np
import torch
import torch.nn.functional as F

T = TypeVar("T", torch.Tensor, np.ndarray)


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
