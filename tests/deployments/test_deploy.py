"""`bertflow deploy` against a real Prefect server of its own: what it creates, read back through the client."""

from __future__ import annotations

from datetime import timedelta

import pytest

from bertflow import partitions
from tests.conftest import run_cli
from tests.deployments.service import prefect_client, start_server, stop_process, wait_for

SOURCE = "s3://lake/raw/dt={date}/"
DEST = "s3://lake/embeddings/dt={date}/"
DEPLOYMENTS = {
    "embed-dataset/embed-nightly",
    "embed-dataset/embed-adhoc",
    "embed-shard/embed-shard",
    "backfill/backfill",
}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    proc, url = start_server(tmp_path_factory.mktemp("deploy-server"))
    yield url
    stop_process(proc)


def deploy(url: str, *args: str):
    return run_cli("deploy", *args, env={"PREFECT_API_URL": url})


def test_deploy_needs_a_server():
    r = run_cli("deploy", "--pool", "gpu", env={"PREFECT_API_URL": ""})
    assert r.returncode == 2 and "bertflow deploy needs a Prefect server" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def snapshot(url: str) -> dict:
    """Everything deploy makes, as the server reports it."""
    from prefect.client.schemas.filters import WorkPoolFilter, WorkPoolFilterName

    with prefect_client(url) as c:
        pools = c.read_work_pools(work_pool_filter=WorkPoolFilter(name=WorkPoolFilterName(any_=["gpu"])))
        deployments = c.read_deployments()
        limits = c.read_global_concurrency_limits(limit=100)
    return {
        "pools": [(p.name, p.type) for p in pools],
        "deployments": sorted(
            (f"{flow_name(url, d.flow_id)}/{d.name}", d.work_pool_name, d.entrypoint, str(d.updated))
            for d in deployments
        ),
        "schedules": sorted(
            (d.name, s.schedule.cron, s.schedule.timezone, str(s.id)) for d in deployments for s in d.schedules
        ),
        "limits": sorted((lim.name, lim.limit) for lim in limits),
    }


def flow_name(url: str, flow_id) -> str:
    with prefect_client(url) as c:
        return c.read_flow(flow_id).name


def test_deploy_twice_creates_everything_once_and_changes_nothing(server):
    first = deploy(
        server,
        "--pool",
        "gpu",
        "--gpus-per-host",
        "2",
        "--cron",
        "30 3 * * *",
        "--source-template",
        SOURCE,
        "--dest-template",
        DEST,
    )
    assert first.returncode == 0, first.stdout + first.stderr
    before = snapshot(server)
    # Options left out keep what is deployed: the same command, or a bare one, changes nothing.
    again = deploy(
        server,
        "--pool",
        "gpu",
        "--gpus-per-host",
        "2",
        "--cron",
        "30 3 * * *",
        "--source-template",
        SOURCE,
        "--dest-template",
        DEST,
    )
    bare = deploy(server, "--pool", "gpu")
    assert again.returncode == 0 and bare.returncode == 0, again.stdout + again.stderr + bare.stderr
    for out in (again.stdout, bare.stdout):
        assert "created" not in out and "updated" not in out
        assert out.count("unchanged") == 6  # pool, 4 deployments, limit
    assert snapshot(server) == before

    assert before["pools"] == [("gpu", "process")]
    names = [d[0] for d in before["deployments"]]
    assert sorted(names) == sorted(DEPLOYMENTS)  # each exactly once
    for _, pool, entrypoint, _ in before["deployments"]:
        assert pool == "gpu"
        assert entrypoint.startswith("bertflow.flows.")  # module paths: workers run the installed package
    assert [(s[0], s[1], s[2]) for s in before["schedules"]] == [("embed-nightly", "30 3 * * *", "UTC")]
    assert before["limits"] == [("bertflow-gpu", 2)]
    with prefect_client(server) as c:
        nightly = c.read_deployment_by_name("embed-dataset/embed-nightly")
        adhoc = c.read_deployment_by_name("embed-dataset/embed-adhoc")
    assert nightly.parameters["source"] == SOURCE and nightly.parameters["dest"] == DEST
    assert nightly.parameters["pool"] == "gpu" and nightly.parameters["lag_days"] == 1
    assert adhoc.schedules == [] and adhoc.parameters["pool"] == "gpu"

    # A changed option updates only what it touches.
    changed = deploy(server, "--pool", "gpu", "--gpus-per-host", "4")
    assert changed.returncode == 0, changed.stderr
    assert "updated" in changed.stdout and changed.stdout.count("unchanged") == 5
    assert snapshot(server)["limits"] == [("bertflow-gpu", 4)]


def test_nightly_scheduled_runs_process_the_day_before_their_start(server):
    """The scheduler's runs carry the templates; each fills {date} with the day before its own start."""
    r = deploy(server, "--pool", "gpu", "--cron", "0 2 * * *", "--source-template", SOURCE, "--dest-template", DEST)
    assert r.returncode == 0, r.stderr
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterName

    def scheduled():
        with prefect_client(server) as c:
            runs = c.read_flow_runs(
                deployment_filter=DeploymentFilter(name=DeploymentFilterName(any_=["embed-nightly"])), limit=50
            )
        runs = [r for r in runs if r.state.is_scheduled()]
        # Runs of the old cron (30 3) go when the schedule changes; wait for three of the new one.
        return (
            sorted(runs, key=lambda r: r.expected_start_time)
            if len(runs) >= 3 and all(r.expected_start_time.hour == 2 for r in runs)
            else None
        )

    runs = wait_for(scheduled, 60, "three scheduled runs of embed-nightly at 02:00")
    for run in runs:
        start = run.expected_start_time
        assert (start.hour, start.minute) == (2, 0) and start.utcoffset() == timedelta(0)
        assert run.parameters["source"] == SOURCE and run.parameters["dest"] == DEST
        assert run.parameters.get("partition") is None
        day = (start.date() - timedelta(days=1)).isoformat()
        assert partitions.resolve(SOURCE, DEST, None, run.parameters["lag_days"], start) == (
            f"s3://lake/raw/dt={day}/",
            f"s3://lake/embeddings/dt={day}/",
            day,
        )
    days = [partitions.partition_for(r.expected_start_time, 1) for r in runs]
    assert [(b - a).days for a, b in zip(days, days[1:])] == [1] * (len(days) - 1)  # consecutive days


@pytest.mark.parametrize(
    "args, message",
    [
        (
            ("--source-template", "s3://lake/raw/", "--dest-template", DEST),
            "SOURCE template 's3://lake/raw/' has no {date}",
        ),
        (("--cron", "every night"), "--cron 'every night' is not a cron expression"),
        (("--gpus-per-host", "0"), "--gpus-per-host 0: give 1 or more"),
    ],
)
def test_deploy_bad_input_is_one_line(server, args, message):
    r = deploy(server, "--pool", "gpu", *args)
    assert r.returncode == 2
    assert message in r.stderr and len(r.stderr.strip().splitlines()) == 1
