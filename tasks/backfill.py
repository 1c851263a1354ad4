"""Backfill on a Prefect server: plan from the deployment's parameters, then one run per day to run.

Submitting gives each day's run an idempotency key, so repeating a backfill joins the runs in
flight instead of doubling them.
"""

from __future__ import annotations

from collections.abc import Callable

from prefect import task

from bertflow import partitions
from bertflow.errors import InputError, RunFailedError
from bertflow.names import BACKFILL_TAG, EMBED_FLOW, full_name
from bertflow.pipeline.backfill import BackfillPlan, Day, plan_days
from bertflow.tasks.policy import IN_MEMORY, RETRY
from bertflow.tasks.runs import RunRequest, describe, read_deployment, run_all


class BackfillFailedError(RunFailedError):
    """Some days' runs failed; repeating the backfill reruns only those."""


def deployment_name(deployment: str) -> str:
    """`embed-nightly` -> `embed-dataset/embed-nightly`; a full `flow/deployment` name as is."""
    return deployment if "/" in deployment else full_name(EMBED_FLOW, deployment)


@task(**IN_MEMORY, **RETRY)
def plan_backfill(deployment: str, start: str, end: str, every: str = "1d", overwrite: bool = False) -> BackfillPlan:
    """Read the deployment (Prefect API) and each day's DEST manifest (storage): the days to run or skip."""
    name = deployment_name(deployment)
    dep = read_deployment(name)
    return plan_days(name, str(dep.id), dict(dep.parameters or {}), start, end, every, overwrite)


def run_backfill(
    plan: BackfillPlan,
    max_in_flight: int,
    overwrite: bool,
    on_final: Callable[[Day, str], None] | None = None,
) -> dict[str, str]:
    """Start a run per day to run (tagged `backfill`), at most `max_in_flight` at once; day -> final state."""
    if max_in_flight < 1:
        raise InputError(f"--max-in-flight {max_in_flight}: give 1 or more")
    by_key: dict[str, Day] = {}
    requests = []
    for day in plan.to_run:
        request = RunRequest(
            key=partitions.stable_key("backfill", plan.deployment_id, day.partition),
            deployment=plan.deployment,
            parameters={"partition": day.partition, "overwrite": overwrite},
            name=partitions.run_name(plan.dest_template, day.partition),
            tags=(BACKFILL_TAG,),
        )
        by_key[request.key] = day
        requests.append(request)
    results: dict[str, str] = {}

    def finished(request: RunRequest, run) -> None:
        day = by_key[request.key]
        results[day.partition] = "Completed" if run.state.is_completed() else describe(run)
        if on_final is not None:
            on_final(day, results[day.partition])

    run_all(requests, finished, max_in_flight=max_in_flight)
    failed = {d: s for d, s in sorted(results.items()) if s != "Completed"}
    if failed:
        shown = ", ".join(f"{d} ({s})" for d, s in list(failed.items())[:5])
        raise BackfillFailedError(
            f"{len(failed)} of {len(results)} partitions failed: {shown}; repeat the backfill to rerun only these"
        )
    return results
