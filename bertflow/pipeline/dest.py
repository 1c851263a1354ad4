"""DEST as a whole: check it against the run, find the parts already done, write the manifest.

The manifest is written twice: "running" when the run starts (it records the settings, so a
mismatched rerun is refused) and "complete" last, after every part and `_rejects.parquet`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone

import bertflow
from bertflow.errors import InputError
from bertflow.io import parts, storage
from bertflow.io.manifest import (
    DELETED_NAME,
    MANIFEST_NAME,
    REJECTS_NAME,
    Manifest,
    Publication,
    ReuseSummary,
    ShardJob,
    ShardResult,
    ShardSizing,
    ShardSpec,
    Totals,
    shard_fingerprint,
)
from bertflow.pipeline import devices, previous
from bertflow.pipeline.previous import ReusePlan
from bertflow.resolved import ResolvedConfig


@dataclass(frozen=True)
class RunTarget:
    """One run's output, as every DEST step needs it: what is read, where it goes, how, in which shards."""

    source: str
    dest: str
    config: ResolvedConfig
    plan: list[ShardSpec]
    created_at: datetime
    reuse: ReusePlan | None = None  # earlier outputs to copy unchanged rows from
    sizing: ShardSizing | None = None  # how `--shard-rows auto` sized the shards
    partition: str | None = None  # the day filled into {date}, for a partitioned run
    published: list[Publication] = field(default_factory=list)  # DEST's publishes before this run


def fingerprints(plan: Sequence[ShardSpec], config: ResolvedConfig) -> dict[str, str]:
    """Part name -> the fingerprint its footer must carry: its rows and the run's embedding settings."""
    output = config.output_fingerprint()
    return {spec.name: shard_fingerprint(spec, output) for spec in plan}


def manifest(
    target: RunTarget,
    results: Sequence[ShardResult] | None,
    device: str | None = None,
    seconds: float = 0.0,
    rejects: str | None = None,
    reuse: ReuseSummary | None = None,
) -> Manifest:
    """The "running" manifest (no results yet) or the "complete" one."""
    done = list(results or ())
    totals = None
    if results is not None:
        totals = Totals(
            documents=sum(r.documents for r in done),
            rows=sum(r.rows for r in done),
            rejected=sum(r.rejected for r in done),
            tokens=sum(r.tokens for r in done),
            truncated=sum(r.truncated for r in done),
            seconds=round(seconds, 3),
        )
    return Manifest(
        bertflow_version=bertflow.__version__,
        status="running" if results is None else "complete",
        source=target.source,
        config=target.config,
        fingerprint=target.config.output_fingerprint(),
        embedding_fingerprint=target.config.embedding_fingerprint(),
        device=device,
        shards=done,
        planned_shards=len(target.plan),
        totals=totals,
        rejects=rejects,
        documents_parts=[r.documents_part for r in done if r.documents_part is not None],
        reuse=reuse,
        shard_sizing=target.sizing,
        partition=target.partition,
        # What DEST was published to stays true while the run writes nothing new (a rerun of a complete DEST).
        published=target.published if all(r.resumed for r in done) else [],
        created_at=target.created_at,
        completed_at=None if results is None else datetime.now(timezone.utc),
    )


def _check_not_inside(source: str, dest: str) -> None:
    if storage.is_local(dest) and storage.is_local(source):
        src, dst = storage.canonical(source).rstrip("/") + "/", storage.canonical(dest).rstrip("/") + "/"
        if dst.startswith(src):
            raise InputError(
                f"DEST {dest} is inside SOURCE {source}; its parts would become input: choose another DEST"
            )


def in_format_of(existing: Manifest | None, config: ResolvedConfig) -> ResolvedConfig:
    """The run's config as a DEST begun by bertflow 0.2 or earlier records it: rows without `text_hash`,
    no tokenizer hash, so a rerun continues that DEST as it was started (and can resume it)."""
    if existing is None or existing.config.text_hash or not config.text_hash:
        return config
    model = config.model.model_copy(update={"tokenizer_sha256": None, "config_sha256": None})
    return config.model_copy(update={"text_hash": None, "model": model})


def prepare(
    target: RunTarget, overwrite: bool, local: bool = True
) -> tuple[RunTarget, list[ShardResult], list[ShardJob]]:
    """Check DEST against this run, clear it on overwrite, mark it running.

    Returns the run's target (its config in the format of an older DEST it continues), the parts
    already done and a job for every shard still to embed. `local`: the shards run in this process
    (not on workers), so `--device auto` is this host's kind (see `devices`).
    """
    dest, plan = target.dest, target.plan
    _check_not_inside(target.source, dest)
    if overwrite:
        parts.clear_dest(dest)
    else:
        existing = parts.read_manifest(dest)
        published = list(existing.published) if existing is not None else []
        target = replace(target, config=in_format_of(existing, target.config), published=published)
        parts.check_compatible(dest, existing, target.config.output_fingerprint())
    config = target.config
    parts.remove_temporaries(dest)
    prints = fingerprints(plan, config)
    done = parts.complete_parts(dest, plan, prints, documents=config.aggregated)
    kind = devices.keep_done(config, done, local)  # refuses parts of another kind of device (half precision)
    storage.write_atomic(storage.join(dest, MANIFEST_NAME), parts.manifest_bytes(manifest(target, None)))
    pending = [
        ShardJob(spec=s, config=config, dest=dest, fingerprint=prints[s.name], device_kind=kind)
        for s in plan
        if s.name not in done
    ]
    return target, list(done.values()), pending if target.reuse is None else target.reuse.jobs(pending)


def collect(
    dest: str, config: ResolvedConfig, pending: Sequence[ShardSpec], failed: dict[str, str]
) -> tuple[list[ShardResult], dict[str, str]]:
    """The parts that shard runs elsewhere wrote to DEST, read from their footers, and the failed shards:
    `failed` (part name -> why) plus any whose run completed but whose part is missing or does not match."""
    collected = parts.complete_parts(dest, pending, fingerprints(pending, config), documents=config.aggregated)
    missing = {
        s.name: f"shard-{s.index}-of-{s.count} (its run completed but DEST has no matching part)"
        for s in pending
        if s.name not in collected and s.name not in failed
    }
    return [r.model_copy(update={"resumed": False}) for r in collected.values()], {**failed, **missing}


def _write_or_remove(uri: str, data: bytes | None) -> None:
    if data is not None:
        storage.write_atomic(uri, data)
    else:
        storage.remove(uri)  # a stale one from an earlier run into this DEST


def finalize(target: RunTarget, results: Sequence[ShardResult], seconds: float, device: str) -> Manifest:
    """Write `_rejects.parquet` and `_deleted.parquet` (or remove stale ones), then the complete manifest last.

    `device`: the kind this process picks, recorded for parts too old to say what they ran on.
    """
    by_name = {r.name: r for r in results}
    ordered = [by_name[s.name] for s in target.plan]
    devices.check_one_kind(target.config, ordered)
    rejects = parts.rejects_bytes(ordered, target.plan[0].id_kind)
    _write_or_remove(storage.join(target.dest, REJECTS_NAME), rejects)
    plan = target.reuse
    deleted = parts.ids_bytes(plan.dropped) if plan is not None and plan.deleted_ids else None
    _write_or_remove(storage.join(target.dest, DELETED_NAME), deleted)
    reused = previous.summary(plan, ordered) if plan is not None else None
    device = devices.manifest_device(ordered, device)
    complete = manifest(target, ordered, device, seconds, REJECTS_NAME if rejects is not None else None, reused)
    storage.write_atomic(storage.join(target.dest, MANIFEST_NAME), parts.manifest_bytes(complete))
    return complete
