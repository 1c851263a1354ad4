"""Prefect tasks of `train-pooler`, each a thin wrapper over one step of `bertflow.pipeline.pooler`."""

from __future__ import annotations

import torch
from prefect import get_run_logger, task

from bertflow import progress
from bertflow.model import training
from bertflow.model.heads import HeadConfig, LstmHead
from bertflow.model.resolve import encoder_for
from bertflow.model.training import TrainResult
from bertflow.pipeline import pooler
from bertflow.pipeline.pooler import Examples, PoolerReport, TrainConfig
from bertflow.resolved import ResolvedConfig
from bertflow.tasks.policy import IN_MEMORY, RETRY


@task(**IN_MEMORY)
def resolve_encoder(config: TrainConfig) -> ResolvedConfig:
    """Read the encoder's files (not its weights into memory): defaults, fingerprint."""
    return pooler.encoder_config(config)


@task(**IN_MEMORY, **RETRY)
def read_examples(data: str, config: TrainConfig) -> Examples:
    """Read DATA's texts and labels (storage), drop rows missing either, split per class."""
    return pooler.read_examples(data, config)


@task(**IN_MEMORY)
def encode_states(texts: list[str], config: ResolvedConfig) -> list[torch.Tensor]:
    """Token states of every text from the frozen encoder (device, fp32): one (n_i, H) CPU tensor each."""
    progress.start(len(texts), 0)
    return pooler.encode_states(encoder_for(config), texts, config, on_rows=progress.advance)


@task(**IN_MEMORY)
def train_head(states: list[torch.Tensor], examples: Examples, config: TrainConfig) -> TrainResult:
    """Train the (Bi)LSTM head with a linear classifier on the train rows (CPU); stop early on validation."""
    logger = get_run_logger()
    settings = config.settings()
    progress.start(settings.epochs, 0)

    def on_epoch(stats: dict) -> None:
        logger.info(
            "epoch %(epoch)d: train loss %(train_loss).4f, validation accuracy %(validation_accuracy).4f", stats
        )
        progress.advance(1)

    return training.train_head(
        states, examples.labels, examples.split, len(examples.classes), settings, on_epoch=on_epoch
    )


@task(**IN_MEMORY)
def evaluate_head(
    data: str,
    states: list[torch.Tensor],
    examples: Examples,
    result: TrainResult,
    config: TrainConfig,
    resolved: ResolvedConfig,
) -> PoolerReport:
    """Held-out accuracy of logistic regressions on mean pooling and on mean + head features (CPU)."""
    return pooler.evaluate(data, states, examples, result, config, resolved)


@task(**IN_MEMORY, **RETRY)
def save_pooler(out: str, head: LstmHead, config: HeadConfig, report: PoolerReport) -> PoolerReport:
    """Write pooler.safetensors, report.json and pooler.json to OUT (storage)."""
    return pooler.save_pooler(out, head, config, report)
