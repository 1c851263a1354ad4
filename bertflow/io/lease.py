"""One writer per DEST: a lease object, `DEST/_lease.json`, taken and renewed with conditional writes.

A run takes the lease before it touches DEST and renews it while it lives. A second run finds a
live lease and stops with a one-line error that names the holder. A run that died (SIGKILL, a lost
host) stops renewing: once its lease has expired, the next run takes it over and resumes DEST.

Atomic where the store allows it: on S3, a PUT with `If-None-Match: *` creates the lease and
`If-Match: <ETag>` renews, takes over or deletes it, so of two runs racing for one DEST exactly
one wins. On a local disk an `flock` guards read-check-write. Other fsspec stores get the same
protocol without the atomic step. Expiry is read against the reader's clock: keep hosts on NTP.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import os
import socket
import tempfile
import threading
import uuid
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone

from fsspec.implementations.local import LocalFileSystem
from pydantic import BaseModel

from bertflow.errors import InputError, RunFailedError
from bertflow.io import storage

LEASE_NAME = "_lease.json"
DEFAULT_SECONDS = 120  # a dead run blocks its DEST this long at most; `BERTFLOW_LEASE_SECONDS` changes it

log = logging.getLogger(__name__)


def machine() -> str:
    """This machine, boot and pid namespace: where a holder's pid can be checked for life."""
    parts = [socket.gethostname()]
    for path in ("/etc/machine-id", "/proc/sys/kernel/random/boot_id"):
        with contextlib.suppress(OSError):
            parts.append(open(path).read().strip())
    with contextlib.suppress(OSError):
        parts.append(str(os.stat("/proc/self/ns/pid").st_ino))
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:16]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class LeaseRecord(BaseModel):
    """Who holds DEST, since when, and until when unless renewed."""

    token: str
    run_id: str | None = None
    run_name: str | None = None
    host: str
    pid: int
    machine: str | None = None
    since: datetime
    expires: datetime

    def dead(self, now: datetime) -> bool:
        """Expired, or held by a process of this machine that no longer exists (killed: no need to wait)."""
        return self.expires <= now or (self.machine == machine() and not _alive(self.pid))

    def describe(self) -> str:
        run = f"flow run {self.run_name} ({self.run_id})" if self.run_id else "a run outside Prefect"
        return f"{run} on host {self.host}, pid {self.pid}, since {_when(self.since)}"


def _when(t: datetime) -> str:
    return t.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


class LeaseHeldError(InputError):
    """Another live run is writing DEST."""

    def __init__(self, dest: str, holder: LeaseRecord) -> None:
        super().__init__(
            f"{dest} is being written by {holder.describe()} (lease expires {_when(holder.expires)} unless "
            "renewed): wait for that run to end or cancel it; a dead run's lease expires by itself"
        )
        self.holder = holder


class LeaseLostError(RunFailedError):
    """This run stopped renewing its lease in time and another run took DEST over."""


def lease_seconds() -> int:
    value = os.environ.get("BERTFLOW_LEASE_SECONDS", "")
    try:
        seconds = int(value) if value else DEFAULT_SECONDS
    except ValueError:
        raise InputError(f"BERTFLOW_LEASE_SECONDS={value!r}: give a whole number of seconds, e.g. 120") from None
    if seconds < 5:
        raise InputError(f"BERTFLOW_LEASE_SECONDS={seconds}: give 5 or more")
    return seconds


class _Store:
    """Read, create, replace and delete the lease object; versions are opaque (an ETag, a digest)."""

    def __init__(self, dest: str) -> None:
        self.uri = storage.join(dest, LEASE_NAME)
        self.fs, self.path = storage.filesystem(self.uri)
        self.s3 = type(self.fs).__name__ == "S3FileSystem"
        self.local = isinstance(self.fs, LocalFileSystem)
        self.made_dest = False

    @contextlib.contextmanager
    def _guard(self) -> Iterator[None]:
        """On a local disk: hold an flock that every run on this host takes for DEST (kept outside DEST,
        so a run refused for bad input leaves nothing there)."""
        if not self.local:
            yield
            return
        digest = hashlib.sha256(os.path.abspath(self.path).encode()).hexdigest()[:24]
        with open(os.path.join(tempfile.gettempdir(), f"bertflow-lease-{digest}.lock"), "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def read(self) -> tuple[LeaseRecord, str] | None:
        with storage.translated(self.uri):
            try:
                data = self.fs.cat_file(self.path)
                version = self.fs.info(self.path, refresh=True)["ETag"] if self.s3 else hashlib.sha256(data).hexdigest()
            except FileNotFoundError:
                return None
        return LeaseRecord.model_validate_json(data), version

    def create(self, data: bytes) -> str | None:
        if self.s3:
            with storage.translated(self.uri):
                try:
                    return self.fs.pipe_file(self.path, data, mode="create")["ETag"]
                except (FileExistsError, OSError) as e:
                    if isinstance(e, FileExistsError) or _precondition_failed(e):
                        return None
                    raise
        with self._guard():
            if self.fs.exists(self.path):
                return None
            self.made_dest = self.local and not os.path.isdir(os.path.dirname(self.path))
            storage.write_atomic(self.uri, data)
        return hashlib.sha256(data).hexdigest()

    def replace(self, data: bytes, version: str) -> str | None:
        if self.s3:
            with storage.translated(self.uri):
                try:
                    return self.fs.pipe_file(self.path, data, IfMatch=version)["ETag"]
                except OSError as e:  # FileNotFoundError: deleted meanwhile; either way it is not ours to replace
                    if isinstance(e, FileNotFoundError) or _precondition_failed(e):
                        return None
                    raise
        with self._guard():
            found = self.read()
            if found is None or found[1] != version:
                return None
            storage.write_atomic(self.uri, data)
        return hashlib.sha256(data).hexdigest()

    def delete(self, version: str) -> None:
        if self.s3:
            bucket, key, _ = self.fs.split_path(self.path)
            with storage.translated(self.uri), contextlib.suppress(FileNotFoundError):
                try:
                    self.fs.call_s3("delete_object", Bucket=bucket, Key=key, IfMatch=version)
                except OSError as e:
                    if not _precondition_failed(e):
                        raise
            self.fs.invalidate_cache(self.path)
            return
        with self._guard():
            found = self.read()
            if found is not None and found[1] == version:
                storage.remove(self.uri)
            if self.made_dest:  # a run that wrote nothing leaves no empty DEST behind
                with contextlib.suppress(OSError):
                    os.rmdir(os.path.dirname(self.path))


def _precondition_failed(err: BaseException) -> bool:
    e: BaseException | None = err
    while e is not None:
        response = getattr(e, "response", None)
        if isinstance(response, dict):
            if response.get("Error", {}).get("Code") in ("PreconditionFailed", "ConditionalRequestConflict"):
                return True
            if response.get("ResponseMetadata", {}).get("HTTPStatusCode") in (409, 412):
                return True
        e = e.__cause__ or e.__context__
    return False


class Lease:
    """A lease this process holds on DEST; `hold` keeps it renewed in a thread."""

    def __init__(self, store: _Store, record: LeaseRecord, version: str, seconds: int) -> None:
        self.store, self.record, self.version, self.seconds = store, record, version, seconds
        self.lost: LeaseRecord | None = None
        self.took_over: LeaseRecord | None = None

    def renew(self) -> None:
        """Push the expiry `seconds` ahead; raises LeaseLostError when another run took DEST over."""
        now = datetime.now(timezone.utc)
        record = self.record.model_copy(update={"expires": now + timedelta(seconds=self.seconds)})
        version = self.store.replace(record.model_dump_json().encode(), self.version)
        if version is None:
            found = self.store.read()
            if found is not None and found[0].token == self.record.token:
                # Ours all the same: a retried PUT whose first attempt had landed, or a renewal that failed
                # after it was stored. Carry on from what is stored.
                self.record, self.version = found
                return
            self.lost = found[0] if found else self.record
            raise LeaseLostError(self.lost_message())
        self.record, self.version = record, version

    def lost_message(self) -> str:
        holder = self.lost.describe() if self.lost and self.lost.token != self.record.token else "nobody"
        return (
            f"lost the lease on {self.store.uri.rsplit('/', 1)[0]}: it expired while this run stalled and is now held "
            f"by {holder}; this run wrote no manifest, and a rerun resumes DEST"
        )

    def check(self) -> None:
        """Raise LeaseLostError if renewing failed because another run took DEST over."""
        if self.lost is not None:
            raise LeaseLostError(self.lost_message())

    def release(self) -> None:
        if self.lost is None:
            self.store.delete(self.version)


def acquire(dest: str, run_id: str | None, run_name: str | None, seconds: int) -> Lease:
    """Take the lease on DEST (a fresh one, or an expired one from a dead run); LeaseHeldError if it is live."""
    store = _Store(dest)
    for _ in range(5):  # another run may win each race; then its lease is live and we say so
        now = datetime.now(timezone.utc)
        record = LeaseRecord(
            token=uuid.uuid4().hex, run_id=run_id, run_name=run_name, host=socket.gethostname(), pid=os.getpid(),
            machine=machine(), since=now, expires=now + timedelta(seconds=seconds),
        )  # fmt: skip
        data = record.model_dump_json().encode()
        found = store.read()
        if found is None:
            version = store.create(data)
            if version is not None:
                return Lease(store, record, version, seconds)
            again = store.read()
            if again is not None and again[0].token == record.token:  # it landed; the retry was refused
                return Lease(store, record, again[1], seconds)
            continue
        held, held_version = found
        if not held.dead(now):
            raise LeaseHeldError(dest, held)
        version = store.replace(data, held_version)
        if version is not None:
            lease = Lease(store, record, version, seconds)
            lease.took_over = held
            return lease
    found = store.read()
    raise LeaseHeldError(dest, found[0]) if found else InputError(f"could not take the lease on {dest}; try again")


@contextlib.contextmanager
def hold(
    dest: str, run_id: str | None = None, run_name: str | None = None, seconds: int | None = None
) -> Iterator[Lease]:
    """Hold DEST's lease for the block, renewed every third of its duration; released at the end."""
    lease = acquire(dest, run_id, run_name, seconds or lease_seconds())
    stop = threading.Event()

    def keep() -> None:
        while not stop.wait(lease.seconds / 3):
            try:
                lease.renew()
            except LeaseLostError as e:
                log.error("%s", e)
                return
            except Exception as e:  # a storage hiccup: the next renewal may get through before expiry
                log.warning("could not renew the lease on %s: %s", dest, e)

    keeper = threading.Thread(target=keep, name="bertflow-lease", daemon=True)
    keeper.start()
    try:
        yield lease
    finally:
        stop.set()
        keeper.join()
        with contextlib.suppress(Exception):  # an unreleased lease only expires
            lease.release()
