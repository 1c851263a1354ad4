"""backfill: rerun a partitioned deployment (embed-nightly) over a range of past days."""

from __future__ import annotations

from prefect import flow, get_run_logger

from bertflow.errors import one_line
from bertflow.names import BACKFILL_FLOW, BACKFILL_TAG, NIGHTLY
from bertflow.pipeline.backfill import BackfillPlan
from bertflow.tasks.backfill import plan_backfill, run_backfill
from bertflow.tasks.reporting import quiet_expected_errors, tag_this_run

quiet_expected_errors()


@flow(name=BACKFILL_FLOW, flow_run_name="backfill-{deployment}-{start}-to-{end}", persist_result=False)
def backfill(
    start: str,
    end: str,
    deployment: str = NIGHTLY,
    every: str = "1d",
    max_in_flight: int = 4,
    overwrite: bool = False,
    dry_run: bool = False,
    plan: BackfillPlan | None = None,
) -> dict[str, str]:
    """One run of DEPLOYMENT per day from START to END (YYYY-MM-DD), skipping days already complete.

    Args:
        every: days between partitions: 1d, 7d.
        max_in_flight: at most this many days' runs at once.
        overwrite: redo days whose DEST is already complete.
        dry_run: log the plan and start nothing.
        plan: the plan `bertflow backfill` made and showed for these same parameters (default: planned here).
    """
    tag_this_run([BACKFILL_TAG])
    try:
        plan = plan_backfill(deployment, start, end, every, overwrite, given=plan)
        if dry_run or not plan.to_run:
            return plan.outcome()
        return run_backfill(plan, max_in_flight)
    except Exception as e:
        get_run_logger().error("backfill failed: %s", one_line(e))
        raise
