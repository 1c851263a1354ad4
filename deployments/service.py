"""`bertflow deploy` and `bertflow serve`: put the deployments on a Prefect server, idempotently.

Deploy creates what is missing (the work pool with its `parents` and `shards` queues, the deployments,
the GPU concurrency limit, the automation that crashes runs whose heartbeats stopped), updates what
differs and leaves alone what already matches, so running it twice changes nothing. Options left out
keep what the server already has. The pool is a process pool (workers on the GPU hosts) or a Kubernetes
pool (`bertflow.deployments.kubernetes`: a Job per run; parents' deployments ask for no GPU).
"""

from __future__ import annotations

import copy
import dataclasses
from typing import cast
from uuid import UUID

from prefect import get_client
from prefect.client.orchestration import SyncPrefectClient
from prefect.client.schemas.actions import WorkPoolCreate, WorkPoolUpdate
from prefect.client.schemas.responses import DeploymentResponse
from prefect.deployments.runner import RunnerDeployment
from prefect.exceptions import ObjectNotFound
from prefect.workers.process import ProcessWorker
from pydantic import ValidationError

from bertflow import partitions
from bertflow.config import EmbedConfig, PublishConfig
from bertflow.deployments import kubernetes
from bertflow.deployments.automations import (
    DEFAULT_WINDOW,
    current_window,
    ensure_automation,
    heartbeat_seconds,
    zombie_automation,
)
from bertflow.deployments.definitions import DEFAULT_CRON, ServiceSettings, definitions
from bertflow.deployments.kubernetes import KubernetesOptions
from bertflow.errors import InputError, problem_line
from bertflow.names import GPU_LIMIT, NIGHTLY_DEPLOYMENT, PARENTS_QUEUE, SHARDS_QUEUE, ZOMBIE_AUTOMATION
from bertflow.tasks.gpu import set_slots_per_host, slots_per_host

Change = tuple[str, str, str]  # (kind, name, "created" | "updated" | "unchanged")
POOL_TYPES = ("process", kubernetes.POOL_TYPE)


def settings(
    client: SyncPrefectClient,
    pool: str | None,
    cron: str | None,
    source_template: str | None,
    dest_template: str | None,
    model: str | None,
    publish_db: str | None = None,
    publish_table: str | None = None,
) -> ServiceSettings:
    """The CLI's options over what the nightly deployment already has; defaults for the rest.

    `publish_db` "" stops publishing; None keeps what is deployed."""
    try:
        current = client.read_deployment_by_name(NIGHTLY_DEPLOYMENT)
    except ObjectNotFound:
        current = None
    params = dict(current.parameters) if current else {}
    if cron is None:
        crons = [s.schedule.cron for s in (current.schedules if current else []) if hasattr(s.schedule, "cron")]
        cron = crons[0] if crons else DEFAULT_CRON
    source_template = source_template or params.get("source")
    dest_template = dest_template or params.get("dest")
    if bool(source_template) != bool(dest_template):
        raise InputError(
            "embed-nightly needs both --source-template and --dest-template, "
            "e.g. s3://bucket/raw/dt={date}/ and s3://bucket/embeddings/dt={date}/"
        )
    if source_template and dest_template:
        partitions.check_templates(source_template, dest_template)
    try:
        config = EmbedConfig.model_validate({**(params.get("config") or {}), **({"model": model} if model else {})})
    except ValidationError as e:
        raise InputError(f"embed-nightly's config: {problem_line(e)}") from None
    _check_cron(cron)
    publish = _publish(params.get("publish"), publish_db, publish_table)
    return ServiceSettings(source_template, dest_template, cron, config.model_dump(mode="json"), pool, publish=publish)


def _publish(current: dict | None, db: str | None, table: str | None) -> dict | None:
    """embed-nightly's `publish` parameter: each night's partition into a LanceDB table (--sync partition)."""
    if db == "" or (db is None and current is None):
        if table is not None:
            raise InputError("--publish-table needs --publish-db URI (the LanceDB database)")
        return None
    fields = {**(current or {}), **({"db": db} if db else {}), **({"table": table} if table else {})}
    try:
        return PublishConfig.model_validate({**fields, "sync": "partition"}).model_dump(mode="json")
    except ValidationError as e:
        raise InputError(f"embed-nightly's publish: {problem_line(e)}") from None


def _check_cron(cron: str) -> None:
    from prefect.schedules import Cron

    try:
        Cron(cron, timezone="UTC")
    except ValueError:
        raise InputError(f"--cron {cron!r} is not a cron expression; e.g. '0 2 * * *' is daily at 02:00 UTC") from None


def job_template(heartbeat: int, current: dict | None = None) -> dict:
    """The pool's job template (the process worker's default, or what the pool has, edits kept) with
    heartbeats on for every run its workers start."""
    template = copy.deepcopy(current) if current else ProcessWorker.get_default_base_job_template()
    env = template["variables"]["properties"]["env"]
    env["default"] = {**(env.get("default") or {}), "PREFECT_FLOWS_HEARTBEAT_FREQUENCY": str(heartbeat)}
    return template


def ensure_pool(
    client: SyncPrefectClient, pool: str, heartbeat: int, k8s: KubernetesOptions | None = None
) -> list[Change]:
    """The pool (runs send heartbeats every `heartbeat` s; with `k8s` a Kubernetes pool, else a process pool)
    and its `parents` and `shards` queues. A pool of the other type is refused."""
    pool_type = kubernetes.POOL_TYPE if k8s else "process"
    try:
        current = client.read_work_pool(pool)
    except ObjectNotFound:
        current = None
    if current is not None and current.type != pool_type:
        what = f"--pool {pool}: that work pool is of type {current.type!r}"
        if current.type in POOL_TYPES:
            raise InputError(f"{what}, not {pool_type!r}; give --pool-type {current.type} or another --pool")
        raise InputError(f"{what}; bertflow deploys to {' or '.join(POOL_TYPES)} pools: give another --pool")
    have_template = current.base_job_template if current else None
    if k8s:
        template = kubernetes.job_template(heartbeat, k8s, have_template)
        name = f"{pool} (kubernetes: {kubernetes.describe(template)})"
        description = (
            f"bertflow: `prefect worker start --pool {pool} --type kubernetes` inside the cluster (prefect-kubernetes "
            "installed) starts a Job per run; shard jobs take a GPU, parent jobs none"
        )
    else:
        template = job_template(heartbeat, have_template)
        name = pool
        description = (
            f"bertflow: `prefect worker start --pool {pool} --work-queue {SHARDS_QUEUE} --limit N` on each "
            f"GPU host, `prefect worker start --pool {pool} --work-queue {PARENTS_QUEUE}` on one"
        )
    if current is None:
        client.create_work_pool(
            WorkPoolCreate(name=pool, type=pool_type, base_job_template=template, description=description)
        )
        changes = [("work pool", name, "created")]
    else:
        action = "unchanged"
        if current.base_job_template != template:
            client.update_work_pool(pool, WorkPoolUpdate(base_job_template=template))
            action = "updated"
        changes = [("work pool", name, action)]
    have = {q.name for q in client.read_work_queues(work_pool_name=pool)}
    for queue in (PARENTS_QUEUE, SHARDS_QUEUE):
        if queue not in have:
            client.create_work_queue(name=queue, work_pool_name=pool)
        changes.append(("work queue", f"{pool}/{queue}", "unchanged" if queue in have else "created"))
    return changes


def _same(existing: DeploymentResponse, wanted: RunnerDeployment, pool: str | None) -> bool:
    """Whether the server already holds this deployment exactly as wanted."""
    want_schedules = [
        (getattr(s.schedule, "cron", None), getattr(s.schedule, "timezone", None), bool(s.active))
        for s in wanted.schedules or []
    ]
    have_schedules = [
        (getattr(s.schedule, "cron", None), getattr(s.schedule, "timezone", None), bool(s.active))
        for s in existing.schedules
    ]
    return (
        existing.entrypoint == wanted.entrypoint
        and existing.work_pool_name == pool
        and (pool is None or existing.work_queue_name == wanted.work_queue_name)
        and existing.parameters == wanted.model_dump(mode="json", include={"parameters"})["parameters"]
        and existing.parameter_openapi_schema == wanted._parameter_openapi_schema.model_dump(exclude_unset=True)
        and sorted(existing.tags) == sorted(wanted.tags)
        and existing.description == wanted.description
        and existing.enforce_parameter_schema == wanted.enforce_parameter_schema
        and existing.version == wanted.version
        and (existing.job_variables or {}) == (wanted.job_variables or {})
        and not existing.paused
        and have_schedules == want_schedules
    )


def apply(client: SyncPrefectClient, wanted: RunnerDeployment, pool: str | None) -> tuple[Change, UUID]:
    try:
        existing = client.read_deployment_by_name(wanted.full_name)
    except ObjectNotFound:
        existing = None
    if existing is not None and _same(existing, wanted, pool):
        return ("deployment", wanted.full_name, "unchanged"), existing.id
    # apply dispatches on the caller: from sync code (as here) it returns the id itself.
    deployment_id = cast(UUID, wanted.apply(work_pool_name=pool))
    return ("deployment", wanted.full_name, "updated" if existing else "created"), deployment_id


def deploy(
    pool: str,
    gpus_per_host: int | None = None,
    cron: str | None = None,
    source_template: str | None = None,
    dest_template: str | None = None,
    model: str | None = None,
    heartbeat_window: int | None = None,
    pool_type: str = "process",
    k8s: KubernetesOptions | None = None,
    publish_db: str | None = None,
    publish_table: str | None = None,
) -> list[Change]:
    """Create or update the work pool, the deployments, the GPU limit and the automation; what each one did.

    `k8s`: the Kubernetes pool's options (`pool_type` "kubernetes"); refused on a process pool."""
    if pool_type not in POOL_TYPES:
        raise InputError(f"--pool-type {pool_type!r}: give {' or '.join(POOL_TYPES)}")
    k8s = k8s or KubernetesOptions()
    on_kubernetes = pool_type == kubernetes.POOL_TYPE
    if not on_kubernetes and (given := k8s.given()):
        raise InputError(
            f"{', '.join(given)}: only for --pool-type kubernetes; leave out or add --pool-type kubernetes"
        )
    if on_kubernetes:  # refuse a bad option, or a missing prefect-kubernetes, before anything changes
        k8s.defaults()
        kubernetes.default_template()
    if gpus_per_host is not None and gpus_per_host < 1:
        raise InputError(f"--gpus-per-host {gpus_per_host}: give 1 or more")
    if heartbeat_window is not None:
        heartbeat_seconds(heartbeat_window)  # refuse a bad window before anything changes
    with get_client(sync_client=True) as client:
        s = settings(client, pool, cron, source_template, dest_template, model, publish_db, publish_table)
        if on_kubernetes:
            s = dataclasses.replace(s, parent_job_variables=kubernetes.PARENT_JOB_VARIABLES)
        window = heartbeat_window or current_window(client) or DEFAULT_WINDOW
        changes = ensure_pool(client, pool, heartbeat_seconds(window), k8s if on_kubernetes else None)
        applied = [apply(client, d, pool) for d in definitions(s)]
        changes += [change for change, _ in applied]
        slots = gpus_per_host if gpus_per_host is not None else slots_per_host(client)
        changes.append(("concurrency limit", f"{GPU_LIMIT} ({slots} per host)", set_slots_per_host(client, slots)))
        automation = zombie_automation([i for _, i in applied], window)
        changes.append(("automation", f"{ZOMBIE_AUTOMATION} ({window} s)", ensure_automation(client, automation)))
    return changes


def served_deployments(
    cron: str | None = None,
    source_template: str | None = None,
    dest_template: str | None = None,
    model: str | None = None,
) -> tuple[list[RunnerDeployment], int]:
    """The deployments `bertflow serve` runs in its own process (no pool: parents embed in-process), and
    how often their runs must send heartbeats for the dead-run automation's window."""
    with get_client(sync_client=True) as client:
        s = settings(client, None, cron, source_template, dest_template, model)
        window = current_window(client) or DEFAULT_WINDOW
    return definitions(s, served=True), heartbeat_seconds(window)
