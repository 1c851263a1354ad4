"""The backfill plan a CLI shows is the one the flow runs: a plan made for other parameters is refused."""

from __future__ import annotations

import pytest

from bertflow.errors import InputError
from bertflow.pipeline.backfill import BackfillPlan, Day
from bertflow.tasks.backfill import plan_backfill


def plan() -> BackfillPlan:
    days = [
        Day(partition="2026-11-01", source="s/2026-11-01", dest="d/2026-11-01", action="skip", why="complete"),
        Day(partition="2026-11-02", source="s/2026-11-02", dest="d/2026-11-02", action="run", why="no output yet"),
    ]
    return BackfillPlan(
        deployment="embed-dataset/embed-nightly", deployment_id="x", dest_template="d/{date}", start="2026-11-01",
        end="2026-11-02", every="1d", overwrite=False, days=days,
    )  # fmt: skip


@pytest.mark.parametrize(
    "args",
    [
        ("embed-nightly", "2026-11-01", "2026-11-03", "1d", False),  # another end
        ("embed-nightly", "2026-11-01", "2026-11-02", "1d", True),  # --overwrite now
        ("other", "2026-11-01", "2026-11-02", "1d", False),  # another deployment
    ],
)
def test_a_plan_made_for_other_parameters_is_refused(args):
    with pytest.raises(InputError, match="the plan given is for embed-dataset/embed-nightly 2026-11-01..2026-11-02"):
        plan_backfill.fn(*args, given=plan())


def test_a_plan_reports_each_day_as_skipped_or_with_its_run_state():
    p = plan()
    assert p.made_for("embed-dataset/embed-nightly", "2026-11-01", "2026-11-02", "1d", False)
    assert [d.partition for d in p.to_run] == ["2026-11-02"]
    assert p.outcome() == {"2026-11-01": "complete", "2026-11-02": "no output yet"}
    assert p.outcome({"2026-11-02": "Completed"}) == {"2026-11-01": "complete", "2026-11-02": "Completed"}
