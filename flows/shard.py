"""embed_shard: one shard, one process: read -> tokenize -> embed -> write its part."""

from __future__ import annotations

import time

from prefect import flow
from prefect.context import TagsContext
from prefect.states import State
from prefect.utilities.annotations import quote

from bertflow.errors import BertflowError
from bertflow.io.manifest import ShardJob, ShardResult
from bertflow.names import SHARD_FLOW
from bertflow.tasks.embed import embed, read_shard, tokenize, write_part
from bertflow.tasks.fanout import localize_model, refused
from bertflow.tasks.gpu import gpu_slot
from bertflow.tasks.reporting import quiet_expected_errors
from bertflow.tasks.secrets import storage_from_block

quiet_expected_errors()

# Transient faults inside a shard (storage, device memory) are retried by its tasks, with backoff.
# A shard run on a worker that still fails or crashes is submitted again by the parent (a new run,
# perhaps on another host), unless it failed on bad input: then it ends in the state `BadInput`.


@flow(name=SHARD_FLOW, flow_run_name="shard-{job.spec.index}-of-{job.spec.count}", persist_result=False)
def embed_shard(job: ShardJob, on_worker: bool = False) -> ShardResult | State:
    """Embed the rows of one shard and write its part to DEST.

    Args:
        on_worker: the run has a process of its own (a worker, `bertflow serve`): find the model
            on this host and hold one of the host's GPU slots while the model is in use.
    """
    if not on_worker:
        return _embed(job, on_worker)
    try:
        return _embed(job, on_worker)
    except BertflowError as e:
        if e.exit_code != 2:  # a fault that outlasted its retries: the parent may submit the shard again
            raise
        return refused(e)


def _embed(job: ShardJob, on_worker: bool) -> ShardResult:
    started = time.perf_counter()
    # The run's tags (model, pooling) are for finding runs in the UI. Its tasks go untagged: Prefect
    # takes a tag concurrency slot, with a lease, for every tagged task (~0.5 s each here).
    # Shard-sized data goes to the tasks `quote`d: Prefect would otherwise walk every element
    # (every token id) looking for futures, seconds per task on a 10k-row shard. `return_state=False`
    # (the default) selects the signature of Task.__call__ that admits quote()d arguments.
    with storage_from_block(job.config.storage_block), TagsContext(current_tags=set()):  # credentials stay here
        if on_worker:
            job = localize_model(job)
        text = read_shard(job)
        reading = time.perf_counter() - started
        # The model stays on the device until this process ends: hold the slot to the end. Time spent
        # waiting for the slot is not the shard's work, so it stays out of its seconds and throughput.
        with gpu_slot(on_worker):
            started = time.perf_counter()
            tokens = tokenize(job, quote(text), return_state=False)
            vectors, model_seconds = embed(job, quote(tokens), return_state=False)
            seconds = reading + time.perf_counter() - started
            return write_part(
                job, quote(text), quote(tokens), quote(vectors), seconds, model_seconds, return_state=False
            )
