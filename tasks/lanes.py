"""Shards of a run without `--pool`, in lanes: every card of the host busy, and each card's next shard
read and tokenized (and its last one written) while the current one computes.

A lane is a thread with a CUDA card (`bertflow.model.cards.lanes`: two per card): it takes the next
pending shard, runs it as an `embed-shard` subflow on its card, and takes another. Each card holds
one copy of the model, shared by its lanes, and computes one lane's shard at a time (`cards.turn`):
the other lane reads, tokenizes or writes meanwhile. A shard that fails stops every lane from taking
another; the shards in flight finish (their parts are written: a rerun keeps them) and the first
error is raised. One lane (CPU and MPS) runs the shards in order in the calling thread, as before;
a deployed run holding a GPU slot has the two lanes of its slot's card.
"""

from __future__ import annotations

import contextlib
import contextvars
import os
import signal
import threading
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor, wait
from typing import TypeVar

from bertflow.choices import Device
from bertflow.errors import RunFailedError
from bertflow.io.manifest import ShardJob
from bertflow.model import cards
from bertflow.model.loading import pick_device
from bertflow.tasks.reporting import run_logger

_R = TypeVar("_R")  # what running one shard returns


def shard_lanes(device: Device, devices: Sequence[int] | None, holding_slot: bool = False) -> list[int | None]:
    """The card of each lane for this run: `--devices` (default every card) on CUDA, the card of the
    GPU slot this process holds (a deployed run), or one lane without a card on CPU and MPS.
    Raises InputError for cards this host does not have."""
    kind = pick_device(device)
    if kind != "cuda":
        return cards.lanes(kind, devices, 0)
    import torch

    if holding_slot:  # the slot chose this process's card (`gpu_slot`); --devices cannot widen it
        return cards.lanes(kind, (torch.cuda.current_device(),), torch.cuda.device_count())
    found = cards.lanes(kind, devices, torch.cuda.device_count())
    cards.use(found[0])  # this thread too (planning's sample batches, a single lane): never a card not chosen
    return found


def run_in_lanes(
    jobs: Sequence[ShardJob],
    lanes: Sequence[int | None],
    run: Callable[[ShardJob], _R],
    done: Callable[[ShardJob, _R], None],
) -> list[_R]:
    """`run(job)` for every job, spread over `lanes` (each a thread on its card); `done` is called once per
    finished shard, one call at a time. Returns the results in `jobs`' order; raises the first failure
    after the lanes in flight stop."""
    if len(lanes) <= 1 or len(jobs) <= 1:
        cards.use(lanes[0] if lanes else None)
        results = []
        for job in jobs:
            results.append(run(job))
            done(job, results[-1])
        return results
    todo, lock, failed = deque(jobs), threading.Lock(), threading.Event()
    finished: dict[int, _R] = {}
    errors: list[BaseException] = []
    running: set[str] = set()  # the parts lanes are embedding now

    def in_flight() -> list[str]:
        with lock:
            return sorted(running)

    def stop(why: str) -> None:
        """No lane takes another shard; say what the run still waits for."""
        with lock:
            first, left = not failed.is_set(), sorted(running)
            failed.set()
        if first and left:
            run_logger(__name__).warning(
                "%s: waiting for the shards in flight (%s) to finish; their parts are kept", why, ", ".join(left)
            )

    def lane(card: int | None) -> None:
        name = None
        try:
            cards.use(card)
            while not failed.is_set():
                with lock:
                    if not todo:
                        return
                    job = todo.popleft()
                    name = job.spec.name
                    running.add(name)
                result = run(job)
                with lock:
                    running.discard(name)
                    finished[job.spec.index] = result
                    done(job, result)
        except BaseException as e:  # handed to the caller's thread below
            with lock:
                errors.append(e)
                running.discard(name or "")
            stop(f"{name or 'a lane'} failed")

    told = 0

    def heed(got: list[signal.Signals]) -> None:
        """Act on the signals `_signals_deferred` recorded: the first stops the lanes taking shards."""
        nonlocal told
        for sig in got[told:]:
            if told == 0:
                stop(f"interrupted ({sig.name})")
            else:
                _still_waiting(in_flight)
            told += 1

    # Each lane in a copy of this context: the flow run (subflows link to it) and the progress reporters.
    pool = ThreadPoolExecutor(len(lanes), thread_name_prefix="bertflow-lane")
    futures: list[Future[None]] = []
    try:
        with _signals_deferred() as got:
            for card in lanes:
                futures.append(pool.submit(contextvars.copy_context().run, lane, card))
            _join(futures, lambda: heed(got))
        for f in futures:
            f.result()  # a lane keeps its shard's error in `errors`; this raises only a fault of the lane itself
    except BaseException:  # a deferred Ctrl-C or SIGTERM (the lanes have stopped), or an error sent to this thread
        stop("interrupted")
        _outlast(futures, in_flight)
        raise
    finally:
        failed.set()
        pool.shutdown(wait=False)  # every lane has returned
    if errors:
        raise errors[0]
    if len(finished) < len(jobs):  # stopped by a signal whose handler did not raise
        why = f"interrupted ({got[0].name})" if got else "stopped"
        raise RunFailedError(
            f"{why} with {len(jobs) - len(finished)} shard(s) not run: "
            "run again to embed them (the finished parts are kept)"
        )
    return [finished[job.spec.index] for job in jobs]


def _join(futures: Sequence[Future[None]], wake: Callable[[], None] = lambda: None) -> None:
    """Wait for every future, calling `wake` twice a second and at the end: a signal that the kernel hands
    to another of the process's threads runs its Python handler in the main thread only when that thread
    runs Python."""
    while wait(futures, timeout=0.5).not_done:
        wake()
    wake()


def _still_waiting(in_flight: Callable[[], list[str]]) -> None:
    run_logger(__name__).warning(
        "still waiting for the shards in flight (%s); to stop at once, kill -9 the process (parts are written "
        "whole; the next run takes its lease over)",
        ", ".join(in_flight()),
    )


@contextlib.contextmanager
def _signals_deferred() -> Iterator[list[signal.Signals]]:
    """In the main thread, while the lanes run: Ctrl-C (SIGINT) and SIGTERM are only recorded (the
    handler takes no lock and logs nothing: it may interrupt code holding either), for the waiting loop
    to act on, and reach the handler they had (KeyboardInterrupt, Prefect's termination) once every
    lane has stopped. So the run never unwinds, and releases DEST's lease, while a lane still writes.
    A signal ignored, or handled outside Python, is left as it is; in other threads (signals reach the
    main thread only) nothing is deferred."""
    got: list[signal.Signals] = []
    if threading.current_thread() is not threading.main_thread():
        yield got
        return

    def defer(signum: int, frame: object) -> None:
        got.append(signal.Signals(signum))

    previous = {}
    for s in (signal.SIGINT, signal.SIGTERM):
        handler = signal.getsignal(s)
        if callable(handler) or handler == signal.SIG_DFL:
            previous[s] = signal.signal(s, defer)
    try:
        yield got
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    if got:  # delivered as it would have been, now that no lane runs
        handler = previous[got[0]]
        if callable(handler):
            handler(got[0], None)
        else:  # the default action (SIGTERM: the process ends)
            os.kill(os.getpid(), got[0])


def _outlast(futures: Sequence[Future[None]], in_flight: Callable[[], list[str]]) -> None:
    """Wait for the lanes to stop, through anything raised meanwhile: the run releases DEST's lease as it
    unwinds, and no lane may write after that (another run could have taken DEST)."""
    while True:
        try:
            _join(futures)
            return
        except BaseException:
            _still_waiting(in_flight)
