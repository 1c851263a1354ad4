"""The GPU guard: a run takes a slot of its host's Prefect global concurrency limit before it puts
a model on the device, so N workers on one host never load more models than the host has slots.

`bertflow deploy --gpus-per-host N` sets `bertflow-gpu` to N: the slots each host gets. Each host
takes its slots from its own limit, `bertflow-gpu-<host>`, created from `bertflow-gpu` on first use
(Prefect's limits are global, so one limit per host is what bounds a host; see `host_key` for what
counts as a host). A slot's holder then claims a card index of the host (`bertflow.model.cards`)
and puts its model on that card: N slots keep N cards busy, not N models on card 0.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import socket
from collections.abc import Iterator
from pathlib import Path

from prefect import get_client, get_run_logger
from prefect.client.orchestration import SyncPrefectClient
from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate, GlobalConcurrencyLimitUpdate
from prefect.concurrency.sync import concurrency
from prefect.context import FlowRunContext
from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound

from bertflow.model import cards
from bertflow.names import GPU_LIMIT
from bertflow.partitions import slug

# A slot held by a process that died (power loss, SIGKILL) comes back when its lease runs out;
# a live holder renews the lease in the background.
LEASE_SECONDS = 60


def host_key() -> str:
    """Which machine's GPUs this process shares: `BERTFLOW_GPU_HOST` when set (on Kubernetes, the node's
    name from the downward API: pods on one node share its GPUs), else the hostname plus a digest of
    /etc/machine-id, so two machines that happen to share a hostname (cloned images) get two limits."""
    if explicit := os.environ.get("BERTFLOW_GPU_HOST"):
        return explicit
    host = socket.gethostname()
    with contextlib.suppress(OSError):
        machine = Path("/etc/machine-id").read_text().strip()
        if machine:
            return f"{host}-{hashlib.sha256(machine.encode()).hexdigest()[:8]}"
    return host


def host_limit_name(host: str | None = None) -> str:
    return f"{GPU_LIMIT}-{slug(host or host_key()) or 'host'}"


def slots_per_host(client: SyncPrefectClient) -> int:
    """What `bertflow deploy --gpus-per-host` set; 1 when it was never run."""
    try:
        return client.read_global_concurrency_limit_by_name(GPU_LIMIT).limit
    except ObjectNotFound:
        return 1


def set_slots_per_host(client: SyncPrefectClient, slots: int) -> str:
    """Create or update `bertflow-gpu` and every host's limit to `slots`; say what changed."""
    try:
        current = client.read_global_concurrency_limit_by_name(GPU_LIMIT)
    except ObjectNotFound:
        client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name=GPU_LIMIT, limit=slots))
        action = "created"
    else:
        action = "unchanged"
        if current.limit != slots:
            client.update_global_concurrency_limit(GPU_LIMIT, GlobalConcurrencyLimitUpdate(limit=slots))
            action = "updated"
    offset = 0
    while batch := client.read_global_concurrency_limits(limit=200, offset=offset):
        for lim in batch:
            if lim.name.startswith(f"{GPU_LIMIT}-") and lim.limit != slots:
                client.update_global_concurrency_limit(lim.name, GlobalConcurrencyLimitUpdate(limit=slots))
        offset += len(batch)
    return action


def ensure_host_limit(client: SyncPrefectClient, name: str) -> None:
    try:
        client.read_global_concurrency_limit_by_name(name)
    except ObjectNotFound:
        with contextlib.suppress(ObjectAlreadyExists):  # another worker on this host was first
            client.create_global_concurrency_limit(
                GlobalConcurrencyLimitCreate(name=name, limit=slots_per_host(client))
            )


@contextlib.contextmanager
def gpu_slot(enabled: bool) -> Iterator[None]:
    """Hold one of this host's GPU slots for the block (waits for a free one); no-op when not enabled."""
    if not enabled:
        yield
        return
    name = host_limit_name()
    with get_client(sync_client=True) as client:
        ensure_host_limit(client, name)
        slots = client.read_global_concurrency_limit_by_name(name).limit
    logger = get_run_logger()
    logger.info("waiting for a GPU slot of %s", name)
    with concurrency(name, occupy=1, lease_duration=LEASE_SECONDS, strict=True), cards.claim(slots) as index:
        card = _use_card(index)
        logger.info("holding GPU slot %d of %s%s", index, name, f", on cuda:{card}" if card is not None else "")
        try:
            yield
        finally:
            logger.info("releasing GPU slot %d of %s", index, name)


def _use_card(index: int) -> int | None:
    """Make card `index` (wrapped by the host's card count) this process's CUDA device; None without CUDA."""
    import torch

    if not torch.cuda.is_available():
        return None
    card = cards.card_of(index, torch.cuda.device_count())
    torch.cuda.set_device(card)  # "cuda" means this card from here on: the model, the batches, the cache
    return card


def in_deployment_run() -> bool:
    """Whether the current flow run came from a deployment (so it runs in a process of its own)."""
    ctx = FlowRunContext.get()
    return bool(ctx and ctx.flow_run and ctx.flow_run.deployment_id)
