"""Fitted transforms of a run: trained pooling heads (`--pooler`) and reductions (`--reduction`).

Both are directories (local or `s3://`) holding safetensors weights and a JSON config; storage
only through `storage`. No Prefect. Loads are cached per process by (URI, sha256), so a shard
never reuses a file that changed under it.
"""

from __future__ import annotations

import functools
import hashlib
from dataclasses import dataclass
from typing import TypeVar

import numpy as np
import torch
from pydantic import ValidationError

from bertflow.errors import InputError
from bertflow.io import storage
from bertflow.model.heads import HeadConfig, LstmHead, head_from_bytes
from bertflow.model.reduction import Reduction, ReductionConfig, reduction_from_bytes
from bertflow.resolved import FittedRef, ResolvedConfig, fingerprint_diff
from bertflow.vectors import normalize

POOLER_WEIGHTS, POOLER_CONFIG, POOLER_REPORT = "pooler.safetensors", "pooler.json", "report.json"
REDUCTION_WEIGHTS, REDUCTION_CONFIG = "reduction.safetensors", "reduction.json"
# The embedding settings a reduction's input space depends on, with the flag that sets each.
REDUCTION_INPUT = {
    "model_sha256": "--model",
    "pooling": "--pooling",
    "pooler_sha256": "--pooler",
    "layers": "--layers",
    "layer_mode": "--layer-mode",
    "normalize": "--normalize/--no-normalize",
}


@dataclass(frozen=True)
class _Kind:
    """One kind of fitted directory: its files, the flag that names it, the command that writes it."""

    config: str
    weights: str
    flag: str
    maker: str
    what: str  # "a bertflow pooling head"
    redo: str  # "retrain"


_HEAD = _Kind(POOLER_CONFIG, POOLER_WEIGHTS, "--pooler", "train-pooler", "a bertflow pooling head", "retrain")
_REDUCTION = _Kind(REDUCTION_CONFIG, REDUCTION_WEIGHTS, "--reduction", "fit-reduction", "a bertflow reduction", "refit")
M = TypeVar("M", HeadConfig, ReductionConfig)


def _read_config(directory: str, kind: _Kind, model: type[M]) -> tuple[M, str]:
    """The directory's config, validated, and the sha256 of its weights file."""
    uri = storage.join(directory, kind.config)
    if not storage.exists(uri):
        raise InputError(
            f"{kind.flag} {directory}: no {kind.config} there; give a directory written by `bertflow {kind.maker}`"
        )
    try:
        config = model.model_validate_json(storage.read_bytes(uri))
    except ValidationError:
        raise InputError(f"{kind.flag} {directory}: {kind.config} is not {kind.what}; {kind.redo} it") from None
    weights = storage.join(directory, kind.weights)
    if not storage.exists(weights):
        raise InputError(
            f"{kind.flag} {directory}: no {kind.weights} there; {kind.redo} it with `bertflow {kind.maker}`"
        )
    return config, storage.sha256(weights)


def read_head_config(pooler: str) -> tuple[HeadConfig, str]:
    """The head's config and the sha256 of its weights."""
    return _read_config(pooler, _HEAD, HeadConfig)


def read_reduction_config(reduction: str) -> tuple[ReductionConfig, str]:
    """The reduction's config and the sha256 of its arrays."""
    return _read_config(reduction, _REDUCTION, ReductionConfig)


def _weights(directory: str, name: str, sha256: str, flag: str) -> bytes:
    data = storage.read_bytes(storage.join(directory, name))
    if hashlib.sha256(data).hexdigest() != sha256:
        raise InputError(f"{flag} {directory}: {name} changed since this run started; rerun the command")
    return data


@functools.cache
def load_head(pooler: str, sha256: str) -> LstmHead:
    config, _ = read_head_config(pooler)
    try:
        return head_from_bytes(_weights(pooler, POOLER_WEIGHTS, sha256, "--pooler"), config)
    except ValueError as e:
        raise InputError(f"--pooler {pooler}: {e}; retrain it") from None


@functools.cache
def load_reduction(reduction: str, sha256: str) -> Reduction:
    config, _ = read_reduction_config(reduction)
    try:
        return reduction_from_bytes(_weights(reduction, REDUCTION_WEIGHTS, sha256, "--reduction"), config)
    except ValueError as e:
        raise InputError(f"--reduction {reduction}: {e}; refit it") from None


def _check_head(head: HeadConfig, config: ResolvedConfig, pooler: str) -> None:
    if head.model_sha256 != config.model.sha256:
        raise InputError(
            f"--pooler {pooler} was trained on the encoder {head.model} (weights sha256 {head.model_sha256[:12]}), "
            f"not on {config.model.name} (sha256 {config.model.sha256[:12]}): embed with --model {head.model}, "
            "or train a head for this model with `bertflow train-pooler`"
        )
    if tuple(head.layers) != tuple(config.layers) or (len(head.layers) > 1 and head.layer_mode != config.layer_mode):
        raise InputError(
            f"--pooler {pooler} was trained on layers {','.join(map(str, head.layers))} ({head.layer_mode}): "
            f"pass --layers={','.join(map(str, head.layers))} --layer-mode {head.layer_mode}"
        )
    if head.max_length != config.max_length:
        raise InputError(
            f"--pooler {pooler} was trained with texts cut at {head.max_length} tokens, this run cuts at "
            f"{config.max_length}: pass --max-length {head.max_length}"
        )
    if head.input_size != config.dimension:
        raise InputError(
            f"--pooler {pooler} expects {head.input_size}-wide token states, this run gives "
            f"{config.dimension}; retrain it for these settings"
        )


def _check_reduction(red: ReductionConfig, config: ResolvedConfig, reduction: str) -> None:
    now = config.output_fingerprint()
    for key in fingerprint_diff(red.input, now, list(REDUCTION_INPUT))[:1]:
        raise InputError(
            f"--reduction {reduction} was fitted on {red.source}, embedded with {key} {red.input.get(key)!r} "
            f"(model {red.model}), this run has {now.get(key)!r}: embed with the same {REDUCTION_INPUT[key]}, "
            "or fit a reduction on output of these settings"
        )
    if red.input_dim != config.dimension:
        raise InputError(
            f"--reduction {reduction} expects {red.input_dim}-dimensional vectors, this run "
            f"makes {config.dimension}; refit it"
        )


def attach(config: ResolvedConfig, pooler: str | None, reduction: str | None) -> ResolvedConfig:
    """Check the head and the reduction against the run's settings; record them and the final dimension."""
    if pooler:
        pooler = storage.canonical(pooler)  # recorded in the manifest: absolute, usable from anywhere
        head, sha = read_head_config(pooler)
        _check_head(head, config, pooler)
        width = config.dimension + head.output_size
        config = config.model_copy(
            update={"pooler": FittedRef(uri=pooler, sha256=sha), "dimensions": {config.pooling[0]: width}}
        )
    if reduction:
        reduction = storage.canonical(reduction)
        red, sha = read_reduction_config(reduction)
        _check_reduction(red, config, reduction)
        config = config.model_copy(
            update={"reduction": FittedRef(uri=reduction, sha256=sha), "dimensions": {config.pooling[0]: red.dim}}
        )
    return config


def head_for(config: ResolvedConfig) -> LstmHead | None:
    """The run's trained pooling head, if it pools with one."""
    return load_head(config.pooler.uri, config.pooler.sha256) if config.pooler else None


def reduce_vectors(config: ResolvedConfig, vectors: np.ndarray) -> np.ndarray:
    """Apply the run's reduction, if any, to pooled (and, when normalizing, unit) vectors; normalize again.

    The reduction sees the vectors exactly as the DEST it was fitted on stores them, so with
    normalization on it gets unit vectors; the reduced vectors are then L2-normalized again.
    """
    if not config.reduction:
        return vectors
    red = load_reduction(config.reduction.uri, config.reduction.sha256)
    if len(vectors) == 0:
        return np.empty((0, red.components.shape[1]), dtype=np.float32)
    out = red.apply(vectors)  # (N, K)
    return normalize(torch.from_numpy(out)).numpy() if config.normalize else out  # in torch, as it always was


def save_head(out: str, weights: bytes, meta: bytes, report: bytes) -> None:
    """Write a head's weights and report, then its config last (storage): see `lstm_head.head_to_bytes`."""
    storage.write_atomic(storage.join(out, POOLER_WEIGHTS), weights)
    storage.write_atomic(storage.join(out, POOLER_REPORT), report)
    storage.write_atomic(storage.join(out, POOLER_CONFIG), meta)


def save_reduction(out: str, weights: bytes, meta: bytes) -> None:
    """Write a reduction's arrays, then its config last (storage): see `reduction.reduction_to_bytes`."""
    storage.write_atomic(storage.join(out, REDUCTION_WEIGHTS), weights)
    storage.write_atomic(storage.join(out, REDUCTION_CONFIG), meta)
