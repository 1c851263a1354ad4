"""`bertflow serve`: the deployments served from one process, no workers, on a Prefect server of its own."""

from __future__ import annotations

import os
import subprocess

import pytest

from bertflow.io import parts
from bertflow.tasks.gpu import host_limit_name
from tests.conftest import BERTFLOW, write_rows
from tests.deployments.service import prefect_client, start_server, stop_process, wait_for


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    proc, url = start_server(tmp_path_factory.mktemp("serve-server"))
    yield url
    stop_process(proc)


def test_serve_runs_adhoc_embedding_in_its_own_process(server, tiny_bert, tmp_path):
    source = write_rows(tmp_path / "raw" / "docs.jsonl", [{"id": i, "text": f"served text {i}"} for i in range(7)])
    dest = tmp_path / "served"
    log = open(tmp_path / "serve.log", "w")
    serving = subprocess.Popen(
        [
            BERTFLOW,
            "serve",
            "--source-template",
            str(tmp_path / "raw-{date}"),
            "--dest-template",
            str(tmp_path / "out-{date}"),
            "--model",
            str(tiny_bert),
        ],
        env={**os.environ, "PREFECT_API_URL": server, "PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL": "INFO"},
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        from prefect.deployments import run_deployment
        from prefect.settings import PREFECT_API_URL, temporary_settings

        def served() -> bool:
            with prefect_client(server) as c:
                names = {d.name for d in c.read_deployments()}
            return {"embed-nightly", "embed-adhoc", "backfill"} <= names

        wait_for(
            served,
            120,
            "bertflow serve to register its deployments",
            diagnostics=lambda: (tmp_path / "serve.log").read_text(),
        )
        with temporary_settings(updates={PREFECT_API_URL: server}):
            run = run_deployment(
                "embed-dataset/embed-adhoc",
                parameters={"source": str(source), "dest": str(dest)},
                timeout=240,
                poll_interval=1,
            )
        assert run.state.is_completed(), (run.state, (tmp_path / "serve.log").read_text()[-4000:])
        assert run.name == "embed-served"
        manifest = parts.read_manifest(str(dest))
        assert manifest.status == "complete" and manifest.totals.rows == 7
        with prefect_client(server) as c:
            deployment = c.read_deployment_by_name("embed-dataset/embed-adhoc")
            limit = c.read_global_concurrency_limit_by_name(host_limit_name())
        assert deployment.work_pool_name is None and "pool" not in deployment.parameters  # embeds in-process
        assert limit.limit == 1 and limit.active_slots == 0  # the served run took this host's GPU slot
    finally:
        stop_process(serving)
