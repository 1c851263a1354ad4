"""Prefect tasks of `train-pooler`: read labelled rows, encode them once, train the head, evaluate, save.

The encoder stays frozen: its token states are computed once (fp32) and every epoch reuses them.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from dataclasses import dataclass

import numpy as np
import polars as pl
import torch
from prefect import get_run_logger, task
from pydantic import BaseModel, ConfigDict, Field, model_validator

from bertflow import progress
from bertflow.config import DEFAULT_MODEL, EmbedConfig, ResolvedConfig
from bertflow.errors import InputError
from bertflow.io import sources
from bertflow.model import fitted
from bertflow.model.heads import HeadConfig, LstmHead, head_to_bytes
from bertflow.model.pooling import LayerMode, combine_layers
from bertflow.model.training import (
    Split,
    TrainResult,
    TrainSettings,
    accuracy,
    fit_probe,
    head_features,
    mean_features,
    stratified_split,
    train_head,
)
from bertflow.tasks.embed import IN_MEMORY, RETRY, get_encoder
from bertflow.text.batching import pad_batch, token_budget_batches

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
    skipped: int  # rows without text or label


class PoolerReport(BaseModel):
    """`report.json`: held-out accuracy of logistic regressions on mean vs mean+LSTM features."""

    data: str
    label_column: str
    model: str
    model_sha256: str
    layers: list[int]
    max_length: int
    classes: dict[str, int]
    rows: dict[str, int]  # train, validation, test, skipped
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


@task(name="resolve_encoder", **IN_MEMORY)
def resolve_encoder(config: TrainConfig) -> ResolvedConfig:
    """Read the encoder's files (not its weights into memory): defaults, fingerprint."""
    from bertflow.model.loading import resolve_config

    return resolve_config(
        EmbedConfig(
            model=config.model,
            pooling="mean",
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


@task(name="read_examples", **IN_MEMORY, **RETRY)
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


@task(name="encode_states", **IN_MEMORY)
def encode_states(texts: list[str], config: ResolvedConfig) -> list[torch.Tensor]:
    """Token states of every text from the frozen encoder (device, fp32): one (n_i, H) CPU tensor each."""
    encoder = get_encoder(config)
    tok = encoder.tokenize(texts)
    states: list[torch.Tensor | None] = [None] * len(texts)
    need_all = tuple(config.layers) != (-1,)
    progress.start(len(texts), 0)
    for batch in token_budget_batches(tok.n_tokens, encoder.batch_tokens):
        ids, mask = pad_batch([tok.ids[i] for i in batch], encoder.pad_id)  # (B, T) each
        kwargs = {
            "input_ids": torch.from_numpy(ids).to(encoder.device),
            "attention_mask": torch.from_numpy(mask).to(encoder.device),
        }
        if encoder.uses_token_types:
            kwargs["token_type_ids"] = torch.zeros_like(kwargs["input_ids"])
        with torch.no_grad():  # not inference_mode: the head trains on these tensors
            out = encoder.model(**kwargs, output_hidden_states=need_all)
            h = (
                combine_layers(out.hidden_states, config.layers, config.layer_mode)
                if need_all
                else out.last_hidden_state
            )
        h = h.float().cpu()  # (B, T, H)
        for row, i in enumerate(batch):
            states[i] = h[row, : tok.n_tokens[i]].clone()  # (n_i, H)
        progress.advance(len(batch))
    return states


@task(name="train_head", **IN_MEMORY)
def train(states: list[torch.Tensor], examples: Examples, config: TrainConfig) -> TrainResult:
    """Train the (Bi)LSTM head with a linear classifier on the train rows (CPU); stop early on validation."""
    logger = get_run_logger()
    settings = config.settings()
    progress.start(settings.epochs, 0)

    def on_epoch(stats: dict) -> None:
        logger.info(
            "epoch %(epoch)d: train loss %(train_loss).4f, validation accuracy %(validation_accuracy).4f", stats
        )
        progress.advance(1)

    return train_head(states, examples.labels, examples.split, len(examples.classes), settings, on_epoch=on_epoch)


@task(name="evaluate_head", **IN_MEMORY)
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
        model=resolved.model,
        model_sha256=resolved.model_sha256,
        layers=list(resolved.layers),
        max_length=resolved.max_length,
        classes={c: int((y == i).sum()) for i, c in enumerate(examples.classes)},
        rows={
            "train": len(split.train),
            "validation": len(split.validation),
            "test": len(split.test),
            "skipped": examples.skipped,
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
        model=resolved.model,
        model_sha256=resolved.model_sha256,
        layers=resolved.layers,
        layer_mode=resolved.layer_mode,
        max_length=resolved.max_length,
        labels=examples.classes,
        seed=config.seed,
    )


@task(name="save_pooler", **IN_MEMORY, **RETRY)
def save_pooler(out: str, head: LstmHead, config: HeadConfig, report: PoolerReport) -> PoolerReport:
    """Write pooler.safetensors, report.json and pooler.json to OUT (storage)."""
    weights, meta = head_to_bytes(head, config)
    report = report.model_copy(update={"pooler_sha256": hashlib.sha256(weights).hexdigest()})
    fitted.save_head(out, weights, meta, (json.dumps(report.model_dump(mode="json"), indent=2) + "\n").encode())
    return report
