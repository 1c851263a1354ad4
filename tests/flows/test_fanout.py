"""`bertflow embed --pool`: shards fanned out as embed-shard runs over two real workers, S3 via moto."""

from __future__ import annotations

import contextlib
import re
import threading

from bertflow.io import parts
from bertflow.tasks.gpu import host_limit_name
from tests.deployments.service import POOL, make_bucket, write_docs

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

    # The default wave: twice what the pool runs at once (three workers online, two GPU slots per host).
    wave = [log.message for log in service.logs(parent.id) if "shard runs in flight" in log.message]
    assert wave == [f"at most 12 shard runs in flight on pool {POOL} (3 workers online x 2 GPU slots per host, x 2)"]

    v = service.cli("verify", dest, "--source", source)
    assert v.returncode == 0, v.stdout + v.stderr
    manifest = parts.read_manifest(dest)
    assert manifest.status == "complete" and manifest.totals.rows == 60 and len(manifest.shards) == 6
    assert not any(s.resumed for s in manifest.shards)

    # GPU guard: up to four shard runs at once on this host (two workers, two runs each), but
    # never more than two holding a slot of the host's limit (`--gpus-per-host 2`), and two holders
    # at once never on the same card index (slot k runs on card k).
    limit = host_limit_name()
    events = []
    for s in shards:
        for log in service.logs(s.id):
            if m := re.match(rf"(holding|releasing) GPU slot (\d+) of {re.escape(limit)}", log.message):
                events.append((log.timestamp, -1 if m.group(1) == "releasing" else +1, int(m.group(2))))
    assert sorted(e for _, e, _ in events).count(+1) == 6 and len(events) == 12
    held: set[int] = set()
    for _, step, index in sorted(events, key=lambda e: (e[0], e[1])):  # at equal times, a release comes first
        if step > 0:
            assert index not in held and index in (0, 1), (index, held)
            held.add(index)
        else:
            held.remove(index)
        assert len(held) <= 2
    assert not held
    assert {s.device for s in manifest.shards} == {"cpu"}  # what each shard ran on (here: no GPU)
    with service.client() as c:
        lim = c.read_global_concurrency_limit_by_name(limit)
    assert lim.limit == 2 and lim.active_slots == 0


@contextlib.contextmanager
def gpu_slots_taken(svc, slots: int):
    """Hold every GPU slot of this host, so shard runs wait for one (Running, mid-shard) until released."""
    from prefect.concurrency.sync import concurrency

    from bertflow.tasks.gpu import ensure_host_limit

    with svc.client() as c:
        ensure_host_limit(c, host_limit_name())
    held, release = threading.Event(), threading.Event()

    def hold() -> None:
        with svc.settings():
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


def test_shard_wave_caps_the_runs_in_flight_as_the_server_records_them(s3, service):
    make_bucket()
    source, dest = write_docs("s3://lake/raw-waved/", 50, "doc"), "s3://lake/waved/"
    args = ("embed", source, dest, "--model", str(service.model), "--shard-rows", "10", "--pool", POOL)
    r = service.cli(*args, "--shard-wave", "2", "--shards-per-run", "1")  # auto would group 5 shards on 1 slot
    assert r.returncode == 0, r.stdout + r.stderr + service.diagnostics()
    shards = shard_runs(service, dest)
    assert len(shards) == 5 and all(s.state.is_completed() for s in shards)
    # When each run was created, the runs created before it that had not ended were fewer than 2.
    for run in shards:
        open_before = [
            s for s in shards if s.created < run.created and (s.end_time is None or s.end_time > run.created)
        ]
        assert len(open_before) < 2, [(s.name, s.created, s.end_time) for s in shards]
    # Without the cap all five would be submitted at once; the parent says what it used.
    [parent] = parent_runs(service, "embed-waved")
    messages = [log.message for log in service.logs(parent.id)]
    assert "at most 2 shard runs in flight on pool test-pool (as given)" in messages, messages
    v = service.cli("verify", dest, "--source", source)
    assert v.returncode == 0, v.stdout + v.stderr

    r = service.cli("embed", source, "out/", "--shard-wave", "2")
    assert r.returncode == 2 and "--shard-wave bounds the shard runs of --pool" in r.stderr


def test_shards_per_run_load_the_model_once_per_run(s3, service):
    """`--shards-per-run auto` (the default) with one slot's wave: runs of 3, 2 and 1 shards, long ones
    first; in each, only the first shard pays for the process's start and the model's load (counted in
    each part's footer, not timed)."""
    make_bucket()
    source, dest = write_docs("s3://lake/raw-grouped/", 60, "doc"), "s3://lake/grouped/"
    args = ("embed", source, dest, "--model", str(service.model), "--shard-rows", "10", "--pool", POOL)
    r = service.cli(*args, "--shard-wave", "2")  # 2 runs in flight: one slot, so 2 runs per slot of 6 shards
    assert r.returncode == 0, r.stdout + r.stderr + service.diagnostics()

    runs = shard_runs(service, dest)
    assert sorted(s.name for s in runs) == ["shard-5-of-6", "shards-0-to-2-of-6", "shards-3-to-4-of-6"]
    assert all(s.state.is_completed() for s in runs)
    assert sorted(len(s.parameters.get("more") or []) for s in runs) == [0, 1, 2]
    [parent] = parent_runs(service, "embed-grouped")
    said = [log.message for log in service.logs(parent.id)]
    assert "6 shards in 3 shard runs of 3 shards first down to 1, for 1 slot" in said
    for i in range(6):  # each shard's line once: when its part appeared or when its run ended, not both
        assert sum(m.startswith(f"shard {i} of 6 (part-{i:05d}.parquet)") for m in said) == 1, said
    manifest = parts.read_manifest(dest)
    assert manifest.status == "complete" and manifest.totals.rows == 60
    shards = manifest.shards
    assert [s.warm for s in shards] == [False, True, True, False, True, False]  # one load per run
    assert [s.load_seconds > 0 for s in shards] == [True, False, False, True, False, True]
    assert [s.startup_seconds > 0 for s in shards] == [True, False, False, True, False, True]
    v = service.cli("verify", dest, "--source", source)
    assert v.returncode == 0, v.stdout + v.stderr

    again = service.cli(*args, "--shards-per-run", "3")  # complete: nothing to run, no new shard run
    assert again.returncode == 0 and len(shard_runs(service, dest)) == 3
    refused = service.cli("embed", source, "out/", "--shards-per-run", "2")
    assert refused.returncode == 2 and "--shards-per-run groups the shard runs of --pool" in refused.stderr
    bad = service.cli(*args, "--shards-per-run", "0")
    assert bad.returncode == 2 and bad.stderr.strip() == (
        "error: --shards-per-run 0 is not a number of shards: give a positive number or auto"
    )
