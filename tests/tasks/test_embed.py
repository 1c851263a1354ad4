"""The embedding run's Prefect tasks, called as the flows call them (`.fn`: no server needed)."""

from __future__ import annotations

import logging

import numpy as np
import polars as pl
import torch
import torch.nn.functional as F

from bertflow.config import EmbedConfig
from bertflow.io.manifest import ShardJob, ShardSpec
from bertflow.model.resolve import resolve_config
from bertflow.pipeline.shard import ShardText
from bertflow.tasks.embed import embed, tokenize
from tests.model.test_encoder import TEXTS


def test_embed_task_survives_injected_out_of_memory(tiny_bert, monkeypatch, caplog):
    """The Prefect task as the flow runs it; the device "runs out of memory" in attention above 2 rows."""
    config = resolve_config(EmbedConfig(model=str(tiny_bert), device="cpu", max_length=64, batch_tokens=1 << 20))
    job = ShardJob(spec=ShardSpec(index=0, count=1, pieces=(), id_kind="int"), config=config, dest="", fingerprint="")
    tokens = tokenize.fn(job, ShardText(pl.DataFrame({"id": range(len(TEXTS)), "text": TEXTS}), []))
    clean, _ = embed.fn(job, tokens)
    sdpa, calls = F.scaled_dot_product_attention, []

    def tight_memory(q, *args, **kwargs):
        calls.append(len(q))
        if len(q) > 2:
            raise torch.OutOfMemoryError("injected: CUDA out of memory")
        return sdpa(q, *args, **kwargs)

    monkeypatch.setattr(F, "scaled_dot_product_attention", tight_memory)
    with caplog.at_level(logging.WARNING):
        split, stats = embed.fn(job, tokens)
    assert max(calls) == 8 and calls.count(8) == 1  # tried whole once, then only smaller batches
    assert "cpu ran out of memory: " in caplog.text and "the rest of the shard ran at most" in caplog.text
    assert np.abs(split - clean).max() < 1e-6 and stats.seconds > 0
    assert stats.oom_splits >= 1 and stats.batch_budget is not None  # what the part's footer records
