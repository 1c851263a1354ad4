"""Backfill planning: the days of a range and, for each, run or skip (DEST complete with the same config,
and, when the deployment publishes, published to its table).

Reads each day's DEST manifest (storage); starts nothing, so `--dry-run` and bad input change nothing.
The deployment's parameters come from the caller (the task reads them from the Prefect API).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ValidationError

from bertflow import partitions
from bertflow.choices import SCALAR_QUANTIZE
from bertflow.config import EmbedConfig, PublishConfig
from bertflow.errors import InputError, problem_line
from bertflow.io import parts
from bertflow.model.resolve import resolve_config
from bertflow.pipeline.quantize import ranges_of
from bertflow.resolved import ADDED_IN_0_3, fingerprint_diff


class Day(BaseModel):
    """One partition of the plan: where it reads and writes, and whether it will run and why."""

    partition: str
    source: str
    dest: str
    action: Literal["run", "skip"]
    why: str


class BackfillPlan(BaseModel):
    deployment: str  # flow/deployment
    deployment_id: str
    dest_template: str
    start: str
    end: str
    every: str
    overwrite: bool
    days: list[Day]

    def made_for(self, deployment: str, start: str, end: str, every: str, overwrite: bool) -> bool:
        """Whether this plan answers these backfill parameters."""
        return (self.deployment, self.start, self.end, self.every, self.overwrite) == (
            deployment, start, end, every, overwrite,
        )  # fmt: skip

    def outcome(self, results: dict[str, str] | None = None) -> dict[str, str]:
        """Partition -> why it is skipped, or its run's final state (from `results`; else why it would run)."""
        return {d.partition: (results or {}).get(d.partition, d.why) for d in self.days}

    @property
    def to_run(self) -> list[Day]:
        return [d for d in self.days if d.action == "run"]


def plan_days(
    deployment: str, deployment_id: str, params: dict[str, Any], start: str, end: str, every: str, overwrite: bool
) -> BackfillPlan:
    """The days from start to end of `deployment` (whose parameters are `params`), each to run or skip."""
    first, last = partitions.parse_date(start, "--start"), partitions.parse_date(end, "--end")
    days = partitions.partition_range(first, last, partitions.parse_every(every))
    source_t, dest_t = params.get("source"), params.get("dest")
    if not source_t or not dest_t:
        raise InputError(
            f"deployment {deployment} has no source and dest templates to fill in; "
            "backfill a deployment made by `bertflow deploy`, such as embed-nightly"
        )
    partitions.check_templates(source_t, dest_t)
    try:
        config = EmbedConfig.model_validate(params.get("config") or {})
    except ValidationError as e:
        raise InputError(f"deployment {deployment} has an invalid config parameter: {problem_line(e)}") from None
    try:
        publish = PublishConfig.model_validate(params["publish"]) if params.get("publish") else None
    except ValidationError as e:
        raise InputError(f"deployment {deployment} has an invalid publish parameter: {problem_line(e)}") from None
    resolved = resolve_config(config)
    loose: frozenset[str] = frozenset()
    if (
        resolved.quantize in SCALAR_QUANTIZE
    ):  # int8/uint8 ranges: given, or each day's own (from the day before or calibrated)
        if config.quantize_ranges:
            resolved = resolved.model_copy(update={"quantize_ranges": ranges_of(config.quantize_ranges, resolved)})
        else:
            loose = frozenset({"quantize_ranges_sha256"})
    if config.shard_rows == "auto":  # each day's size is its own (kept by a rerun from its manifest)
        loose = loose | {"shard_rows"}
    fingerprint = resolved.output_fingerprint()
    planned = [_day(d.isoformat(), source_t, dest_t, fingerprint, overwrite, loose, publish) for d in days]
    return BackfillPlan(
        deployment=deployment, deployment_id=deployment_id, dest_template=dest_t, start=start, end=end, every=every,
        overwrite=overwrite, days=planned,
    )  # fmt: skip


def _day(
    day: str,
    source_t: str,
    dest_t: str,
    fingerprint: dict[str, object],
    overwrite: bool,
    loose: frozenset[str],
    publish: PublishConfig | None,
) -> Day:
    source, dest = partitions.render(source_t, day), partitions.render(dest_t, day)
    if overwrite:
        return Day(partition=day, source=source, dest=dest, action="run", why="--overwrite: redo from scratch")
    manifest = parts.read_manifest(dest)
    if manifest is None:
        return Day(partition=day, source=source, dest=dest, action="run", why="no output yet")
    keys = [
        k
        for k in {**manifest.fingerprint, **fingerprint}
        if (k in manifest.fingerprint or k not in ADDED_IN_0_3) and k not in loose
    ]
    if fingerprint_diff(manifest.fingerprint, fingerprint, keys):
        raise InputError(
            f"partition {day}: DEST {dest} holds output made with other settings; "
            "pass --overwrite to replace it, or change the deployment's config back"
        )
    if manifest.status != "complete":
        return Day(partition=day, source=source, dest=dest, action="run", why="incomplete: resumes the missing shards")
    if publish is not None and not any((p.db, p.table) == (publish.db, publish.table) for p in manifest.published):
        # Publishing began after this day was embedded: its run finds every part written and publishes it.
        why = f"complete, not yet published to table {publish.table}: publishes it"
        return Day(partition=day, source=source, dest=dest, action="run", why=why)
    # A day an older bertflow completed with these settings has the same vectors (but no text_hash): kept.
    return Day(partition=day, source=source, dest=dest, action="skip", why="complete with the same config")
