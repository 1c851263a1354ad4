"""bertflow as a service, for integration tests: a real Prefect server with basic auth on, `bertflow
deploy`, two real `prefect worker start` processes for shards (the `shards` queue) and one for parent
runs (the `parents` queue), with S3 (moto's server) in their environment.

One service per test session (the workers are costly to start): modules that need it import the
`service` fixture from here. Processes run in their own process groups and are stopped on teardown;
their logs stay in files, and `Service.diagnostics()` puts their tails into assertion messages.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from uuid import UUID

import httpx
import pytest

from tests.conftest import free_port, run_cli

PREFECT = str(Path(sys.executable).with_name("prefect"))
POOL = "test-pool"
BUCKET = "lake"
SOURCE_TEMPLATE = f"s3://{BUCKET}/raw/dt={{date}}/"
DEST_TEMPLATE = f"s3://{BUCKET}/embeddings/dt={{date}}/"
WORKERS = ("w1", "w2")  # GPU hosts: the shards queue, two runs each
CONDUCTOR = "conductor"  # parent runs (embed-nightly, embed-adhoc, backfill): the parents queue
AUTH = "bertflow-admin:auth-secret-do-not-log"  # PREFECT_SERVER_API_AUTH_STRING of the service's server
HEARTBEAT_WINDOW = 60  # `bertflow deploy --heartbeat-window`: the shortest Prefect's 30 s heartbeats allow


def descendants(pid: int) -> list[int]:
    """Child processes (recursively) of pid, from /proc."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            children.setdefault(ppid, []).append(int(entry))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def _signal(pids: list[int], sig: int) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)


def stop_process(proc: subprocess.Popen, grace: float = 20) -> None:
    """SIGTERM the process and its descendants (as `systemctl stop` does), SIGKILL what remains."""
    if proc.poll() is not None:
        return
    tree = [proc.pid, *descendants(proc.pid)]
    _signal(tree, signal.SIGTERM)
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        pass
    _signal([proc.pid, *descendants(proc.pid)], signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(10)


def wait_for(predicate, timeout: float, what: str, interval: float = 0.5, diagnostics=lambda: ""):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}\n{diagnostics()}")


def start_server(home: Path, auth: str | None = None) -> tuple[subprocess.Popen, str]:
    """`prefect server start` on a free port (basic auth on with `auth`), healthy; returns the process and its API URL."""
    home.mkdir(parents=True, exist_ok=True)
    port = free_port()
    url = f"http://127.0.0.1:{port}/api"
    env = {
        **os.environ,
        "PREFECT_HOME": str(home),
        "PREFECT_API_URL": url,
        "PREFECT_UI_ENABLED": "false",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        **({"PREFECT_SERVER_API_AUTH_STRING": auth, "PREFECT_API_AUTH_STRING": auth} if auth else {}),
    }
    log = open(home / "server.log", "w")
    proc = subprocess.Popen(
        [PREFECT, "server", "start", "--host", "127.0.0.1", "--port", str(port)],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )

    def healthy() -> bool:
        if proc.poll() is not None:
            raise RuntimeError(f"prefect server exited:\n{(home / 'server.log').read_text()[-3000:]}")
        with contextlib.suppress(httpx.HTTPError):
            return httpx.get(f"{url}/health", timeout=2).status_code == 200
        return False

    wait_for(healthy, 120, "prefect server health")
    return proc, url


@contextlib.contextmanager
def prefect_settings(url: str, auth: str | None = None) -> Iterator[None]:
    """This process's Prefect settings pointed at the server at url, with its credential."""
    from prefect.settings import PREFECT_API_AUTH_STRING, PREFECT_API_URL, temporary_settings

    with temporary_settings(updates={PREFECT_API_URL: url, PREFECT_API_AUTH_STRING: auth}):
        yield


@contextlib.contextmanager
def prefect_client(url: str, auth: str | None = None) -> Iterator:
    """A sync Prefect client on the server at url (whatever the test process's settings say)."""
    from prefect import get_client

    with prefect_settings(url, auth), get_client(sync_client=True) as client:
        yield client


class Service:
    """The server at `url`, the deployments of `bertflow deploy`, and workers w1 and w2."""

    def __init__(
        self,
        url: str,
        home: Path,
        s3_env: dict[str, str],
        model: Path,
        auth: str,
        pool: str = POOL,
        workers: tuple[str, ...] = (*WORKERS, CONDUCTOR),
    ) -> None:
        self.url, self.home, self.model, self.auth = url, home, model, auth
        self.pool, self.names = pool, workers
        self.server: subprocess.Popen | None = None
        self.env = {
            **s3_env,
            "PREFECT_API_URL": url,
            "PREFECT_API_AUTH_STRING": auth,
            "PREFECT_HOME": str(home),
            "HF_HUB_OFFLINE": "1",
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        }
        self.workers: dict[str, subprocess.Popen] = {}

    # --- processes ---------------------------------------------------------------------------
    def deploy(self) -> None:
        r = self.cli(
            "deploy",
            "--pool",
            self.pool,
            "--gpus-per-host",
            "2",
            "--source-template",
            SOURCE_TEMPLATE,
            "--dest-template",
            DEST_TEMPLATE,
            "--model",
            str(self.model),
            "--heartbeat-window",
            str(HEARTBEAT_WINDOW),
        )
        assert r.returncode == 0, r.stdout + r.stderr

    def start_worker(self, name: str) -> None:
        log = open(self.home / f"worker-{name}.log", "a")
        env = {
            **os.environ,
            **self.env,
            "PREFECT_WORKER_QUERY_SECONDS": "1",
            "PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL": "INFO",
            "PREFECT_FLOWS_HEARTBEAT_FREQUENCY": "30",  # as the README starts workers
        }
        # As the README starts them: GPU hosts take shards, at most two at once each (--limit 2), so the
        # pool's shard runs spread over both; the conductor takes parent runs, which wait for shards.
        queue = ["--work-queue", "parents"] if name == CONDUCTOR else ["--work-queue", "shards", "--limit", "2"]
        self.workers[name] = subprocess.Popen(
            [PREFECT, "worker", "start", "--pool", self.pool, "--name", name, *queue, "--type", "process"],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def workers_ready(self) -> None:
        """Every worker running and polling (restarting one a test stopped)."""
        names = self.names
        for name in names:
            proc = self.workers.get(name)
            if proc is None or proc.poll() is not None:
                self.start_worker(name)

        def online() -> bool:
            with self.client() as c:
                found = {w.name: w.status for w in c.read_workers_for_work_pool(self.pool)}
            return all(str(found.get(n, "")).upper().endswith("ONLINE") for n in names) and all(
                self.workers[n].poll() is None for n in names
            )

        wait_for(online, 90, f"workers {', '.join(names)} online", diagnostics=self.diagnostics)

    def stop(self) -> None:
        for proc in self.workers.values():
            stop_process(proc)
        if self.server is not None:
            stop_process(self.server)

    def cli(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
        return run_cli(*args, env=self.env, timeout=timeout)

    # --- reading the server -----------------------------------------------------------------
    def client(self):
        return prefect_client(self.url, self.auth)

    def settings(self):
        """This process's Prefect settings pointed at the service (for Prefect calls outside a client)."""
        return prefect_settings(self.url, self.auth)

    def runs(self, deployment: str, tags: tuple[str, ...] = ()) -> list:
        """Flow runs of a deployment ('flow/name'), oldest first."""
        from prefect.client.schemas.filters import (
            DeploymentFilter,
            DeploymentFilterId,
            FlowRunFilter,
            FlowRunFilterTags,
        )
        from prefect.client.schemas.sorting import FlowRunSort

        found: list = []
        with self.client() as c:
            dep = c.read_deployment_by_name(deployment)
            while batch := c.read_flow_runs(
                deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[dep.id])),
                flow_run_filter=FlowRunFilter(tags=FlowRunFilterTags(all_=list(tags))) if tags else None,
                sort=FlowRunSort.EXPECTED_START_TIME_ASC,
                limit=200,
                offset=len(found),
            ):
                found += batch
        return found

    def logs(self, run_id: UUID) -> list:
        from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId
        from prefect.client.schemas.sorting import LogSort

        with self.client() as c:
            return c.read_logs(LogFilter(flow_run_id=LogFilterFlowRunId(any_=[run_id])), sort=LogSort.TIMESTAMP_ASC)

    def diagnostics(self) -> str:
        """Tails of the worker and server logs, for assertion messages."""
        parts = []
        for path in sorted(self.home.rglob("*.log")):
            parts.append(f"--- {path.name} ---\n{path.read_text(errors='replace')[-4000:]}")
        return "\n".join(parts)


_SERVICE: Service | None = None


@pytest.fixture(scope="session")
def service(s3_server, tiny_bert, tmp_path_factory) -> Iterator[Service]:
    """The shared service (a server with auth, deployments, three workers), started once per session."""
    global _SERVICE
    if _SERVICE is None:
        home = tmp_path_factory.mktemp("service")
        server, url = start_server(home / "server", auth=AUTH)
        svc = Service(url, home, s3_server.env, tiny_bert, AUTH)
        svc.server = server
        svc.deploy()
        _SERVICE = svc
    _SERVICE.workers_ready()
    yield _SERVICE
    if _SERVICE is not None:
        _SERVICE.stop()
        _SERVICE = None


def write_docs(source: str, rows: int, prefix: str) -> str:
    """SOURCE: one JSONL file of `rows` short texts with ids `{prefix}-{i}`; returns SOURCE."""
    import json

    from bertflow.io import storage

    lines = "".join(
        json.dumps(
            {"id": f"{prefix}-{i}", "text": f"Document {i} of {prefix}: the quick brown fox jumps over the lazy dog."}
        )
        + "\n"
        for i in range(rows)
    )
    storage.write_atomic(storage.join(source, "docs.jsonl"), lines.encode())
    return source


def write_day(day: str, rows: int) -> str:
    """SOURCE of one day of the nightly templates."""
    return write_docs(SOURCE_TEMPLATE.replace("{date}", day), rows, day)


def make_bucket() -> None:
    from bertflow.io import storage

    fs, _ = storage.filesystem(f"s3://{BUCKET}/")
    if not fs.exists(BUCKET):
        fs.mkdir(BUCKET)
