"""Out of device memory: split the batch, remember a smaller budget, never retry a row that cannot fit.

A batch that runs out of memory is run as two halves (split again as needed, each without the
padding it no longer needs). The halves' size becomes the budget: later batches as big are split
before they are tried, instead of failing again, for as long as the encoder lives (`encoder_for`
makes one per step: the rest of the shard). A single row that does not fit even alone fails as a HostError, in one line:
Prefect's task retries would fail the same way, while another host may have the memory.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import torch

from bertflow.errors import HostError

_T = TypeVar("_T")  # what one batch's forward returns: pooled vectors, or per-row token states


class MemoryGuard:
    """Runs each batch's forward pass under the device's memory: `run`; `budget` and `splits` say what it did."""

    def __init__(self, device: str, precision: str) -> None:
        self.device, self.precision = device, precision
        self.budget: int | None = None  # padded tokens per pass since an out-of-memory (None: none yet)
        self.splits = 0  # batches that ran out of memory and were split

    def run(
        self,
        forward: Callable[[torch.Tensor, torch.Tensor], _T],
        ids: torch.Tensor,
        mask: torch.Tensor,
        *,
        join: Callable[[list[_T]], _T],
    ) -> _T:
        """forward(ids, mask) for one (B, T) batch; on out-of-memory, or over the budget, its halves joined."""
        rows, width = ids.shape
        if rows > 1 and self.budget is not None and rows * width > self.budget:
            return self._halves(forward, ids, mask, join)
        try:
            return forward(ids, mask)
        except torch.OutOfMemoryError:
            alone = rows == 1
        # Go on outside the `except` block: while it runs, the error's traceback keeps the failed
        # pass's frames, and with them its activations, alive on the device, so every half would
        # run out of memory too (seen on an H100: the split went down to one row and failed).
        if self.device == "cuda":
            torch.cuda.empty_cache()
        if alone:
            raise HostError(
                f"one text of {width} tokens does not fit in the free memory of {self.device} even alone "
                f"({self.precision}): lower --max-length, use --long-text chunk or a device with more memory"
            )
        self.splits += 1
        half = ((rows + 1) // 2) * width  # the larger half, untrimmed: neither half is split again unasked
        self.budget = half if self.budget is None else min(self.budget, half)
        return self._halves(forward, ids, mask, join)

    def _halves(
        self,
        forward: Callable[[torch.Tensor, torch.Tensor], _T],
        ids: torch.Tensor,
        mask: torch.Tensor,
        join: Callable[[list[_T]], _T],
    ) -> _T:
        half = len(ids) // 2
        parts: list[_T] = []
        for sl in (slice(0, half), slice(half, None)):
            width = int((mask[sl] > 0).sum(1).max())
            parts.append(self.run(forward, ids[sl, :width], mask[sl, :width], join=join))
        return join(parts)
