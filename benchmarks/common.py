"""Helpers the benchmark scripts share: paths, the CPU meter, machine and git facts, result files, tables.

The scripts are run as files (`python benchmarks/memory.py`), so this directory is first on
sys.path and they import this module as `common`. Nothing heavy is imported at module level:
throughput.py sets environment variables before torch and Prefect load.
"""

from __future__ import annotations

import json
import platform
import subprocess
import sys
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
RESULTS = HERE / "results"
BERTFLOW = str(Path(sys.executable).with_name("bertflow"))
MB = 1 << 20
# What every benchmarked run gets besides its own PREFECT_HOME: no telemetry, no Hub look-ups.
QUIET_ENV = {"PREFECT_SERVER_ANALYTICS_ENABLED": "false", "HF_HUB_OFFLINE": "1"}


def say(msg: str) -> None:
    print(msg, flush=True)


def mib(n: float) -> str:
    return f"{n / MB:,.0f} MiB"


def table(header: Sequence[str], align: str, rows: Iterable[Sequence[str]]) -> list[str]:
    """Markdown table lines; `align` has one letter per column, l (left) or r (right)."""
    rule = "|" + "".join("---:|" if a == "r" else "---|" for a in align)
    return [_cells(header), rule, *(_cells(r) for r in rows)]


def _cells(cells: Sequence[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def write_results(out: Path, name: str, report: dict, md: str) -> None:
    """OUT/NAME.json (the report, indented) and OUT/NAME.md (the rendered tables)."""
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / f"{name}.md").write_text(md)


def git_state() -> dict:
    """The commit measured, and whether the working tree had uncommitted changes (editable install)."""

    def git(*a: str) -> str:
        try:
            return subprocess.run(["git", *a], cwd=REPO, capture_output=True, text=True, timeout=30).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""

    return {"commit": git("rev-parse", "HEAD"), "dirty_files": len(git("status", "--porcelain").splitlines())}


def cpu_model() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        info = dict(line.split(":", 1) for line in out.splitlines() if ":" in line)
        flags = info.get("Flags", "")
        isa = [f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16") if f in flags.split()]
        return f"{info.get('Model name', '?').strip()} ({', '.join(isa)})"
    except (OSError, subprocess.CalledProcessError, ValueError):
        return platform.processor() or "?"


class CpuMeter:
    """CPU time of this process tree and of everything else on the machine, over one measurement."""

    def __init__(self, *extra_pids: int) -> None:
        import psutil

        self.psutil = psutil
        self.ours = [psutil.Process()] + [psutil.Process(p) for p in extra_pids]

    def _sample(self) -> tuple[float, list[float]]:
        t = self.psutil.cpu_times()
        busy = t.user + t.nice + t.system + getattr(t, "irq", 0) + getattr(t, "softirq", 0)
        ours = []
        for p in self.ours:
            try:
                c = p.cpu_times()
                ours.append(c.user + c.system)
            except self.psutil.Error:
                ours.append(0.0)
        return busy, ours

    def __enter__(self) -> CpuMeter:
        self.t0, (self.busy0, self.ours0) = time.perf_counter(), self._sample()
        return self

    def __exit__(self, *exc) -> None:
        busy, ours = self._sample()
        self.seconds = time.perf_counter() - self.t0
        used = [b - a for a, b in zip(self.ours0, ours)]
        self.self_cpu, self.helpers_cpu = used[0], used[1:]  # seconds of CPU: this process, each helper
        self.others_cores = max(0.0, (busy - self.busy0) - sum(used)) / self.seconds
