"""How many torch threads this process should run: one per physical core it may use."""

from __future__ import annotations

import math
import os

import torch


def cpu_threads() -> int:
    """Physical cores this process may use: its CPU affinity, one per core, within a cgroup quota."""
    cpus = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else range(os.cpu_count() or 1)
    cores = set()
    for cpu in cpus:  # hyperthreads of one core share its FMA units: count the core once
        try:
            with open(f"/sys/devices/system/cpu/cpu{cpu}/topology/core_id") as f:
                core = f.read().strip()
            with open(f"/sys/devices/system/cpu/cpu{cpu}/topology/physical_package_id") as f:
                cores.add((f.read().strip(), core))
        except OSError:
            cores.add(("", str(cpu)))
    n = len(cores)
    try:
        with open("/sys/fs/cgroup/cpu.max") as f:  # cgroup v2: "<quota> <period>" or "max <period>"
            quota, period = f.read().split()[:2]
        if quota != "max":
            n = min(n, math.ceil(int(quota) / int(period)))
    except (OSError, ValueError):
        pass
    return max(n, 1)


def use_cpu_threads() -> None:
    """One torch thread per physical core given to this process (unless OMP_NUM_THREADS says otherwise).

    More threads than cores makes OpenMP workers wait on each other at every op; torch's own
    default counts every CPU of the machine, not the ones a container or `taskset` grants.
    """
    if os.environ.get("OMP_NUM_THREADS"):
        return
    n = cpu_threads()
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)
