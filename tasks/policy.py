"""How bertflow's tasks run under Prefect: data stays in memory, retries only where they can help.

Not a task itself: the decorator arguments every task module shares, decided once here.
"""

from __future__ import annotations

from typing import Any

import torch
from prefect.cache_policies import NO_CACHE
from prefect.tasks import exponential_backoff

from bertflow.errors import TransientStorageError


def is_transient(task: Any, task_run: Any, state: Any) -> bool:
    """Retry storage hiccups and device out-of-memory; never bad input."""
    exc = state.data if isinstance(state.data, BaseException) else None
    if exc is None:
        try:
            state.result()
        except BaseException as e:
            exc = e
    return isinstance(exc, (TransientStorageError, torch.OutOfMemoryError))


# Data moves between the tasks of one shard in memory: caching and result persistence are off,
# so large frames are never hashed or written anywhere but the final part.
IN_MEMORY: dict[str, Any] = {"cache_policy": NO_CACHE, "persist_result": False}
RETRY: dict[str, Any] = {
    "retries": 4,
    "retry_delay_seconds": exponential_backoff(1),
    "retry_jitter_factor": 0.5,
    "retry_condition_fn": is_transient,
}
