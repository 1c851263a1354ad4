"""What a person watching the Prefect UI sees of an embedding run: tags, artifacts, log lines.

Artifact keys are stable per DEST, so each DEST's artifacts page shows its history:
`bertflow-progress-...` (created at the start, updated as documents finish),
`bertflow-summary-...` (a table at the end), `bertflow-manifest-...` (markdown: the manifest
summary and where the output is, or why the run failed) and, when shards failed, `bertflow-failed-...`
(a table: each failed shard, its attempts, last error and runs).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, cast
from uuid import UUID

from prefect import get_client, get_run_logger
from prefect.artifacts import (
    create_markdown_artifact,
    create_progress_artifact,
    create_table_artifact,
    update_progress_artifact,
)
from prefect.context import FlowRunContext
from prefect.exceptions import MissingContextError

from bertflow import progress
from bertflow.errors import BertflowError
from bertflow.io import parts, storage
from bertflow.io.manifest import Manifest, ShardResult, ShardSpec
from bertflow.names import BACKFILL_TAG
from bertflow.partitions import stable_key
from bertflow.pipeline.report import manifest_markdown, summary_row
from bertflow.resolved import ResolvedConfig

if TYPE_CHECKING:
    from bertflow.tasks.fanout import ShardFailure

# The progress artifact is updated at most this often (an API call each), and always at the end.
UPDATE_SECONDS = 1.0


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


def run_logger(name: str) -> logging.Logger | logging.LoggerAdapter:
    """The current Prefect run's logger; outside a run (a task's `.fn`, a plain call), the logger `name`."""
    try:
        return get_run_logger()
    except MissingContextError:
        return logging.getLogger(name)


def artifact_keys(dest: str) -> dict[str, str]:
    return {kind: stable_key(f"bertflow-{kind}", dest) for kind in ("progress", "summary", "manifest", "failed")}


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
    """The parent run's progress artifact (a `bertflow.progress` reporter), per-shard log lines, closing artifacts."""

    def __init__(self, dest: str) -> None:
        self.dest = dest
        self.keys = artifact_keys(dest)
        self.logger = get_run_logger()
        self.total = self.done = 0
        self.lock = threading.Lock()
        self.updated = 0.0
        # Prefect's artifact functions dispatch on the caller: from a sync flow (as here) they return the id itself.
        self.progress_id = cast(
            UUID,
            create_progress_artifact(0.0, key=self.keys["progress"], description=f"Documents embedded into {dest}"),
        )

    def start(self, total: int, done: int) -> None:
        self.total, self.done = total, done
        self._update(force=True)

    def advance(self, n: int) -> None:
        with self.lock:  # lanes of shards (`tasks.lanes`) advance from their threads
            self.done += n
            self._update(force=self.done >= self.total)

    def _update(self, force: bool) -> None:
        if force or time.monotonic() - self.updated >= UPDATE_SECONDS:
            pct = 100.0 if self.total == 0 else round(100.0 * self.done / self.total, 2)
            update_progress_artifact(self.progress_id, min(pct, 100.0))
            self.updated = time.monotonic()

    def shard_done(self, spec: ShardSpec, result: ShardResult) -> None:
        """One log line per shard: documents, tokens, seconds, throughput."""
        rate = max(result.seconds, 1e-9)
        self.logger.info(
            "shard %d of %d (%s): %d documents, %d tokens in %.1f s (%.0f documents/s, %.0f tokens/s)%s%s%s%s%s",
            spec.index, spec.count, spec.name, result.documents, result.tokens, result.seconds,
            result.documents / rate, result.tokens / rate,
            f", {result.truncated} truncated" if result.truncated else "",
            f", {result.rejected} rejected" if result.rejected else "",
            f", {result.reused} of {result.rows} rows reused" if result.reused else "",
            f", on {result.device}" if result.device else "",
            f" ({result.oom_splits} batches split after running out of memory, then at most {result.batch_budget} "
            "padded tokens per pass)" if result.oom_splits else "",
        )  # fmt: skip

    def part_written(self, spec: ShardSpec) -> None:
        """A shard finished elsewhere (a worker): its numbers come from its part's footer in DEST."""
        found = parts.read_part_info(storage.join(self.dest, spec.name))
        if found is not None:
            info, _ = found
            self.shard_done(spec, parts.shard_result(spec, info, ""))
        progress.advance(spec.rows)

    def finished(self, manifest: Manifest) -> None:
        """Progress 100, the summary table and the manifest markdown."""
        update_progress_artifact(self.progress_id, 100.0)
        assert manifest.totals is not None
        row = summary_row(manifest.shards, 0, manifest.totals.seconds, manifest.config, manifest.device, manifest.reuse)
        create_table_artifact([row], key=self.keys["summary"], description=f"Totals of the run into {self.dest}")
        create_markdown_artifact(
            manifest_markdown(manifest, self.dest, row),
            key=self.keys["manifest"],
            description=f"Manifest of {self.dest}",
        )

    def unfinished(
        self,
        shards: Sequence[ShardResult],
        failed: Mapping[str, str],
        failures: Mapping[str, ShardFailure],
        seconds: float,
        config: ResolvedConfig,
    ) -> None:
        """The summary table of a run that ended with failed shards (no manifest yet), and a table of those
        shards: each one's id, attempts, last error and runs."""
        row = summary_row(shards, len(failed), seconds, config, None)
        create_table_artifact([row], key=self.keys["summary"], description=f"Totals of the run into {self.dest}")
        rows = [
            failures[name].row() if name in failures else {"shard": why.split(" ", 1)[0], "part": name,
                                                           "attempts": 1, "error": why, "runs": ""}
            for name, why in sorted(failed.items())
        ]  # fmt: skip
        create_table_artifact(
            rows, key=self.keys["failed"], description=f"Shards of {self.dest} that failed: rerun to redo only these"
        )

    def failed(self, reason: str) -> None:
        """Say why in one line where a person looks first: the first error log line and the manifest artifact."""
        self.logger.error("run failed: %s", reason)
        create_markdown_artifact(
            f"# bertflow run failed\n\n**Why**: {reason}\n\n**Output**: `{self.dest}` is incomplete; parts already "
            "written are kept. Rerun with the same parameters to finish only what is missing.\n",
            key=self.keys["manifest"],
            description=f"Manifest of {self.dest}",
        )
