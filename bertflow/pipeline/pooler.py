"""train-pooler as library steps: read labelled rows, encode them once, evaluate the trained head, save it.

The encoder stays frozen: its token states are computed once (fp32) and every epoch reuses them.
The training loop itself is `bertflow.model.training`; `tasks/train_pooler.py` wraps these steps.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from dataclasses import dataclass

import numpy as np
import polars as pl
import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator

from bertflow.choices import LayerMode
from bertflow.config import DEFAULT_MODEL, EmbedConfig
from bertflow.errors import InputError
from bertflow.io import sources
from bertflow.model import fitted
from bertflow.model.encoder import Encoder
from bertflow.model.heads import HeadConfig, LstmHead, head_to_bytes
from bertflow.model.resolve import resolve_config
from bertflow.model.training import (
    Split,
    TrainResult,
    TrainSettings,
    accuracy,
    fit_probe,
    head_features,
    mean_features,
    stratified_split,
)
from bertflow.progress import OnProgress
from bertflow.resolved import ResolvedConfig

# Each class needs rows in train, validation and test, and a few to learn from.
MIN_PER_CLASS = 5


class TrainConfig(BaseModel):
    """What `bertflow train-pooler` trains on and how."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    label_column: str
    text_column: str = "text"
    id_column: str = "id"
    model: str = DEFAULT_MODEL
    layers: tuple[int, ...] = (-1,)
    layer_mode: LayerMode = "mean"
    max_length: int | None = Field(default=None, gt=1)
    epochs: int = Field(default=10, gt=0)
    hidden: int = Field(default=256, gt=0)
    bidirectional: bool = False
    seed: int = 0
    batch_tokens: int | None = Field(default=None, gt=0)

    @model_validator(mode="after")
    def _columns(self) -> TrainConfig:
        if self.label_column in (self.text_column, self.id_column):
            raise ValueError(f"--label-column {self.label_column!r} is also the text or id column; name the labels")
        return self

    def settings(self) -> TrainSettings:
        return TrainSettings(epochs=self.epochs, hidden=self.hidden, bidirectional=self.bidirectional, seed=self.seed)


@dataclass(frozen=True)
class Examples:
    texts: list[str]
    labels: np.ndarray  # (N,) class index
    classes: tuple[str, ...]
    split: Split
    rejected: int  # rows without text or label


class PoolerReport(BaseModel):
    """`report.json`: held-out accuracy of logistic regressions on mean vs mean+LSTM features."""

    data: str
    label_column: str
    model: str
    model_sha256: str
    layers: list[int]
    max_length: int
    classes: dict[str, int]
    rows: dict[str, int]  # train, validation, test, rejected
    hidden: int
    bidirectional: bool
    seed: int
    epochs: int
    epochs_run: int
    best_epoch: int
    history: list[dict]
    test_accuracy: dict[str, float]  # majority, mean, mean_lstm
    probe_l2: dict[str, float]
    pooler_sha256: str | None = None


def encoder_config(config: TrainConfig) -> ResolvedConfig:
    """Read the encoder's files (not its weights into memory): defaults, fingerprint."""
    return resolve_config(
        EmbedConfig(
            model=config.model,
            pooling=("mean",),
            layers=config.layers,
            layer_mode=config.layer_mode,
            normalize=False,
            max_length=config.max_length,
            id_column=config.id_column,
            text_column=config.text_column,
            keep=(config.label_column,),
            batch_tokens=config.batch_tokens,
            precision="fp32",
        )
    )


def read_examples(data: str, config: TrainConfig) -> Examples:
    """Read DATA's texts and labels (storage), drop rows missing either, split per class."""
    plan = sources.plan_shards(
        data,
        id_column=config.id_column,
        text_column=config.text_column,
        keep=(config.label_column,),
        shard_rows=100_000,
    )
    frame = pl.concat(
        [sources.read_shard(s, config.id_column, config.text_column, (config.label_column,)) for s in plan],
        how="vertical_relaxed",
    )
    label = pl.col(config.label_column).cast(pl.String)
    usable = frame.filter(pl.col("text").is_not_null() & label.is_not_null())
    counts = Counter(usable[config.label_column].cast(pl.String).to_list())
    if len(counts) < 2:
        raise InputError(
            f"{data}: column {config.label_column!r} holds {len(counts)} distinct labels; a classifier needs at least 2"
        )
    rare = sorted(k for k, n in counts.items() if n < MIN_PER_CLASS)
    if rare:
        raise InputError(
            f"{data}: label {rare[0]!r} has {counts[rare[0]]} rows; give every label at least "
            f"{MIN_PER_CLASS} rows or drop it"
        )
    classes = tuple(sorted(counts))
    index = {c: i for i, c in enumerate(classes)}
    labels = np.array([index[v] for v in usable[config.label_column].cast(pl.String).to_list()], dtype=np.int64)
    return Examples(
        usable["text"].to_list(), labels, classes, stratified_split(labels, config.seed), len(frame) - len(usable)
    )


def encode_states(
    encoder: Encoder, texts: list[str], config: ResolvedConfig, on_rows: OnProgress | None = None
) -> list[torch.Tensor]:
    """Token states of every text from the frozen encoder (fp32): one (n_i, H) CPU tensor each.

    The same forward pass as embedding (`Encoder.token_states`), with the run's layers and no normalization.
    """
    tok = encoder.tokenizer.tokenize(texts)
    states = encoder.token_states(tok, layers=config.layers, layer_mode=config.layer_mode, on_rows=on_rows)
    return [torch.from_numpy(h) for h in states]


def evaluate(
    data: str,
    states: list[torch.Tensor],
    examples: Examples,
    result: TrainResult,
    config: TrainConfig,
    resolved: ResolvedConfig,
) -> PoolerReport:
    """Held-out accuracy of logistic regressions on mean pooling and on mean + head features (CPU)."""
    y, split = examples.labels, examples.split
    mean = mean_features(states)  # (N, H)
    both = torch.cat([mean, head_features(result.head, states)], dim=-1)  # (N, H + S)
    n = len(examples.classes)
    mean_probe, mean_acc = fit_probe(mean, y, split, n)
    both_probe, both_acc = fit_probe(both, y, split, n)
    majority = np.bincount(y[split.train], minlength=n).argmax()
    return PoolerReport(
        data=data,
        label_column=config.label_column,
        model=resolved.model.name,
        model_sha256=resolved.model.sha256,
        layers=list(resolved.layers),
        max_length=resolved.max_length,
        classes={c: int((y == i).sum()) for i, c in enumerate(examples.classes)},
        rows={
            "train": len(split.train),
            "validation": len(split.validation),
            "test": len(split.test),
            "rejected": examples.rejected,
        },
        hidden=config.hidden,
        bidirectional=config.bidirectional,
        seed=config.seed,
        epochs=config.epochs,
        epochs_run=result.epochs_run,
        best_epoch=result.best_epoch,
        history=result.history,
        test_accuracy={
            "majority": round(accuracy(np.full(len(split.test), majority), y[split.test]), 5),
            "mean": round(mean_acc, 5),
            "mean_lstm": round(both_acc, 5),
        },
        probe_l2={"mean": mean_probe.l2, "mean_lstm": both_probe.l2},
    )


def head_config(head: LstmHead, examples: Examples, config: TrainConfig, resolved: ResolvedConfig) -> HeadConfig:
    return HeadConfig(
        input_size=head.lstm.input_size,
        hidden=config.hidden,
        bidirectional=config.bidirectional,
        model=resolved.model.name,
        model_sha256=resolved.model.sha256,
        layers=resolved.layers,
        layer_mode=resolved.layer_mode,
        max_length=resolved.max_length,
        labels=examples.classes,
        seed=config.seed,
    )


def save_pooler(out: str, head: LstmHead, config: HeadConfig, report: PoolerReport) -> PoolerReport:
    """Write pooler.safetensors, report.json and pooler.json to OUT (storage)."""
    weights, meta = head_to_bytes(head, config)
    report = report.model_copy(update={"pooler_sha256": hashlib.sha256(weights).hexdigest()})
    fitted.save_head(out, weights, meta, (json.dumps(report.model_dump(mode="json"), indent=2) + "\n").encode())
    return report
