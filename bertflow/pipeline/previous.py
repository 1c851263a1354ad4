"""Earlier outputs a run copies rows from (`--reuse`, or a scheduled run's previous partition), and the
plan of which of their parts each shard reads.

Planning reads only the `id` column of the earlier parts, once per run, and looks every id up in
SOURCE's id index (sorted 64-bit keys): memory holds SOURCE's ids and one earlier part's ids at a
time, never the earlier output. Each shard then reads just the earlier parts that hold its ids.
When SOURCE keeps its row order from one run to the next (a table snapshot with rows updated in
place, appended or deleted), that is about one earlier part per shard: the incremental run reads
each earlier part once, and embeds only the rows whose text changed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import date, timedelta
from typing import Literal

import numpy as np
import polars as pl

from bertflow import partitions
from bertflow.errors import BertflowError, InputError, ReuseMismatchError, one_line
from bertflow.io import parts, reuse, storage
from bertflow.io.manifest import DELETED_NAME, Manifest, ReusePart, ReuseSummary, ShardJob, ShardResult, ShardSpec
from bertflow.io.reuse import IdIndex
from bertflow.io.schema import ID_DTYPES
from bertflow.io.verify import verify_parts
from bertflow.pipeline import devices
from bertflow.resolved import ResolvedConfig, fingerprint_diff

# What a run does with an earlier output (`--reuse`) embedded otherwise: fail, or leave it out.
ReuseMismatch = Literal["error", "ignore"]
# Above this many earlier parts read per shard on average, SOURCE's order changed a lot since then.
SCATTER_WARNING = 4.0


@dataclass(frozen=True)
class Previous:
    """An earlier output checked fit to copy rows from."""

    dest: str
    manifest: Manifest
    optional: bool = False  # a scheduled run's previous partition: a problem found later skips it, never fails


def open_previous(uri: str, dest: str, config: ResolvedConfig, local: bool = False) -> Previous:
    """An earlier output to copy rows from: complete, its rows hashed, embedded exactly as this run embeds
    (in half precision, on the kind of device this run embeds on when it knows it: `local`, see `devices`).

    Raises:
        ReuseMismatchError: the vectors would differ (`--reuse-mismatch ignore` skips such an output).
        InputError: it is DEST itself, or not a finished bertflow output.
    """
    if storage.canonical(uri).rstrip("/") == storage.canonical(dest).rstrip("/"):
        raise InputError(f"--reuse {uri} is DEST itself; rerun into DEST without --reuse to resume it")
    manifest = parts.read_manifest(uri)
    if manifest is None:
        raise InputError(f"--reuse {uri} has no _manifest.json; give a DEST written by `bertflow embed`")
    if manifest.status != "complete":
        raise InputError(
            f"--reuse {uri} is not complete (status {manifest.status!r}); rerun its embed command to finish it, "
            "or drop it from --reuse"
        )
    recorded = manifest.embedding_fingerprint
    if recorded is None or not manifest.config.text_hash:
        reason = f"{uri} was written by bertflow {manifest.bertflow_version}, whose rows carry no text_hash"
        raise ReuseMismatchError(f"--reuse {reason}; embed it once with this version, or drop it from --reuse", reason)
    now = config.embedding_fingerprint()
    diffs = fingerprint_diff(recorded, now, list(now))
    if diffs:
        key = diffs[0]
        reason = f"{uri} was embedded with {key} {recorded.get(key)!r}, this run uses {now[key]!r}"
        raise ReuseMismatchError(
            f"--reuse {reason}; its vectors would differ: drop it from --reuse, "
            "or pass --reuse-mismatch ignore to skip such outputs",
            reason,
        )
    made_on = sorted({k for s in manifest.shards if (k := devices.kind(s.device))})
    want = devices.run_kind(config, local) if devices.bound(config) else None
    if want is not None and made_on and made_on != [want]:
        reason = f"{uri} was embedded on {', '.join(made_on)} in {config.precision}, this run embeds on {want}"
        raise ReuseMismatchError(
            f"--reuse {reason}; half-precision vectors differ between kinds of device: drop it from --reuse, "
            "or pass --reuse-mismatch ignore to skip such outputs",
            reason,
        )
    return Previous(uri, manifest)


def open_all(
    uris: Sequence[str], dest: str, config: ResolvedConfig, ignore_mismatch: bool, local: bool = False
) -> tuple[list[Previous], dict[str, str]]:
    """`open_previous` for each of `uris` (newest first; an output named twice counts once). With
    `ignore_mismatch`, an output whose vectors would differ is left out (returned with why) instead of
    failing the run."""
    opened: list[Previous] = []
    skipped: dict[str, str] = {}
    seen: set[str] = set()
    for uri in uris:
        key = storage.canonical(uri).rstrip("/")
        if key in seen:
            continue
        seen.add(key)
        try:
            opened.append(open_previous(uri, dest, config, local))
        except ReuseMismatchError as e:
            if not ignore_mismatch:
                raise
            skipped[uri] = e.reason
    return opened, skipped


# How far back a scheduled run looks for the partition before its own (a weekly schedule finds last week's).
LOOK_BACK_DAYS = 7


def previous_partitions(dest_template: str, partition: str, days: int = LOOK_BACK_DAYS) -> list[str]:
    """The DESTs of the `days` partitions before `partition`, nearest first (where a scheduled run looks)."""
    day = date.fromisoformat(partition)
    return [partitions.render(dest_template, day - timedelta(days=n)) for n in range(1, days + 1)]


def check_scheduled(
    candidates: Sequence[str], dest: str, config: ResolvedConfig, local: bool = False
) -> tuple[Previous | None, str]:
    """The nearest earlier partition's output (the first of `candidates` that has a manifest) if it can be
    reused, else None and why; a scheduled run then embeds everything. It must be complete, pass
    `verify`'s part checks (`verify_parts`: every part present, unchanged, of its row count) and match
    this run's embedding fingerprint."""
    for uri in candidates:
        manifest = parts.read_manifest(uri)
        if manifest is None:
            continue
        if manifest.status != "complete":
            return None, f"{uri} is not complete (status {manifest.status!r}): its run failed or is still running"
        try:
            previous = open_previous(uri, dest, config, local)
        except ReuseMismatchError as e:
            return None, e.reason
        except BertflowError as e:
            return None, one_line(e)
        problems = verify_parts(uri)
        if problems:
            return None, f"{uri} fails verify ({problems[0]}{', ...' if len(problems) > 1 else ''})"
        return replace(previous, optional=True), f"reusing rows of {uri}"
    return None, f"no earlier output in the {len(candidates)} partitions before this one"


@dataclass(frozen=True)
class ReusePlan:
    """Which earlier parts each shard reads, and what the run reports about the earlier outputs."""

    previous: list[str]  # the earlier outputs, newest first
    skipped: dict[str, str]  # earlier outputs left out, and why
    parts: dict[str, tuple[ReusePart, ...]]  # shard (part name) -> earlier parts holding its ids
    dropped: pl.Series  # ids of the newest earlier output that SOURCE no longer has
    rate: float | None  # tokens/s of the newest earlier output's embedding, to estimate time saved
    deleted_ids: bool = False  # write `dropped` to DEST/_deleted.parquet
    scatter: float = field(default=0.0)  # parts of an earlier output read per shard, on average

    def jobs(self, pending: Sequence[ShardJob]) -> list[ShardJob]:
        """The jobs with the earlier parts to look their rows up in."""
        return [j.model_copy(update={"reuse": self.parts.get(j.spec.name, ())}) for j in pending]


def _rate(results: Sequence[ShardResult]) -> float | None:
    """Tokens the model embedded per second of its time (`model_seconds`), over the shards that embedded any."""
    timed = [r for r in results if r.model_seconds > 0 and r.tokens > r.reused_tokens]
    seconds = sum(r.model_seconds for r in timed)
    return sum(r.tokens - r.reused_tokens for r in timed) / seconds if seconds else None


def _earlier_rate(manifest: Manifest) -> float | None:
    """The model throughput an earlier output measured: the rate its own estimate used, when it reused
    rows itself (its few embedded rows say less), else its shards' rate."""
    if manifest.reuse is not None and manifest.reuse.tokens_per_s:
        return manifest.reuse.tokens_per_s
    return _rate(manifest.shards)


def plan_reuse(
    plan: Sequence[ShardSpec],
    index: IdIndex,
    previous: Sequence[Previous],
    skipped: dict[str, str] | None = None,
    deleted_ids: bool = False,
) -> ReusePlan:
    """For each shard, the earlier parts (newest output first) that hold any of its ids; and the ids of
    the newest earlier output that SOURCE no longer has."""
    id_kind = plan[0].id_kind
    found: list[list[ReusePart]] = [[] for _ in plan]
    dropped: list[pl.Series] = []
    skipped = dict(skipped or {})
    used: list[Previous] = []
    for prev in previous:
        for k, shard in enumerate(prev.manifest.shards):
            uri = storage.join(prev.dest, shard.name)
            ids = reuse.read_part_ids(uri)
            if k == 0 and ids.dtype != ID_DTYPES[id_kind]:  # nothing of this output is recorded yet
                why = f"{prev.dest} has {ids.dtype} ids, SOURCE {id_kind} ids"
                if not prev.optional:
                    raise InputError(f"--reuse {why}; reuse an output of the same SOURCE")
                skipped[prev.dest] = why
                break
            where = index.lookup(reuse.id_keys(ids, id_kind))
            for s in np.unique(where[where >= 0]).tolist():
                found[s].append(ReusePart(uri=uri, sha256=shard.sha256))
            if not used:  # the newest earlier output: its ids SOURCE lost are the dropped ones
                dropped.append(ids.filter(pl.Series(where < 0)))
        else:
            used.append(prev)
    gone = pl.concat(dropped).unique(maintain_order=True) if dropped else pl.Series("id", [], ID_DTYPES[id_kind])
    return ReusePlan(
        previous=[p.dest for p in used],
        skipped=skipped,
        parts={spec.name: tuple(f) for spec, f in zip(plan, found) if f},
        dropped=gone,
        rate=_earlier_rate(used[0].manifest) if used else None,
        deleted_ids=deleted_ids and bool(used),
        scatter=sum(len(f) for f in found) / max(len(plan) * len(used), 1),
    )


def summary(plan: ReusePlan, results: Sequence[ShardResult]) -> ReuseSummary:
    """Rows reused, embedded and dropped, and the model time saved: the reused rows' tokens at this run's
    own model throughput when it embedded at least as many tokens as it reused (a few rows per shard
    measure batches too small to be typical), else at the earlier output's."""
    reused = sum(r.reused for r in results)
    saved_tokens = sum(r.reused_tokens for r in results)
    embedded_tokens = sum(r.tokens - r.reused_tokens for r in results)
    own = _rate(results)
    rate = own if own and (embedded_tokens >= saved_tokens or plan.rate is None) else plan.rate
    return ReuseSummary(
        previous=plan.previous,
        skipped=plan.skipped,
        reused=reused,
        embedded=sum(r.rows for r in results) - reused,
        dropped=len(plan.dropped),
        deleted=DELETED_NAME if plan.deleted_ids else None,
        seconds_saved=round(saved_tokens / rate, 3) if rate else 0.0,
        tokens_per_s=round(rate, 1) if rate else None,
    )
