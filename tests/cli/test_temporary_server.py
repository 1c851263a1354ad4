"""`bertflow embed` without PREFECT_API_URL runs on a temporary Prefect server that dies with it, even on SIGKILL."""

from __future__ import annotations

import os
import signal
import subprocess

from tests.conftest import BERTFLOW, write_rows
from tests.deployments.service import descendants, stop_process, wait_for


def test_a_killed_command_leaves_no_temporary_server_behind(tiny_bert, tmp_path):
    source = write_rows(tmp_path / "docs.jsonl", [{"id": i, "text": f"a text about foxes {i}"} for i in range(4000)])
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    env["PREFECT_HOME"] = str(tmp_path / "prefect-home")
    cli = subprocess.Popen(
        [BERTFLOW, "embed", str(source), str(tmp_path / "out"), "--model", str(tiny_bert), "--shard-rows", "500"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip

    def server_child() -> int | None:
        for pid in descendants(cli.pid):
            try:
                cmdline = open(f"/proc/{pid}/cmdline", "rb").read().replace(b"\0", b" ")
            except OSError:
                continue
            if b"uvicorn" in cmdline and b"create_app" in cmdline:
                return pid
        return None

    try:
        server = wait_for(server_child, 120, "the temporary server to start")
        wait_for(lambda: (tmp_path / "out").exists(), 120, "the run to begin writing DEST")
        os.kill(cli.pid, signal.SIGKILL)  # as the OOM killer does: no handler runs, no atexit
        cli.wait(10)

        def gone() -> bool:
            try:
                state = open(f"/proc/{server}/stat").read().rsplit(")", 1)[1].split()[0]
            except OSError:
                return True
            return state == "Z"

        wait_for(gone, 30, f"the temporary server (pid {server}) to stop")
    finally:
        stop_process(cli)
