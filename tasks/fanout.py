"""Fan shards out to workers: one `embed-shard` deployment run per pending shard, then wait.

Only small values cross to the workers: the shard's spec (file URIs and row ranges), the
resolved config, DEST and the part's fingerprint. Results come back through DEST (each part's
footer), never through Prefect results. Credentials never travel: each worker reads its own
environment.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

from bertflow.config import ResolvedConfig
from bertflow.errors import BertflowError, InputError, ModelError
from bertflow.io import storage
from bertflow.io.manifest import ShardSpec
from bertflow.model.loading import resolve_model_path, weights_sha256
from bertflow.partitions import stable_key
from bertflow.tasks.runs import Job, describe, read_deployment, run_all

SHARD_DEPLOYMENT = "embed-shard/embed-shard"


class ShardsFailedError(BertflowError):
    """Shard runs that still failed after Prefect's retries; a rerun redoes only these."""


def check_pool(pool: str) -> None:
    """The shard deployment must exist and take its runs from `pool`."""
    deployment = read_deployment(SHARD_DEPLOYMENT)
    if deployment.work_pool_name != pool:
        where = f"work pool {deployment.work_pool_name!r}" if deployment.work_pool_name else "`bertflow serve`"
        raise InputError(
            f"--pool {pool}: {SHARD_DEPLOYMENT} runs on {where}; run `bertflow deploy --pool {pool}` "
            "or pass the pool it was deployed to"
        )


def shard_job(spec: ShardSpec, config: ResolvedConfig, dest: str, fingerprint: str, tags: Sequence[str]) -> Job:
    """The run of one shard; its key is derived from DEST and the shard (rows and settings)."""
    return Job(
        key=stable_key("shard", storage.canonical(dest), fingerprint),
        deployment=SHARD_DEPLOYMENT,
        parameters={
            "spec": spec.model_dump(mode="json"),
            "config": config.model_dump(mode="json"),
            "dest": dest,
            "fingerprint": fingerprint,
            "on_worker": True,
        },
        name=f"shard-{spec.index}-of-{spec.count}",
        tags=tuple(tags),
    )


def fan_out(
    pending: Sequence[ShardSpec],
    config: ResolvedConfig,
    dest: str,
    fingerprints: dict[str, str],
    tags: Sequence[str],
    on_done: Callable[[ShardSpec], None],
) -> dict[str, str]:
    """Run every pending shard on the workers and wait for all; failed parts: name -> 'shard-3-of-8 (why)'."""
    jobs = [shard_job(s, config, dest, fingerprints[s.name], tags) for s in pending]
    spec_of = {job.key: spec for job, spec in zip(jobs, pending)}
    failed: dict[str, str] = {}

    def finished(job: Job, run) -> None:
        spec = spec_of[job.key]
        if run.state.is_completed():
            on_done(spec)
        else:
            failed[spec.name] = f"{job.name} ({describe(run)})"

    run_all(jobs, finished)
    return failed


def failure_message(failed: Sequence[str], planned: int) -> str:
    failed = sorted(failed)
    shown = ", ".join(failed[:5]) + (f" and {len(failed) - 5} more" if len(failed) > 5 else "")
    return f"{len(failed)} of {planned} shards failed after retries: {shown}; rerun the same command to redo only these"


def localize_model(config: ResolvedConfig) -> ResolvedConfig:
    """The config with the model path of this host; the weights must be the ones that were planned."""
    if Path(config.model_path).is_dir():
        path = Path(config.model_path)
    else:
        path = resolve_model_path(config.model)
    sha = weights_sha256(path)
    if sha != config.model_sha256:
        raise ModelError(
            f"model {config.model!r} on this host ({path}) has weights sha256 {sha[:12]}, the run planned "
            f"{config.model_sha256[:12]}; install the same model on every worker host"
        )
    return config if str(path) == config.model_path else config.model_copy(update={"model_path": str(path)})
