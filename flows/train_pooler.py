"""train_pooler: train a mean_lstm pooling head on a labelled dataset, the encoder frozen."""

from __future__ import annotations

from prefect import flow

from bertflow.names import TRAIN_POOLER_FLOW
from bertflow.pipeline.pooler import PoolerReport, TrainConfig, head_config
from bertflow.tasks.train_pooler import (
    encode_states,
    evaluate_head,
    read_examples,
    resolve_encoder,
    save_pooler,
    train_head,
)


@flow(name=TRAIN_POOLER_FLOW, persist_result=False)
def train_pooler(data: str, out: str, config: TrainConfig) -> PoolerReport:
    """Train a (Bi)LSTM head on DATA's labels, compare it with plain mean pooling, save both to OUT."""
    resolved = resolve_encoder(config)
    examples = read_examples(data, config)
    states = encode_states(examples.texts, resolved)
    result = train_head(states, examples, config)
    report = evaluate_head(data, states, examples, result, config, resolved)
    return save_pooler(out, result.head, head_config(result.head, examples, config, resolved), report)
