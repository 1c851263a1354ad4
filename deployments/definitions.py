"""The deployments of bertflow, in one place: names, schedules, default parameters.

Entrypoints are module paths (`bertflow.flows.embed.embed_dataset`): a worker runs the code of
the bertflow installed on its host (`pip install bertflow`), so nothing is pulled at run time.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import cast

from prefect.deployments.runner import RunnerDeployment
from prefect.schedules import Cron
from prefect.types.entrypoint import EntrypointType

import bertflow
from bertflow.flows.backfill import backfill
from bertflow.flows.embed import embed_dataset
from bertflow.flows.shard import embed_shard
from bertflow.names import ADHOC, BACKFILL, DEFAULT_POOL, NIGHTLY, PARENTS_QUEUE, SHARD, SHARDS_QUEUE

DEFAULT_CRON = "0 2 * * *"  # daily 02:00 UTC; each run embeds the day before its scheduled start
TIMEZONE = "UTC"
DEFAULT_MAX_IN_FLIGHT = 4


@dataclass(frozen=True)
class ServiceSettings:
    """What `bertflow deploy` / `bertflow serve` configure; `pool` None means served, not pooled.

    Without templates there is no embed-nightly (and no backfill of it): only embed-adhoc and embed-shard.
    `parent_job_variables` override the pool's job template for the parents (on a Kubernetes pool: no GPU).
    """

    source_template: str | None
    dest_template: str | None
    cron: str = DEFAULT_CRON
    config: dict = field(default_factory=dict)  # EmbedConfig fields, as JSON
    pool: str | None = DEFAULT_POOL
    parent_job_variables: dict = field(default_factory=dict)
    publish: dict | None = None  # PublishConfig fields, as JSON: embed-nightly publishes each partition


def definitions(s: ServiceSettings, *, served: bool = False) -> list[RunnerDeployment]:
    """embed-nightly and backfill (with templates), embed-adhoc, embed-shard (not when served: served parents
    embed in-process). On a pool, parents take runs from the `parents` queue (with `parent_job_variables`) and
    shards from `shards` (with the pool's defaults)."""
    version = f"bertflow {bertflow.__version__}"
    fan_out = {"pool": s.pool} if s.pool else {}
    parents = PARENTS_QUEUE if s.pool else None
    parent_jobs = dict(s.parent_job_variables) if s.pool else {}
    # to_deployment dispatches on the caller: from sync code (as here) it returns the RunnerDeployment itself.
    nightly = [
        cast(
            RunnerDeployment,
            embed_dataset.to_deployment(
                NIGHTLY,
                schedules=[Cron(s.cron, timezone=TIMEZONE)],
                parameters={
                    "source": s.source_template,
                    "dest": s.dest_template,
                    "config": s.config,
                    "lag_days": 1,
                    **fan_out,
                    **({"publish": s.publish} if s.publish else {}),
                },
                description="Nightly: embeds the day before each scheduled start ({date} in source and dest).",
                entrypoint_type=EntrypointType.MODULE_PATH,
                version=version,
                work_queue_name=parents,
                job_variables=parent_jobs,
            ),
        ),
        cast(
            RunnerDeployment,
            backfill.to_deployment(
                BACKFILL,
                parameters={"deployment": NIGHTLY, "max_in_flight": DEFAULT_MAX_IN_FLIGHT},
                description="Rerun embed-nightly over past days, skipping days already complete (and published).",
                entrypoint_type=EntrypointType.MODULE_PATH,
                version=version,
                work_queue_name=parents,
                job_variables=parent_jobs,
            ),
        ),
    ]
    deployments = [
        *(nightly if s.source_template and s.dest_template else []),
        cast(
            RunnerDeployment,
            embed_dataset.to_deployment(
                ADHOC,
                parameters={"config": s.config, **fan_out},
                description="Ad hoc: embed any SOURCE into any DEST, from the UI or `prefect deployment run`.",
                entrypoint_type=EntrypointType.MODULE_PATH,
                version=version,
                work_queue_name=parents,
                job_variables=parent_jobs,
            ),
        ),
    ]
    if not served:
        # Started only by the parent, with values the flow validates itself: the server keeps no copy
        # of the config schema that could go stale when bertflow is upgraded on the hosts.
        deployments.append(
            cast(
                RunnerDeployment,
                embed_shard.to_deployment(
                    SHARD,
                    description="One shard of a fanned-out embedding run (started by embed-dataset).",
                    enforce_parameter_schema=False,
                    entrypoint_type=EntrypointType.MODULE_PATH,
                    version=version,
                    work_queue_name=SHARDS_QUEUE,
                ),
            )
        )
    return deployments
