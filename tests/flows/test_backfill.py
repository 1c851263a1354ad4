"""`bertflow backfill` and the deployed `backfill` flow: one run of embed-nightly per day, real workers."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest
import s3fs

from bertflow import partitions
from bertflow.io import parts
from bertflow.io.verify import verify_dest
from tests.deployments.service import DEST_TEMPLATE, POOL, SOURCE_TEMPLATE, make_bucket, write_day

NIGHTLY = "embed-dataset/embed-nightly"
DAYS = ["2026-11-01", "2026-11-02", "2026-11-03", "2026-11-04", "2026-11-05"]


def runs_since(svc, since: datetime) -> set:
    """Ids of the flow runs created since `since` (the scheduler's own runs aside)."""
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterExpectedStartTime

    with svc.client() as c:
        runs = c.read_flow_runs(
            flow_run_filter=FlowRunFilter(expected_start_time=FlowRunFilterExpectedStartTime(after_=since))
        )
    return {r.id for r in runs if "auto-scheduled" not in r.tags}


def embed_day(svc, day: str) -> None:
    """Embed one day by hand, in this process, with the deployment's config (its model, other options default)."""

    from bertflow.config import EmbedConfig
    from bertflow.flows.embed import embed_dataset

    with svc.settings():
        manifest = embed_dataset(SOURCE_TEMPLATE, DEST_TEMPLATE, EmbedConfig(model=str(svc.model)), partition=day)
    assert manifest.status == "complete"


def test_backfill_runs_only_missing_days_once(s3, service):
    make_bucket()
    for day in DAYS:
        write_day(day, 12)
    embed_day(service, DAYS[1])
    embed_day(service, DAYS[3])
    before = {r.id for r in service.runs(NIGHTLY)}
    since = datetime.now(timezone.utc)

    args = ("backfill", "--deployment", "embed-nightly", "--start", DAYS[0], "--end", DAYS[-1], "--max-in-flight", "2")
    r = service.cli(*args)
    assert r.returncode == 0, r.stdout + r.stderr + service.diagnostics()
    runs = [run for run in service.runs(NIGHTLY) if run.id not in before]
    assert sorted(run.parameters["partition"] for run in runs) == [DAYS[0], DAYS[2], DAYS[4]]
    assert {run.id for run in runs} <= runs_since(service, since)  # what the other tests count by
    for run in runs:
        day = run.parameters["partition"]
        assert run.state.is_completed(), (run.name, run.state)
        assert "backfill" in run.tags and run.name == f"embed-embeddings-{day}"
        assert run.work_queue_name == "parents"  # the conductor runs parents: they never take a GPU worker's slot
    backfilled = {partitions.render(DEST_TEMPLATE, run.parameters["partition"]) for run in runs}
    shards = [
        s for s in service.runs("embed-shard/embed-shard") if s.parameters.get("job", {}).get("dest") in backfilled
    ]
    assert len(shards) == 3 and all("backfill" in s.tags and "auto-scheduled" not in s.tags for s in shards)
    # Never more than two days in flight: at each start, count the runs already going.
    spans = [(run.start_time, run.end_time) for run in runs]
    assert max(sum(s <= start < e for s, e in spans) for start, _ in spans) <= 2
    s3fs.S3FileSystem.clear_instance_cache()  # workers wrote DEST: no listing cached by this process
    for day in DAYS:
        source, dest = partitions.render(SOURCE_TEMPLATE, day), partitions.render(DEST_TEMPLATE, day)
        assert verify_dest(dest, source) == []  # what `bertflow verify DEST --source SOURCE` checks
        assert parts.read_manifest(dest).totals.rows == 12

    # The same command again: every day is complete, so it starts nothing.
    again = service.cli(*args)
    assert again.returncode == 0, again.stderr
    assert "nothing to run" in again.stdout
    assert {r.id for r in service.runs(NIGHTLY)} == before | {run.id for run in runs}

    # The deployed backfill flow, as started from the UI with parameters, does the same on a worker.
    from prefect.deployments import run_deployment

    with service.settings():
        run = run_deployment(
            "backfill/backfill", parameters={"start": DAYS[0], "end": DAYS[-1]}, timeout=240, poll_interval=1
        )
    assert run.state.is_completed(), service.diagnostics()
    assert {r.id for r in service.runs(NIGHTLY)} == before | {run.id for run in runs}


def test_dry_run_prints_the_plan_and_creates_nothing(s3, service):
    make_bucket()
    days = ["2026-10-01", "2026-10-02", "2026-10-03"]
    for day in days:
        write_day(day, 5)
    embed_day(service, days[1])
    since = datetime.now(timezone.utc)

    r = service.cli("backfill", "--start", days[0], "--end", days[-1], "--dry-run")
    assert r.returncode == 0, r.stderr
    lines = {day: next(line for line in r.stdout.splitlines() if day in line) for day in days}
    assert "will run: no output yet" in lines[days[0]] and "will run: no output yet" in lines[days[2]]
    assert "skip: complete with the same" in lines[days[1]]
    assert f"s3://lake/raw/dt={days[0]}/" in r.stdout and f"s3://lake/embeddings/dt={days[0]}/" in r.stdout
    assert "dry run: 2 to run, 1 to skip; nothing started" in r.stdout
    assert runs_since(service, since) == set()
    assert parts.read_manifest(partitions.render(DEST_TEMPLATE, days[0])) is None


@pytest.fixture
def flat_deployment(service):
    """A deployment of the embed flow whose SOURCE and DEST have no {date}."""
    from prefect.types.entrypoint import EntrypointType

    from bertflow.flows.embed import embed_dataset

    with service.settings():
        embed_dataset.to_deployment(
            "embed-flat",
            parameters={"source": "s3://lake/raw/", "dest": "s3://lake/flat/"},
            entrypoint_type=EntrypointType.MODULE_PATH,
        ).apply(work_pool_name=POOL)
    return "embed-flat"


@pytest.mark.parametrize(
    "args, message",
    [
        (("--start", "2026-11-05", "--end", "2026-11-01"), "--end 2026-11-01 is before --start 2026-11-05"),
        (
            ("--start", "2026-11-01", "--end", "2026-11-02", "--deployment", "embed-nope"),
            "deployment embed-dataset/embed-nope does not exist",
        ),
        (
            ("--start", "2026-11-01", "--end", "2026-11-02", "--deployment", "FLAT"),
            "SOURCE template 's3://lake/raw/' has no {date}",
        ),
    ],
)
def test_bad_input_is_one_line_and_starts_nothing(s3, service, flat_deployment, args, message):
    args = tuple(flat_deployment if a == "FLAT" else a for a in args)
    since = datetime.now(timezone.utc)
    r = service.cli("backfill", *args)
    assert r.returncode == 2, r.stdout + r.stderr
    assert message in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert runs_since(service, since) == set()
