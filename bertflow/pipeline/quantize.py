"""The int8/uint8 ranges of a run (`--quantize int8|uint8`): found once, before any part is written,
and recorded in the run's config, so every shard, every resumed run and every query uses the same.

Where they come from, first that applies:

1. `--quantize-ranges OTHER_DEST`: the ranges another output recorded. A nightly series passes its
   first day's DEST, so all its days are quantized alike (and can reuse each other's rows).
2. DEST's own manifest, when a run resumes: the ranges its finished parts were written with.
3. Calibration: the first `CALIBRATION_ROWS` rows of SOURCE, embedded here (as the run embeds them,
   in float32), and each dimension's minimum and maximum over them (as sentence-transformers'
   `quantize_embeddings` does with calibration embeddings). Values outside are clipped.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import numpy as np

from bertflow.errors import InputError
from bertflow.io import parts
from bertflow.io.manifest import ShardJob, ShardSpec
from bertflow.model.resolve import encoder_for
from bertflow.pipeline import shard as steps
from bertflow.resolved import ResolvedConfig
from bertflow.vectors import SCALAR, calibrate

CALIBRATION_ROWS = 1000


def ranges_of(uri: str, config: ResolvedConfig) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The int8/uint8 ranges recorded in the manifest of the output `uri`, checked against this run."""
    manifest = parts.read_manifest(uri)
    if manifest is None:
        raise InputError(f"--quantize-ranges {uri}: no _manifest.json there; give a DEST written with --quantize int8")
    ranges = manifest.config.quantize_ranges
    if ranges is None:
        raise InputError(f"--quantize-ranges {uri}: that output was not quantized to int8/uint8 and records no ranges")
    if len(ranges[0]) != config.dimension:
        raise InputError(
            f"--quantize-ranges {uri}: its ranges cover {len(ranges[0])} dimensions, this run's vectors have "
            f"{config.dimension}"
        )
    return ranges


def calibration_sample(config: ResolvedConfig, plan: Sequence[ShardSpec], dest: str, rows: int) -> np.ndarray:
    """(n, D) float32 vectors of the first `rows` rows (or windows) of SOURCE, embedded as the run embeds."""
    floats = config.model_copy(update={"quantize": None})
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


def with_ranges(
    config: ResolvedConfig, plan: Sequence[ShardSpec], dest: str, ranges_from: str | None, overwrite: bool
) -> tuple[ResolvedConfig, str | None]:
    """The run's config with its int8/uint8 ranges filled in, and where they came from (None: not needed)."""
    if config.quantize not in SCALAR:
        return config, None
    if ranges_from:
        return config.model_copy(update={"quantize_ranges": ranges_of(ranges_from, config)}), f"from {ranges_from}"
    existing = None if overwrite else parts.read_manifest(dest)
    if existing is not None and existing.config.quantize == config.quantize and existing.config.quantize_ranges:
        if len(existing.config.quantize_ranges[0]) == config.dimension:  # else DEST is refused as mismatched
            return config.model_copy(update={"quantize_ranges": existing.config.quantize_ranges}), "from DEST (resumed)"
    sample = calibration_sample(config, plan, dest, CALIBRATION_ROWS)
    if len(sample) == 0:  # nothing to embed: no part holds a vector
        return config, None
    low, high = calibrate(sample)
    ranges = (tuple(low.tolist()), tuple(high.tolist()))
    return config.model_copy(update={"quantize_ranges": ranges}), f"calibrated on the first {len(sample)} rows"
