"""What orchestration costs per shard: N shard runs through 4 process workers, PostgreSQL vs SQLite.

For each backend: a real `prefect server start` (on PostgreSQL through `bertflow dev-server`'s
code, or on its default SQLite), `bertflow deploy`, 4 `prefect worker start` processes on the
`shards` queue (`--limit 1` each, `--gpus-per-host 4`), moto's S3, and one `bertflow embed --pool`
of a tiny random BERT over N two-row shards, so model time is small and what is left is
orchestration. Reported per shard:

- scheduling latency: the shard run's creation (the parent submitted it) to its Running state;
- API calls: HTTP requests in the server's access log during the run (uvicorn logs each one at
  INFO), less the idle polling of the workers measured before, by endpoint;
- server CPU seconds: the Prefect server process (and, on PostgreSQL, every postgres process),
  from /proc, over the run;
- parent overhead: the parent's wall time less the span its shard runs were running (planning,
  submitting, polling, reading footers, the manifest);
- host CPU seconds: every process of this machine (the shard processes' start-up, imports and
  model load dominate), from /proc/stat.

    python benchmarks/orchestration.py [--shards 200] [--workers 4] [--backends postgres sqlite]

Writes benchmarks/results/orchestration.{json,md}. docs/scale.md extrapolates from these figures.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path

import httpx
from common import BERTFLOW, QUIET_ENV, RESULTS, cpu_model, git_state, say, table, write_results
from corpus import build_tiny_bert
from s3server import free_port, moto_s3

from bertflow.io import storage

PREFECT = str(Path(sys.executable).with_name("prefect"))
POOL = "bench"
ACCESS = re.compile(r'"(GET|POST|PATCH|PUT|DELETE) (/api/[^ ?"]*)')
UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pids: list[int]) -> float:
    """utime + stime of the processes (and of their waited-for children)."""
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += sum(int(x) for x in fields[11:15])  # utime stime cutime cstime
    return total / TICK


def host_busy_seconds() -> float:
    fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = fields[3] + fields[4]
    return (sum(fields[:8]) - idle) / TICK


def postgres_pids() -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if Path(f"/proc/{entry}/comm").read_text().strip() in ("postgres", "postmaster"):
                    found.append(int(entry))
            except OSError:
                pass
    return found


def api_calls(log: Path, start: int, end: int) -> Counter:
    """Requests in the server's access log between two byte offsets, by method and endpoint (ids folded)."""
    with open(log, "rb") as f:
        f.seek(start)
        text = f.read(end - start).decode(errors="replace")
    return Counter(f"{m} {UUID.sub('{id}', p)}" for m, p in ACCESS.findall(text))


class Backend:
    """A Prefect server on one database, its log, and the processes whose CPU counts as the server's."""

    def __init__(self, name: str, work: Path) -> None:
        self.name, self.work = name, work
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/api"
        self.log = work / f"server-{name}.log"
        self.devserver = None
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        os.environ["PREFECT_SERVER_LOGGING_LEVEL"] = "INFO"  # uvicorn's access log: one line per request
        if self.name == "postgres":
            from bertflow.deployments.devserver import DevServer

            self.devserver = DevServer(self.work / "pg", self.port, auth=False, server_log=self.log)
            self.devserver.start()
        else:
            env = {**os.environ, **QUIET_ENV, "PREFECT_HOME": str(self.work / "sqlite-home")}
            env.pop("PREFECT_API_URL", None)
            self.proc = subprocess.Popen(
                [PREFECT, "server", "start", "--host", "127.0.0.1", "--port", str(self.port)],
                env=env,
                stdout=open(self.log, "a"),
                stderr=subprocess.STDOUT,
            )
            deadline = time.monotonic() + 120
            while True:
                try:
                    if httpx.get(f"{self.url}/health", timeout=2).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if time.monotonic() > deadline:
                    raise SystemExit(f"the SQLite server did not start; see {self.log}")
                time.sleep(0.5)

    def server_pids(self) -> list[int]:
        if self.devserver is not None:
            assert self.devserver.prefect is not None
            return [self.devserver.prefect.pid, *postgres_pids()]
        assert self.proc is not None
        return [self.proc.pid]

    def stop(self) -> None:
        if self.devserver is not None:
            self.devserver.stop()
        if self.proc is not None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(30)


def run_backend(name: str, shards: int, workers: int, model: Path, work: Path) -> dict:
    backend = Backend(name, work)
    backend.start()
    env = {**os.environ, **QUIET_ENV, "PREFECT_API_URL": backend.url, "PREFECT_HOME": str(work / f"client-{name}")}
    procs: list[subprocess.Popen] = []
    try:
        subprocess.run(
            [BERTFLOW, "deploy", "--pool", POOL, "--gpus-per-host", str(workers), "--model", str(model)],
            env=env, check=True, capture_output=True,
        )  # fmt: skip
        for i in range(workers):
            procs.append(
                subprocess.Popen(
                    [PREFECT, "worker", "start", "--pool", POOL, "--work-queue", "shards", "--limit", "1",
                     "--name", f"bench-{i}", "--type", "process"],
                    env={**env, "PREFECT_WORKER_QUERY_SECONDS": "2"},
                    stdout=open(work / f"worker-{name}-{i}.log", "a"), stderr=subprocess.STDOUT,
                )
            )  # fmt: skip
        time.sleep(20)  # workers online and polling
        idle_from, idle_t, idle_cpu = backend.log.stat().st_size, time.monotonic(), cpu_seconds(backend.server_pids())
        time.sleep(30)
        idle = api_calls(backend.log, idle_from, backend.log.stat().st_size)
        idle_rate = sum(idle.values()) / (time.monotonic() - idle_t)
        idle_cpu_rate = (cpu_seconds(backend.server_pids()) - idle_cpu) / (time.monotonic() - idle_t)

        source, dest = f"s3://bench/{name}/src/", f"s3://bench/{name}/out/"
        rows = [json.dumps({"id": f"d{i}", "text": f"document {i}: a few words"}) for i in range(shards * 2)]
        storage.write_atomic(storage.join(source, "docs.jsonl"), ("\n".join(rows) + "\n").encode())
        log_from, cpu_from, host_from = (
            backend.log.stat().st_size,
            cpu_seconds(backend.server_pids()),
            host_busy_seconds(),
        )
        started = time.monotonic()
        r = subprocess.run(
            [BERTFLOW, "embed", source, dest, "--pool", POOL, "--model", str(model), "--shard-rows", "2",
             "--device", "cpu", "--shards-per-run", "1"],  # one run per shard: the per-run overhead is what is measured
            env=env, capture_output=True, text=True,
        )  # fmt: skip
        wall = time.monotonic() - started
        if r.returncode != 0:
            raise SystemExit(f"{name}: embed failed\n{r.stdout[-2000:]}\n{r.stderr[-2000:]}")
        server_cpu = cpu_seconds(backend.server_pids()) - cpu_from
        host_cpu = host_busy_seconds() - host_from
        calls = api_calls(backend.log, log_from, backend.log.stat().st_size)
        runs = read_shard_runs(backend.url)
    finally:
        for p in procs:
            p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                p.kill()
        backend.stop()
    latency = [(r["start"] - r["created"]) for r in runs]
    queued = [(r["pending"] - r["created"]) for r in runs]
    starting = [(r["start"] - r["pending"]) for r in runs]
    span = max(r["end"] for r in runs) - min(r["created"] for r in runs)
    total_calls = sum(calls.values())
    return {
        "backend": name,
        "shards": len(runs),
        "workers": workers,
        "wall_seconds": round(wall, 1),
        "shards_per_minute": round(60 * len(runs) / wall, 1),
        "latency_seconds": spread(latency),
        "queued_seconds": spread(queued),  # created -> Pending: waiting for a worker's free slot and its poll
        "starting_seconds": spread(starting),  # Pending -> Running: the run's process starts and imports
        "shard_run_seconds_median": round(statistics.median(r["end"] - r["start"] for r in runs), 2),
        "api_calls_total": total_calls,
        "api_calls_idle_per_second": round(idle_rate, 2),
        "api_calls_per_shard": round((total_calls - idle_rate * wall) / len(runs), 1),
        "api_calls_top": calls.most_common(12),
        "server_cpu_seconds": round(server_cpu, 1),
        "server_cpu_idle_per_second": round(idle_cpu_rate, 3),
        "server_cpu_seconds_per_shard": round((server_cpu - idle_cpu_rate * wall) / len(runs), 3),
        "parent_overhead_seconds": round(wall - span, 1),
        "host_cpu_seconds_per_shard": round(host_cpu / len(runs), 2),
    }


def spread(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    return {
        "median": round(statistics.median(ordered), 2),
        "p90": round(ordered[int(0.9 * (len(ordered) - 1))], 2),
        "max": round(ordered[-1], 2),
    }


def read_shard_runs(url: str) -> list[dict]:
    from prefect import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    found: list = []
    with temporary_settings(updates={PREFECT_API_URL: url}), get_client(sync_client=True) as c:
        dep = c.read_deployment_by_name("embed-shard/embed-shard")
        from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId

        while batch := c.read_flow_runs(
            deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[dep.id])), limit=200, offset=len(found)
        ):
            found += batch
        runs = []
        for r in found:
            if r.state is None or not r.state.is_completed():
                continue
            pending = [st.timestamp for st in c.read_flow_run_states(r.id) if st.type.value == "PENDING"]
            runs.append(
                {
                    "created": r.created.timestamp(),
                    "pending": (pending[0] if pending else r.start_time).timestamp(),
                    "start": r.start_time.timestamp(),
                    "end": r.end_time.timestamp(),
                }
            )
    return runs


def render(report: dict) -> str:
    rows = []
    for b in report["backends"]:
        rows.append(
            [
                b["backend"], str(b["shards"]), f"{b['wall_seconds']:.0f} s", f"{b['shards_per_minute']:.1f}",
                f"{b['latency_seconds']['median']:.1f} / {b['latency_seconds']['p90']:.1f} s",
                f"{b['queued_seconds']['median']:.1f} s",
                f"{b['starting_seconds']['median']:.1f} s",
                f"{b['api_calls_per_shard']:.0f}", f"{b['server_cpu_seconds_per_shard']:.3f} s",
                f"{b['parent_overhead_seconds']:.0f} s", f"{b['host_cpu_seconds_per_shard']:.1f} s",
            ]
        )  # fmt: skip
    lines = [
        f"# Orchestration cost per shard ({report['workers']} process workers, {report['machine']})",
        "",
        *table(
            [
                "database",
                "shards",
                "wall",
                "shards/min",
                "latency median / p90",
                "of which queued",
                "of which process start",
                "API calls per shard",
                "server CPU per shard",
                "parent overhead",
                "host CPU per shard",
            ],
            "lrrrrrrrrrr",
            rows,
        ),  # fmt: skip
        "",
        "Latency: shard run created (submitted by the parent) to Running; queued: created to Pending (a worker",
        "took it: waiting for a free slot and the next poll); process start: Pending to Running (the run's own",
        "process starts and imports bertflow, torch, Prefect). API calls and server CPU (the Prefect server",
        "and, on PostgreSQL, every postgres process): over the run, less the idle rate measured before with",
        "the workers polling. Parent overhead: the parent's wall time less the span from the first shard run's",
        "creation to the last one's end. Host CPU: every process of the machine over the run, per shard.",
        "",
    ]
    for b in report["backends"]:
        lines += [f"Most frequent calls on {b['backend']}:", ""]
        lines += table(["endpoint", "calls"], "lr", [[e, str(n)] for e, n in b["api_calls_top"]])
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shards", type=int, default=200)
    ap.add_argument("--workers", type=int, default=4)
    ap.add_argument("--backends", nargs="+", default=["postgres", "sqlite"], choices=["postgres", "sqlite"])
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bertflow-orch-"))
    work.chmod(0o755)  # as root, PostgreSQL's user must reach its data dir
    model = build_tiny_bert(work / "tiny-bert")
    results = []
    with moto_s3():
        fs, _ = storage.filesystem("s3://bench/")
        fs.mkdir("bench")
        for name in args.backends:
            say(f"{name}: {args.shards} shards through {args.workers} workers")
            results.append(run_backend(name, args.shards, args.workers, model, work))
            say(json.dumps({k: v for k, v in results[-1].items() if k != "api_calls_top"}))
    report = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": f"{os.cpu_count()} cores, {cpu_model()}",
        "workers": args.workers,
        "git": git_state(),
        "backends": results,
    }
    write_results(args.out, "orchestration", report, render(report))
    say(render(report))


if __name__ == "__main__":
    main()
