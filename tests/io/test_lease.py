"""The DEST lease: one writer at a time, on a local disk and on S3 (moto's server), with takeover of dead runs."""

from __future__ import annotations

import threading
import time
from datetime import datetime, timedelta, timezone

import pytest

from bertflow.errors import InputError
from bertflow.io import lease, storage
from bertflow.io.lease import LEASE_NAME, LeaseHeldError, LeaseLostError, LeaseRecord


@pytest.fixture(params=["local", "s3"])
def dest(request, tmp_path):
    if request.param == "local":
        return str(tmp_path / "out")
    s3 = request.getfixturevalue("s3")
    storage.filesystem("s3://leases/")[0].mkdir("leases")
    assert s3.url
    return "s3://leases/out/"


def _expire(dest: str) -> None:
    """Make the lease in DEST look like one a dead run left: expired a second ago."""
    uri = storage.join(dest, LEASE_NAME)
    record = LeaseRecord.model_validate_json(storage.read_bytes(uri))
    expired = record.model_copy(update={"expires": datetime.now(timezone.utc) - timedelta(seconds=1)})
    storage.write_atomic(uri, expired.model_dump_json().encode())


def test_second_run_is_refused_naming_the_holder_until_the_first_releases(dest):
    first = lease.acquire(dest, "1d2c-run", "embed-out", 60)
    with pytest.raises(LeaseHeldError) as refused:
        lease.acquire(dest, "9f9f-run", "embed-out", 60)
    message = str(refused.value)
    assert "\n" not in message and "flow run embed-out (1d2c-run)" in message and first.record.host in message
    assert refused.value.exit_code == 2

    before = first.record.expires
    first.renew()
    assert first.record.expires > before
    first.release()
    assert not storage.exists(storage.join(dest, LEASE_NAME))
    second = lease.acquire(dest, "9f9f-run", "embed-out", 60)
    assert second.took_over is None
    second.release()


def test_an_expired_lease_is_taken_over_and_its_old_holder_learns_it_lost(dest):
    dead = lease.acquire(dest, "dead-run", "embed-out", 60)
    _expire(dest)
    taker = lease.acquire(dest, "new-run", "embed-out", 60)
    assert taker.took_over is not None and taker.took_over.run_id == "dead-run"

    with pytest.raises(LeaseLostError, match="new-run"):
        dead.renew()
    with pytest.raises(LeaseLostError):
        dead.check()
    dead.release()  # a run that lost its lease must not delete the new holder's
    assert LeaseRecord.model_validate_json(storage.read_bytes(storage.join(dest, LEASE_NAME))).run_id == "new-run"
    taker.release()


def _race(dest: str, runs: int) -> tuple[list, list]:
    won, refused, start = [], [], threading.Barrier(runs)

    def take(i: int) -> None:
        start.wait()
        try:
            won.append(lease.acquire(dest, f"run-{i}", "race", 60))
        except LeaseHeldError as e:
            refused.append(e.holder.run_id)

    threads = [threading.Thread(target=take, args=(i,)) for i in range(runs)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return won, refused


def test_of_runs_racing_for_one_dest_exactly_one_wins(dest):
    for _ in range(5):
        won, refused = _race(dest, 4)
        assert len(won) == 1 and len(refused) == 3
        assert set(refused) == {won[0].record.run_id}
        won[0].release()


def test_hold_renews_while_the_block_runs_and_releases_at_the_end(dest):
    with lease.hold(dest, "held-run", "embed-out", seconds=6) as held:
        first_expiry = held.record.expires
        deadline = time.monotonic() + 30
        while held.record.expires == first_expiry and time.monotonic() < deadline:
            time.sleep(0.2)
        assert held.record.expires > first_expiry  # renewed by the keeper thread (every 2 s)
        with pytest.raises(LeaseHeldError):
            lease.acquire(dest, "other", "embed-out", 6)
    assert not storage.exists(storage.join(dest, LEASE_NAME))


def test_lease_seconds_from_the_environment(monkeypatch):
    monkeypatch.setenv("BERTFLOW_LEASE_SECONDS", "30")
    assert lease.lease_seconds() == 30
    monkeypatch.setenv("BERTFLOW_LEASE_SECONDS", "soon")
    with pytest.raises(InputError, match="BERTFLOW_LEASE_SECONDS='soon'"):
        lease.lease_seconds()


@pytest.mark.parametrize("uri", ["s3:/bucket/raw/", "s3:bucket/raw", "s3://", "gs:///"])
def test_malformed_uris_are_refused_not_read_as_local_paths(uri):
    with pytest.raises(InputError, match="bucket"):
        storage.filesystem(uri)


def test_a_killed_holder_on_this_machine_is_taken_over_at_once(dest):
    import subprocess
    import sys

    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    lease.acquire(dest, "killed-run", "embed-out", 600)
    uri = storage.join(dest, LEASE_NAME)
    record = LeaseRecord.model_validate_json(storage.read_bytes(uri)).model_copy(update={"pid": gone.pid})
    storage.write_atomic(uri, record.model_dump_json().encode())  # as if that process had taken it and died

    taker = lease.acquire(dest, "next-run", "embed-out", 600)  # not expired for ten minutes, but dead
    assert taker.took_over is not None and taker.took_over.pid == gone.pid
    taker.release()


def test_a_renewal_whose_write_landed_but_was_refused_is_still_ours(dest):
    held = lease.acquire(dest, "run", "embed-out", 60)
    stale = held.version
    held.renew()
    held.version = stale  # as after a retried PUT: stored, but we kept the old version
    held.renew()  # refused by the version check, read back: the token is ours
    assert held.lost is None
    held.release()
    assert not storage.exists(storage.join(dest, LEASE_NAME))
