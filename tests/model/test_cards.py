"""Slot k runs on card k: card indices claimed by real processes on one host, freed when one dies."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as Timeout

import pytest

from bertflow.model.cards import card_of, label

HOLDER = "import time\nfrom bertflow.model.cards import claim\nwith claim(3) as k:\n    print(k, flush=True)\n    time.sleep(120)\n"


@pytest.fixture
def holders(tmp_path):
    """Start processes that claim one of 3 card indices and hold it; all killed at the end."""
    started: list[subprocess.Popen] = []
    env = {**os.environ, "TMPDIR": str(tmp_path)}  # the lock files live in this test's own directory

    def start() -> subprocess.Popen:
        proc = subprocess.Popen([sys.executable, "-c", HOLDER], stdout=subprocess.PIPE, text=True, env=env)
        started.append(proc)
        return proc

    yield start
    for proc in started:
        proc.kill()
        proc.wait(10)


def index_of(proc: subprocess.Popen, timeout: float) -> int:
    """The index the holder printed; TimeoutError if it printed none in time (its reader is left behind)."""
    pool = ThreadPoolExecutor(1)
    line = pool.submit(proc.stdout.readline)
    pool.shutdown(wait=False)
    return int(line.result(timeout=timeout))


def test_each_holder_gets_its_own_index_and_a_dead_holders_index_comes_back(holders):
    first = [holders() for _ in range(3)]
    indices = [index_of(p, 60) for p in first]
    assert sorted(indices) == [0, 1, 2]
    waiting = holders()  # every index is held: it waits
    reading = ThreadPoolExecutor(1)
    line = reading.submit(waiting.stdout.readline)
    with pytest.raises(Timeout):
        line.result(timeout=3)
    dead = first[indices.index(1)]
    os.kill(dead.pid, signal.SIGKILL)  # the holder of index 1 dies, releasing nothing: the kernel drops its lock
    dead.wait(10)
    assert int(line.result(timeout=30)) == 1  # 0 and 2 are still held
    reading.shutdown()


def test_an_index_runs_on_its_card_wrapped_when_slots_outnumber_cards():
    assert [card_of(k, 4) for k in range(4)] == [0, 1, 2, 3]
    assert [card_of(k, 2) for k in range(4)] == [0, 1, 0, 1]  # two models per card
    assert card_of(3, 1) == 0 and label("cpu") == "cpu"
