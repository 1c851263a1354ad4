"""The one place that touches files: URIs in, fsspec filesystems underneath.

Local paths and any fsspec URI (`s3://...`) work the same. Credentials come from the
standard environment (AWS variables and config files), from options set for this process
with `storage_options(...)`, never from anything that is logged or persisted.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import errno
import hashlib
import os
import posixpath
import re
import uuid
from collections.abc import Iterator, Mapping
from types import MappingProxyType
from typing import IO

import fsspec
from fsspec.core import url_to_fs
from fsspec.implementations.local import LocalFileSystem

from bertflow.errors import InputError, StorageError, TransientStorageError

_OPTIONS: contextvars.ContextVar[Mapping[str, str]] = contextvars.ContextVar(
    "storage_options", default=MappingProxyType({})
)


@contextlib.contextmanager
def storage_options(options: Mapping[str, str]) -> Iterator[None]:
    """Use these filesystem options (credentials, endpoint) for storage calls in this context."""
    token = _OPTIONS.set({**_OPTIONS.get(), **options})
    try:
        yield
    finally:
        _OPTIONS.reset(token)


def current_options() -> Mapping[str, str]:
    """The options set with `storage_options` in this context (for stores that are not fsspec: LanceDB)."""
    return _OPTIONS.get()


def _client_kwargs(protocol: str, options: Mapping[str, str]) -> dict:
    """Map flat KEY=VALUE options onto fsspec's constructor arguments."""
    if protocol not in ("s3", "s3a"):
        return dict(options)
    kwargs: dict = {}
    client: dict = {}
    for key, value in options.items():
        if key in ("endpoint_url", "region_name"):
            client[key] = value
        else:
            kwargs[key] = value
    if client:
        kwargs["client_kwargs"] = client
    # DEST is written by many processes at once (shard runs on other hosts, a run taking over a dead
    # one's): a listing cached here goes stale under them, and s3fs answers `open`/`info` from it
    # ("does not exist" for a part written since, the old size of a part rewritten since). List afresh.
    kwargs.setdefault("use_listings_cache", False)
    return kwargs


_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]+):(//)?")


def check_uri(uri: str) -> None:
    """Refuse `s3:/bucket`, `s3:bucket` and `s3://` alone instead of reading them as local paths."""
    m = _SCHEME.match(uri)
    if m is None:
        return
    scheme = m.group(1)
    if not m.group(2):
        rest = uri[m.end() :].lstrip("/")
        raise InputError(f"{uri!r} is not a URI bertflow can read: write {scheme}://{rest or 'bucket/path'}")
    if not uri[m.end() :].strip("/"):
        raise InputError(f"{uri!r} names no bucket or path: write {scheme}://bucket/path")


def filesystem(uri: str) -> tuple[fsspec.AbstractFileSystem, str]:
    """The filesystem behind `uri` and the path inside it."""
    check_uri(uri)
    protocol = uri.split("://", 1)[0] if "://" in uri else "file"
    try:
        fs, path = url_to_fs(uri, **_client_kwargs(protocol, _OPTIONS.get()))
    except ImportError as e:
        raise InputError(f"no filesystem for {uri!r}: {e}") from None
    except ValueError as e:
        raise InputError(f"cannot open {uri!r}: {e}") from None
    if type(fs).__name__ == "S3FileSystem":
        # One retry layer per level, not three nested ones: botocore retries a request (with backoff), the
        # Prefect task retries the step (with backoff, visible in the UI). s3fs's own loop around botocore's
        # would multiply them: a part write under a lasting 503 made 100 requests over minutes.
        fs.retries = 1
    return fs, path


def canonical(uri: str) -> str:
    """The URI as listings spell it (local paths made absolute)."""
    fs, path = filesystem(uri)
    return unstrip(fs, path)


def is_local(uri: str) -> bool:
    return isinstance(filesystem(uri)[0], LocalFileSystem)


def join(base: str, *names: str) -> str:
    """Join path components onto a URI (local or remote), without touching storage."""
    if "://" in base:
        return posixpath.join(base.rstrip("/"), *names)
    return os.path.join(base, *names)


def unstrip(fs: fsspec.AbstractFileSystem, path: str) -> str:
    """A path from `fs` back into a URI usable with `filesystem`."""
    return fs.unstrip_protocol(path) if not isinstance(fs, LocalFileSystem) else path


_TRANSIENT_CODES = {
    "SlowDown",
    "Throttling",
    "ThrottlingException",
    "RequestTimeout",
    "RequestTimeTooSkewed",
    "InternalError",
    "ServiceUnavailable",
    "RequestLimitExceeded",
    "TooManyRequests",
}
_DENIED_CODES = {"AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "ExpiredToken", "AllAccessDisabled"}
# errno values s3fs gives to throttling/5xx (EBUSY, EAGAIN) and to dropped or slow connections.
_TRANSIENT_ERRNO = {
    errno.EBUSY,
    errno.EAGAIN,
    errno.ECONNRESET,
    errno.ECONNABORTED,
    errno.ETIMEDOUT,
    errno.EPIPE,
    errno.ECONNREFUSED,
}


def _chain(err: BaseException | None) -> Iterator[BaseException]:
    seen = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        yield err
        err = err.__cause__ or err.__context__


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def classify(err: BaseException, uri: str) -> BaseException:
    """Turn a storage exception into a bertflow error; transient ones can be retried."""
    if isinstance(err, (StorageError, InputError)):
        return err
    for e in _chain(err):
        response = getattr(e, "response", None)
        if isinstance(response, dict) and "Error" in response:
            code = response["Error"].get("Code", "")
            status = response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
            if code in _DENIED_CODES or status == 403:
                return StorageError(f"access denied to {uri}: check the credentials and the bucket policy")
            if code == "NoSuchBucket":
                return StorageError(f"bucket of {uri} does not exist: create it or fix the URI")
            if code in _TRANSIENT_CODES or status >= 500 or status == 429:
                return TransientStorageError(f"storage error on {uri} ({code or status}); will retry")
    if isinstance(err, PermissionError):
        return StorageError(f"access denied to {uri}: check the credentials and the bucket policy")
    text = str(err)
    if "NoSuchBucket" in text or "bucket does not exist" in text.lower():
        return StorageError(f"bucket of {uri} does not exist: create it or fix the URI")
    if isinstance(err, FileNotFoundError):
        return InputError(f"{uri} does not exist")
    transient_types = (ConnectionError, TimeoutError, asyncio.TimeoutError)
    if any(isinstance(e, transient_types) or getattr(e, "errno", None) in _TRANSIENT_ERRNO for e in _chain(err)) or any(
        s in text for s in ("Connection reset", "timed out", "Server disconnected", "ServiceUnavailable", "SlowDown")
    ):
        return TransientStorageError(f"storage error on {uri}: {_first_line(err)}; will retry")
    if isinstance(err, OSError):
        return StorageError(f"storage error on {uri}: {_first_line(err)}")
    return err


@contextlib.contextmanager
def translated(uri: str) -> Iterator[None]:
    """Re-raise storage exceptions from the block as bertflow errors."""
    try:
        yield
    except Exception as e:
        mapped = classify(e, uri)
        if mapped is e:
            raise
        raise mapped from e


def exists(uri: str) -> bool:
    fs, path = filesystem(uri)
    with translated(uri):
        return fs.exists(path)


def list_names(uri: str) -> list[str]:
    """Names of the entries directly in the directory `uri` (empty if it does not exist yet)."""
    fs, path = filesystem(uri)
    with translated(uri):
        if not fs.exists(path):
            return []
        return [e.rstrip("/").rsplit("/", 1)[-1] for e in fs.ls(path, detail=False)]


def list_files(uri: str) -> list[str]:
    """Files named by `uri`: the file itself, every file under a directory, or a glob's matches."""
    fs, path = filesystem(uri)
    with translated(uri):
        if any(c in path for c in "*?["):  # one listing with types, not a request per match
            found = [p for p, info in fs.glob(path, detail=True).items() if info.get("type") == "file"]
        elif fs.isdir(path):
            found = fs.find(path)
        elif fs.isfile(path):
            found = [path]
        else:
            raise InputError(f"SOURCE {uri} does not exist; give a file, a directory or a glob")
    return [unstrip(fs, p) for p in sorted(found)]


@contextlib.contextmanager
def open_input(uri: str) -> Iterator[str | IO[bytes]]:
    """A local path as is (readers can mmap and stream it), otherwise an open binary file."""
    fs, path = filesystem(uri)
    if isinstance(fs, LocalFileSystem):
        yield path
        return
    with translated(uri), fs.open(path, "rb") as f:
        yield f


def read_bytes(uri: str, start: int | None = None, end: int | None = None) -> bytes:
    fs, path = filesystem(uri)
    with translated(uri):
        return fs.cat_file(path, start=start, end=end)


def iter_line_blocks(uri: str, block_size: int = 64 << 20) -> Iterator[tuple[int, bytes]]:
    """(offset, bytes) blocks of about `block_size` that end at a newline (the last one may not).

    Lets line formats be scanned with memory bounded by the block, not by the file.
    """
    fs, path = filesystem(uri)
    with translated(uri), fs.open(path, "rb") as f:
        offset, carry = 0, b""
        while chunk := f.read(block_size):
            data = carry + chunk
            cut = data.rfind(b"\n") + 1
            if cut == 0:
                carry = data
                continue
            yield offset, data[:cut]
            offset, carry = offset + cut, data[cut:]
        if carry:
            yield offset, carry


def sha256(uri: str) -> str:
    fs, path = filesystem(uri)
    digest = hashlib.sha256()
    with translated(uri), fs.open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def write_atomic(uri: str, data: bytes) -> None:
    """Make `data` visible under `uri` all at once, never as a readable half-file.

    Local: write a hidden temporary file beside it, fsync, rename. Object stores: one PUT
    (or a multipart upload, which only appears when completed).
    """
    fs, path = filesystem(uri)
    with translated(uri):
        if isinstance(fs, LocalFileSystem):
            directory, name = os.path.split(path)
            os.makedirs(directory or ".", exist_ok=True)
            tmp = os.path.join(directory, f".{name}.{uuid.uuid4().hex}.tmp")
            try:
                with open(tmp, "wb") as f:
                    f.write(data)
                    f.flush()
                    os.fsync(f.fileno())
                os.replace(tmp, path)
            finally:
                if os.path.exists(tmp):
                    os.unlink(tmp)
        else:
            fs.pipe_file(path, data)


def remove(uri: str) -> None:
    """Delete a file or a directory tree if present."""
    fs, path = filesystem(uri)
    with translated(uri):
        if fs.exists(path):
            fs.rm(path, recursive=True)
