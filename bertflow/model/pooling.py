"""Pooling strategies: token states + attention mask -> one vector per sequence.

Pure tensor code: no Prefect, no I/O. Shapes: B sequences, T tokens, H hidden size.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from bertflow.choices import HEAD_POOLINGS, LAYER_MODES, POOLINGS, LayerMode


def combine_layers(
    hidden_states: Sequence[torch.Tensor], layers: Sequence[int], mode: LayerMode = "mean"
) -> torch.Tensor:
    """Pick `layers` (negative indices into embeddings + every layer) and average or concatenate."""
    n = len(hidden_states)
    bad = [i for i in layers if not -n < i < 0]
    if bad:
        raise ValueError(f"layer {bad[0]} does not exist; this model has {n - 1} layers (use -1 .. -{n - 1})")
    picked = [hidden_states[i] for i in layers]  # each (B, T, H)
    if len(picked) == 1:
        return picked[0]
    if mode == "mean":
        return torch.stack(picked).mean(0)  # (B, T, H)
    if mode == "concat":
        return torch.cat(picked, dim=-1)  # (B, T, H * len(layers))
    raise ValueError(f"unknown layer mode {mode!r}; choose one of {', '.join(LAYER_MODES)}")


def pool_cls(h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The first token's vector ([CLS] for BERT), as `last_hidden_state[:, 0]`."""
    return h[:, 0]  # (B, H)


def pool_mean(h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Average of the real (unmasked) tokens; an all-masked row gives zeros, not NaN."""
    m = mask.unsqueeze(-1).to(h.dtype)  # (B, T, 1)
    total = (h * m).sum(1)  # (B, H)
    count = m.sum(1).clamp(min=1e-9)  # (B, 1)
    return total / count


def pool_max(h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Element-wise max over the real tokens; an all-masked row gives zeros."""
    real = mask.bool().unsqueeze(-1)  # (B, T, 1)
    out = h.masked_fill(~real, float("-inf")).amax(1)  # (B, H)
    return torch.where(real.any(1), out, torch.zeros_like(out))


def pool_mean_max(h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean and max side by side."""
    return torch.cat([pool_mean(h, mask), pool_max(h, mask)], dim=-1)  # (B, 2H)


def pool_mean_sqrt_len(h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Sum of the real tokens divided by the square root of their count (sentence-transformers)."""
    m = mask.unsqueeze(-1).to(h.dtype)  # (B, T, 1)
    return (h * m).sum(1) / m.sum(1).clamp(min=1.0).sqrt()  # (B, H)


def pool_last_token(h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The vector of the last real token of each row; an all-masked row gives zeros."""
    real = mask.bool()  # (B, T)
    positions = torch.arange(h.shape[1], device=h.device).expand_as(real)  # (B, T)
    last = torch.where(real, positions, -1).amax(1)  # (B,)
    out = h[torch.arange(h.shape[0], device=h.device), last.clamp(min=0)]  # (B, H)
    return torch.where((last >= 0).unsqueeze(-1), out, torch.zeros_like(out))


def first_last_layers(hidden_states: Sequence[torch.Tensor]) -> torch.Tensor:
    """Average of the first and the last transformer layer (hidden_states[1] and [-1]).

    Index 0 is the embedding layer, not a transformer layer; SimCSE's `avg_first_last` made
    the same choice after first using the embeddings by mistake.
    """
    if len(hidden_states) < 3:
        raise ValueError("first_last_avg needs a model with at least two transformer layers")
    return (hidden_states[1] + hidden_states[-1]) / 2  # (B, T, H)


_POOLERS = {
    "cls": pool_cls,
    "mean": pool_mean,
    "max": pool_max,
    "mean_max": pool_mean_max,
    "mean_sqrt_len": pool_mean_sqrt_len,
    "last_token": pool_last_token,
    # applied to first_last_layers(...) by the caller, which must ask the model for every layer
    "first_last_avg": pool_mean,
}


def pool(
    h: torch.Tensor,
    mask: torch.Tensor,
    pooling: str,
    head: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
) -> torch.Tensor:
    """Apply one pooling strategy by name; `mean_lstm` is concat(mean, head(h, mask))."""
    if pooling in HEAD_POOLINGS:
        if head is None:
            raise ValueError(f"pooling {pooling!r} needs a trained head (--pooler PATH)")
        return torch.cat([pool_mean(h, mask), head(h, mask)], dim=-1)  # (B, H + S)
    try:
        fn = _POOLERS[pooling]
    except KeyError:
        raise ValueError(f"unknown pooling {pooling!r}; choose one of {', '.join(POOLINGS)}") from None
    return fn(h, mask)


def output_dim(hidden: int, pooling: str, n_layers: int, mode: LayerMode) -> int:
    """Width of the pooled vector for a model of hidden size `hidden`."""
    width = hidden * (n_layers if mode == "concat" and pooling != "first_last_avg" else 1)
    return width * (2 if pooling == "mean_max" else 1)
