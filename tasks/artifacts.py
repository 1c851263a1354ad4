"""What a person watching the Prefect UI sees of an embedding run: tags, artifacts, log lines.

Artifact keys are stable per DEST, so each DEST's artifacts page shows its history:
`bertflow-progress-...` (created at the start, updated as each shard finishes),
`bertflow-summary-...` (a table at the end) and `bertflow-manifest-...` (markdown: the manifest
summary and where the output is, or why the run failed).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from prefect import get_client, get_run_logger
from prefect.artifacts import (
    create_markdown_artifact,
    create_progress_artifact,
    create_table_artifact,
    update_progress_artifact,
)
from prefect.context import FlowRunContext

from bertflow import progress
from bertflow.config import ResolvedConfig
from bertflow.errors import BertflowError
from bertflow.io import parts, storage
from bertflow.io.manifest import MANIFEST_NAME, Manifest, ShardResult, ShardSpec
from bertflow.partitions import stable_key


class _NoTracebackForBertflowErrors(logging.Filter):
    """Tracebacks are for bugs: a bertflow error's one line says what is wrong and what to do."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and isinstance(record.exc_info[1], BertflowError):
            record.exc_info, record.exc_text = None, None
        return True


def quiet_expected_errors() -> None:
    """Keep Prefect from logging a traceback under a run that failed on a bertflow error."""
    logger = logging.getLogger("prefect.flow_runs")
    if not any(isinstance(f, _NoTracebackForBertflowErrors) for f in logger.filters):
        logger.addFilter(_NoTracebackForBertflowErrors())


def one_line(e: BaseException) -> str:
    """Why a run failed, in one line: a bertflow error as is, anything else with its type."""
    text = str(e).strip().splitlines()
    first = text[0] if text else ""
    return first if isinstance(e, BertflowError) and first else f"{type(e).__name__}: {first}".rstrip(": ")


def artifact_keys(dest: str) -> dict[str, str]:
    return {kind: stable_key(f"bertflow-{kind}", dest) for kind in ("progress", "summary", "manifest")}


def run_tags(config: ResolvedConfig) -> list[str]:
    """`model:<name>` (a local directory by its last component) and `pooling:<p>`."""
    model = config.model.rstrip("/").rsplit("/", 1)[-1] if config.model.startswith((".", "/", "~")) else config.model
    return [f"model:{model}", f"pooling:{config.pooling}"]


BACKFILL_TAG = "backfill"


def tag_this_run(tags: Sequence[str]) -> list[str]:
    """Add tags to the current flow run (so the UI can filter by them); return the tags its child
    runs carry: these, and `backfill` when this run is part of one."""
    ctx = FlowRunContext.get()
    if ctx is None or ctx.flow_run is None:
        return list(tags)
    merged = sorted(set(ctx.flow_run.tags) | set(tags))
    with get_client(sync_client=True) as client:
        client.update_flow_run(ctx.flow_run.id, tags=merged)
    ctx.flow_run.tags = merged
    return [*tags, *([BACKFILL_TAG] if BACKFILL_TAG in merged and BACKFILL_TAG not in tags else [])]


class RunReport:
    """Progress artifact and per-shard log lines of one parent run, then its closing artifacts."""

    def __init__(self, dest: str) -> None:
        self.dest = dest
        self.keys = artifact_keys(dest)
        self.logger = get_run_logger()
        self.total_rows = self.done_rows = 0
        self.progress_id = create_progress_artifact(
            0.0, key=self.keys["progress"], description=f"Rows embedded into {dest}"
        )

    def planned(self, plan: Sequence[ShardSpec], done_rows: int) -> None:
        self.total_rows, self.done_rows = sum(s.rows for s in plan), done_rows
        self._update()

    def shard_done(
        self, spec: ShardSpec, rows: int, tokens: int, seconds: float, truncated: int, rejected: int
    ) -> None:
        """One log line per shard: rows, tokens, seconds, throughput."""
        self.done_rows += spec.rows
        rate = max(seconds, 1e-9)
        self.logger.info(
            "shard %d of %d (%s): %d rows, %d tokens in %.1f s (%.0f docs/s, %.0f tokens/s)%s%s",
            spec.index,
            spec.count,
            spec.name,
            rows,
            tokens,
            seconds,
            rows / rate,
            tokens / rate,
            f", {truncated} truncated" if truncated else "",
            f", {rejected} rejected" if rejected else "",
        )
        self._update()

    def part_written(self, spec: ShardSpec) -> None:
        """A shard finished elsewhere (a worker): its numbers come from its part's footer in DEST."""
        found = parts.read_part_info(storage.join(self.dest, spec.name))
        if found is None:
            self.done_rows += spec.rows
            self._update()
        else:
            info, _ = found
            self.shard_done(spec, info.rows, info.tokens, info.seconds, info.truncated, len(info.rejects))
        progress.advance(spec.rows)

    def _update(self) -> None:
        pct = 100.0 if self.total_rows == 0 else round(100.0 * self.done_rows / self.total_rows, 2)
        update_progress_artifact(self.progress_id, min(pct, 100.0))

    def finished(self, manifest: Manifest) -> None:
        """Progress 100, the summary table and the manifest markdown."""
        update_progress_artifact(self.progress_id, 100.0)
        row = summary_row(
            manifest.shards,
            0,
            manifest.totals.seconds,
            manifest.model.name,
            manifest.pooling,
            manifest.precision,
            manifest.device,
        )
        create_table_artifact([row], key=self.keys["summary"], description=f"Totals of the run into {self.dest}")
        create_markdown_artifact(
            _manifest_markdown(manifest, self.dest, row),
            key=self.keys["manifest"],
            description=f"Manifest of {self.dest}",
        )

    def unfinished(self, shards: Sequence[ShardResult], failed: int, seconds: float, config: ResolvedConfig) -> None:
        """The summary table of a run that ended with failed shards (no manifest yet)."""
        row = summary_row(shards, failed, seconds, config.model, config.pooling, config.precision, None)
        create_table_artifact([row], key=self.keys["summary"], description=f"Totals of the run into {self.dest}")

    def failed(self, reason: str) -> None:
        """Say why in one line where a person looks first: the first error log line and the manifest artifact."""
        self.logger.error("run failed: %s", reason)
        create_markdown_artifact(
            f"# bertflow run failed\n\n**Why**: {reason}\n\n**Output**: `{self.dest}` is incomplete; parts already "
            "written are kept. Rerun with the same parameters to finish only what is missing.\n",
            key=self.keys["manifest"],
            description=f"Manifest of {self.dest}",
        )


def summary_row(
    shards: Sequence[ShardResult],
    failed: int,
    seconds: float,
    model: str,
    pooling: str,
    precision: str,
    device: str | None,
) -> dict:
    """rows, skipped, shards done / resumed / failed, tokens, truncated, docs/s, tokens/s, seconds, settings."""
    fresh = [s for s in shards if not s.resumed]
    fresh_rows, fresh_tokens = sum(s.rows + s.rejected for s in fresh), sum(s.tokens for s in fresh)
    return {
        "rows": sum(s.rows for s in shards),
        "skipped": sum(s.rejected for s in shards),
        "shards_done": len(fresh),
        "shards_resumed": len(shards) - len(fresh),
        "shards_failed": failed,
        "tokens": sum(s.tokens for s in shards),
        "truncated": sum(s.truncated for s in shards),
        "docs_per_s": round(fresh_rows / seconds, 1) if seconds else 0.0,
        "tokens_per_s": round(fresh_tokens / seconds, 1) if seconds else 0.0,
        "seconds": round(seconds, 1),
        "model": model,
        "pooling": pooling,
        "precision": precision,
        "device": device or "",
    }


def _manifest_markdown(manifest: Manifest, dest: str, row: dict) -> str:
    totals = manifest.totals
    lines = [
        f"# Embeddings of `{manifest.source}`",
        "",
        f"**Output**: `{dest}`, manifest `{storage.join(dest, MANIFEST_NAME)}`"
        + (f", rejected rows `{storage.join(dest, manifest.rejects)}`" if manifest.rejects else ""),
        "",
        "| | |",
        "|---|---|",
        f"| status | {manifest.status} |",
        f"| rows | {totals.rows:,} |",
        f"| skipped | {totals.skipped:,} |",
        f"| shards | {row['shards_done']} embedded, {row['shards_resumed']} resumed |",
        f"| tokens | {totals.tokens:,} ({totals.truncated:,} rows truncated at {manifest.model.max_length}) |",
        f"| docs/s | {row['docs_per_s']:,} |",
        f"| seconds | {totals.seconds:,.1f} |",
        f"| model | `{manifest.model.name}` (sha256 {manifest.model.sha256[:12]}, dimension {manifest.model.dimension}) |",
        f"| pooling | {manifest.pooling}, layers {','.join(map(str, manifest.layers))} ({manifest.layer_mode}), "
        f"{'normalized' if manifest.normalize else 'not normalized'} |",
        f"| precision / device | {manifest.precision} / {manifest.device} |",
    ]
    if manifest.completed_at:
        lines.append(f"| completed | {manifest.completed_at:%Y-%m-%d %H:%M:%S} UTC |")
    lines += ["", f'Read it back with `polars.read_parquet("{storage.join(dest, "part-*.parquet")}")`.']
    return "\n".join(lines) + "\n"
