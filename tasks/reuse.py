"""Prefect tasks that find the earlier outputs a run copies rows from, and plan which parts each shard reads."""

from __future__ import annotations

from prefect import get_run_logger, task

from bertflow.io import storage
from bertflow.io.manifest import ShardSpec
from bertflow.io.reuse import IdIndex
from bertflow.pipeline import previous
from bertflow.pipeline.previous import Previous, ReuseMismatch, ReusePlan
from bertflow.resolved import ResolvedConfig
from bertflow.tasks.policy import IN_MEMORY, RETRY


@task(**IN_MEMORY, **RETRY)
def open_previous(
    dest: str,
    config: ResolvedConfig,
    reuse: list[str],
    reuse_mismatch: ReuseMismatch,
    earlier_partitions: list[str],
    local: bool = False,
) -> tuple[list[Previous], dict[str, str]]:
    """The earlier outputs to copy rows from (storage: their manifests; a previous partition is verified),
    and those left out, with why.

    Args:
        reuse: outputs named by the user, newest first; one that does not fit fails the run unless it
            only embeds differently and `reuse_mismatch` is "ignore".
        earlier_partitions: a scheduled run's partitions before its own, nearest first: the nearest
            with an output is used when it fits; when it does not, the run embeds everything and says why.
        local: the shards run in this process, so `--device auto` is this host's kind of device.
    """
    logger = get_run_logger()
    opened, skipped = previous.open_all(reuse, dest, config, reuse_mismatch == "ignore", local)
    for uri, why in skipped.items():
        logger.warning("not reusing %s: %s", uri, why)
    named = {storage.canonical(u).rstrip("/") for u in reuse}
    candidates = [u for u in earlier_partitions if storage.canonical(u).rstrip("/") not in named]
    if candidates:
        found, why = previous.check_scheduled(candidates, dest, config, local)
        if found is not None:
            opened.append(found)
            logger.info("%s", why)
        elif why.startswith("no earlier output"):
            logger.info("%s: embedding every row", why)
        else:
            skipped[candidates[0]] = why
            logger.warning("not reusing the previous partition: %s; embedding every row", why)
    return opened, skipped


@task(**IN_MEMORY, **RETRY)
def plan_reuse(
    plan: list[ShardSpec], index: IdIndex, found: tuple[list[Previous], dict[str, str]], deleted_ids: bool
) -> ReusePlan | None:
    """Read the earlier parts' ids (storage) and find, for each shard, the parts that hold its ids."""
    opened, skipped = found
    if not opened and not skipped:
        return None
    reuse = previous.plan_reuse(plan, index, opened, skipped, deleted_ids)
    logger = get_run_logger()
    if not opened:
        return reuse
    logger.info(
        "looking rows up in %s; %d ids of %s are no longer in SOURCE",
        ", ".join(reuse.previous), len(reuse.dropped), reuse.previous[0],
    )  # fmt: skip
    if reuse.scatter > previous.SCATTER_WARNING:
        logger.warning(
            "each shard reads %.1f earlier parts on average: SOURCE's row order changed since %s, so reuse "
            "reads much more than it copies",
            reuse.scatter, reuse.previous[0],
        )  # fmt: skip
    return reuse
