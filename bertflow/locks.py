"""A lock per key (a CUDA card, a model), made on first use and kept: the keys are few."""

from __future__ import annotations

import threading
from collections.abc import Hashable
from typing import Generic, TypeVar

_K = TypeVar("_K", bound=Hashable)


class KeyedLocks(Generic[_K]):
    """`locks(key)`: the same `threading.Lock` for equal keys, from any thread."""

    def __init__(self) -> None:
        self._locks: dict[_K, threading.Lock] = {}
        self._guard = threading.Lock()

    def __call__(self, key: _K) -> threading.Lock:
        with self._guard:
            return self._locks.setdefault(key, threading.Lock())
