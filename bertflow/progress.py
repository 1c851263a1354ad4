"""Progress of a run's documents, for whoever watches: the CLI's bar, the parent run's Prefect artifact.

Code that does the work calls `start` and `advance`; whoever watches installs a reporter with
`reporting_to`. Reporters nest: each one installed in an enclosing context hears every call. A
context variable, not a flow parameter: a callback cannot travel to another process, and shard
runs on workers report through their parts in DEST instead.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Callable, Iterator
from typing import Protocol

# A callback told how many items just finished (what `advance` is to a step that takes one).
OnProgress = Callable[[int], None]


class ProgressReporter(Protocol):
    def start(self, total: int, done: int) -> None: ...

    def advance(self, n: int) -> None: ...


_REPORTERS: contextvars.ContextVar[tuple[ProgressReporter, ...]] = contextvars.ContextVar("progress", default=())


@contextlib.contextmanager
def reporting_to(reporter: ProgressReporter | None) -> Iterator[None]:
    """Send `start`/`advance` calls in this context to `reporter` too."""
    token = _REPORTERS.set(_REPORTERS.get() + ((reporter,) if reporter is not None else ()))
    try:
        yield
    finally:
        _REPORTERS.reset(token)


def start(total: int, done: int) -> None:
    """A unit of work of `total` items begins, `done` of them already finished (resumed)."""
    for r in _REPORTERS.get():
        r.start(total, done)


def advance(n: int) -> None:
    """`n` more items finished."""
    for r in _REPORTERS.get():
        r.advance(n)
