"""embed-nightly on real workers: a scheduled run that starts late still embeds its own day."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from bertflow import partitions
from bertflow.io import parts
from tests.deployments.service import DEST_TEMPLATE, SOURCE_TEMPLATE, make_bucket, wait_for, write_day

NIGHTLY = "embed-dataset/embed-nightly"


def test_scheduled_run_started_late_embeds_the_day_before_its_schedule(s3, service):
    from prefect.states import Scheduled

    make_bucket()
    scheduled = wait_for(
        lambda: [r for r in service.runs(NIGHTLY) if "auto-scheduled" in r.tags and r.state.is_scheduled()],
        90,
        "the scheduler's runs of embed-nightly",
        diagnostics=service.diagnostics,
    )
    run = min(scheduled, key=lambda r: r.expected_start_time)
    day = (run.expected_start_time.date() - timedelta(days=1)).isoformat()
    write_day(day, 8)

    # The run is due at 02:00 on a later day; moving its start to now is what a late start looks like.
    with service.client() as c:
        c.set_flow_run_state(run.id, Scheduled(scheduled_time=datetime.now(timezone.utc)), force=True)

    def finished():
        with service.client() as c:
            r = c.read_flow_run(run.id)
        return r if r.state.is_final() else None

    done = wait_for(finished, 240, f"{run.name} to finish", diagnostics=service.diagnostics)
    assert done.state.is_completed(), (done.state, service.diagnostics())
    assert done.expected_start_time == run.expected_start_time  # the day comes from here, not the clock
    assert done.name == f"embed-embeddings-{day}"
    manifest = parts.read_manifest(partitions.render(DEST_TEMPLATE, day))
    assert manifest.status == "complete" and manifest.totals.rows == 8
    assert manifest.source == partitions.render(SOURCE_TEMPLATE, day)
