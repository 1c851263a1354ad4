"""What a run reports, computed once for every place that shows it: the CLI's summary, the Prefect
artifacts, the run's tags. Pure: values in, dicts and text out.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any

from bertflow.choices import pooling_label
from bertflow.io import storage
from bertflow.io.manifest import MANIFEST_NAME, Manifest, ReuseSummary, ShardResult
from bertflow.resolved import ResolvedConfig


def run_tags(config: ResolvedConfig) -> list[str]:
    """`model:<name>` (a local directory by its last component) and `pooling:<p>`."""
    name = config.model.name
    model = name.rstrip("/").rsplit("/", 1)[-1] if name.startswith((".", "/", "~")) else name
    return [f"model:{model}", f"pooling:{pooling_label(config.pooling)}"]


def reuse_text(reuse: ReuseSummary) -> str:
    """One line on what reusing earlier outputs saved."""
    shown = ", ".join(reuse.previous[:2]) + (f" and {len(reuse.previous) - 2} more" if len(reuse.previous) > 2 else "")
    skipped = "".join(f"; not reused: {why}" for why in reuse.skipped.values())
    return (
        f"{reuse.reused:,} rows reused from {shown or 'no earlier output'}, {reuse.embedded:,} embedded, "
        f"{reuse.dropped:,} ids dropped; about {reuse.seconds_saved:,.1f} s of model time saved{skipped}"
    )


def summary_row(
    shards: Sequence[ShardResult],
    failed: int,
    seconds: float,
    config: ResolvedConfig,
    device: str | None,
    reuse: ReuseSummary | None = None,
) -> dict[str, Any]:
    """Documents (and chunks), rejected, shards done / resumed / failed, tokens, rates, seconds, settings;
    with `--reuse`, rows reused / embedded, ids dropped and model seconds saved."""
    fresh = [s for s in shards if not s.resumed]
    fresh_docs, fresh_tokens = sum(s.documents + s.rejected for s in fresh), sum(s.tokens for s in fresh)
    chunks: dict[str, Any] = {}
    if config.chunked:
        fresh_chunks = sum(s.rows for s in fresh)
        chunks = {
            "chunks": sum(s.rows for s in shards),
            "chunks_per_s": round(fresh_chunks / seconds, 1) if seconds else 0.0,
        }
    reused: dict[str, Any] = {}
    if reuse is not None:
        reused = {
            "rows_reused": reuse.reused,
            "rows_embedded": reuse.embedded,
            "ids_dropped": reuse.dropped,
            "model_seconds_saved": reuse.seconds_saved,
        }
    return {
        "documents": sum(s.documents for s in shards),
        **chunks,
        **reused,
        "rejected": sum(s.rejected for s in shards),
        "shards_done": len(fresh),
        "shards_resumed": len(shards) - len(fresh),
        "shards_failed": failed,
        "tokens": sum(s.tokens for s in shards),
        "truncated": sum(s.truncated for s in shards),
        "documents_per_s": round(fresh_docs / seconds, 1) if seconds else 0.0,
        "tokens_per_s": round(fresh_tokens / seconds, 1) if seconds else 0.0,
        "seconds": round(seconds, 1),
        "model": config.model.name,
        "pooling": pooling_label(config.pooling),
        "precision": config.precision,
        "device": device or "",
    }


def padding_ratio(shards: Sequence[ShardResult]) -> float | None:
    """Token positions the model computed per real token it embedded, over the shards that recorded it."""
    counted = [s for s in shards if s.padded_tokens]
    real = sum(s.tokens - s.reused_tokens for s in counted)
    return sum(s.padded_tokens for s in counted) / real if real else None


def fixed_share(shards: Sequence[ShardResult]) -> float | None:
    """The share of the embedded shards' time spent on process start-up and model loads (None: not recorded)."""
    fresh = [s for s in shards if not s.resumed]
    fixed = sum(s.startup_seconds + s.load_seconds for s in fresh)
    total = sum(s.seconds + s.startup_seconds for s in fresh)
    return fixed / total if fixed and total else None


def manifest_markdown(manifest: Manifest, dest: str, row: dict[str, Any]) -> str:
    totals, config = manifest.totals, manifest.config
    assert totals is not None
    chunks = f" in {totals.rows:,} chunks" if config.chunked else ""
    lines = [
        f"# Embeddings of `{manifest.source}`",
        "",
        f"**Output**: `{dest}`, manifest `{storage.join(dest, MANIFEST_NAME)}`"
        + (f", rejected documents `{storage.join(dest, manifest.rejects)}`" if manifest.rejects else ""),
        "",
        "| | |",
        "|---|---|",
        f"| status | {manifest.status} |",
        f"| documents | {totals.documents:,}{chunks} |",
        f"| rejected | {totals.rejected:,} |",
        f"| shards | {row['shards_done']} embedded, {row['shards_resumed']} resumed |",
        f"| tokens | {totals.tokens:,} ({totals.truncated:,} truncated at {config.max_length}) |",
        f"| documents/s | {row['documents_per_s']:,} |",
        f"| seconds | {totals.seconds:,.1f} |",
        f"| model | `{config.model.name}` (sha256 {config.model.sha256[:12]}, dimension {config.dimension}) |",
        f"| pooling | {pooling_label(config.pooling)}, layers {','.join(map(str, config.layers))} "
        f"({config.layer_mode}), {'normalized' if config.normalize else 'not normalized'} |",
        f"| precision / device | {config.precision} / {manifest.device} |",
    ]
    devices = Counter(s.device for s in manifest.shards if s.device)
    if devices:  # where the shards ran: with `--pool`, each on its host's card
        lines.append(f"| shards ran on | {', '.join(f'{d} ({n})' for d, n in sorted(devices.items()))} |")
    if ratio := padding_ratio(manifest.shards):
        lines.append(f"| padding | {ratio:.2f} token positions computed per real token |")
    if timed := [s for s in manifest.shards if s.gpu_busy is not None and s.model_seconds]:
        busy = sum(s.gpu_busy * s.model_seconds for s in timed if s.gpu_busy is not None)
        lines.append(
            f"| GPU busy | {busy / sum(s.model_seconds for s in timed):.0%} of the model's time ({len(timed)} shards) |"
        )
    if fixed := fixed_share(manifest.shards):
        lines.append(f"| fixed cost | {fixed:.1%} of the shards' time: process start-up and model loads |")
    if split := [s for s in manifest.shards if s.oom_splits]:
        lines.append(
            "| out of memory | "
            + ", ".join(
                f"{s.name}: {s.oom_splits} batches split, then {s.batch_budget:,} tokens per pass" for s in split
            )
            + " |"
        )
    if manifest.reuse is not None:
        lines.append(f"| reuse | {reuse_text(manifest.reuse)} |")
    if manifest.completed_at:
        lines.append(f"| completed | {manifest.completed_at:%Y-%m-%d %H:%M:%S} UTC |")
    lines += ["", f'Read it back with `polars.read_parquet("{storage.join(dest, "part-*.parquet")}")`.']
    return "\n".join(lines) + "\n"
