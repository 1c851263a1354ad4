"""The service's Prefect server has basic auth on: no credential, no entry; the credential never leaks."""

from __future__ import annotations

import json
import os
import subprocess

from bertflow.io import storage
from tests.conftest import BERTFLOW
from tests.deployments.service import AUTH, POOL, PREFECT, make_bucket, stop_process, wait_for, write_docs
from tests.s3 import CREDENTIALS

SECRET = AUTH.split(":", 1)[1]


def every(read) -> list:
    """All of what a paged client read returns (flow runs, logs, artifacts) on the server."""
    found: list = []
    while batch := read(limit=200, offset=len(found)):
        found += batch
    return found


def test_without_the_credential_workers_and_the_cli_are_refused(s3, service):
    env = {k: v for k, v in {**os.environ, **service.env}.items() if k != "PREFECT_API_AUTH_STRING"}
    log = open(service.home / "worker-intruder.log", "w")
    intruder = subprocess.Popen(
        [PREFECT, "worker", "start", "--pool", POOL, "--name", "intruder", "--work-queue", "shards"],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        wait_for(lambda: intruder.poll() is not None, 90, "the worker without a credential to give up")
    finally:
        stop_process(intruder)
    assert intruder.returncode != 0
    assert "401" in (service.home / "worker-intruder.log").read_text()
    with service.client() as c:
        assert "intruder" not in {w.name for w in c.read_workers_for_work_pool(POOL)}

    make_bucket()
    source = write_docs("s3://lake/raw-noauth/", 3, "doc")
    for cli_env in ({}, {"PREFECT_API_AUTH_STRING": "bertflow-admin:guess"}):
        r = subprocess.run(
            [BERTFLOW, "embed", source, "s3://lake/noauth/", "--pool", POOL],
            env={**env, **cli_env}, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert r.returncode == 2, r.stdout + r.stderr
        assert "refused this client (401)" in r.stderr and len(r.stderr.strip().splitlines()) == 1
        assert "guess" not in r.stderr
    assert not storage.list_names("s3://lake/noauth/")  # nothing written


def test_with_the_credential_a_deployed_run_completes_and_the_credential_is_nowhere(s3, service):

    make_bucket()
    source, dest = write_docs("s3://lake/raw-authed/", 20, "doc"), "s3://lake/authed/"
    with service.client() as c:
        adhoc = c.read_deployment_by_name("embed-dataset/embed-adhoc")
        run = c.create_flow_run_from_deployment(
            adhoc.id,
            parameters={"source": source, "dest": dest, "config": {"model": str(service.model), "shard_rows": 10}},
        )

    def ended():
        with service.client() as c:
            found = c.read_flow_run(run.id)
        return found if found.state.is_final() else None

    final = wait_for(ended, 300, "the ad hoc run to end", diagnostics=service.diagnostics)
    assert final.state.is_completed(), (final.state, service.diagnostics())
    assert final.work_queue_name == "parents"  # the conductor ran it; its shards ran on w1/w2
    assert {
        r.work_queue_name for r in service.runs("embed-shard/embed-shard") if r.parameters["job"]["dest"] == dest
    } == {"shards"}

    # Nowhere a person or a tool could read it: not in parameters, logs, artifacts, the manifest or process logs.
    secrets = (SECRET, CREDENTIALS["AWS_SECRET_ACCESS_KEY"])
    with service.client() as c:
        seen = [json.dumps(r.parameters) for r in every(c.read_flow_runs)]
        seen += [log.message for log in every(c.read_logs)]
        seen += [json.dumps(a.data, default=str) + (a.description or "") for a in every(c.read_artifacts)]
    seen.append(storage.read_bytes(storage.join(dest, "_manifest.json")).decode())
    seen += [p.read_text(errors="replace") for p in service.home.rglob("*.log")]
    for secret in secrets:
        assert not any(secret in text for text in seen), f"{secret!r} leaked"
