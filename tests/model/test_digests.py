"""Digests of model files: hashed once per host and file version, hashed again when the file changes."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bertflow.model import digests

BIG = digests.PERSIST_BYTES + 1  # large enough to be remembered on the host


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("BERTFLOW_CACHE_DIR", str(tmp_path / "cache"))
    digests._memo.cache_clear()  # a fresh process's memory, the host's cache kept
    return tmp_path / "cache"


@pytest.fixture
def hashed(monkeypatch) -> list[str]:
    """The files read and hashed (the real hashing, counted)."""
    seen: list[str] = []
    real = digests.hash_file

    def counting(path: str) -> str:
        seen.append(path)
        return real(path)

    monkeypatch.setattr(digests, "hash_file", counting)
    return seen


def weights(path: Path, fill: bytes = b"a") -> Path:
    path.write_bytes(fill * BIG)
    return path


def test_a_large_file_is_hashed_once_per_host(tmp_path, cache, hashed):
    f = weights(tmp_path / "model.safetensors")
    expected = hashlib.sha256(f.read_bytes()).hexdigest()
    assert digests.file_sha256(f) == expected
    digests._memo.cache_clear()  # the next process on the host
    assert digests.file_sha256(f) == expected
    assert hashed == [str(f)]
    # another process reads the same digest from the host's cache
    out = subprocess.run(
        [sys.executable, "-c", f"from pathlib import Path; from bertflow.model import digests; "
         f"print(digests.file_sha256(Path({str(f)!r})))"],
        env={**os.environ, "BERTFLOW_CACHE_DIR": str(cache)}, capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert out.stdout.strip() == expected


def test_a_rewritten_file_is_hashed_again_even_with_its_size_and_mtime_kept(tmp_path, cache, hashed):
    f = weights(tmp_path / "model.safetensors")
    first = digests.file_sha256(f)
    st = f.stat()
    with open(f, "r+b") as out:  # same size, one byte changed, modification time put back
        out.write(b"b")
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert f.stat().st_mtime_ns == st.st_mtime_ns and f.stat().st_size == st.st_size
    digests._memo.cache_clear()
    second = digests.file_sha256(f)
    assert second == hashlib.sha256(f.read_bytes()).hexdigest() != first
    assert hashed == [str(f), str(f)]


def test_a_corrupt_entry_is_hashed_again(tmp_path, cache, hashed):
    f = weights(tmp_path / "model.safetensors")
    expected = digests.file_sha256(f)
    (entry,) = (cache / "sha256").iterdir()
    entry.write_text("not a digest")
    digests._memo.cache_clear()
    assert digests.file_sha256(f) == expected
    assert len(hashed) == 2 and entry.read_text() == expected


def test_an_unwritable_cache_still_gives_the_digest(tmp_path, monkeypatch, hashed):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    monkeypatch.setenv("BERTFLOW_CACHE_DIR", str(blocker))  # a file where the directory should be
    digests._memo.cache_clear()
    f = weights(tmp_path / "model.safetensors")
    assert digests.file_sha256(f) == hashlib.sha256(f.read_bytes()).hexdigest()
    assert not list(tmp_path.glob("**/*.tmp"))


def test_small_files_are_not_remembered_on_the_host(tmp_path, cache, hashed):
    f = tmp_path / "config.json"
    f.write_text("{}")
    assert digests.file_sha256(f) == hashlib.sha256(b"{}").hexdigest()
    assert not cache.exists()
