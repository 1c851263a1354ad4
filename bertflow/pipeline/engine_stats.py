"""What the engine did for one shard, as its part's footer and the manifest record it."""

from __future__ import annotations

from dataclasses import dataclass

from bertflow.model.encoder import Encoder


@dataclass(frozen=True)
class EngineStats:
    """What the engine did for one shard, for its part's footer: time, padding, out-of-memory splits."""

    seconds: float = 0.0  # in forward passes and pooling
    padded_tokens: int = 0  # token positions computed, padding included
    oom_splits: int = 0
    batch_budget: int | None = None  # padded tokens per pass after an out-of-memory
    load_seconds: float = 0.0  # getting the model onto the device (0 when the process had it already)
    warm: bool = False  # the process had the model already
    startup_seconds: float = 0.0  # the process's start and imports, counted on its first shard
    gpu_busy: float | None = None  # share of `seconds` the card ran kernels; None: not measured

    @classmethod
    def of(
        cls, encoder: Encoder, seconds: float, load_seconds: float, warm: bool, gpu_busy: float | None
    ) -> EngineStats:
        memory = encoder.memory
        load = round(load_seconds, 3)
        return cls(round(seconds, 3), encoder.padded_tokens, memory.splits, memory.budget, load, warm, 0.0, gpu_busy)


def engine_fields(stats: EngineStats) -> dict[str, object]:
    """The engine's figures as PartInfo and ShardResult name them."""
    return {
        "model_seconds": stats.seconds,
        "padded_tokens": stats.padded_tokens,
        "oom_splits": stats.oom_splits,
        "batch_budget": stats.batch_budget,
        "load_seconds": stats.load_seconds,
        "warm": stats.warm,
        "startup_seconds": stats.startup_seconds,
        "gpu_busy": stats.gpu_busy,
    }
