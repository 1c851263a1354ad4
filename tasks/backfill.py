"""Backfill: one run of a partitioned deployment per day, skipping days already done the same way.

Planning reads the deployment (Prefect API) and each day's DEST manifest (storage); it starts
nothing, so `--dry-run` and bad input change nothing. Submitting gives each day's run an
idempotency key, so repeating a backfill joins the runs in flight instead of doubling them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from bertflow import partitions
from bertflow.config import EmbedConfig
from bertflow.errors import BertflowError, InputError
from bertflow.io import parts
from bertflow.model.loading import resolve_config
from bertflow.tasks.artifacts import BACKFILL_TAG
from bertflow.tasks.runs import Job, describe, read_deployment, run_all

PARENT_FLOW = "embed-dataset"


class BackfillFailedError(BertflowError):
    """Some days' runs failed; repeating the backfill reruns only those."""


@dataclass(frozen=True)
class Day:
    """One partition of the plan: where it reads and writes, and whether it will run and why."""

    partition: str
    source: str
    dest: str
    action: Literal["run", "skip"]
    why: str


@dataclass(frozen=True)
class Plan:
    deployment: str  # flow/deployment
    deployment_id: str
    dest_template: str
    days: list[Day]

    @property
    def to_run(self) -> list[Day]:
        return [d for d in self.days if d.action == "run"]


def full_name(deployment: str) -> str:
    return deployment if "/" in deployment else f"{PARENT_FLOW}/{deployment}"


def plan_backfill(deployment: str, start: str, end: str, every: str = "1d", overwrite: bool = False) -> Plan:
    """The days from start to end and, for each, run or skip (complete with the same config)."""
    first, last = partitions.parse_date(start, "--start"), partitions.parse_date(end, "--end")
    days = partitions.partition_range(first, last, partitions.parse_every(every))
    dep = read_deployment(full_name(deployment))
    params = dep.parameters or {}
    source_t, dest_t = params.get("source"), params.get("dest")
    if not source_t or not dest_t:
        raise InputError(
            f"deployment {full_name(deployment)} has no source and dest templates to fill in; "
            "backfill a deployment made by `bertflow deploy`, such as embed-nightly"
        )
    partitions.check_templates(source_t, dest_t)
    try:
        config = EmbedConfig.model_validate(params.get("config") or {})
    except ValueError as e:
        raise InputError(f"deployment {full_name(deployment)} has an invalid config parameter: {e}") from None
    fingerprint = resolve_config(config).output_fingerprint()
    planned = [_day(d.isoformat(), source_t, dest_t, fingerprint, overwrite) for d in days]
    return Plan(full_name(deployment), str(dep.id), dest_t, planned)


def _day(day: str, source_t: str, dest_t: str, fingerprint: dict, overwrite: bool) -> Day:
    source, dest = partitions.render(source_t, day), partitions.render(dest_t, day)
    manifest = parts.read_manifest(dest)
    if overwrite:
        return Day(day, source, dest, "run", "--overwrite: redo from scratch")
    if manifest is None:
        return Day(day, source, dest, "run", "no output yet")
    if manifest.fingerprint != fingerprint:
        raise InputError(
            f"partition {day}: DEST {dest} holds output made with other settings; "
            "pass --overwrite to replace it, or change the deployment's config back"
        )
    if manifest.status != "complete":
        return Day(day, source, dest, "run", "incomplete: resumes the missing shards")
    return Day(day, source, dest, "skip", "complete with the same config")


def run_backfill(
    plan: Plan,
    max_in_flight: int,
    overwrite: bool,
    on_final: Callable[[Day, str], None] | None = None,
) -> dict[str, str]:
    """Start a run per day to run (tagged `backfill`), at most `max_in_flight` at once; day -> final state."""
    if max_in_flight < 1:
        raise InputError(f"--max-in-flight {max_in_flight}: give 1 or more")
    by_key: dict[str, Day] = {}
    jobs = []
    for day in plan.to_run:
        job = Job(
            key=partitions.stable_key("backfill", plan.deployment_id, day.partition),
            deployment=plan.deployment,
            parameters={"partition": day.partition, "overwrite": overwrite},
            name=partitions.run_name(plan.dest_template, day.partition),
            tags=(BACKFILL_TAG,),
        )
        by_key[job.key] = day
        jobs.append(job)
    results: dict[str, str] = {}

    def finished(job: Job, run) -> None:
        day = by_key[job.key]
        results[day.partition] = "Completed" if run.state.is_completed() else describe(run)
        if on_final is not None:
            on_final(day, results[day.partition])

    run_all(jobs, finished, max_in_flight=max_in_flight)
    failed = {d: s for d, s in sorted(results.items()) if s != "Completed"}
    if failed:
        shown = ", ".join(f"{d} ({s})" for d, s in list(failed.items())[:5])
        raise BackfillFailedError(
            f"{len(failed)} of {len(results)} partitions failed: {shown}; repeat the backfill to rerun only these"
        )
    return results
