"""The zombie automation's identity does not depend on the process that built it.

Its trigger holds sets (the events it expects), which Python orders by string hash, randomised per
process: two `bertflow deploy` runs must still agree that an unchanged automation is unchanged
(CI once saw a second deploy report 'updated')."""

from __future__ import annotations

import os
import subprocess
import sys

SCRIPT = (
    "import uuid; from deployments.automations import _key, zombie_automation; "
    "print(_key(zombie_automation([uuid.UUID(int=2), uuid.UUID(int=1)], 90)))"
)


def key_in_process(seed: int) -> str:
    env = {**os.environ, "PYTHONHASHSEED": str(seed)}
    out = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, check=True)
    return out.stdout


def test_the_automation_compares_equal_across_processes():
    keys = {key_in_process(seed) for seed in (1, 2, 3, 4)}
    assert len(keys) == 1
    assert "prefect.flow-run.BadInput" in keys.pop()
