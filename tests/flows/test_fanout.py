"""`bertflow embed --pool`: shards fanned out as embed-shard runs over two real workers, S3 via moto."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import threading
import time

import s3fs

from bertflow.io import parts, storage
from bertflow.io.verify import verify_dest
from bertflow.tasks.gpu import host_limit_name
from tests.conftest import BERTFLOW
from tests.deployments.service import POOL, descendants, make_bucket, stop_process, wait_for, write_docs

SHARD = "embed-shard/embed-shard"


def shard_runs(svc, dest: str) -> list:
    return [r for r in svc.runs(SHARD) if r.parameters.get("job", {}).get("dest") == dest]


def parent_runs(svc, name: str) -> list:
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterName

    with svc.client() as c:
        runs = c.read_flow_runs(flow_run_filter=FlowRunFilter(name=FlowRunFilterName(any_=[name])))
    return sorted(runs, key=lambda r: r.start_time or r.expected_start_time)


def worker_of(svc, run) -> str:
    """The worker that ran a shard, as the shard run logged it."""
    for log in svc.logs(run.id):
        if m := re.search(r"on host \S+, worker (\S+), pid \d+", log.message):
            return m.group(1)
    return "?"


def test_fan_out_runs_every_shard_once_on_both_workers(s3, service):
    make_bucket()
    source, dest = write_docs("s3://lake/raw-fanned/", 60, "doc"), "s3://lake/fanned/"

    r = service.cli("embed", source, dest, "--model", str(service.model), "--shard-rows", "10", "--pool", POOL)
    assert r.returncode == 0, r.stdout + r.stderr + service.diagnostics()

    [parent] = parent_runs(service, "embed-fanned")
    assert parent.state.is_completed()
    shards = shard_runs(service, dest)
    assert sorted(s.name for s in shards) == sorted(f"shard-{i}-of-6" for i in range(6))
    assert all(s.state.is_completed() for s in shards), [(s.name, s.state.name) for s in shards]
    assert {worker_of(service, s) for s in shards} == {"w1", "w2"}, service.diagnostics()

    v = service.cli("verify", dest, "--source", source)
    assert v.returncode == 0, v.stdout + v.stderr
    manifest = parts.read_manifest(dest)
    assert manifest.status == "complete" and manifest.totals.rows == 60 and len(manifest.shards) == 6
    assert not any(s.resumed for s in manifest.shards)

    # GPU guard: up to four shard runs at once on this host (two workers, two runs each), but
    # never more than two holding a slot of the host's limit (`--gpus-per-host 2`).
    limit = host_limit_name()
    events = []
    for s in shards:
        for log in service.logs(s.id):
            if log.message in (f"holding a GPU slot of {limit}", f"releasing a GPU slot of {limit}"):
                events.append((log.timestamp, +1 if log.message.startswith("holding") else -1))
    assert sorted(e for _, e in events).count(+1) == 6 and len(events) == 12
    held = [0]
    for _, step in sorted(events, key=lambda e: (e[0], e[1])):  # at equal times, a release comes first
        held.append(held[-1] + step)
    assert max(held) <= 2 and held[-1] == 0
    with service.client() as c:
        lim = c.read_global_concurrency_limit_by_name(limit)
    assert lim.limit == 2 and lim.active_slots == 0


@contextlib.contextmanager
def gpu_slots_taken(svc, slots: int):
    """Hold every GPU slot of this host, so shard runs wait for one (Running, mid-shard) until released."""
    from prefect.concurrency.sync import concurrency
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from bertflow.tasks.gpu import ensure_host_limit

    with svc.client() as c:
        ensure_host_limit(c, host_limit_name())
    held, release = threading.Event(), threading.Event()

    def hold() -> None:
        with temporary_settings(updates={PREFECT_API_URL: svc.url}):
            with concurrency(host_limit_name(), occupy=slots, lease_duration=300, strict=True):
                held.set()
                release.wait(300)

    holder = threading.Thread(target=hold, daemon=True)
    holder.start()
    assert held.wait(60), "could not take the GPU slots"
    try:
        yield release
    finally:
        release.set()
        holder.join(60)


def test_worker_killed_mid_shard_then_rerun_redoes_only_the_lost_shards(s3, service):
    make_bucket()
    source, dest = write_docs("s3://lake/raw-killed/", 40, "doc"), "s3://lake/killed/"
    args = [BERTFLOW, "embed", source, dest, "--model", str(service.model), "--shard-rows", "10", "--pool", POOL]
    w1 = service.workers["w1"]

    def w1_busy():
        """w1 at its limit (two runs, so it is starting no other), both inside the shard, waiting for a GPU slot."""
        pids = {str(p) for p in descendants(w1.pid)}
        running = [s for s in shard_runs(service, dest) if s.state.is_running() and s.infrastructure_pid in pids]
        waiting = [
            s for s in running if any(log.message.startswith("waiting for a GPU slot") for log in service.logs(s.id))
        ]
        return waiting if len(waiting) == 2 else None

    def ended(ids):
        return lambda: all(s.state.is_final() for s in shard_runs(service, dest) if s.id in ids)

    with gpu_slots_taken(service, 2) as release:
        first = subprocess.Popen(
            args,
            env={**os.environ, **service.env},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        try:
            running = wait_for(
                w1_busy, 180, "two shards running on worker w1", interval=0.2, diagnostics=service.diagnostics
            )
            # Worker w1 goes down mid-shard: frozen first (it takes no other run), its two shard runs
            # are terminated (SIGTERM, as a host shutting down sends; Prefect records them Crashed),
            # then the worker itself is killed (SIGKILL: it reports nothing).
            os.kill(w1.pid, signal.SIGSTOP)
            for run in running:
                os.kill(int(run.infrastructure_pid), signal.SIGTERM)
            wait_for(
                ended({r.id for r in running}), 90, "the killed shard runs to end", diagnostics=service.diagnostics
            )
            os.kill(w1.pid, signal.SIGKILL)
            w1.wait(10)
            release.set()  # the GPU is free again: w2 finishes the other shards
            out, errs = first.communicate(timeout=240)
        finally:
            stop_process(first)
    assert first.returncode != 0, out + errs
    lost = sorted(s.name for s in shard_runs(service, dest) if not s.state.is_completed())
    assert lost == sorted(s.name for s in running)
    assert all(s.state.is_crashed() for s in shard_runs(service, dest) if s.name in lost)
    assert "shards failed after retries" in errs and all(name in errs for name in lost), errs
    survivors = {s.name for s in shard_runs(service, dest) if s.state.is_completed()}
    written = {
        n: s3fs.S3FileSystem().info(storage.join(dest, n))["LastModified"]
        for n in storage.list_names(dest)
        if n.startswith("part-")
    }
    assert len(written) == len(survivors)

    service.workers_ready()  # w1 back, as after a restart
    before = {s.id for s in shard_runs(service, dest)}
    time.sleep(1)  # S3 timestamps have one-second resolution
    r = service.cli("embed", *args[2:])
    assert r.returncode == 0, r.stdout + r.stderr + service.diagnostics()

    # Other processes wrote DEST since this one listed it: drop s3fs's cached listing.
    s3fs.S3FileSystem.clear_instance_cache()
    rerun = [s for s in shard_runs(service, dest) if s.id not in before]
    assert sorted(s.name for s in rerun) == lost  # only the lost shards ran again
    assert all(s.state.is_completed() for s in rerun)
    for name, modified in written.items():  # parts written before the kill were not rewritten
        assert s3fs.S3FileSystem().info(storage.join(dest, name))["LastModified"] == modified
    assert verify_dest(dest, source) == []  # what `bertflow verify DEST --source SOURCE` checks
    manifest = parts.read_manifest(dest)
    assert sum(not s.resumed for s in manifest.shards) == len(lost)
