"""What counts as one host for the GPU limit."""

from __future__ import annotations

import socket
from pathlib import Path

from bertflow.tasks.gpu import host_key, host_limit_name


def test_the_node_name_given_by_the_deployment_wins(monkeypatch):
    monkeypatch.setenv("BERTFLOW_GPU_HOST", "gpu-node-7")  # e.g. spec.nodeName through the downward API
    assert host_key() == "gpu-node-7" and host_limit_name() == "bertflow-gpu-gpu-node-7"


def test_by_default_the_hostname_and_the_machine_id_together(monkeypatch):
    monkeypatch.delenv("BERTFLOW_GPU_HOST", raising=False)
    key = host_key()
    assert key.startswith(socket.gethostname())
    if Path("/etc/machine-id").is_file() and Path("/etc/machine-id").read_text().strip():
        assert key != socket.gethostname()  # a clone with the same hostname gets a limit of its own
