"""Progress of the rows of a run, for whoever watches this process (the CLI's progress bar).

A context variable, not a flow parameter: a callback cannot travel to another process, and
shard runs on workers report through Prefect artifacts instead.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator
from typing import Protocol


class ProgressReporter(Protocol):
    def start(self, total_rows: int, done_rows: int) -> None: ...

    def advance(self, rows: int) -> None: ...


_REPORTER: contextvars.ContextVar[ProgressReporter | None] = contextvars.ContextVar("progress", default=None)


@contextlib.contextmanager
def reporting_to(reporter: ProgressReporter | None) -> Iterator[None]:
    token = _REPORTER.set(reporter)
    try:
        yield
    finally:
        _REPORTER.reset(token)


def start(total_rows: int, done_rows: int) -> None:
    if (r := _REPORTER.get()) is not None:
        r.start(total_rows, done_rows)


def advance(rows: int) -> None:
    if (r := _REPORTER.get()) is not None:
        r.advance(rows)
