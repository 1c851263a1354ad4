"""Prefect's temporary local server for one command, tied to the command's life.

Without `PREFECT_API_URL` a flow run needs a server; Prefect would start its own temporary one as a
child process that outlives a `bertflow` killed with SIGKILL (or by the OOM killer), keeping its port
and memory. This starts the same server (Prefect's app under uvicorn, on 127.0.0.1, UI off) with
Linux's parent-death signal set, so the kernel stops it whenever this process ends, however it ends.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Iterator

import httpx

from bertflow.processes import die_with, free_port


@contextlib.contextmanager
def temporary_server() -> Iterator[None]:
    """Point Prefect at a temporary server for the block (none when PREFECT_API_URL is set, or off Linux)."""
    import prefect
    from prefect.settings import (
        PREFECT_API_URL,
        PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS,
        get_current_settings,
        temporary_settings,
    )

    if PREFECT_API_URL.value() or not sys.platform.startswith("linux"):
        yield
        return
    port = free_port()
    url = f"http://127.0.0.1:{port}/api"
    parent = os.getpid()
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "uvicorn",
            "--app-dir",
            str(prefect.__module_path__.parent),
            "--factory",
            "prefect.server.api.server:create_app",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--log-level",
            "error",
            "--lifespan",
            "on",
        ],  # fmt: skip
        env={
            **os.environ,
            **get_current_settings().to_environment_variables(exclude_unset=True),
            "PREFECT_UI_ENABLED": "0",
            "PREFECT__SERVER_EPHEMERAL": "1",
            "PREFECT__SERVER_FINAL": "1",
        },
        # Its own session: a Ctrl-C at the terminal reaches bertflow, not the server its shards in flight still
        # report to (bertflow stops it below; it dies with bertflow in any case).
        start_new_session=True,
        preexec_fn=lambda: die_with(parent),
    )
    try:
        deadline = time.monotonic() + PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS.value()
        while True:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            if server.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"Prefect's temporary server on port {port} did not start (exit {server.poll()})")
            time.sleep(0.1)
        with temporary_settings(updates={PREFECT_API_URL: url}):
            yield
    finally:
        # Logs and events of the run still queued in this process go to the server before it stops.
        from prefect.events.worker import EventsWorker
        from prefect.logging.handlers import APILogWorker

        with contextlib.suppress(Exception):
            APILogWorker.drain_all(timeout=10)
            EventsWorker.drain_all(timeout=10)
        server.terminate()
        try:
            server.wait(15)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait(5)
