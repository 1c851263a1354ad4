"""The embedding engine: texts -> token ids -> forward passes -> pooled float32 vectors.

No Prefect and no storage here: the tasks in `embed.py` wrap this.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass

import numpy as np
import torch
from tokenizers import Tokenizer

from bertflow.tasks.batching import pad_batch, token_budget_batches
from bertflow.tasks.config import Precision
from bertflow.tasks.pooling import LayerMode, Pooling, combine_layers, first_last_layers, normalize, pool

# Padded tokens per forward pass. On CPU larger batches stop paying off once the matmuls are
# big enough to keep the cores busy; on a GPU they are limited by memory, not speed.
DEFAULT_BATCH_TOKENS = {"cpu": 8192, "mps": 16384, "cuda": 65536}


@dataclass(frozen=True)
class Tokenized:
    """Token ids per row, as fed to the model (after truncation, with special tokens)."""

    ids: list[list[int]]
    n_tokens: np.ndarray  # (N,) int32
    truncated: np.ndarray  # (N,) bool


class Encoder:
    """A loaded model plus how to feed it: device, precision, length limit, batch budget."""

    def __init__(
        self,
        tokenizer,
        model: torch.nn.Module,
        *,
        device: str,
        precision: Precision,
        max_length: int,
        batch_tokens: int | None = None,
        head: torch.nn.Module | None = None,
    ) -> None:
        self.model = model
        self.device = device
        self.precision = precision
        self.max_length = max_length
        self.batch_tokens = batch_tokens or DEFAULT_BATCH_TOKENS.get(device, 8192)
        self.head = head.to(device) if head is not None else None  # trained head of pooling mean_lstm
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        self.uses_token_types = "token_type_ids" in tokenizer.model_input_names
        # A private copy: truncation settings must not leak into the shared tokenizer.
        self._tokenizer = Tokenizer.from_str(tokenizer.backend_tokenizer.to_str())
        self._tokenizer.no_padding()
        self._tokenizer.enable_truncation(max_length)

    def tokenize(self, texts: Sequence[str]) -> Tokenized:
        """Tokenize in parallel (Rust threads, GIL released); flag rows cut at max_length."""
        encodings = self._tokenizer.encode_batch_fast(list(texts))
        ids = [e.ids for e in encodings]
        n_tokens = np.fromiter((len(x) for x in ids), dtype=np.int32, count=len(ids))
        truncated = np.fromiter((bool(e.overflowing) for e in encodings), dtype=bool, count=len(ids))
        return Tokenized(ids, n_tokens, truncated)

    def embed(
        self,
        tok: Tokenized,
        *,
        pooling: Pooling,
        layers: Sequence[int] = (-1,),
        layer_mode: LayerMode = "mean",
        normalize_output: bool = False,
        on_rows: Callable[[int], None] | None = None,
    ) -> np.ndarray:
        """Pooled vectors (N, D) float32 in input order, batched by padded-token budget."""
        out: np.ndarray | None = None
        for batch in token_budget_batches(tok.n_tokens, self.batch_tokens):
            ids, mask = pad_batch([tok.ids[i] for i in batch], self.pad_id)  # (B, T) each
            pooled = self._pooled(ids, mask, pooling, layers, layer_mode)  # (B, D)
            if normalize_output:
                pooled = normalize(pooled)
            if out is None:
                out = np.empty((len(tok.ids), pooled.shape[1]), dtype=np.float32)
            out[batch] = pooled.numpy()
            if on_rows is not None:
                on_rows(len(batch))
        if out is None:
            return np.empty((0, 0), dtype=np.float32)
        return out

    def _pooled(
        self, ids: np.ndarray, mask: np.ndarray, pooling: Pooling, layers: Sequence[int], mode: LayerMode
    ) -> torch.Tensor:
        """Forward + pooling for one batch; on device OOM, split in half and retry."""
        try:
            return self._forward(ids, mask, pooling, layers, mode)
        except torch.OutOfMemoryError:
            if len(ids) == 1:
                raise
            if self.device == "cuda":
                torch.cuda.empty_cache()
            half = len(ids) // 2
            parts = []
            for sl in (slice(0, half), slice(half, None)):
                width = int(mask[sl].sum(1).max())  # trim padding the half no longer needs
                parts.append(self._pooled(ids[sl, :width], mask[sl, :width], pooling, layers, mode))
            return torch.cat(parts)

    def _to_device(self, a: np.ndarray) -> torch.Tensor:
        t = torch.from_numpy(a)
        if self.device == "cuda":
            return t.pin_memory().to(self.device, non_blocking=True)
        return t.to(self.device)

    def _forward(
        self, ids: np.ndarray, mask: np.ndarray, pooling: Pooling, layers: Sequence[int], mode: LayerMode
    ) -> torch.Tensor:
        input_ids, attention = self._to_device(ids), self._to_device(mask)
        kwargs = {"input_ids": input_ids, "attention_mask": attention}
        if self.uses_token_types:
            kwargs["token_type_ids"] = torch.zeros_like(input_ids)
        need_all = tuple(layers) != (-1,) or pooling == "first_last_avg"
        autocast = (
            torch.autocast("cpu", dtype=torch.bfloat16)
            if self.device == "cpu" and self.precision == "bf16"
            else nullcontext()
        )
        with torch.inference_mode(), autocast:
            out = self.model(**kwargs, output_hidden_states=need_all)
            if pooling == "first_last_avg":  # a layer choice of its own; --layers does not apply
                h = first_last_layers(out.hidden_states).float()  # (B, T, H)
            elif need_all:
                h = combine_layers(out.hidden_states, layers, mode).float()  # (B, T, H')
            else:
                h = out.last_hidden_state.float()  # (B, T, H)
            pooled = pool(h, attention, pooling, head=self.head)  # (B, D)
        return pooled.float().cpu()
