"""Every name bertflow gives things on a Prefect server, defined once.

Flows, deployments (`flow/deployment`), the default work pool, the GPU concurrency limit and the
tag of backfill runs. The deployments module, the tasks that start runs and the CLI all read them here.
"""

from __future__ import annotations

# Flows
EMBED_FLOW = "embed-dataset"
SHARD_FLOW = "embed-shard"
BACKFILL_FLOW = "backfill"
TRAIN_POOLER_FLOW = "train-pooler"
FIT_REDUCTION_FLOW = "fit-reduction"

# Deployments, by their short names
NIGHTLY = "embed-nightly"
ADHOC = "embed-adhoc"
SHARD = "embed-shard"
BACKFILL = "backfill"


def full_name(flow: str, deployment: str) -> str:
    """`flow/deployment`, as Prefect names a deployment."""
    return f"{flow}/{deployment}"


def deployment_name(deployment: str) -> str:
    """`embed-nightly` -> `embed-dataset/embed-nightly` (a partitioned embed deployment); `flow/deployment` as is."""
    return deployment if "/" in deployment else full_name(EMBED_FLOW, deployment)


NIGHTLY_DEPLOYMENT = full_name(EMBED_FLOW, NIGHTLY)
SHARD_DEPLOYMENT = full_name(SHARD_FLOW, SHARD)

DEFAULT_POOL = "bertflow"
# Work queues of the pool: parents wait for their shards, so they must never hold the slots shards
# need. GPU hosts' workers poll `shards` only (with --limit), one small worker polls `parents`.
PARENTS_QUEUE = "parents"
SHARDS_QUEUE = "shards"
ZOMBIE_AUTOMATION = "bertflow-crash-dead-runs"  # heartbeats stopped -> Crashed
GPU_LIMIT = "bertflow-gpu"  # slots per host; each host takes them from `bertflow-gpu-<host>`
BACKFILL_TAG = "backfill"
