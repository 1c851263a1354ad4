"""Which GPU of its host a shard run uses: slot k of the host's GPU limit runs on card k.

Prefect's concurrency limit bounds how many runs hold a model on a host at once, but its slots
carry no number. Each holder also claims a card index on the host: the first of `bertflow-card-<k>`
lock files (flock, in the temporary directory) it can lock. The kernel drops a dead holder's lock
with its process, so a run that died never keeps its card; and as no more runs hold a Prefect slot
than there are indices, a holder always finds one free. With more slots than cards (two models per
card), index k runs on card k mod cards. Under Kubernetes each pod sees only the GPU it was given:
its index maps to that card.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import tempfile
import time
from collections.abc import Iterator, Sequence

from bertflow.errors import InputError
from bertflow.locks import KeyedLocks

WAIT_SECONDS = 0.2


def _lock_dir() -> str:
    path = os.path.join(tempfile.gettempdir(), f"bertflow-cards-{os.getuid()}")
    os.makedirs(path, exist_ok=True)
    return path


@contextlib.contextmanager
def claim(indices: int) -> Iterator[int]:
    """Hold the lowest free card index below `indices` on this host for the block (waits while all are taken)."""
    files = [os.path.join(_lock_dir(), f"bertflow-card-{k}.lock") for k in range(max(indices, 1))]
    while True:
        for k, path in enumerate(files):
            handle = open(path, "a")
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                handle.close()
                continue
            try:
                yield k
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)
                handle.close()
            return
        time.sleep(WAIT_SECONDS)


# Shards in flight per card in a run without --pool: while one lane's batches compute, the other reads,
# tokenizes or writes its shard, so the card does not wait for the host between shards.
LANES_PER_CARD = 2


def lanes(kind: str, devices: Sequence[int] | None, count: int, per_card: int = LANES_PER_CARD) -> list[int | None]:
    """The card of each lane of shards a run embeds in its own process: `per_card` lanes on each card of
    `devices` (default: all `count` visible), interleaved so the first lanes take different cards;
    one lane (None: no card) on a CPU or MPS."""
    if kind != "cuda":
        if devices:
            raise InputError(
                f"--devices {','.join(map(str, devices))} selects CUDA cards, and this run embeds on {kind}: "
                "drop --devices, or use --device cuda"
            )
        return [None]
    chosen = list(devices) if devices else list(range(count))
    if missing := [c for c in chosen if not 0 <= c < count]:
        raise InputError(
            f"--devices {','.join(map(str, chosen))}: this host has {count} CUDA device(s), numbered 0 to "
            f"{count - 1}{_visible()}; there is no card {missing[0]}"
        )
    return [card for _ in range(per_card) for card in chosen]


def _visible() -> str:
    """How CUDA numbers the cards here when CUDA_VISIBLE_DEVICES narrows them."""
    given = os.environ.get("CUDA_VISIBLE_DEVICES", "").strip()
    return f" (the cards CUDA_VISIBLE_DEVICES={given} lets this process see, counted from 0)" if given else ""


def current(device: str) -> int | None:
    """The calling thread's CUDA card on `cuda` (set by `use` or a GPU slot); None on other devices."""
    if device != "cuda":
        return None
    import torch

    return int(torch.cuda.current_device())


def use(card: int | None) -> None:
    """Make `card` the calling thread's CUDA device (CUDA's current device is per thread); None: nothing."""
    if card is not None:
        import torch

        torch.cuda.set_device(card)


_TURNS: KeyedLocks[int | None] = KeyedLocks()  # per card (None: the CPU)


@contextlib.contextmanager
def turn(device: str) -> Iterator[None]:
    """Hold the calling thread's card (or the CPU) for one shard's forward passes: its two lanes take
    turns computing, so one shard's batches never share the card's memory with another's while the
    other lane reads, tokenizes or writes."""
    card = current(device)
    with _TURNS(card):
        yield


def card_of(index: int, cards: int) -> int:
    """The card a claimed index runs on: the index itself, wrapped when slots outnumber cards."""
    return index % cards if cards > 0 else 0


def label(device: str) -> str:
    """What the manifest and artifacts say a shard ran on: `cuda:1 (NVIDIA H200)`, or the device as is."""
    if device != "cuda":
        return device
    import torch

    k = torch.cuda.current_device()
    return f"cuda:{k} ({torch.cuda.get_device_name(k)})"
