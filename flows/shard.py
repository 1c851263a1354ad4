"""embed_shard: one shard, one process: read -> tokenize -> embed -> write its part."""

from __future__ import annotations

import time

from prefect import flow
from prefect.context import TagsContext
from prefect.runtime import flow_run
from prefect.states import State
from prefect.utilities.annotations import quote

from bertflow.errors import BertflowError
from bertflow.io.manifest import ShardJob, ShardResult
from bertflow.names import SHARD_FLOW
from bertflow.pipeline import devices
from bertflow.tasks.embed import embed, note_startup, read_shard, tokenize, write_part
from bertflow.tasks.fanout import localize_model, part_written, refused
from bertflow.tasks.gpu import gpu_slot
from bertflow.tasks.lanes import run_in_lanes, shard_lanes
from bertflow.tasks.reporting import quiet_expected_errors
from bertflow.tasks.secrets import storage_from_block

quiet_expected_errors()

# Transient faults inside a shard (storage, device memory) are retried by its tasks, with backoff.
# A shard run on a worker that still fails or crashes is submitted again by the parent (a new run,
# perhaps on another host), unless it failed on bad input: then it ends in the state `BadInput`.


def _run_name() -> str:
    """`shard-3-of-20`, or `shards-3-to-5-of-20` for a run of several."""
    params = flow_run.parameters
    first = ShardJob.model_validate(params["job"])
    if not (more := params.get("more")):
        return f"shard-{first.spec.index}-of-{first.spec.count}"
    last = ShardJob.model_validate(more[-1])
    return f"shards-{first.spec.index}-to-{last.spec.index}-of-{first.spec.count}"


@flow(name=SHARD_FLOW, flow_run_name=_run_name, persist_result=False)
def embed_shard(
    job: ShardJob, on_worker: bool = False, more: list[ShardJob] | None = None
) -> ShardResult | State | None:
    """Embed the rows of one shard and write its part to DEST.

    Args:
        on_worker: the run has a process of its own (a worker, `bertflow serve`): find the model
            on this host and hold one of the host's GPU slots while the model is in use.
        more: further shards to embed in this run, after `job` (`--shards-per-run`): the process
            starts, loads and hashes the model once for all of them. A shard whose part is already in
            DEST (an earlier run of the same shards got that far) is not embedded again.
    """
    jobs = [job, *(more or [])]
    note_startup()  # the process's start-up, before any wait for a GPU slot
    if not on_worker:
        return _embed(job, on_worker) if len(jobs) == 1 else _embed_several(jobs, on_worker)
    try:
        return _embed(job, on_worker) if len(jobs) == 1 else _embed_several(jobs, on_worker)
    except BertflowError as e:
        if e.exit_code != 2:  # a fault that outlasted its retries: the parent may submit the shard again
            raise
        return refused(e)


def _embed_several(jobs: list[ShardJob], on_worker: bool) -> ShardResult | None:
    """Several shards in this process, holding the host's GPU slot (and the model) throughout, in the two
    lanes of the slot's card. A shard refused on bad input does not stop the others: the run ends with the
    first refusal once they are done (and the parent resubmits only what has no part)."""
    results: list[ShardResult | None] = []
    refusals: list[BertflowError] = []

    def one(job: ShardJob) -> None:
        try:
            if not part_written(job):
                results.append(_steps(job, on_worker, hold_slot=False))
        except BertflowError as e:
            if e.exit_code != 2:
                raise
            refusals.append(e)

    # The storage block is read, and the tasks untagged, once for all the shards (the lanes copy this context).
    with storage_from_block(jobs[0].config.storage_block), TagsContext(current_tags=set()), gpu_slot(on_worker):
        run_in_lanes(jobs, shard_lanes(jobs[0].config.device, None, holding_slot=on_worker), one, lambda j, r: None)
    if refusals:
        raise refusals[0]
    return results[-1] if results else None


def _embed(job: ShardJob, on_worker: bool) -> ShardResult:
    # The run's tags (model, pooling) are for finding runs in the UI. Its tasks go untagged: Prefect
    # takes a tag concurrency slot, with a lease, for every tagged task (~0.5 s each here).
    with storage_from_block(job.config.storage_block), TagsContext(current_tags=set()):  # credentials stay here
        return _steps(job, on_worker, hold_slot=on_worker)


def _steps(job: ShardJob, on_worker: bool, hold_slot: bool) -> ShardResult:
    """One shard's tasks, in the storage options and tags of the caller's context.

    Shard-sized data goes to the tasks `quote`d: Prefect would otherwise walk every element (every
    token id) looking for futures, seconds per task on a 10k-row shard. `return_state=False` (the
    default) selects the signature of Task.__call__ that admits quote()d arguments.
    """
    started = time.perf_counter()
    if on_worker:
        job = localize_model(job)  # the weights are hashed once per host (and file version)
    devices.check_host(job)  # a half-precision DEST's parts come from one kind of device
    text = read_shard(job)
    reading = time.perf_counter() - started
    # The model stays on the device until this process ends: hold the slot to the end. Time spent
    # waiting for the slot is not the shard's work, so it stays out of its seconds and throughput.
    with gpu_slot(hold_slot):
        started = time.perf_counter()
        tokens = tokenize(job, quote(text), return_state=False)
        vectors, stats = embed(job, quote(tokens), return_state=False)
        seconds = reading + time.perf_counter() - started
        return write_part(job, quote(text), quote(tokens), quote(vectors), seconds, stats, return_state=False)
