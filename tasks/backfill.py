"""Backfill on a Prefect server: plan from the deployment's parameters, then one run per day to run.

Submitting gives each day's run an idempotency key, so repeating a backfill joins the runs in
flight instead of doubling them.
"""

from __future__ import annotations

from prefect import get_run_logger, task
from prefect.client.schemas.objects import FlowRun

from bertflow import partitions, progress
from bertflow.errors import BackfillFailedError, InputError
from bertflow.names import BACKFILL_TAG, deployment_name
from bertflow.pipeline.backfill import BackfillPlan, Day, plan_days
from bertflow.tasks.policy import IN_MEMORY, RETRY
from bertflow.tasks.runs import RunRequest, describe, read_deployment, run_all


def make_plan(deployment: str, start: str, end: str, every: str = "1d", overwrite: bool = False) -> BackfillPlan:
    """The plan of a backfill: the deployment's parameters (Prefect API), then `pipeline.backfill.plan_days`."""
    name = deployment_name(deployment)
    dep = read_deployment(name)
    return plan_days(name, str(dep.id), dict(dep.parameters or {}), start, end, every, overwrite)


@task(**IN_MEMORY, **RETRY)
def plan_backfill(
    deployment: str, start: str, end: str, every: str = "1d", overwrite: bool = False, given: BackfillPlan | None = None
) -> BackfillPlan:
    """The days to run or skip, from the deployment (Prefect API) and each day's DEST manifest (storage);
    `given` (the plan `bertflow backfill` showed) is used if it was made for these parameters. Logs each day."""
    name = deployment_name(deployment)
    if given is not None and not given.made_for(name, start, end, every, overwrite):
        raise InputError(
            f"the plan given is for {given.deployment} {given.start}..{given.end}, not {name} {start}..{end}"
        )
    if given is None:
        given = make_plan(deployment, start, end, every, overwrite)
    logger = get_run_logger()
    for day in given.days:
        action = "will run" if day.action == "run" else "skip"
        logger.info("%s: %s (%s) %s -> %s", day.partition, action, day.why, day.source, day.dest)
    return given


def run_backfill(plan: BackfillPlan, max_in_flight: int) -> dict[str, str]:
    """Start a run per day to run (tagged `backfill`), at most `max_in_flight` at once, and wait for all.

    Each day's end is logged and advances `bertflow.progress`; returns the plan's outcome: partition ->
    why skipped, or its run's final state.
    """
    if max_in_flight < 1:
        raise InputError(f"--max-in-flight {max_in_flight}: give 1 or more")
    by_key: dict[str, Day] = {}
    requests = []
    for day in plan.to_run:
        request = RunRequest(
            key=partitions.stable_key("backfill", plan.deployment_id, day.partition),
            deployment=plan.deployment,
            parameters={"partition": day.partition, "overwrite": plan.overwrite},
            name=partitions.run_name(plan.dest_template, day.partition),
            tags=(BACKFILL_TAG,),
        )
        by_key[request.key] = day
        requests.append(request)
    results: dict[str, str] = {}
    logger = get_run_logger()
    progress.start(len(requests), 0)

    def finished(request: RunRequest, run: FlowRun) -> bool:
        day = by_key[request.key]
        completed = run.state is not None and run.state.is_completed()  # run_all passes runs in a final state
        results[day.partition] = "Completed" if completed else describe(run)
        logger.info("%s: %s", day.partition, results[day.partition])
        progress.advance(1)
        return False  # a day that failed is reported; repeating the backfill reruns it

    run_all(requests, finished, max_in_flight=max_in_flight)
    failed = {d: s for d, s in sorted(results.items()) if s != "Completed"}
    if failed:
        raise BackfillFailedError.of(failed, len(results))
    return plan.outcome(results)
