"""`bertflow dev-server`: a real PostgreSQL (the distribution's binaries) and `prefect server start` on it,
with three real process workers fanning out a 20-shard run, then stopped and started again on its data."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from bertflow.deployments.devserver import find_postgres
from bertflow.errors import InputError
from tests.conftest import BERTFLOW, free_port, run_cli
from tests.deployments.service import Service, descendants, make_bucket, stop_process, wait_for, write_docs
from tests.flows.test_fanout import worker_of

pytestmark = pytest.mark.slow

PG_POOL = "pg-pool"
PG_WORKERS = ("pg1", "pg2", "pg3")

try:
    find_postgres()
    MISSING = None
except InputError as e:
    MISSING = f"{e} (.ci/run installs them, so CI never skips this)"


class DevServer:
    """`bertflow dev-server` as a user starts it, in the foreground of its own process."""

    def __init__(self, data: Path, port: int) -> None:
        self.data, self.port = data, port
        self.url = f"http://127.0.0.1:{port}/api"
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        log = open(self.data.parent / f"{self.data.name}.log", "a")
        self.proc = subprocess.Popen(
            [BERTFLOW, "dev-server", "--port", str(self.port), "--data-dir", str(self.data)],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

        def healthy() -> bool:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(f"dev-server exited {self.proc.returncode}:\n{self.output()[-3000:]}")
            try:
                return httpx.get(f"{self.url}/health", timeout=2, auth=self.basic_auth()).status_code == 200
            except (httpx.HTTPError, OSError):
                return False

        wait_for(healthy, 180, "bertflow dev-server healthy", interval=1, diagnostics=self.output)

    def basic_auth(self) -> tuple[str, str] | None:
        path = self.data / "api-auth"
        return ("bertflow", path.read_text().strip()) if path.exists() else None

    @property
    def auth(self) -> str:
        return (self.data / "api-auth").read_text().strip()

    def output(self) -> str:
        path = self.data.parent / f"{self.data.name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def tree(self) -> list[int]:
        assert self.proc is not None
        return [self.proc.pid, *descendants(self.proc.pid)]


@pytest.fixture(scope="module")
def dev_server() -> Iterator[DevServer]:
    if MISSING:
        pytest.skip(MISSING)
    # Under /tmp, not pytest's 0700 folder: as root, PostgreSQL runs as an unprivileged user who must reach it.
    data = Path(tempfile.mkdtemp(prefix="bertflow-dev-server-")) / "data"
    data.parent.chmod(0o755)
    server = DevServer(data, free_port())
    server.start()
    yield server
    if server.proc is not None:
        stop_process(server.proc, grace=40)


@pytest.fixture(scope="module")
def pg_service(dev_server, s3_server, tiny_bert, tmp_path_factory) -> Iterator[Service]:
    home = tmp_path_factory.mktemp("pg-service")
    svc = Service(dev_server.url, home, s3_server.env, tiny_bert, dev_server.auth, pool=PG_POOL, workers=PG_WORKERS)
    svc.deploy()
    svc.workers_ready()
    yield svc
    svc.stop()


def test_dev_server_runs_postgres_as_an_unprivileged_user_on_localhost_with_a_password(dev_server):
    data = dev_server.data
    assert (data / "pgdata" / "PG_VERSION").exists()
    for secret in ("pg-password", "api-auth"):
        assert (data / secret).stat().st_mode & 0o777 == 0o600
    password = (data / "pg-password").read_text().strip()
    printed = dev_server.output()
    assert f"export PREFECT_API_URL={dev_server.url}" in printed
    assert password not in printed and dev_server.auth not in printed
    postgres = [p for p in dev_server.tree() if Path(f"/proc/{p}/comm").read_text().strip() == "postgres"]
    assert postgres, dev_server.output()
    uids = {int(Path(f"/proc/{p}/status").read_text().split("Uid:")[1].split()[0]) for p in postgres}
    if os.geteuid() == 0:
        assert 0 not in uids  # initdb and postgres refuse root: they run as the postgres user
    # The Prefect server got the database from its environment: no password on any command line.
    for pid in dev_server.tree():
        assert password not in Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
    # The API refuses a client without the credential.
    assert httpx.post(f"{dev_server.url}/flows/filter", timeout=5, json={}).status_code == 401


def test_twenty_shards_over_three_workers_on_postgres_complete_exactly_once(s3, pg_service):
    make_bucket()
    source, dest = write_docs("s3://lake/pg/src/", 40, "pg"), "s3://lake/pg/out/"
    r = pg_service.cli(
        "embed", source, dest, "--model", str(pg_service.model), "--shard-rows", "2", "--pool", PG_POOL,
        "--shards-per-run", "1", timeout=900,
    )  # fmt: skip
    assert r.returncode == 0, r.stdout + r.stderr + pg_service.diagnostics()
    v = pg_service.cli("verify", dest, "--source", source)
    assert v.returncode == 0, v.stdout + v.stderr
    runs = pg_service.runs("embed-shard/embed-shard")
    completed = [run for run in runs if run.state.is_completed()]
    assert sorted(run.name for run in completed) == sorted(f"shard-{i}-of-20" for i in range(20))
    ran_on = {worker_of(pg_service, run) for run in completed}
    assert len(ran_on) >= 2 and ran_on <= set(PG_WORKERS), ran_on  # the pool's shards spread over its workers


def test_bad_data_dir_is_one_line_and_creates_nothing(tmp_path):
    afile = tmp_path / "afile"
    afile.write_text("x")
    r = run_cli("dev-server", "--data-dir", str(afile), "--port", str(free_port()), timeout=60)
    assert r.returncode == 2 and "is a file" in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    if os.geteuid() == 0 and not MISSING:  # pytest's tmp folders are 0700: the postgres user cannot enter them
        inside = tmp_path / "nested" / "data"
        r = run_cli("dev-server", "--data-dir", str(inside), "--port", str(free_port()), timeout=60)
        assert r.returncode == 2 and "chmod o+x" in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
        assert not inside.exists()


def test_sigterm_stops_both_and_the_next_start_reuses_the_data(dev_server, pg_service):
    pg_service.stop()
    with pg_service.client() as c:
        deployment = c.read_deployment_by_name("embed-shard/embed-shard")
    tree = dev_server.tree()
    assert dev_server.proc is not None
    dev_server.proc.send_signal(signal.SIGTERM)
    assert dev_server.proc.wait(60) == 0, dev_server.output()[-3000:]
    time.sleep(1)
    alive = [p for p in tree if Path(f"/proc/{p}").exists()]
    assert not alive, [Path(f"/proc/{p}/cmdline").read_bytes() for p in alive]
    assert "database system is shut down" in (dev_server.data / "postgres.log").read_text()

    dev_server.start()  # same data dir, same credentials
    with pg_service.client() as c:
        again = c.read_deployment_by_name("embed-shard/embed-shard")
        pool = c.read_work_pool(PG_POOL)
    assert again.id == deployment.id and pool.name == PG_POOL
    assert json.loads(json.dumps(again.parameter_openapi_schema)) == deployment.parameter_openapi_schema
