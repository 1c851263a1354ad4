"""`--shard-rows auto`: shards sized so each takes about `--shard-seconds` on the hardware that runs it.

A fixed row count is wrong at both ends: 10,000 rows is 0.2 s of an H200 (the run is all per-shard
overhead and a billion rows make 100,000 flow runs) and minutes of a CPU. Auto sizing takes the
rows per second, first that applies:

1. DEST's own manifest, when a run resumes: its shard size is part of DEST's fingerprint, so the
   rerun keeps it (and finds its finished parts).
2. An earlier output embedded with the same model on the same kind of device (`--reuse` outputs
   and, for a partitioned run, the partitions before it, nearest first): its shards' documents over
   their wall seconds, reading and writing included, as tonight's shards will run.
3. A calibration here: SOURCE's first rows read, tokenized and embedded in this process, after
   the model is loaded. A fan-out parent without a GPU measures its CPU and so sizes small; the
   first nightly output fixes that for the nights after.

Shard rows = rate x target seconds, bounded (`shard_rows_for`): at least `MIN_ROWS` (smaller
shards are all overhead), at most `MAX_ROWS` (a shard's texts and vectors sit in memory), never
more than `MAX_SHARDS` shards (flow runs) per run, and at least `parallel` shards when the corpus
would otherwise leave slots of the pool (or lanes of the cards) idle.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

from bertflow.io import parts
from bertflow.io.manifest import ShardJob, ShardSizing, ShardSpec
from bertflow.model.resolve import encoder_for
from bertflow.pipeline import shard as steps
from bertflow.pipeline.dest import fingerprints
from bertflow.resolved import ResolvedConfig

MIN_ROWS = 1_000
MAX_ROWS = 500_000
MAX_SHARDS = 20_000
CALIBRATION_ROWS = 512
WARMUP_ROWS = 32
ONE_SHARD = 2**62  # a shard size no SOURCE reaches


def shard_rows_for(
    total_rows: int,
    rows_per_second: float,
    target_seconds: float,
    parallel: int = 1,
    *,
    min_rows: int = MIN_ROWS,
    max_rows: int = MAX_ROWS,
    max_shards: int = MAX_SHARDS,
) -> int:
    """Rows per shard for a corpus of `total_rows` at `rows_per_second` so a shard takes `target_seconds`.

    Bounded by `min_rows` and `max_rows`; raised so there are at most `max_shards` shards (this wins
    over `max_rows`: a run of a billion rows must stay a sane number of flow runs); lowered (not
    under `min_rows`) so there are at least `parallel` shards; never above `total_rows`. Rounded up
    to two significant digits, so sizes read well and a small change of rate keeps the same size.
    """
    if total_rows < 1 or rows_per_second <= 0 or target_seconds <= 0 or parallel < 1:
        raise ValueError("total_rows, rows_per_second, target_seconds and parallel must be positive")
    rows = min(max(rows_per_second * target_seconds, min_rows), max_rows)
    rows = max(rows, math.ceil(total_rows / max_shards))
    rows = min(rows, max(min_rows, math.ceil(total_rows / parallel)))
    rows = _round_up(math.ceil(rows))
    return max(1, min(rows, total_rows))


# `--shards-per-run auto`: each run takes this share of the shards not yet given to a run, per slot.
GUIDED_RUNS_PER_SLOT = 2


def run_sizes(count: int, slots: int, per_run: int | None = None) -> list[int]:
    """How many consecutive shards each worker run of a plan of `count` shards embeds, in plan order.

    `per_run` shards each when given. Otherwise (`--shards-per-run auto`) guided self-scheduling
    (Polychronopoulos and Kuck, 1987): each run takes 1/(GUIDED_RUNS_PER_SLOT x slots) of the shards
    still to give out, at least one. The first runs are long (one process start, import and model load
    for many shards), the last ones single shards, so the slots finish together; a corpus of at most
    GUIDED_RUNS_PER_SLOT x slots shards runs one shard per run, and the number of runs grows with the
    logarithm of the corpus, not with it. Depends on `count` and `slots` only, so a parent that
    resumes a dead one's work draws the same runs (and joins those still in flight).
    """
    if count < 0 or slots < 1 or (per_run is not None and per_run < 1):
        raise ValueError(f"run_sizes({count}, {slots}, {per_run}): need count >= 0, slots >= 1, per_run >= 1")
    if per_run is not None:
        return [min(per_run, count - at) for at in range(0, count, per_run)]
    sizes, left, share = [], count, GUIDED_RUNS_PER_SLOT * slots
    while left:
        sizes.append(-(-left // share))  # ceil(left / share): at least one
        left -= sizes[-1]
    return sizes


def run_groups(
    plan: Sequence[ShardSpec], jobs: Sequence[ShardJob], slots: int, per_run: int | None
) -> list[tuple[list[ShardJob], list[str]]]:
    """The pending `jobs` in runs: the plan cut into ranges of consecutive shards (`run_sizes`: `per_run`
    each, or guided when None), each range's pending jobs with the fingerprints of all its shards (its key)."""
    if not jobs:
        return []
    prints = fingerprints(plan, jobs[0].config)
    pending = {j.spec.index: j for j in jobs}
    groups, at = [], 0
    for size in run_sizes(len(plan), slots, per_run):
        shards = plan[at : at + size]
        at += size
        if group := [pending[s.index] for s in shards if s.index in pending]:
            groups.append((group, [prints[s.name] for s in shards]))
    return groups


def _round_up(n: int) -> int:
    step = 10 ** max(0, len(str(n)) - 2)
    return -(-n // step) * step


def earlier_rate(config: ResolvedConfig, outputs: Sequence[str]) -> tuple[float, str] | None:
    """Rows per second of the first complete output embedded with this model (on this kind of device, when
    the run names one: `--device auto` takes what the earlier run of the series ran on)."""
    for uri in outputs:
        manifest = parts.read_manifest(uri)
        if manifest is None or manifest.status != "complete" or manifest.config.model.sha256 != config.model.sha256:
            continue
        if config.device != "auto" and (manifest.device or "").split(":")[0] != config.device:
            continue
        ran = [s for s in manifest.shards if s.seconds > 0 and s.documents > 0]  # seconds from when it was embedded
        seconds = sum(s.seconds for s in ran)
        if seconds > 0:
            rate = sum(s.documents for s in ran) / seconds
            return rate, f"{len(ran)} shards of {uri} on {manifest.device} ({rate:,.0f} rows/s)"
    return None


def calibrated_rate(config: ResolvedConfig, sample: ShardSpec, dest: str) -> tuple[float, str]:
    """Rows per second of reading, tokenizing and embedding SOURCE's first rows here, the model loaded first."""
    encoder = encoder_for(config)
    job = ShardJob(spec=sample, config=config, dest=dest, fingerprint="")

    def run(rows: int | None = None) -> int:
        text = steps.read_text(job)
        if rows is not None:
            text = replace(text, frame=text.frame.head(rows))
        text = replace(text, hashes=None, previous=None)
        steps.embed(encoder, steps.tokenize(encoder, text, config), config)
        return len(text.frame)

    run(WARMUP_ROWS)  # first forward passes pay for lazy initialisation
    started = time.perf_counter()
    rows = run()
    rate = rows / max(time.perf_counter() - started, 1e-6)
    return rate, f"calibrated on SOURCE's first {rows} rows on {encoder.device} ({rate:,.0f} rows/s)"


@dataclass(frozen=True)
class Sizer:
    """Chooses the shard size once SOURCE is scanned: `size(split)`, where `split(rows)` plans SOURCE."""

    config: ResolvedConfig
    dest: str
    target_seconds: float
    parallel: int
    outputs: Sequence[str]  # earlier outputs that may lend a rate, nearest first
    overwrite: bool

    def size(self, split: Callable[[int], list[ShardSpec]]) -> ShardSizing:
        existing = None if self.overwrite else parts.read_manifest(self.dest)
        if existing is not None:
            rows = existing.config.shard_rows
            return ShardSizing(
                shard_rows=rows,
                target_seconds=self.target_seconds,
                rows_per_second=None,
                origin=f"kept from DEST's manifest ({rows:,} rows per shard), so the run resumes it",
            )
        total = sum(s.rows for s in split(ONE_SHARD))
        found = earlier_rate(self.config, self.outputs)
        if found is None:
            found = calibrated_rate(self.config, split(CALIBRATION_ROWS)[0], self.dest)
        rate, origin = found
        rows = shard_rows_for(total, rate, self.target_seconds, self.parallel)
        return ShardSizing(shard_rows=rows, target_seconds=self.target_seconds, rows_per_second=rate, origin=origin)
