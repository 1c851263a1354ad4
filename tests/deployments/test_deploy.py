"""`bertflow deploy` against a real Prefect server of its own (basic auth on): what it creates, read back
through the client."""

from __future__ import annotations

from datetime import timedelta

import pytest

from bertflow import partitions
from tests.conftest import run_cli
from tests.deployments.service import prefect_client as _client
from tests.deployments.service import start_server, stop_process, wait_for

SOURCE = "s3://lake/raw/dt={date}/"
DEST = "s3://lake/embeddings/dt={date}/"
DEPLOYMENTS = {
    "embed-dataset/embed-nightly",
    "embed-dataset/embed-adhoc",
    "embed-shard/embed-shard",
    "backfill/backfill",
}


AUTH = "deployer:deploy-secret-do-not-log"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    proc, url = start_server(tmp_path_factory.mktemp("deploy-server"), auth=AUTH)
    yield url
    stop_process(proc)


def prefect_client(url: str):
    return _client(url, AUTH)


def deploy(url: str, *args: str, auth: str | None = AUTH):
    return run_cli("deploy", *args, env={"PREFECT_API_URL": url, "PREFECT_API_AUTH_STRING": auth or ""})


def test_deploy_without_the_credential_is_refused_in_one_line(server):
    r = deploy(server, "--pool", "gpu", auth=None)
    assert r.returncode == 2, r.stdout + r.stderr
    assert "refused this client (401)" in r.stderr and "PREFECT_API_AUTH_STRING" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    r = deploy(server, "--pool", "gpu", auth="deployer:wrong")
    assert r.returncode == 2 and "refused this client (401)" in r.stderr and "wrong" not in r.stderr


def test_deploy_without_templates_sets_up_adhoc_and_shard_only(server):
    r = deploy(server, "--pool", "gpu")
    assert r.returncode == 0, r.stdout + r.stderr
    with prefect_client(server) as c:
        names = sorted(f"{c.read_flow(d.flow_id).name}/{d.name}" for d in c.read_deployments())
        queues = {q.name for q in c.read_work_queues(work_pool_name="gpu")}
    assert names == ["embed-dataset/embed-adhoc", "embed-shard/embed-shard"]
    assert {"parents", "shards"} <= queues


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
        automations = c.read_automations()
    return {
        "pools": [(p.name, p.type) for p in pools],
        "deployments": sorted(
            (f"{flow_name(url, d.flow_id)}/{d.name}", d.work_pool_name, d.work_queue_name, d.entrypoint, str(d.updated))
            for d in deployments
        ),
        "schedules": sorted(
            (d.name, s.schedule.cron, s.schedule.timezone, str(s.id)) for d in deployments for s in d.schedules
        ),
        "limits": sorted((lim.name, lim.limit) for lim in limits),
        "automations": sorted((a.name, str(a.id), a.trigger.model_dump_json()) for a in automations),
        "template": pools[0].base_job_template if pools else None,
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
        assert out.count("unchanged") == 9  # pool, 2 queues, 4 deployments, limit, automation
    assert snapshot(server) == before

    assert before["pools"] == [("gpu", "process")]
    names = [d[0] for d in before["deployments"]]
    assert sorted(names) == sorted(DEPLOYMENTS)  # each exactly once
    for name, pool, queue, entrypoint, _ in before["deployments"]:
        assert pool == "gpu"
        # Parents wait for their shards: they never take the slots of the workers that run shards.
        assert queue == ("shards" if name == "embed-shard/embed-shard" else "parents")
        assert entrypoint.startswith("bertflow.flows.")  # module paths: workers run the installed package
    assert [(s[0], s[1], s[2]) for s in before["schedules"]] == [("embed-nightly", "30 3 * * *", "UTC")]
    assert before["limits"] == [("bertflow-gpu", 2)]
    with prefect_client(server) as c:
        nightly = c.read_deployment_by_name("embed-dataset/embed-nightly")
        adhoc = c.read_deployment_by_name("embed-dataset/embed-adhoc")
    assert nightly.parameters["source"] == SOURCE and nightly.parameters["dest"] == DEST
    assert nightly.parameters["pool"] == "gpu" and nightly.parameters["lag_days"] == 1
    assert adhoc.schedules == [] and adhoc.parameters["pool"] == "gpu"

    # Zombie detection: one automation, proactive per flow run, on the heartbeats of these deployments' runs.
    with prefect_client(server) as c:
        [automation] = c.read_automations_by_name("bertflow-crash-dead-runs")
        ids = {c.read_deployment_by_name(name).id for name in DEPLOYMENTS}
    trigger = automation.trigger
    assert automation.enabled and trigger.posture == "Proactive" and trigger.within == timedelta(seconds=90)
    assert trigger.after == {"prefect.flow-run.heartbeat"} and "prefect.flow-run.heartbeat" in trigger.expect
    assert trigger.for_each == {"prefect.resource.id"}
    assert set(trigger.match_related["prefect.resource.id"]) == {f"prefect.deployment.{i}" for i in ids}
    [action] = automation.actions
    assert action.type == "change-flow-run-state" and action.state == "CRASHED"
    env = before["template"]["variables"]["properties"]["env"]["default"]
    assert env == {"PREFECT_FLOWS_HEARTBEAT_FREQUENCY": "30"}  # every run the pool's workers start sends heartbeats

    # A changed option updates only what it touches.
    changed = deploy(server, "--pool", "gpu", "--gpus-per-host", "4")
    assert changed.returncode == 0, changed.stderr
    assert "updated" in changed.stdout and changed.stdout.count("unchanged") == 8
    assert snapshot(server)["limits"] == [("bertflow-gpu", 4)]
    longer = deploy(server, "--pool", "gpu", "--heartbeat-window", "150")
    assert longer.returncode == 0, longer.stderr
    after = snapshot(server)
    [(_, automation_id, trigger_json)] = after["automations"]
    assert automation_id == str(automation.id) and '"within":150.0' in trigger_json.replace(" ", "")
    assert after["template"]["variables"]["properties"]["env"]["default"] == {"PREFECT_FLOWS_HEARTBEAT_FREQUENCY": "50"}


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
        (("--heartbeat-window", "30"), "--heartbeat-window 30: give 60 or more seconds"),
        (("--source-template", "s3:/lake/raw/dt={date}/", "--dest-template", DEST), "write s3://lake/raw/dt={date}/"),
    ],
)
def test_deploy_bad_input_is_one_line(server, args, message):
    r = deploy(server, "--pool", "gpu", *args)
    assert r.returncode == 2
    assert message in r.stderr and len(r.stderr.strip().splitlines()) == 1
