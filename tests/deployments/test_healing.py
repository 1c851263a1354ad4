"""A fleet that heals itself: a dead host, a shard that keeps failing, an S3 storm, two runs on one DEST.

All on the shared service: a real Prefect server with auth, the zombie automation of `bertflow
deploy --heartbeat-window 60`, workers w1 and w2 on the shards queue and the conductor on the
parents queue, S3 through moto's server behind the test's own fault-injecting front.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from datetime import datetime, timezone

import s3fs

from bertflow.io import parts, storage
from bertflow.io.lease import LEASE_NAME, LeaseRecord
from bertflow.io.verify import verify_dest
from bertflow.tasks.reporting import artifact_keys
from tests.conftest import BERTFLOW
from tests.deployments.service import (
    HEARTBEAT_WINDOW,
    POOL,
    _signal,
    descendants,
    make_bucket,
    stop_process,
    wait_for,
    write_docs,
)
from tests.flows.test_fanout import gpu_slots_taken, parent_runs, shard_runs, worker_of
from tests.flows.test_monitoring import artifacts

# After a host dies its runs are marked Crashed within the heartbeat window (plus the up to 30 s
# since their last beat and the server's trigger evaluation); the parent then resubmits them.
RECOVERY_MARGIN = 150


def embed_args(service, source: str, dest: str) -> list[str]:
    return [BERTFLOW, "embed", source, dest, "--model", str(service.model), "--shard-rows", "10", "--pool", POOL]


def start(args: list[str], env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen(
        args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    )


def completed_once(service, dest: str) -> dict[str, int]:
    """Completed shard runs per shard name."""
    counts: dict[str, int] = {}
    for run in shard_runs(service, dest):
        if run.state.is_completed():
            counts[run.name] = counts.get(run.name, 0) + 1
    return counts


def test_a_host_killed_mid_shard_heals_with_nobody_touching_anything(s3, service):
    make_bucket()
    source, dest = write_docs("s3://lake/raw-killed/", 40, "doc"), "s3://lake/killed/"
    w1 = service.workers["w1"]

    def w1_busy():
        """w1 at its limit (two runs), both inside their shard, waiting for a GPU slot."""
        pids = {str(p) for p in descendants(w1.pid)}
        running = [s for s in shard_runs(service, dest) if s.state.is_running() and s.infrastructure_pid in pids]
        waiting = [
            s for s in running if any(log.message.startswith("waiting for a GPU slot") for log in service.logs(s.id))
        ]
        return waiting if len(waiting) == 2 else None

    try:
        with gpu_slots_taken(service, 2) as release:
            parent = start(embed_args(service, source, dest), {**os.environ, **service.env})
            try:
                lost = wait_for(w1_busy, 180, "two shards running on worker w1", interval=0.2,
                                diagnostics=service.diagnostics)  # fmt: skip
                # The host dies: the worker and every process it started, SIGKILL; nothing reports anything.
                _signal([w1.pid, *descendants(w1.pid)], signal.SIGKILL)
                w1.wait(10)
                release.set()  # w2 goes on with the other shards
                out, errs = parent.communicate(timeout=HEARTBEAT_WINDOW + RECOVERY_MARGIN)
            finally:
                stop_process(parent)
        assert parent.returncode == 0, out + errs + service.diagnostics()

        runs = shard_runs(service, dest)
        for dead in lost:
            [crashed] = [r for r in runs if r.id == dead.id]
            assert crashed.state.is_crashed() and "no heartbeat" in (crashed.state.message or ""), crashed.state
            [redone] = [r for r in runs if r.name == dead.name and r.id != dead.id]
            assert redone.state.is_completed() and worker_of(service, redone) == "w2"
        assert completed_once(service, dest) == {f"shard-{i}-of-4": 1 for i in range(4)}
        [run] = parent_runs(service, "embed-killed")
        assert run.state.is_completed()
        assert any("submitting it again (attempt 2 of 2)" in log.message for log in service.logs(run.id))

        v = service.cli("verify", dest, "--source", source)
        assert v.returncode == 0, v.stdout + v.stderr
        manifest = parts.read_manifest(dest)
        assert manifest.status == "complete" and manifest.totals.rows == 40
    finally:
        service.workers_ready()  # w1 back, as after the host restarts


def test_a_shard_that_always_fails_fails_the_parent_naming_it_then_a_rerun_redoes_only_it(s3, service):
    make_bucket()
    source, dest = write_docs("s3://lake/raw-doomed/", 30, "doc"), "s3://lake/doomed/"
    fault = s3.fail("PUT", r"^/lake/doomed/part-00001", times=10**6)  # S3 refuses this part, forever

    r = service.cli(*embed_args(service, source, dest)[1:])
    assert r.returncode == 1, r.stdout + r.stderr + service.diagnostics()
    line = r.stderr.strip()
    assert "\n" not in line and "1 of 3 shards failed" in line and "shard-1-of-3 (2 attempts; Failed" in line, line
    doomed = [s for s in shard_runs(service, dest) if s.name == "shard-1-of-3"]
    assert len(doomed) == 2 and all(s.state.is_failed() for s in doomed)
    assert fault.hits >= 2 * 5  # each run retried its write (4 task retries with backoff) before failing
    [table] = artifacts(service, artifact_keys(dest)["failed"])  # one run failed: one version
    assert '"shard-1-of-3"' in table.data and '"attempts": 2' in table.data and "SlowDown" in table.data

    fault.remaining = 0  # the store recovers
    before = {s.id for s in shard_runs(service, dest)}
    time.sleep(1)
    r = service.cli(*embed_args(service, source, dest)[1:])
    assert r.returncode == 0, r.stdout + r.stderr + service.diagnostics()
    rerun = [s for s in shard_runs(service, dest) if s.id not in before]
    assert [s.name for s in rerun] == ["shard-1-of-3"] and rerun[0].state.is_completed()
    s3fs.S3FileSystem.clear_instance_cache()
    assert verify_dest(dest, source) == []


def test_an_s3_storm_of_errors_drops_and_slow_answers_still_writes_every_row_once(s3, service):
    make_bucket()
    source, dest = write_docs("s3://lake/raw-storm/", 40, "doc"), "s3://lake/storm/"
    faults = [
        s3.fail("GET", r"^/lake/raw-storm/", 3),  # 503 SlowDown on reads of SOURCE
        s3.fail("PUT", r"^/lake/storm/part-", 4),  # and on part writes
        s3.fail("PUT", r"^/lake/storm/part-", 2, kind="drop"),  # connections dropped mid-request
        s3.fail("GET", r"^/lake/", 6, kind="slow", delay=1.5),  # slow answers
    ]
    r = service.cli(*embed_args(service, source, dest)[1:])
    assert r.returncode == 0, r.stdout + r.stderr + service.diagnostics()
    assert [f.hits for f in faults] == [3, 4, 2, 6]
    s3fs.S3FileSystem.clear_instance_cache()
    assert verify_dest(dest, source) == []  # every row exactly once
    assert parts.read_manifest(dest).totals.rows == 40


def test_two_runs_on_one_dest_one_writes_the_other_exits_2_and_a_dead_holder_is_taken_over(s3, service):
    make_bucket()
    source, dest = write_docs("s3://lake/raw-leased/", 40, "doc"), "s3://lake/leased/"
    args = embed_args(service, source, dest)
    lease_uri = storage.join(dest, LEASE_NAME)

    def holder():
        s3fs.S3FileSystem.clear_instance_cache()
        if storage.exists(lease_uri) and len(shard_runs(service, dest)) == 4:
            return LeaseRecord.model_validate_json(storage.read_bytes(lease_uri))
        return None

    with gpu_slots_taken(service, 2) as release:  # the first run's shards wait: it holds DEST meanwhile
        first = start(args, {**os.environ, **service.env, "BERTFLOW_LEASE_SECONDS": "15"})
        try:
            held = wait_for(holder, 120, "the first run to hold DEST", diagnostics=service.diagnostics)
            [run] = parent_runs(service, "embed-leased")
            assert held.run_id == str(run.id)
            for extra in ([], ["--overwrite"]):  # --overwrite cannot clear a DEST under a live lease
                second = service.cli(*args[1:], *extra)
                assert second.returncode == 2, second.stdout + second.stderr
                message = second.stderr.strip()
                assert "\n" not in message and f"is being written by flow run embed-leased ({run.id})" in message
                assert f"on host {held.host}" in message and "since" in message
            # The holder dies (SIGKILL): its lease is no longer renewed and expires.
            _signal([first.pid, *descendants(first.pid)], signal.SIGKILL)
            first.wait(10)
        finally:
            stop_process(first)
        s3fs.S3FileSystem.clear_instance_cache()
        last = LeaseRecord.model_validate_json(storage.read_bytes(lease_uri))  # as last renewed before the kill
        assert last.token == held.token
        wait_for(lambda: datetime.now(timezone.utc) > last.expires, 60, "the dead run's lease to expire")
        release.set()
        third = service.cli(*args[1:])
    assert third.returncode == 0, third.stdout + third.stderr + service.diagnostics()
    # The new run joined the dead run's shard runs in flight: no shard ran twice.
    assert completed_once(service, dest) == {f"shard-{i}-of-4": 1 for i in range(4)}
    assert len(shard_runs(service, dest)) == 4
    took_over = [r for r in parent_runs(service, "embed-leased") if r.id != run.id and r.state.is_completed()]
    assert len(took_over) == 1
    assert any("took over" in log.message for log in service.logs(took_over[0].id))
    s3fs.S3FileSystem.clear_instance_cache()
    assert verify_dest(dest, source) == [] and not storage.exists(lease_uri)  # released at the end


def test_pool_refuses_what_other_hosts_cannot_see_and_malformed_uris(s3, service, tmp_path):
    make_bucket()
    source = write_docs("s3://lake/raw-local/", 3, "doc")
    cases = [
        ([source, str(tmp_path / "out")], "DEST"),
        ([str(tmp_path), "s3://lake/local-out/"], "SOURCE"),
        ([source, "s3://lake/local-out/", "--pooling", "mean_lstm", "--pooler", str(tmp_path)], "--pooler"),
    ]
    for args, what in cases:
        r = service.cli("embed", *args, "--model", str(service.model), "--pool", POOL)
        assert r.returncode == 2, r.stdout + r.stderr
        message = r.stderr.strip()
        assert "\n" not in message and f"{what} " in message and "workers on other hosts cannot see" in message
    r = service.cli("embed", "s3:/lake/raw-local/", "s3://lake/local-out/", "--model", str(service.model))
    assert r.returncode == 2 and "write s3://lake/raw-local/" in r.stderr, r.stderr
    assert not storage.list_names("s3://lake/local-out/") and not (tmp_path / "out").exists()
