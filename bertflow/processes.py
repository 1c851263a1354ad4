"""Child processes that must not outlive bertflow (a temporary Prefect server, `bertflow dev-server`'s
PostgreSQL and Prefect), the loopback ports they listen on, and how long this process has lived."""

from __future__ import annotations

import ctypes
import os
import signal
import socket
import threading

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


def age() -> float | None:
    """Seconds since this process started (Linux: /proc); None where that cannot be read."""
    try:
        with open("/proc/self/stat") as f:
            started_ticks = int(f.read().rsplit(")", 1)[1].split()[19])  # field 22, after the command name
        with open("/proc/uptime") as f:
            uptime = float(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    return max(0.0, uptime - started_ticks / os.sysconf("SC_CLK_TCK"))


class StartUp:
    """How long this process took to start (`age` when first noted: its start, imports), told once."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._seconds: float | None = None
        self._told = False

    def note(self) -> None:
        """Note the process's age now, unless noted before."""
        with self._lock:
            if self._seconds is None:
                self._seconds = age() or 0.0

    def take(self) -> float | None:
        """The seconds noted, on the first call after `note`; None on every other."""
        with self._lock:
            if self._seconds is None or self._told:
                return None
            self._told = True
            return self._seconds
