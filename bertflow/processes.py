"""Child processes that must not outlive bertflow (a temporary Prefect server, `bertflow dev-server`'s
PostgreSQL and Prefect), and the loopback ports they listen on."""

from __future__ import annotations

import ctypes
import os
import signal
import socket

PR_SET_PDEATHSIG = 1  # prctl: the signal a child gets when its parent dies (Linux)


def die_with(parent: int) -> None:
    """In the child, before exec: get SIGTERM when the parent dies (and exit if it already has)."""
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != parent:
        os._exit(1)


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
