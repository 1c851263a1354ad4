"""`bertflow deploy` and `bertflow serve`: put the deployments on a Prefect server, idempotently.

Deploy creates what is missing (the process work pool, the deployments, the GPU concurrency
limit), updates what differs and leaves alone what already matches, so running it twice
changes nothing. Options left out keep what the server already has.
"""

from __future__ import annotations

from prefect import get_client
from prefect.client.orchestration import SyncPrefectClient
from prefect.client.schemas.actions import WorkPoolCreate
from prefect.client.schemas.responses import DeploymentResponse
from prefect.deployments.runner import RunnerDeployment
from prefect.exceptions import ObjectNotFound
from prefect.workers.process import ProcessWorker
from pydantic import ValidationError

from bertflow import partitions
from bertflow.config import EmbedConfig
from bertflow.deployments.definitions import DEFAULT_CRON, ServiceSettings, definitions
from bertflow.errors import InputError
from bertflow.names import GPU_LIMIT, NIGHTLY_DEPLOYMENT
from bertflow.tasks.gpu import set_slots_per_host, slots_per_host

Change = tuple[str, str, str]  # (kind, name, "created" | "updated" | "unchanged")


def settings(
    client: SyncPrefectClient,
    pool: str | None,
    cron: str | None,
    source_template: str | None,
    dest_template: str | None,
    model: str | None,
) -> ServiceSettings:
    """The CLI's options over what the nightly deployment already has; defaults for the rest."""
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
    if not source_template or not dest_template:
        raise InputError(
            "the first deploy needs --source-template and --dest-template, "
            "e.g. s3://bucket/raw/dt={date}/ and s3://bucket/embeddings/dt={date}/"
        )
    partitions.check_templates(source_template, dest_template)
    try:
        config = EmbedConfig.model_validate({**(params.get("config") or {}), **({"model": model} if model else {})})
    except ValidationError as e:
        raise InputError(f"embed-nightly's config: {e.errors()[0]['msg']}") from None
    _check_cron(cron)
    return ServiceSettings(source_template, dest_template, cron, config.model_dump(mode="json"), pool)


def _check_cron(cron: str) -> None:
    from prefect.schedules import Cron

    try:
        Cron(cron, timezone="UTC")
    except ValueError:
        raise InputError(f"--cron {cron!r} is not a cron expression; e.g. '0 2 * * *' is daily at 02:00 UTC") from None


def ensure_pool(client: SyncPrefectClient, pool: str) -> Change:
    try:
        client.read_work_pool(pool)
        return ("work pool", pool, "unchanged")
    except ObjectNotFound:
        client.create_work_pool(
            WorkPoolCreate(
                name=pool,
                type="process",
                base_job_template=ProcessWorker.get_default_base_job_template(),
                description="bertflow workers: `prefect worker start --pool " + pool + "` on each GPU host",
            )
        )
        return ("work pool", pool, "created")


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
        and existing.parameters == wanted.model_dump(mode="json", include={"parameters"})["parameters"]
        and existing.parameter_openapi_schema == wanted._parameter_openapi_schema.model_dump(exclude_unset=True)
        and sorted(existing.tags) == sorted(wanted.tags)
        and existing.description == wanted.description
        and existing.enforce_parameter_schema == wanted.enforce_parameter_schema
        and existing.version == wanted.version
        and not existing.paused
        and have_schedules == want_schedules
    )


def apply(client: SyncPrefectClient, wanted: RunnerDeployment, pool: str | None) -> Change:
    try:
        existing = client.read_deployment_by_name(wanted.full_name)
    except ObjectNotFound:
        existing = None
    if existing is not None and _same(existing, wanted, pool):
        return ("deployment", wanted.full_name, "unchanged")
    wanted.apply(work_pool_name=pool)
    return ("deployment", wanted.full_name, "updated" if existing else "created")


def deploy(
    pool: str,
    gpus_per_host: int | None = None,
    cron: str | None = None,
    source_template: str | None = None,
    dest_template: str | None = None,
    model: str | None = None,
) -> list[Change]:
    """Create or update the work pool, the deployments and the GPU limit; what each one did."""
    if gpus_per_host is not None and gpus_per_host < 1:
        raise InputError(f"--gpus-per-host {gpus_per_host}: give 1 or more")
    with get_client(sync_client=True) as client:
        s = settings(client, pool, cron, source_template, dest_template, model)
        changes = [ensure_pool(client, pool)]
        changes += [apply(client, d, pool) for d in definitions(s)]
        slots = gpus_per_host if gpus_per_host is not None else slots_per_host(client)
        changes.append(("concurrency limit", f"{GPU_LIMIT} ({slots} per host)", set_slots_per_host(client, slots)))
    return changes


def served_deployments(
    cron: str | None = None,
    source_template: str | None = None,
    dest_template: str | None = None,
    model: str | None = None,
) -> list[RunnerDeployment]:
    """The deployments `bertflow serve` runs in its own process (no pool: parents embed in-process)."""
    with get_client(sync_client=True) as client:
        s = settings(client, None, cron, source_template, dest_template, model)
    return definitions(s, served=True)
