"""Prefect tasks of an embedding run, each a thin wrapper over one library call.

Names are the functions' names; retries (see `policy`) only where a retry can help. Progress
goes through `bertflow.progress`, which the CLI draws and the parent run's artifact shows.
"""

from __future__ import annotations

import time
from dataclasses import replace
from datetime import datetime

from prefect import get_run_logger, task

from bertflow import heap, partitions, processes, progress
from bertflow.config import EmbedConfig
from bertflow.io import sources, storage
from bertflow.io.manifest import REJECTS_NAME, Manifest, ShardJob, ShardResult, ShardSizing, ShardSpec
from bertflow.io.reuse import IdIndex
from bertflow.model import cards, resolve
from bertflow.model.busy import BusySampler
from bertflow.model.encoder import Encoder
from bertflow.model.loading import pick_device
from bertflow.model.resolve import loaded_encoder
from bertflow.pipeline import dest as dest_
from bertflow.pipeline import devices, quantize, shard, sizing
from bertflow.pipeline.dest import RunTarget
from bertflow.pipeline.engine_stats import EngineStats
from bertflow.pipeline.previous import previous_partitions
from bertflow.pipeline.report import reuse_text
from bertflow.pipeline.shard import ShardText, ShardTokens, Vectors
from bertflow.resolved import ResolvedConfig
from bertflow.tasks.gpu import host_key, in_deployment_run
from bertflow.tasks.policy import IN_MEMORY, RETRY
from bertflow.tasks.reporting import run_logger

# A worker's shard-run process's start-up, told to the part of the first shard it writes.
_STARTUP = processes.StartUp()
# Part name -> seconds its steps spent getting the model onto the device (CUDA's start, reading the weights).
_LOADS: dict[str, float] = {}


def _encoder(job: ShardJob) -> Encoder:
    """The process's model for the shard (`encoder_for`), noting the time when this call had to load it."""
    encoder, seconds = loaded_encoder(job.config)
    if seconds:
        _LOADS[job.spec.name] = _LOADS.get(job.spec.name, 0.0) + seconds
    return encoder


def note_startup() -> None:
    """A worker's shard-run process: note how long it took to get here (its start, imports), once; called
    as its run begins, before it waits for a GPU slot (waiting is not start-up)."""
    if in_deployment_run():  # a run that plans and embeds in one process: its start-up is not a shard's
        _STARTUP.note()


@task(**IN_MEMORY)
def resolve_config(config: EmbedConfig) -> ResolvedConfig:
    """Read the model's files (not its weights into memory) to fill every default."""
    return resolve.resolve_config(config)


@task(**IN_MEMORY, **RETRY)
def plan_shards(source: str, config: ResolvedConfig) -> tuple[list[ShardSpec], IdIndex]:
    """Read SOURCE's ids and layout (storage) and split it into shards; index the ids by shard."""
    return sources.plan_source(
        source,
        id_column=config.id_column,
        text_column=config.text_column,
        keep=config.keep,
        shard_rows=config.shard_rows,
    )


@task(**IN_MEMORY, **RETRY)
def plan_sized_shards(
    source: str,
    dest: str,
    config: ResolvedConfig,
    target_seconds: float,
    parallel: int,
    outputs: list[str],
    overwrite: bool,
) -> tuple[ResolvedConfig, list[ShardSpec], IdIndex, ShardSizing]:
    """`--shard-rows auto`: `plan_shards` with shards sized to take about `target_seconds` each
    (`bertflow.pipeline.sizing`); the config with that size, and how it was chosen."""
    sizer = sizing.Sizer(config, dest, target_seconds, parallel, outputs, overwrite)
    chosen: list[ShardSizing] = []

    def size(split: sources.Split) -> int:
        chosen.append(sizer.size(split))
        return chosen[-1].shard_rows

    plan, index = sources.plan_source(
        source, id_column=config.id_column, text_column=config.text_column, keep=config.keep, shard_rows=size
    )
    get_run_logger().info(
        "--shard-rows auto: %d rows per shard, %d shards (about %.0f s each; rate %s)",
        chosen[0].shard_rows, len(plan), target_seconds, chosen[0].origin,
    )  # fmt: skip
    return config.model_copy(update={"shard_rows": chosen[0].shard_rows}), plan, index, chosen[0]


@task(**IN_MEMORY, **RETRY)
def quantization_ranges(
    config: ResolvedConfig,
    plan: list[ShardSpec],
    dest: str,
    ranges_from: str | None,
    overwrite: bool,
    earlier: list[str],
) -> ResolvedConfig:
    """`--quantize int8|uint8`: the ranges every shard quantizes with, from another output, DEST's manifest,
    the partition before or a calibration sample embedded here (`bertflow.pipeline.quantize`); the config
    as is otherwise."""
    config, origin = quantize.with_ranges(config, plan, dest, ranges_from, overwrite, earlier)
    if origin is not None:
        get_run_logger().info("%s ranges %s", config.quantize, origin)
    return config


@task(**IN_MEMORY, **RETRY)
def prepare_dest(
    target: RunTarget, overwrite: bool, local: bool = True
) -> tuple[RunTarget, list[ShardResult], list[ShardJob]]:
    """Check DEST (storage) against this run, clear it on overwrite, mark it running; return the target (in
    the format of an older DEST it continues), finished parts and the jobs of the shards still to embed.
    `local`: the shards run in this process, not on a pool's workers."""
    target, done, pending = dest_.prepare(target, overwrite, local)
    if target.reuse is not None and target.reuse.previous and not target.config.text_hash:
        get_run_logger().warning(
            "%s was begun by bertflow 0.2 or earlier, without text hashes: this run continues it so, and embeds "
            "every row (--overwrite starts it over and reuses)",
            target.dest,
        )
    total = sum(s.rows for s in target.plan)
    progress.start(total, total - sum(j.spec.rows for j in pending))
    if done:
        get_run_logger().info(
            "resuming: %d of %d shards already complete in %s", len(done), len(target.plan), target.dest
        )
    return target, done, pending


@task(**IN_MEMORY)
def resolve_paths(
    source: str, dest: str, partition: str | None, lag_days: int, scheduled: datetime
) -> tuple[str, str, str | None, list[str]]:
    """SOURCE and DEST of this run with `{date}` filled in, the day (None when unpartitioned), and the DESTs
    of the partitions before it, nearest first: where a scheduled run looks for an output to reuse."""
    source_now, dest_now, day = partitions.resolve(source, dest, partition, lag_days, scheduled)
    return source_now, dest_now, day, [] if day is None else previous_partitions(dest, day)


@task(**IN_MEMORY, **RETRY)
def read_shard(job: ShardJob) -> ShardText:
    """Read one shard's rows from SOURCE (storage, only the needed columns); set aside null texts; under
    --reuse, read the rows of earlier outputs it may copy. First, hand back what the shard before freed."""
    note_startup()  # a shard run's first shard on a worker, if its flow did not note it already
    heap.trim()
    return shard.read_text(job)


@task(**IN_MEMORY)
def tokenize(job: ShardJob, text: ShardText) -> ShardTokens:
    """Tokenize with the model's fast tokenizer (CPU threads): truncated, in windows, or per token; rows
    an earlier output holds are set aside, not fed to the model."""
    return shard.tokenize(_encoder(job), text, job.config)


@task(**IN_MEMORY, **RETRY)
def embed(job: ShardJob, tokens: ShardTokens) -> tuple[Vectors, EngineStats]:
    """Forward passes and pooling per batch on the device (the model loaded once per process); and what
    the engine did: its seconds (for throughput and the time `--reuse` saves), padding, memory splits."""
    encoder = _encoder(job)
    # One lane of the card computes at a time (the other reads, tokenizes or writes); the card's
    # utilisation is sampled while this shard's batches run (CUDA).
    with cards.turn(encoder.device), BusySampler(encoder.device) as busy:
        started = time.perf_counter()
        vectors = shard.embed(encoder, tokens, job.config, on_documents=progress.advance)
    load = _LOADS.pop(job.spec.name, None)  # None: this process had the model before the shard began
    stats = EngineStats.of(encoder, time.perf_counter() - started, load or 0.0, load is None, busy.share)
    if encoder.memory.splits:
        run_logger(__name__).warning(
            "%s ran out of memory: %d batches split; the rest of the shard ran at most %d padded tokens per "
            "forward pass (--batch-tokens %d starts there)",
            encoder.device, encoder.memory.splits, encoder.memory.budget, encoder.memory.budget,
        )  # fmt: skip
    return vectors, stats


@task(**IN_MEMORY, **RETRY)
def write_part(
    job: ShardJob, text: ShardText, tokens: ShardTokens, vectors: Vectors, seconds: float, stats: EngineStats
) -> ShardResult:
    """Write the shard's part (and documents/ part under --aggregate) to DEST (storage), atomically."""
    picked = pick_device(job.config.device)
    device, fell_back = devices.device_label(job.config, picked, cards.label(picked))
    if fell_back:
        get_run_logger().warning("%s: %s", job.spec.name, fell_back)
    startup = _STARTUP.take()  # the process's start-up is counted once, on the part of its first shard
    if startup is not None:
        stats = replace(stats, startup_seconds=round(startup, 3))
    result = shard.write_part(job, text, tokens, vectors, seconds, stats, device, host_key())
    rate = max(seconds, 1e-9)
    chunks = f", {result.rows} chunks" if job.config.chunked else ""
    get_run_logger().info(
        "%s: %d documents%s, %d tokens in %.1fs (%.0f documents/s, %.0f tokens/s) on %s%s%s",
        job.spec.name,
        result.documents,
        chunks,
        result.tokens,
        seconds,
        result.documents / rate,
        result.tokens / rate,
        device,
        f", {result.truncated} truncated at {job.config.max_length} tokens" if result.truncated else "",
        f", {result.reused} of {result.rows} rows reused from an earlier output" if result.reused else "",
    )
    return result


@task(**IN_MEMORY, **RETRY)
def collect_parts(
    dest: str, config: ResolvedConfig, pending: list[ShardSpec], failed: dict[str, str]
) -> tuple[list[ShardResult], dict[str, str]]:
    """Read the parts that shard runs on workers wrote to DEST (storage); return them and every failed shard."""
    return dest_.collect(dest, config, pending, failed)


@task(**IN_MEMORY, **RETRY)
def finalize_dest(target: RunTarget, results: list[ShardResult], seconds: float) -> Manifest:
    """Write _rejects.parquet, then the complete manifest last (storage)."""
    config = target.config
    manifest = dest_.finalize(target, results, seconds, pick_device(config.device))
    totals, logger = manifest.totals, get_run_logger()
    assert totals is not None
    if totals.truncated:
        logger.warning(
            "%d documents were longer than %d tokens and were truncated", totals.truncated, config.max_length
        )
    if totals.rejected:
        logger.warning(
            "%d documents were not embedded (see %s)", totals.rejected, storage.join(target.dest, REJECTS_NAME)
        )
    if manifest.reuse is not None:
        logger.info("%s", reuse_text(manifest.reuse))
    return manifest
