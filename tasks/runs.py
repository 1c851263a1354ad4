"""Start runs of a deployment at most once, and follow them until they finish (Prefect API).

Each unit of work (a shard of a DEST, a partition of a backfill) gets an idempotency key, so
a repeated or concurrent submission joins the run already in flight instead of starting a
second one. A run that already ended (failed, crashed, or finished before its output was
cleared) belongs to an earlier attempt: the next attempt number gives the unit a fresh run.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, cast
from uuid import UUID

from prefect import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
from prefect.client.schemas.objects import FlowRun
from prefect.client.schemas.responses import DeploymentResponse
from prefect.deployments import run_deployment
from prefect.exceptions import ObjectNotFound
from prefect.settings import PREFECT_API_URL
from prefect.states import Cancelling

from bertflow.errors import InputError

POLL_SECONDS = 2.0
MAX_ATTEMPTS = 1000


@dataclass(frozen=True)
class RunRequest:
    """One run to start: which deployment, with what, under which name and key."""

    key: str
    deployment: str
    parameters: dict[str, Any]
    name: str
    tags: tuple[str, ...] = ()


def read_deployment(name: str) -> DeploymentResponse:
    """The deployment `flow/deployment`, or a one-line error that says how to create it."""
    with get_client(sync_client=True) as client:
        try:
            return client.read_deployment_by_name(name)
        except ObjectNotFound:
            where = PREFECT_API_URL.value() or "Prefect's temporary local server (PREFECT_API_URL is not set)"
            raise InputError(
                f"deployment {name} does not exist on {where}; create it with `bertflow deploy` "
                "(and point PREFECT_API_URL at that server)"
            ) from None


def submit(request: RunRequest, done: Callable[[RunRequest], bool] | None = None) -> FlowRun:
    """A live run for the request: the one in flight under its key, or a new one; or, when `done` says the
    request's output exists, the run that completed it (it may have finished just after the caller looked)."""
    for attempt in range(1, MAX_ATTEMPTS + 1):
        # run_deployment dispatches on the caller: from sync code (as here) it returns the FlowRun itself.
        run = cast(
            FlowRun,
            run_deployment(
                request.deployment,
                parameters=request.parameters,
                flow_run_name=request.name,
                tags=list(request.tags),
                idempotency_key=f"{request.key}-{attempt}",
                timeout=0,
            ),
        )
        if run.state is None or not run.state.is_final():
            return run
        if run.state.is_completed() and done is not None and done(request):
            return run
    raise RuntimeError(f"{request.name}: {MAX_ATTEMPTS} earlier runs under key {request.key}")  # pragma: no cover


def read_runs(ids: Iterable[UUID]) -> list[FlowRun]:
    ids = list(ids)
    found: list[FlowRun] = []
    with get_client(sync_client=True) as client:
        for i in range(0, len(ids), 200):
            chunk = ids[i : i + 200]
            found += client.read_flow_runs(
                flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=chunk)), limit=len(chunk)
            )
    return found


def run_all(
    requests: Sequence[RunRequest],
    on_final: Callable[[RunRequest, FlowRun], bool],
    max_in_flight: int | None = None,
    timeout: float | None = None,
    done: Callable[[RunRequest], bool] | None = None,
    watch: Callable[[Sequence[RunRequest]], None] | None = None,
) -> list[RunRequest]:
    """Start every request (at most `max_in_flight` running at once) and wait until each run has ended.

    `on_final` sees each run that ended and returns True to submit its request again (a new run, the
    next attempt). `done` (see `submit`) keeps a unit whose output appeared meanwhile from running again.
    `watch` sees the requests in flight at every poll (what they wrote so far, say).
    After `timeout` seconds the runs still in flight are cancelled: returns the requests
    that did not finish (an empty list when all did).
    """
    deadline = None if timeout is None else time.monotonic() + timeout
    queue = list(requests)
    in_flight: dict[UUID, RunRequest] = {}
    while queue or in_flight:
        while queue and (max_in_flight is None or len(in_flight) < max_in_flight):
            request = queue.pop(0)
            in_flight[submit(request, done).id] = request
        if deadline is not None and time.monotonic() >= deadline:
            cancel(in_flight, f"not finished after {timeout:.0f} s, the parent's timeout")
            return [*in_flight.values(), *queue]
        time.sleep(POLL_SECONDS)
        if watch is not None:
            watch(list(in_flight.values()))
        for run in read_runs(in_flight):
            if run.state is not None and run.state.is_final():
                request = in_flight.pop(run.id)
                if on_final(request, run):
                    queue.insert(0, request)
    return []


def cancel(runs: Iterable[UUID], why: str) -> None:
    """Ask the runs' workers to stop them (Cancelling); a run that already ended keeps its state."""
    with get_client(sync_client=True) as client:
        for run_id in runs:
            client.set_flow_run_state(run_id, Cancelling(message=why))


def describe(run: FlowRun) -> str:
    """'Crashed: Execution was aborted by a termination signal.' in one line."""
    state = run.state
    if state is None:
        return "no state"
    message = (state.message or "").strip().splitlines()
    return f"{state.name}: {message[0]}" if message else str(state.name)  # Prefect names a state after its type
