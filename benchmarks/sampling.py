"""Run a command while sampling the RSS of its process tree (psutil, or /proc on Linux without it)."""

from __future__ import annotations

import os
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

try:
    import psutil
except ImportError:  # Linux fallback: read /proc directly
    psutil = None

SAMPLER = "psutil" if psutil is not None else "/proc"


def _tree_pids(pid: int) -> list[int]:
    """pid and all its descendants (Linux /proc)."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        try:
            for task in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{task}/children") as f:
                    todo.extend(int(c) for c in f.read().split())
        except OSError:
            continue
    return out


def _proc_rss(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, IndexError, ValueError):
        return 0


def _proc_name(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return "?"


def sample_tree(pid: int) -> tuple[int, int, dict[int, tuple[str, int]]]:
    """(RSS of pid alone, RSS of pid + descendants summed, {pid: (command line, RSS)})."""
    procs: dict[int, tuple[str, int]] = {}
    if psutil is not None:
        try:
            root = psutil.Process(pid)
            members = [root, *root.children(recursive=True)]
        except psutil.Error:
            return 0, 0, {}
        for p in members:
            try:
                procs[p.pid] = (" ".join(p.cmdline()), p.memory_info().rss)
            except psutil.Error:
                continue
    else:
        for p in _tree_pids(pid):
            procs[p] = (_proc_name(p), _proc_rss(p))
    own = procs.get(pid, ("", 0))[1]
    return own, sum(r for _, r in procs.values()), procs


def _short(cmdline: str) -> str:
    if "uvicorn" in cmdline or "prefect.server" in cmdline:
        return "prefect server (uvicorn)"
    return cmdline[:60] or "?"


def _parts(dest: Path | None) -> int:
    if dest is None or not dest.is_dir():
        return 0
    return sum(1 for n in os.listdir(dest) if n.startswith("part-") and n.endswith(".parquet"))


@dataclass
class Sampled:
    """What the sampler saw while one command ran."""

    argv: list[str]
    returncode: int = 0
    wall_s: float = 0.0
    peak_process: int = 0
    peak_tree: int = 0
    peak_tree_at_s: float = 0.0
    peak_children: dict[str, int] = field(default_factory=dict)  # short name -> peak RSS
    samples: int = 0
    timeline: list[tuple[float, int, int, int]] = field(default_factory=list)  # t, process, tree, parts
    load: list[float] = field(default_factory=list)  # 1-minute load average, once per sample

    def add(self, pid: int, started: float, dest: Path | None) -> None:
        """One sample of pid's tree (run started at perf_counter `started`) and of the parts in dest."""
        own, tree, procs = sample_tree(pid)
        t = time.perf_counter() - started
        n_parts = _parts(dest)
        self.samples += 1
        self.load.append(os.getloadavg()[0])
        self.timeline.append((round(t, 2), own, tree, n_parts))
        self.peak_process = max(self.peak_process, own)
        if tree > self.peak_tree:
            self.peak_tree, self.peak_tree_at_s = tree, round(t, 2)
        for p, (cmd, rss) in procs.items():
            if p != pid:
                name = _short(cmd)
                self.peak_children[name] = max(self.peak_children.get(name, 0), rss)


def run_sampled(argv: list[str], env: dict, log: Path, interval: float, dest: Path | None = None) -> Sampled:
    """Run argv, sampling its process tree's RSS every `interval` s until it exits."""
    result = Sampled(argv=argv)
    with open(log, "wb") as out:
        started = time.perf_counter()
        proc = subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT)
        stop = threading.Event()

        def sampler() -> None:
            while not stop.is_set():
                result.add(proc.pid, started, dest)
                stop.wait(interval)

        thread = threading.Thread(target=sampler, daemon=True)
        thread.start()
        result.returncode = proc.wait()
        result.wall_s = time.perf_counter() - started
        stop.set()
        thread.join()
    return result
