"""The embedding engine: token ids -> forward passes -> pooled (or per-token) float32 vectors.

One forward pass serves embedding, training and search. No Prefect and no storage here.
"""

from __future__ import annotations

import functools
import itertools
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager, nullcontext
from typing import TYPE_CHECKING, TypeVar

import numpy as np
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

from bertflow.choices import Precision
from bertflow.model.fused import fused_encoder
from bertflow.model.memory import MemoryGuard
from bertflow.model.pooling import LayerMode, combine_layers, first_last_layers, pool
from bertflow.model.threads import use_cpu_threads
from bertflow.text.batching import pad_batch, token_budget_batches
from bertflow.text.tokenize import TextTokenizer, Tokenized
from bertflow.vectors import normalize

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerFast

_T = TypeVar("_T")  # what one batch's forward returns: pooled vectors, or per-row token states (see MemoryGuard)
Exclude = tuple[bool, int]  # left out of content poolings: special tokens?, how many first tokens

# Padded tokens per forward pass. On CPU each core runs its own batch (see `_run_batches`), whose
# activations should stay in cache: at 1k tokens MiniLM's FFN holds 1k x 1536 floats = 6 MB per
# core; at 8k every elementwise pass goes to DRAM (-20 to -30% on a 2-core EPYC, fp32). On a GPU
# batches are limited by memory, not cache.
DEFAULT_BATCH_TOKENS = {"cpu": 1024, "mps": 16384, "cuda": 65536}


# Attention kernels on CUDA: all of PyTorch's but cuDNN's, which builds an execution plan for each new
# (batch, length) shape. Token-budget batches of each night's texts are nearly all new shapes: on an
# H100, fp16/bf16 ran 3x slower with it (0.08-0.12 s against 0.03-0.04 s per 500 fresh docstrings).
_CUDA_ATTENTION = [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]

# Strategies that average or take the max over tokens: `exclude_special` leaves [CLS]/[SEP] out of them.
_CONTENT_POOLINGS = frozenset({"mean", "max", "mean_max", "mean_sqrt_len", "first_last_avg"})


class Encoder:
    """A loaded model plus how to feed it: device, precision, length limit, batch budget."""

    def __init__(
        self,
        tokenizer: PreTrainedTokenizerFast,
        model: torch.nn.Module,
        *,
        device: str,
        precision: Precision,
        max_length: int,
        batch_tokens: int | None = None,
        head: torch.nn.Module | None = None,
        fused: bool | None = None,
    ) -> None:
        """
        Args:
            fused: on CPU, run BERT-family models through `fused.FusedEncoder` (None: whenever it
                supports the model and agrees with transformers' forward; False: never).
        """
        self.model = model
        self.device = device
        self.precision = precision
        self.max_length = max_length
        self.batch_tokens = batch_tokens or DEFAULT_BATCH_TOKENS.get(device, 8192)
        self.memory = MemoryGuard(device, precision)  # batches split on out-of-memory, and the budget after
        self.padded_tokens = 0  # token positions fed to the model, padding included (real ones: tok.n_tokens)
        self.head = head.to(device) if head is not None else None  # trained head of pooling mean_lstm
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        self.uses_token_types = "token_type_ids" in tokenizer.model_input_names
        self.tokenizer = TextTokenizer(tokenizer.backend_tokenizer, max_length)
        self.special_ids = sorted(set(tokenizer.all_special_ids))
        self._fused = None
        if device == "cpu":
            use_cpu_threads()
            if fused is not False and precision in ("fp32", "bf16"):
                dtype = torch.bfloat16 if precision == "bf16" else torch.float32
                self._fused = fused_encoder(model, dtype, self.uses_token_types)
            if fused and self._fused is None:
                raise ValueError(f"no fused CPU forward for this model ({type(model).__name__}, {precision})")

    def token_states(
        self,
        tok: Tokenized,
        *,
        layers: Sequence[int] = (-1,),
        layer_mode: LayerMode = "mean",
        normalize_output: bool = False,
        on_rows: Callable[[int], None] | None = None,
    ) -> list[np.ndarray]:
        """Every token's vector, (T_i, H) float32 per row in input order, padding dropped.

        Batched, streamed and split on out-of-memory like `embed`.
        """
        out: list[np.ndarray] = [np.empty((0, 0), np.float32)] * len(tok.ids)
        forward = functools.partial(self._states, layers=layers, mode=layer_mode, normalize_output=normalize_output)
        run = functools.partial(self.memory.run, forward, join=lambda halves: [*halves[0], *halves[1]])
        for batch, rows in self._run_batches(tok, (False, 0), run):
            for i, h in zip(batch, rows):
                out[i] = h  # (T_i, H)
            if on_rows is not None:
                on_rows(len(batch))
        return out

    def embed(
        self,
        tok: Tokenized,
        *,
        pooling: str | Sequence[str],
        layers: Sequence[int] = (-1,),
        layer_mode: LayerMode = "mean",
        normalize_output: bool = False,
        on_rows: Callable[[int], None] | None = None,
        exclude_special: bool = False,
        exclude_first: int = 0,
    ) -> np.ndarray:
        """Pooled vectors (N, D) float32 in input order, batched by padded-token budget.

        Args:
            pooling: one strategy, or several pooled from the same forward pass and concatenated in order.
            exclude_special: leave special tokens ([CLS], [SEP]) out of mean and max.
            exclude_first: leave each row's first tokens out of mean and max (a prompt's, with its
                leading special tokens: sentence-transformers' `include_prompt=False`).
        """
        out: np.ndarray | None = None
        forward = functools.partial(self._forward, pooling=pooling, layers=layers, mode=layer_mode)
        run = functools.partial(self.memory.run, forward, join=torch.cat)
        for batch, pooled in self._run_batches(tok, (exclude_special, exclude_first), run):  # (B, D) each
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

    def _padded(self, tok: Tokenized, batch: np.ndarray, exclude: Exclude) -> tuple[torch.Tensor, torch.Tensor]:
        """One batch's (ids, mask) on the host, in pinned memory for a GPU's asynchronous copy."""
        ids, mask = pad_batch([tok.ids[i] for i in batch], self.pad_id)  # (B, T) each
        special, first = exclude
        if special:  # a third mask value: real but left out of content poolings, read by _forward
            mask = np.where(np.isin(ids, self.special_ids) & (mask > 0), 2, mask).astype(mask.dtype)
        if first:
            mask[:, :first] = np.where(mask[:, :first] > 0, 2, 0)
        ids_t, mask_t = torch.from_numpy(ids), torch.from_numpy(mask)
        if self.device == "cuda":
            ids_t, mask_t = ids_t.pin_memory(), mask_t.pin_memory()
        return ids_t, mask_t

    def _run_batches(
        self, tok: Tokenized, exclude: Exclude, run: Callable[[torch.Tensor, torch.Tensor], _T]
    ) -> Iterator[tuple[np.ndarray, _T]]:
        """(row indices, run(ids, mask)) per token-budget batch, in batch order.

        On a GPU one stream: a thread pads (and pins) the next batch while the model runs this one.
        On CPU one single-threaded stream per core, each taking the next batch when it is done:
        no core ever waits for another inside an op, which on 2-4 cores beats splitting every op
        across them (up to 3x in bf16 when the machine is shared; see benchmarks/throughput.py).
        """
        batches = token_budget_batches(tok.n_tokens, self.batch_tokens)
        self.padded_tokens += sum(len(b) * int(tok.n_tokens[b].max()) for b in batches)
        streams = min(torch.get_num_threads(), len(batches)) if self.device == "cpu" else 1
        if streams <= 1:
            with ThreadPoolExecutor(1, thread_name_prefix="bertflow-pad") as pool:
                ahead = deque(pool.submit(self._padded, tok, b, exclude) for b in batches[:2])
                for k, batch in enumerate(batches):
                    ids, mask = ahead.popleft().result()
                    if k + 2 < len(batches):
                        ahead.append(pool.submit(self._padded, tok, batches[k + 2], exclude))
                    yield batch, run(ids, mask)
            return

        def work(batch: np.ndarray) -> _T:
            return run(*self._padded(tok, batch, exclude))

        threads = torch.get_num_threads()
        pool = ThreadPoolExecutor(
            streams, thread_name_prefix="bertflow-stream", initializer=torch.set_num_threads, initargs=(1,)
        )
        try:
            todo = iter(batches)
            running = deque((b, pool.submit(work, b)) for b in itertools.islice(todo, 2 * streams))
            while running:
                batch, result = running.popleft()
                for b in itertools.islice(todo, 1):
                    running.append((b, pool.submit(work, b)))
                yield batch, result.result()
        finally:
            pool.shutdown(cancel_futures=True)
            torch.set_num_threads(threads)  # the streams set the process-wide count to 1

    def _hidden_states(
        self, input_ids: torch.Tensor, attention: torch.Tensor, need_all: bool
    ) -> tuple[torch.Tensor, ...]:
        """(embeddings, layer 1, ..., last layer) if `need_all`, else (last layer,); each (B, T, H)."""
        types = torch.zeros_like(input_ids) if self.uses_token_types else None
        if self._fused is not None:
            return self._fused(input_ids, attention, types, all_layers=need_all)
        kwargs = {"input_ids": input_ids, "attention_mask": attention}
        if types is not None:
            kwargs["token_type_ids"] = types
        kernels: AbstractContextManager[object]
        if self.device == "cuda":
            kernels = sdpa_kernel(_CUDA_ATTENTION)
        elif self.device == "cpu" and self.precision == "bf16":
            kernels = torch.autocast("cpu", dtype=torch.bfloat16)
        else:
            kernels = nullcontext()
        with kernels:
            out = self.model(**kwargs, output_hidden_states=need_all)
        return tuple(out.hidden_states) if need_all else (out.last_hidden_state,)

    def _to_device(self, a: np.ndarray | torch.Tensor) -> torch.Tensor:
        t = torch.from_numpy(a) if isinstance(a, np.ndarray) else a
        # To the model's own card (`cuda` alone would be the process's current one, which a GPU slot sets).
        target = next(self.model.parameters()).device if self.device == "cuda" else self.device
        if self.device == "cuda":  # from pinned memory the copy overlaps the GPU's work
            return (t if t.is_pinned() else t.pin_memory()).to(target, non_blocking=True)
        return t.to(target)

    def _states(
        self, ids: torch.Tensor, mask: torch.Tensor, layers: Sequence[int], mode: LayerMode, normalize_output: bool
    ) -> list[np.ndarray]:
        """Token vectors of one batch, (T_i, H) float32 per row, padding dropped."""
        input_ids, attention = self._to_device(ids), self._to_device(mask)
        need_all = tuple(layers) != (-1,)
        with torch.inference_mode():
            states = self._hidden_states(input_ids, attention, need_all)
            h = combine_layers(states, layers, mode) if need_all else states[-1]
            h = h.float()  # (B, T, H)
            if normalize_output:
                h = normalize(h)
            states_np = h.cpu().numpy()
        return [states_np[row, :n] for row, n in enumerate((mask > 0).sum(1).tolist())]

    def _forward(
        self,
        ids: torch.Tensor,
        mask: torch.Tensor,
        pooling: str | Sequence[str],
        layers: Sequence[int],
        mode: LayerMode,
    ) -> torch.Tensor:
        input_ids, marked = self._to_device(ids), self._to_device(mask)
        attention = (marked > 0).to(marked.dtype)  # (B, T) real tokens
        content = (marked == 1).to(marked.dtype)  # (B, T) real tokens minus special ones under exclude_special
        poolings = (pooling,) if isinstance(pooling, str) else tuple(pooling)
        need_all = tuple(layers) != (-1,) or "first_last_avg" in poolings
        with torch.inference_mode():
            states = self._hidden_states(input_ids, attention, need_all)
            pooled = []
            for p in poolings:
                if p == "first_last_avg":  # a layer choice of its own; --layers does not apply
                    h = first_last_layers(states).float()  # (B, T, H)
                elif need_all:
                    h = combine_layers(states, layers, mode).float()  # (B, T, H')
                else:
                    h = states[-1].float()  # (B, T, H)
                m = content if p in _CONTENT_POOLINGS else attention
                pooled.append(pool(h, m, p, head=self.head))  # (B, D_p)
        return torch.cat(pooled, dim=-1).float().cpu()  # (B, sum D_p)
