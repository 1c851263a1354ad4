"""sha256 of model files, hashed once per host and file version rather than once per process.

A worker's shard run is a new process, and every shard run checks the weights it loads against the
sha256 its run planned (`loading.localize`): hashed each time, that is a second or more per shard for
a large model. So a digest is remembered twice: in the process, and, for large files, in a small
cache on the host that the next process reads. Like git's index, an entry is keyed by the file's
stat (device, inode, size, modification and change times in nanoseconds): a file rewritten in any
way gets a new change time, which no tool can set back, and is hashed again. The cache lives in
`$BERTFLOW_CACHE_DIR`, else `$XDG_CACHE_HOME/bertflow`, else `~/.cache/bertflow`; where it cannot be
read or written, files are simply hashed.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import os
import re
import tempfile
from pathlib import Path

# Smaller files (configs, tokenizers) hash faster than a cache entry is looked up.
PERSIST_BYTES = 16 << 20
_HEX = re.compile(r"[0-9a-f]{64}")


def cache_dir() -> Path:
    """Where the host's digests are remembered."""
    if given := os.environ.get("BERTFLOW_CACHE_DIR"):
        return Path(given)
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "bertflow"


def file_sha256(path: Path) -> str:
    """The sha256 of `path`'s bytes, hashed only when this version of the file was not hashed before."""
    st = path.stat()
    key = f"{os.path.realpath(path)}\0{st.st_dev}:{st.st_ino}:{st.st_size}:{st.st_mtime_ns}:{st.st_ctime_ns}"
    return _memo(key, str(path), st.st_size >= PERSIST_BYTES)


@functools.cache
def _memo(key: str, path: str, persist: bool) -> str:
    if not persist:
        return hash_file(path)
    entry = cache_dir() / "sha256" / hashlib.sha256(key.encode()).hexdigest()
    try:
        known = entry.read_text().strip()
        if _HEX.fullmatch(known):
            return known
    except (OSError, UnicodeDecodeError):  # not there yet (or unreadable): hash it
        pass
    digest = hash_file(path)
    tmp = None
    try:
        entry.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=entry.parent, suffix=".tmp")
        with os.fdopen(fd, "w") as f:
            f.write(digest)
        os.replace(tmp, entry)  # whole or not at all: processes of one host may race here
    except OSError:  # a read-only home: the next process hashes again
        if tmp is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
    return digest


def hash_file(path: str) -> str:
    """Read and hash the whole file."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()
