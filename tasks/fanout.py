"""Fan shards out to workers: one `embed-shard` deployment run per pending shard, then wait.

Only small values cross to the workers: each shard's `ShardJob` (file URIs and row ranges, the
resolved config, DEST, the part's fingerprint). Results come back through DEST (each part's
footer), never through Prefect results. Credentials never travel: each worker reads its own
environment.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable, Sequence

from prefect import get_run_logger, task
from prefect.client.schemas.objects import FlowRun

from bertflow.errors import InputError
from bertflow.io import storage
from bertflow.io.manifest import ShardJob, ShardSpec
from bertflow.model.loading import localize
from bertflow.names import SHARD_DEPLOYMENT
from bertflow.partitions import stable_key
from bertflow.tasks.policy import IN_MEMORY
from bertflow.tasks.runs import RunRequest, describe, read_deployment, run_all


def check_pool(pool: str) -> None:
    """The shard deployment must exist and take its runs from `pool`."""
    deployment = read_deployment(SHARD_DEPLOYMENT)
    if deployment.work_pool_name != pool:
        where = f"work pool {deployment.work_pool_name!r}" if deployment.work_pool_name else "`bertflow serve`"
        raise InputError(
            f"--pool {pool}: {SHARD_DEPLOYMENT} runs on {where}; run `bertflow deploy --pool {pool}` "
            "or pass the pool it was deployed to"
        )


def shard_run(job: ShardJob, tags: Sequence[str]) -> RunRequest:
    """The run of one shard; its key is derived from DEST and the shard (rows and settings)."""
    return RunRequest(
        key=stable_key("shard", storage.canonical(job.dest), job.fingerprint),
        deployment=SHARD_DEPLOYMENT,
        parameters={"job": job.model_dump(mode="json"), "on_worker": True},
        name=f"shard-{job.spec.index}-of-{job.spec.count}",
        tags=tuple(tags),
    )


def fan_out(jobs: Sequence[ShardJob], tags: Sequence[str], on_done: Callable[[ShardSpec], None]) -> dict[str, str]:
    """Run every job on the workers and wait for all; failed parts: name -> 'shard-3-of-8 (why)'."""
    requests = [shard_run(j, tags) for j in jobs]
    spec_of = {request.key: job.spec for request, job in zip(requests, jobs)}
    failed: dict[str, str] = {}

    def finished(request: RunRequest, flow_run: FlowRun) -> None:
        spec = spec_of[request.key]
        if flow_run.state is not None and flow_run.state.is_completed():  # run_all passes runs in a final state
            on_done(spec)
        else:
            failed[spec.name] = f"{request.name} ({describe(flow_run)})"

    run_all(requests, finished)
    return failed


@task(**IN_MEMORY)
def localize_model(job: ShardJob) -> ShardJob:
    """On a worker: log where the shard runs, find the model on this host and check its weights' sha256."""
    get_run_logger().info(
        "shard %d of %d on host %s, worker %s, pid %d", job.spec.index, job.spec.count, socket.gethostname(),
        os.environ.get("PREFECT__WORKER_NAME", "-"), os.getpid(),
    )  # fmt: skip
    config = localize(job.config)
    return job if config is job.config else job.model_copy(update={"config": config})
