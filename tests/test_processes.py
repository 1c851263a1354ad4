"""The small process-wide helpers: a lock per key, and a process's start-up told once."""

from __future__ import annotations

import threading
import time

import pytest

from bertflow.locks import KeyedLocks
from bertflow.processes import StartUp, age


def test_keyed_locks_give_one_lock_per_key_across_threads():
    locks: KeyedLocks[tuple[str, int]] = KeyedLocks()
    got: list[threading.Lock] = []
    threads = [threading.Thread(target=lambda: got.append(locks(("model", 0)))) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len({id(lock) for lock in got}) == 1
    assert locks(("model", 1)) is not got[0]
    with locks(("model", 0)):  # held under one key, another key's lock is free
        assert locks(("model", 1)).acquire(blocking=False)


@pytest.mark.skipif(age() is None, reason="a process's age is read from Linux's /proc")
def test_start_up_is_told_once_and_keeps_its_first_note():
    startup = StartUp()
    assert startup.take() is None  # nothing noted yet
    startup.note()
    first = age()
    time.sleep(0.2)
    startup.note()  # a second shard's note does not move it
    seconds = startup.take()
    assert seconds is not None and first is not None and abs(seconds - first) < 0.1
    assert startup.take() is None  # the next part does not count it again
