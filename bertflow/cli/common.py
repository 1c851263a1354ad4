"""What every command shares: one-line errors and exit codes, option parsing, the progress bar, tables."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from typing import NoReturn, TypeVar

import httpx
import typer
from pydantic import ValidationError
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeRemainingColumn
from rich.table import Table

from bertflow import progress
from bertflow.errors import BertflowError, first_problem
from bertflow.io.storage import storage_options

err = Console(stderr=True)
out = Console()
T = TypeVar("T")


def fail(message: str, code: int = 2) -> NoReturn:
    """Print one line on stderr and exit with `code` (2: bad input, 1: the run failed)."""
    err.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


@contextlib.contextmanager
def reported() -> Iterator[None]:
    """Turn a bertflow error from the block into its one line and its exit code (see `bertflow.errors`)."""
    try:
        yield
    except BertflowError as e:
        fail(str(e), e.exit_code)
    except httpx.HTTPStatusError as e:
        if e.response.status_code not in (401, 403):
            raise
        fail(
            f"the Prefect server at {e.request.url.scheme}://{e.request.url.netloc.decode()} refused this client "
            f"({e.response.status_code}): set PREFECT_API_AUTH_STRING to the server's credential (user:password)"
        )


def validated(make: Callable[[], T]) -> T:
    """Build a pydantic config; a validation error becomes one line naming the option."""
    try:
        return make()
    except ValidationError as e:
        where, msg = first_problem(e)
        fail(f"--{where.replace('_', '-')}: {msg}" if where else msg)


def csv(value: str | None) -> tuple[str, ...]:
    """`a, b,c` -> ("a", "b", "c")."""
    return tuple(v.strip() for v in value.split(",") if v.strip()) if value else ()


def layers(value: str) -> tuple[int, ...]:
    """`-4,-3,-2,-1` -> (-4, -3, -2, -1)."""
    try:
        return tuple(int(v) for v in csv(value))
    except ValueError:
        fail(f"--layers {value!r}: give comma-separated negative integers such as -1 or -4,-3,-2,-1")


def options(pairs: Sequence[str] | None) -> dict[str, str]:
    """`--storage-option KEY=VALUE` pairs as a dict."""
    parsed = {}
    for pair in pairs or ():
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            fail(
                f"--storage-option {pair.split('=')[0]!r}: expected KEY=VALUE, e.g. endpoint_url=http://localhost:9000"
            )
        parsed[key.strip()] = value
    return parsed


class Bar:
    """The one progress reporter of the CLI: a rich bar per `start` (stage names in order), on a terminal only."""

    def __init__(self, *stages: str, unit: str = "") -> None:
        columns = [TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn()]
        columns += [TextColumn(unit)] if unit else []
        self.progress = Progress(
            *columns, TimeRemainingColumn(), console=err, transient=True, disable=not err.is_terminal
        )
        self.stages: list[str] = list(stages)
        self.task: TaskID | None = None

    def start(self, total: int, done: int) -> None:
        if self.task is not None:
            self.progress.remove_task(self.task)
        name = self.stages.pop(0) if len(self.stages) > 1 else self.stages[0]
        self.task = self.progress.add_task(name, total=total, completed=done)

    def advance(self, n: int) -> None:
        if self.task is not None:
            self.progress.advance(self.task, n)


@contextlib.contextmanager
def running(bar: Bar | None = None, storage: Sequence[str] | None = None, flow: bool = False) -> Iterator[None]:
    """Around a call: errors reported in one line, progress drawn, `--storage-option`s in effect; for a
    `flow`, a temporary Prefect server that dies with this process when PREFECT_API_URL is not set."""
    with reported(), contextlib.ExitStack() as stack:
        if flow:
            from bertflow.cli.server import temporary_server

            stack.enter_context(temporary_server())
        if bar is not None:
            stack.enter_context(bar.progress)
            stack.enter_context(progress.reporting_to(bar))
        stack.enter_context(storage_options(options(storage)))
        yield


def table(title: str, rows: Sequence[tuple[str, str]]) -> Table:
    """A two-column key/value table, values folded rather than cut."""
    t = Table(title=title, show_header=False, title_justify="left")
    t.add_column(style="bold")
    t.add_column(overflow="fold")  # a long DEST must show whole, not end in an ellipsis
    for k, v in rows:
        t.add_row(k, v)
    return t
