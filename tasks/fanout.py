"""Fan shards out to workers: one `embed-shard` deployment run per pending shard, then wait.

Only small values cross to the workers: each shard's `ShardJob` (file URIs and row ranges, the
resolved config, DEST, the part's fingerprint). Results come back through DEST (each part's
footer), never through Prefect results. Credentials never travel: each worker reads its own
environment.

A shard run that ends Crashed (its host died and the zombie automation marked it, or its process
was killed) or Failed is submitted again, up to `attempts` runs per shard; one that failed on bad
input (state `BadInput`: the same input fails the same way) is not. The parent waits at most
`timeout` seconds for all of them, then cancels what is left.

Runs are submitted in a bounded wave (`wave_size`): a few more than the pool can run at once, so a
worker always finds the next shard queued, and the server never holds thousands of scheduled runs
(nor a worker without `--limit` starts them all at once).
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from prefect import get_client, get_run_logger, task
from prefect.client.schemas.objects import FlowRun
from prefect.states import Failed, State

from bertflow.config import EmbedConfig, count_or_auto
from bertflow.errors import BertflowError, HostError, InputError, ModelError, one_line
from bertflow.io import parts, storage
from bertflow.io.manifest import ShardJob, ShardSpec
from bertflow.model.loading import localize
from bertflow.names import SHARD_DEPLOYMENT
from bertflow.partitions import stable_key
from bertflow.pipeline import sizing
from bertflow.tasks.gpu import slots_per_host
from bertflow.tasks.policy import IN_MEMORY, RETRY
from bertflow.tasks.runs import RunRequest, describe, read_deployment, run_all

DEFAULT_ATTEMPTS = 2
DEFAULT_TIMEOUT = 12 * 3600.0  # seconds the parent waits for its shard runs, all together
PERMANENT = "BadInput"  # the state name of a shard run that failed on input no retry can fix
QUEUED_PER_SLOT = 2  # shard runs in flight per slot the pool can run: one running, one queued behind it
WATCH_SECONDS = 10.0  # how often the parent lists DEST for the parts of runs of several shards in flight
WAVE_WITHOUT_WORKERS = 64  # a pool whose workers do not run the shards themselves (Kubernetes) and has no limit


def refused(e: BertflowError) -> State:
    """The final state of a shard run that failed on bad input: Failed, named so the parent does not resubmit it."""
    return Failed(name=PERMANENT, message=one_line(e))


def check_pool(pool: str, source: str, dest: str, config: EmbedConfig) -> None:
    """The shard deployment must exist and take its runs from `pool`, and every host must see what shards read."""
    shared = {"SOURCE": source, "DEST": dest, "--pooler": config.pooler, "--reduction": config.reduction}
    for what, uri in shared.items():
        if uri and storage.is_local(uri):
            raise InputError(
                f"--pool {pool}: {what} {uri} is a local path, which workers on other hosts cannot see; "
                "put it in object storage (s3://...) or run without --pool"
            )
    deployment = read_deployment(SHARD_DEPLOYMENT)
    if deployment.work_pool_name != pool:
        where = f"work pool {deployment.work_pool_name!r}" if deployment.work_pool_name else "`bertflow serve`"
        raise InputError(
            f"--pool {pool}: {SHARD_DEPLOYMENT} runs on {where}; run `bertflow deploy --pool {pool}` "
            "or pass the pool it was deployed to"
        )


def wave_size(pool: str, given: int | None) -> tuple[int, str]:
    """At most this many shard runs in flight at once, and why.

    `given` wins. Otherwise twice what the pool can run at once: its concurrency limit when it has
    one; on a process pool, its online workers times the GPU slots per host (`--gpus-per-host`); else
    a fixed default. Read once, when the run starts.
    """
    if given is not None:
        if given < 1:
            raise InputError(f"--shard-wave {given}: give 1 or more")
        return given, "as given"
    with get_client(sync_client=True) as client:
        work_pool = client.read_work_pool(pool)
        if work_pool.concurrency_limit:
            slots, why = work_pool.concurrency_limit, f"pool {pool}'s concurrency limit {work_pool.concurrency_limit}"
        elif work_pool.type == "process":
            online = [w for w in client.read_workers_for_work_pool(pool) if str(w.status).upper().endswith("ONLINE")]
            per_host = slots_per_host(client)
            slots = max(1, len(online)) * per_host
            why = f"{len(online)} workers online x {per_host} GPU slots per host"
        else:
            return WAVE_WITHOUT_WORKERS, f"the default for a {work_pool.type} pool without a concurrency limit"
    return slots * QUEUED_PER_SLOT, f"{why}, x {QUEUED_PER_SLOT}"


def shards_in_a_run(given: int | str) -> int | None:
    """`--shards-per-run`: the shards of each worker run, or None for `auto` (`sizing.run_sizes`)."""
    try:
        per_run = count_or_auto(given, "a number of shards")
    except ValueError as e:
        raise InputError(f"shards per run: {e}") from None
    return None if per_run == "auto" else per_run


def shard_run(jobs: Sequence[ShardJob], tags: Sequence[str], prints: Sequence[str] = ()) -> RunRequest:
    """The run of one shard (or of several in one process, `--shards-per-run`); its key is derived from
    DEST and the fingerprints (rows and settings) of the shards of its range, `prints` (default: `jobs`'),
    finished ones included: a parent resuming a dead one's work joins the run still embedding the rest."""
    first, last = jobs[0], jobs[-1]
    parameters: dict[str, object] = {"job": first.model_dump(mode="json"), "on_worker": True}
    if len(jobs) > 1:
        parameters["more"] = [j.model_dump(mode="json") for j in jobs[1:]]
    name = f"shard-{first.spec.index}-of-{first.spec.count}"
    if len(jobs) > 1:
        name = f"shards-{first.spec.index}-to-{last.spec.index}-of-{first.spec.count}"
    return RunRequest(
        key=stable_key("shard", storage.canonical(first.dest), *(prints or [j.fingerprint for j in jobs])),
        deployment=SHARD_DEPLOYMENT,
        parameters=parameters,
        name=name,
        tags=tuple(tags),
    )


def has_part(job: ShardJob) -> bool:
    """Whether DEST holds the shard's finished part (its fingerprint matching)."""
    found = parts.complete_parts(
        job.dest, [job.spec], {job.spec.name: job.fingerprint}, documents=job.config.aggregated
    )
    return job.spec.name in found


@task(**IN_MEMORY, **RETRY)
def part_written(job: ShardJob) -> bool:
    """A shard of a run of several whose part is already in DEST (an earlier run of them got that far) is skipped."""
    if has_part(job):
        get_run_logger().info("%s is already in %s; next shard", job.spec.name, job.dest)
        return True
    return False


@dataclass
class ShardFailure:
    """A shard whose runs all failed: why each attempt ended, and the runs."""

    spec: ShardSpec
    errors: list[str] = field(default_factory=list)
    runs: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        tries = f"{len(self.errors)} attempts" if len(self.errors) != 1 else "1 attempt"
        return (
            f"shard-{self.spec.index}-of-{self.spec.count} ({tries}; {self.errors[-1] if self.errors else 'not run'})"
        )

    def row(self) -> dict[str, object]:
        return {
            "shard": f"shard-{self.spec.index}-of-{self.spec.count}",
            "part": self.spec.name,
            "attempts": len(self.errors),
            "error": self.errors[-1] if self.errors else "not run",
            "runs": ", ".join(self.runs),
        }


def fan_out(
    plan: Sequence[ShardSpec],
    jobs: Sequence[ShardJob],
    tags: Sequence[str],
    on_done: Callable[[ShardSpec], None],
    attempts: int = DEFAULT_ATTEMPTS,
    timeout: float = DEFAULT_TIMEOUT,
    wave: int | None = None,
    per_run: int | None = 1,
) -> dict[str, ShardFailure]:
    """Run every pending job of `plan` on the workers (`per_run` shards in a run, or guided runs when None;
    at most `wave` runs in flight), resubmitting failed runs, and wait for all; the shards that failed, by part."""
    slots = max(1, (wave or 0) // QUEUED_PER_SLOT)
    grouped = sizing.run_groups(plan, jobs, slots, per_run)
    requests = [shard_run(group, tags, prints) for group, prints in grouped]
    group_of = {request.key: group for request, (group, _) in zip(requests, grouped)}
    logger = get_run_logger()
    if len(requests) < len(jobs):
        sizes = [len(g) for g, _ in grouped]
        how = (
            f"of up to {per_run}"
            if per_run
            else f"of {sizes[0]} shards first down to {sizes[-1]}, for {slots} slot{'s' if slots != 1 else ''}"
        )
        logger.info("%d shards in %d shard runs %s", len(jobs), len(requests), how)
    tries: dict[str, ShardFailure] = {}
    failed: dict[str, ShardFailure] = {}
    reported: set[str] = set()
    looked = time.monotonic()

    def report(job: ShardJob) -> None:
        if job.spec.name not in reported:
            reported.add(job.spec.name)
            on_done(job.spec)

    def watch(in_flight: Sequence[RunRequest]) -> None:
        """A run of several shards writes a part per shard: each is reported when it appears in DEST (one
        listing every WATCH_SECONDS), so the progress and the shards' log lines move while the run goes on."""
        nonlocal looked
        waiting = [
            j for r in in_flight for j in group_of[r.key] if len(group_of[r.key]) > 1 and j.spec.name not in reported
        ]
        if not waiting or time.monotonic() - looked < WATCH_SECONDS:
            return
        looked = time.monotonic()
        written = set(storage.list_names(waiting[0].dest))  # a part is there whole or not at all
        for job in waiting:
            if job.spec.name in written:
                report(job)

    def unfinished(request: RunRequest) -> list[ShardJob]:
        """A run of several that failed may have written some of its parts: those count as done."""
        group = group_of[request.key]
        left = group if len(group) == 1 else [j for j in group if not has_part(j)]
        for job in group:
            if job not in left:
                report(job)
        group_of[request.key] = left
        return left

    def finished(request: RunRequest, flow_run: FlowRun) -> bool:
        group = group_of[request.key]
        if flow_run.state is not None and flow_run.state.is_completed():  # run_all passes runs in a final state
            for job in group:
                report(job)
            return False
        records = [tries.setdefault(j.spec.name, ShardFailure(j.spec)) for j in unfinished(request)]
        for record in records:
            record.errors.append(describe(flow_run))
            record.runs.append(str(flow_run.id))
        permanent = flow_run.state is not None and flow_run.state.name == PERMANENT
        if not records or permanent or len(records[0].errors) >= attempts:
            failed.update((r.spec.name, r) for r in records)
            return False
        logger.warning(
            "%s ended %s; submitting it again (attempt %d of %d)",
            request.name, records[0].errors[-1], len(records[0].errors) + 1, attempts,
        )  # fmt: skip
        return True

    def written(request: RunRequest) -> bool:
        """The shards' parts are in DEST: a run finished them since DEST was listed (a parent resuming a dead one's work)."""
        return all(has_part(job) for job in group_of[request.key])

    for request in run_all(requests, finished, max_in_flight=wave, timeout=timeout, done=written, watch=watch):
        for job in unfinished(request):
            record = tries.setdefault(job.spec.name, ShardFailure(job.spec))
            record.errors.append(f"not finished after the shard timeout of {timeout:.0f} s; cancelled")
            failed[job.spec.name] = record
    return failed


@task(**IN_MEMORY)
def localize_model(job: ShardJob) -> ShardJob:
    """On a worker: log where the shard runs, find the model on this host and check its weights' sha256."""
    get_run_logger().info(
        "shard %d of %d on host %s, worker %s, pid %d", job.spec.index, job.spec.count, socket.gethostname(),
        os.environ.get("PREFECT__WORKER_NAME", "-"), os.getpid(),
    )  # fmt: skip
    try:
        config = localize(job.config)
    except ModelError as e:  # about this host, not the input: the parent may give the shard to another
        raise HostError(f"host {socket.gethostname()}: {e}") from None
    return job if config is job.config else job.model_copy(update={"config": config})


@task(**IN_MEMORY)
def shard_wave_size(pool: str, given: int | None) -> int:
    """`wave_size`, logged: how many shard runs the parent keeps in flight on the pool."""
    wave, why = wave_size(pool, given)
    get_run_logger().info("at most %d shard runs in flight on pool %s (%s)", wave, pool, why)
    return wave
