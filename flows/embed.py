"""embed_dataset: plan SOURCE into shards, embed the ones not yet in DEST, write the manifest.

Shards run in this process, or, with `pool`, as `embed-shard` runs on that pool's workers.
"""

from __future__ import annotations

import time
from datetime import datetime, timezone
from typing import Literal, cast

from prefect import flow, get_run_logger, tags
from prefect.runtime import flow_run
from prefect.utilities.annotations import quote

from bertflow import partitions, progress
from bertflow.config import EmbedConfig, PublishConfig
from bertflow.errors import BertflowError, ShardsFailedError, one_line
from bertflow.flows.shard import embed_shard
from bertflow.io.manifest import Manifest, ShardJob, ShardResult
from bertflow.names import EMBED_FLOW
from bertflow.pipeline.dest import RunTarget
from bertflow.pipeline.report import run_tags
from bertflow.tasks.embed import (
    collect_parts,
    finalize_dest,
    note_startup,
    plan_shards,
    plan_sized_shards,
    prepare_dest,
    quantization_ranges,
    resolve_config,
    resolve_paths,
)
from bertflow.tasks.fanout import (
    DEFAULT_ATTEMPTS,
    DEFAULT_TIMEOUT,
    QUEUED_PER_SLOT,
    check_pool,
    fan_out,
    shard_wave_size,
    shards_in_a_run,
)
from bertflow.tasks.gpu import gpu_slot, in_deployment_run
from bertflow.tasks.lanes import run_in_lanes, shard_lanes
from bertflow.tasks.lease import dest_lease
from bertflow.tasks.publish import check_publish, publish_dest
from bertflow.tasks.report import report_dest
from bertflow.tasks.reporting import RunReport, quiet_expected_errors, tag_this_run
from bertflow.tasks.reuse import ReuseMismatch, open_previous, plan_reuse
from bertflow.tasks.secrets import storage_from_block

quiet_expected_errors()

# In this process a failing shard fails the run at once, as it always has; retries are for workers.
_local_shard = embed_shard.with_options(retries=0)


def _run_local(job: ShardJob) -> ShardResult:
    # In this process a shard raises on failure: it returns a state only on a worker.
    return cast(ShardResult, _local_shard(job))


def _run_name() -> str:
    """`embed-{dataset}-{partition}`: the partition this run processes, where there is one."""
    p = flow_run.parameters
    try:
        _, dest, partition = partitions.resolve(
            p["source"], p["dest"], p.get("partition"), p.get("lag_days", 1), flow_run.scheduled_start_time
        )
    except BertflowError:  # the run itself reports bad input; the name must not fail first
        dest, partition = p["dest"], p.get("partition")
    return partitions.run_name(dest, partition)


@flow(name=EMBED_FLOW, flow_run_name=_run_name, persist_result=False)
def embed_dataset(
    source: str,
    dest: str,
    config: EmbedConfig | None = None,
    overwrite: bool = False,
    pool: str | None = None,
    shard_attempts: int = DEFAULT_ATTEMPTS,
    shard_timeout: float = DEFAULT_TIMEOUT,
    shard_wave: int | None = None,
    shards_per_run: int | Literal["auto"] = "auto",
    partition: str | None = None,
    lag_days: int = 1,
    reuse: list[str] | None = None,
    reuse_mismatch: ReuseMismatch = "error",
    reuse_previous: bool = True,
    deleted_ids: bool = False,
    publish: PublishConfig | None = None,
) -> Manifest:
    """Embed every row of SOURCE into Parquet parts under DEST; rerun to resume.

    Args:
        config: how to embed (default: the bundled model with its own pooling and length).
        pool: run each shard as an `embed-shard` run on this work pool's workers (see `bertflow deploy`).
        shard_attempts: with `pool`, runs per shard: a shard run that crashed (its host died) or failed is
            submitted again until this many have failed (one that failed on bad input is not).
        shard_timeout: with `pool`, seconds to wait for all shard runs; the unfinished are then cancelled.
        shard_wave: with `pool`, at most this many shard runs submitted and not finished at once (default:
            twice what the pool runs at once: its concurrency limit, or its online workers x GPU slots per host).
        shards_per_run: with `pool`, shards embedded one after another in one run on a worker: its process
            starts, loads and hashes the model once for them all (the fixed cost of a run, split over them).
            `auto`: long runs first, single shards last, so the slots finish together (`sizing.run_sizes`).
        partition: the day (YYYY-MM-DD) filled into `{date}` in SOURCE and DEST; by default the day
            `lag_days` before the run's scheduled start, so a late or repeated run keeps its own day.
        reuse: earlier outputs (DESTs, newest first) whose rows with the same id and text are copied
            instead of embedded; they must have been embedded exactly as this run embeds.
        reuse_mismatch: "ignore" skips (with a warning) an output of `reuse` embedded otherwise.
        reuse_previous: a partitioned run also reuses the nearest partition before its own (within a
            week), when that output is complete, verifies and was embedded the same way (else it embeds
            everything and warns).
        deleted_ids: write the ids of the newest reused output that SOURCE no longer has to DEST/_deleted.parquet.
        publish: when the run is complete, publish DEST into this LanceDB table (`bertflow publish`); off by default.
    """
    started, created_at = time.perf_counter(), datetime.now(timezone.utc)
    note_startup()  # a deployed run that embeds its shards: its process's start-up, before planning or a slot
    config = config or EmbedConfig()
    # Storage credentials from a named block are loaded here, in this process, never passed along.
    with storage_from_block(config.storage_block):
        report = None
        try:
            source, dest, day, earlier = resolve_paths(source, dest, partition, lag_days, flow_run.scheduled_start_time)
            wave, per_run, lanes, held = None, None, None, in_deployment_run()
            if pool:
                check_pool(pool, source, dest, config)
                wave, per_run = shard_wave_size(pool, shard_wave), shards_in_a_run(shards_per_run)
            elif not held:  # the cards this process embeds on (checked before DEST is touched)
                lanes = shard_lanes(config.device, config.devices)
            # One writer per DEST, taken first: a run refused here leaves DEST and its artifacts untouched.
            # A deployed run that embeds its shards itself holds its host's GPU slot from here: planning may
            # load the model too (`--shard-rows auto`, `--quantize`), on the slot's card, not on card 0.
            with dest_lease(dest) as lease, gpu_slot(held and not pool):
                report = RunReport(dest)
                with progress.reporting_to(report):
                    resolved = resolve_config(config)
                    if publish is not None:
                        check_publish(publish, resolved)
                    child_tags = tag_this_run(run_tags(resolved))
                    sizing = None
                    if config.shard_rows == "auto":
                        outputs = [*(reuse or []), *(earlier if reuse_previous else [])]
                        # Enough shards for every slot of the pool (times its shards per run), or every lane here.
                        parallel = (
                            max(1, (wave or 0) // QUEUED_PER_SLOT) * (per_run or 1) if pool else len(lanes or [0])
                        )
                        resolved, plan, index, sizing = plan_sized_shards(
                            source, dest, resolved, config.shard_seconds, parallel, outputs, overwrite
                        )
                    else:
                        plan, index = plan_shards(source, resolved)
                    resolved = quantization_ranges(
                        resolved, plan, dest, config.quantize_ranges, overwrite, earlier if reuse_previous else []
                    )
                    found = open_previous(
                        dest, resolved, reuse or [], reuse_mismatch, earlier if reuse_previous else [], pool is None
                    )
                    target = RunTarget(
                        source=source,
                        dest=dest,
                        config=resolved,
                        plan=plan,
                        created_at=created_at,
                        reuse=plan_reuse(plan, quote(index), found, deleted_ids, return_state=False),
                        sizing=sizing,
                        partition=day,
                    )
                    target, results, pending = prepare_dest(target, overwrite, pool is None)
                    if pool:
                        failures = fan_out(
                            target.plan,
                            pending,
                            child_tags,
                            report.part_written,
                            shard_attempts,
                            shard_timeout,
                            wave,
                            per_run,
                        )
                        # Results come back through DEST: each part's footer, read here.
                        why = {name: str(f) for name, f in failures.items()}
                        collected, failed = collect_parts(dest, target.config, [j.spec for j in pending], why)
                        results += collected
                        if failed:
                            report.unfinished(results, failed, failures, time.perf_counter() - started, resolved)
                            raise ShardsFailedError.of(list(failed.values()), len(plan))
                    else:
                        # A deployed run (worker, `bertflow serve`) keeps the model loaded across its shards: one GPU
                        # slot (held above), its card. Otherwise every card of --devices (default all), two lanes each.
                        with tags(*child_tags):
                            lanes = lanes or shard_lanes(config.device, None, holding_slot=True)
                            results += run_in_lanes(
                                pending, lanes, _run_local, lambda j, r: report.shard_done(j.spec, r)
                            )
                    lease.check()  # a run that lost DEST to another writes no manifest
                    manifest = finalize_dest(target, results, time.perf_counter() - started)
                    report_dest(dest)
                    if publish is not None:
                        publish_dest(dest, publish)
                report.finished(manifest)
                return manifest
        except Exception as e:
            reason = one_line(e)
            if report is not None:
                report.failed(reason)
            else:
                get_run_logger().error("run failed: %s", reason)
            raise
