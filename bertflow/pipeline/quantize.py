"""The int8/uint8 ranges of a run (`--quantize int8|uint8`): found once, before any part is written,
and recorded in the run's config, so every shard, every resumed run and every query uses the same.

Where they come from, first that applies:

1. `--quantize-ranges OTHER_DEST`: the ranges another output embedded the same way recorded.
2. DEST's own manifest, when a run resumes: the ranges its finished parts were written with.
3. A partitioned run: the nearest earlier partition quantized the same way (within a week, as
   `reuse_previous` looks), so a nightly series keeps one set: its days compare and reuse rows.
4. Calibration: the first `CALIBRATION_ROWS` texts of SOURCE (windows under `--long-text chunk`),
   embedded here as the run embeds them (fp16 in fp32 on a parent without CUDA),
   and each dimension's minimum and maximum over them (as sentence-transformers'
   `quantize_embeddings` does with calibration embeddings). Values outside are clipped.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import numpy as np
import torch

from bertflow.choices import SCALAR_QUANTIZE
from bertflow.errors import InputError
from bertflow.io import parts
from bertflow.io.manifest import Manifest, ShardJob, ShardSpec
from bertflow.model.resolve import encoder_for
from bertflow.pipeline import shard as steps
from bertflow.resolved import ResolvedConfig, fingerprint_diff
from bertflow.vectors import calibrate

CALIBRATION_ROWS = 1000
# Settings two outputs may differ in and still share ranges: how they are stored, and the matmul precision.
_SHAREABLE = frozenset({"quantize", "quantize_ranges_sha256", "precision"})
Ranges = tuple[tuple[float, ...], tuple[float, ...]]


def _mismatch(manifest: Manifest, config: ResolvedConfig) -> str | None:
    """Why `manifest`'s ranges cannot quantize this run's vectors (None: they can)."""
    ranges = manifest.config.quantize_ranges
    if ranges is None:
        return "that output was not quantized to int8/uint8 and records no ranges"
    if len(ranges[0]) != config.dimension:
        return f"its ranges cover {len(ranges[0])} dimensions, this run's vectors have {config.dimension}"
    theirs, ours = manifest.embedding_fingerprint or {}, config.embedding_fingerprint()
    differ = [k for k in fingerprint_diff(theirs, ours) if k not in _SHAREABLE]
    if differ:
        key = differ[0]
        return f"it was embedded with {key} {theirs.get(key)!r}, this run with {ours.get(key)!r}"
    return None


def ranges_of(uri: str, config: ResolvedConfig) -> Ranges:
    """The int8/uint8 ranges recorded in the manifest of the output `uri`, checked against this run."""
    manifest = parts.read_manifest(uri)
    if manifest is None:
        raise InputError(f"--quantize-ranges {uri}: no _manifest.json there; give a DEST written with --quantize int8")
    why = _mismatch(manifest, config)
    if why is not None:
        raise InputError(f"--quantize-ranges {uri}: {why}; give an output embedded like this run")
    assert manifest.config.quantize_ranges is not None  # _mismatch checked
    return manifest.config.quantize_ranges


def calibration_sample(config: ResolvedConfig, plan: Sequence[ShardSpec], dest: str, rows: int) -> np.ndarray:
    """(n, D) float32 vectors of SOURCE's first `rows` texts (or windows), embedded as the run embeds them.

    In this process (a fan-out parent may have no GPU): fp16 runs in fp32 where there is no CUDA.
    """
    floats = config.model_copy(update={"quantize": None})
    if floats.precision == "fp16" and not torch.cuda.is_available():
        floats = floats.model_copy(update={"precision": "fp32"})
    encoder = encoder_for(floats)
    blocks, need = [], rows
    for spec in plan:
        if need <= 0:
            break
        text = steps.read_text(ShardJob(spec=spec, config=floats, dest=dest, fingerprint=""))
        text = replace(text, frame=text.frame.head(need), hashes=None, previous=None)
        vectors = steps.embed(encoder, steps.tokenize(encoder, text, floats), floats)
        assert isinstance(vectors, np.ndarray)  # one pooling (config checks)
        blocks.append(vectors[:need])
        need -= len(blocks[-1])
    return np.concatenate(blocks) if blocks else np.zeros((0, config.dimension), np.float32)


def _earlier_ranges(config: ResolvedConfig, earlier: Sequence[str]) -> tuple[Ranges, str] | None:
    """The ranges of the nearest earlier partition quantized like this run, and its DEST."""
    for uri in earlier:
        manifest = parts.read_manifest(uri)
        if manifest is not None and manifest.config.quantize == config.quantize and _mismatch(manifest, config) is None:
            assert manifest.config.quantize_ranges is not None
            return manifest.config.quantize_ranges, uri
    return None


def with_ranges(
    config: ResolvedConfig,
    plan: Sequence[ShardSpec],
    dest: str,
    ranges_from: str | None,
    overwrite: bool,
    earlier: Sequence[str] = (),
) -> tuple[ResolvedConfig, str | None]:
    """The run's config with its int8/uint8 ranges filled in, and where they came from (None: not needed).

    Args:
        earlier: a partitioned run's earlier partitions, nearest first: the nearest quantized like this
            run lends its ranges, so a nightly series keeps one set (its days compare, and reuse each other).
    """
    if config.quantize not in SCALAR_QUANTIZE:
        return config, None
    if ranges_from:
        return config.model_copy(update={"quantize_ranges": ranges_of(ranges_from, config)}), f"from {ranges_from}"
    existing = None if overwrite else parts.read_manifest(dest)
    if existing is not None and existing.config.quantize == config.quantize and existing.config.quantize_ranges:
        if len(existing.config.quantize_ranges[0]) == config.dimension:  # else DEST is refused as mismatched
            return config.model_copy(update={"quantize_ranges": existing.config.quantize_ranges}), "from DEST (resumed)"
    found = _earlier_ranges(config, earlier)
    if found is not None:
        return config.model_copy(update={"quantize_ranges": found[0]}), f"from the partition before, {found[1]}"
    sample = calibration_sample(config, plan, dest, CALIBRATION_ROWS)
    if len(sample) == 0:  # nothing to embed: no part holds a vector
        return config, None
    if not np.isfinite(sample).all():
        raise InputError(
            "--quantize: the calibration vectors hold NaN or infinity (the model overflows at this precision); "
            "embed with --precision bf16 or fp32"
        )
    low, high = calibrate(sample)
    ranges = (tuple(low.tolist()), tuple(high.tolist()))
    return config.model_copy(update={"quantize_ranges": ranges}), f"calibrated on the first {len(sample)} rows"
