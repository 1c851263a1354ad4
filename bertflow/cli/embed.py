"""`bertflow embed` and `bertflow verify`: write a DEST, check a DEST."""

from __future__ import annotations

from typing import Annotated, cast, get_args

import typer
from rich.table import Table

from bertflow.choices import pooling_label, stored_width
from bertflow.cli import options
from bertflow.cli.app import app
from bertflow.cli.common import Bar, csv, err, fail, out, reported, running, table, validated
from bertflow.cli.common import layers as parse_layers
from bertflow.config import DEFAULT_MODEL, EmbedConfig, count_or_auto
from bertflow.io.manifest import Manifest
from bertflow.pipeline.previous import ReuseMismatch
from bertflow.pipeline.report import reuse_text, summary_row

REUSE_MISMATCHES: tuple[str, ...] = get_args(ReuseMismatch)


@app.command()
def embed(
    source: options.Source,
    dest: options.Dest,
    model: options.Model = DEFAULT_MODEL,
    revision: options.Revision = None,
    prompt: options.Prompt = None,
    prompt_name: options.PromptName = None,
    pooling: options.Pooling = None,
    exclude_special: options.ExcludeSpecial = False,
    long_text: options.LongText = "truncate",
    chunk_tokens: options.ChunkTokens = None,
    stride: options.Stride = 0,
    aggregate: options.Aggregate = "none",
    pooler: options.Pooler = None,
    reduction: options.Reduction = None,
    truncate_dim: options.TruncateDim = None,
    quantize: options.Quantize = None,
    quantize_ranges: options.QuantizeRanges = None,
    layers: options.Layers = "-1",
    layer_mode: options.LayerMode = "mean",
    normalize: options.Normalize = None,
    max_length: options.MaxLength = None,
    id_column: options.IdColumn = "id",
    text_column: options.TextColumn = "text",
    keep: options.Keep = None,
    shard_rows: options.ShardRows = "10000",
    shard_seconds: options.ShardSeconds = 300.0,
    batch_tokens: options.BatchTokens = None,
    device: options.Device = "auto",
    devices: options.Devices = None,
    precision: options.Precision = "fp32",
    trust_remote_code: options.TrustRemoteCode = False,
    overwrite: options.Overwrite = False,
    reuse: options.Reuse = None,
    reuse_mismatch: options.ReuseMismatch = "error",
    deleted_ids: options.DeletedIds = False,
    pool: options.Pool = None,
    shard_attempts: options.ShardAttempts = 2,
    shard_timeout: options.ShardTimeout = 12 * 3600.0,
    shard_wave: options.ShardWave = None,
    shards_per_run: options.ShardsPerRun = "auto",
    storage_option: options.StorageOption = None,
    storage_block: options.StorageBlock = None,
) -> None:
    """Embed every row of SOURCE into Parquet parts under DEST (rerun the same command to resume)."""
    config = validated(
        lambda: EmbedConfig(
            model=model,
            revision=revision,
            prompt=prompt,
            prompt_name=prompt_name,
            pooling=pooling,
            exclude_special=exclude_special,
            long_text=long_text,
            chunk_tokens=chunk_tokens,
            stride=stride,
            aggregate=aggregate,
            layers=parse_layers(layers),
            layer_mode=layer_mode,
            normalize=normalize,
            max_length=max_length,
            id_column=id_column,
            text_column=text_column,
            keep=csv(keep),
            shard_rows=shard_rows,
            shard_seconds=shard_seconds,
            batch_tokens=batch_tokens,
            device=device,
            devices=devices,
            precision=precision,
            trust_remote_code=trust_remote_code,
            pooler=pooler,
            reduction=reduction,
            truncate_dim=truncate_dim,
            quantize=quantize,
            quantize_ranges=quantize_ranges,
            storage_block=storage_block,
        )  # fmt: skip
    )
    if pool:
        from prefect.settings import PREFECT_API_URL

        if not PREFECT_API_URL.value():
            fail(
                f"--pool {pool} needs the Prefect server its workers poll: export PREFECT_API_URL=http://HOST:4200/api "
                "(and PREFECT_API_AUTH_STRING), or run without --pool"
            )
    if devices is not None and pool:
        fail(
            "--devices picks the cards of this process; with --pool each worker's GPU slot picks its card: drop --devices"
        )
    try:
        per_run = count_or_auto(shards_per_run, "a number of shards")
    except ValueError as e:
        fail(f"--shards-per-run {e}")
    if per_run != "auto" and not pool:
        fail("--shards-per-run groups the shard runs of --pool; without --pool every shard runs in this process")
    if shard_wave is not None and not pool:
        fail("--shard-wave bounds the shard runs of --pool; without --pool every shard runs in this process")
    if pool and storage_option:
        fail(
            "--storage-option stays in this process and cannot reach the workers of --pool; "
            "give the workers those settings in their environment (AWS_* variables) instead"
        )
    if reuse_mismatch not in REUSE_MISMATCHES:
        fail(f"--reuse-mismatch {reuse_mismatch!r}: choose one of {', '.join(REUSE_MISMATCHES)}")
    if deleted_ids and not reuse:
        fail("--deleted-ids lists the ids an earlier output has and SOURCE lost: give that output with --reuse")
    from bertflow.flows.embed import embed_dataset
    from bertflow.model.loading import resolve_model_path

    with reported():  # a model that cannot be had fails at once, before a server starts; a Hub id is fetched now
        resolve_model_path(config.model, config.revision)
    with running(Bar("embedding", unit="documents"), storage_option, flow=True):
        manifest = embed_dataset(
            source,
            dest,
            config,
            overwrite,
            pool=pool,
            shard_attempts=shard_attempts,
            shard_timeout=shard_timeout,
            shard_wave=shard_wave,
            shards_per_run=per_run,
            reuse=list(reuse or []),
            reuse_mismatch=cast(ReuseMismatch, reuse_mismatch),
            deleted_ids=deleted_ids,
        )
    out.print(summary(manifest, dest))


def summary(manifest: Manifest, dest: str) -> Table:
    """The closing table: what was written, how fast, with which settings."""
    totals, config = manifest.totals, manifest.config
    assert totals is not None
    seconds = totals.seconds
    numbers = summary_row(manifest.shards, 0, seconds, config, manifest.device, manifest.reuse)
    columns = config.embedding_columns()
    rows = [
        ("documents embedded", f"{totals.documents:,}"),
        *([("chunks", f"{totals.rows:,}")] if config.chunked else []),
        ("rejected (see _rejects.parquet)" if totals.rejected else "rejected", f"{totals.rejected:,}"),
        ("dimension", ", ".join(f"{c} {w}" for c, w in columns.items()) if len(columns) > 1 else str(config.dimension)),
        *(
            [("stored as", f"{config.quantize}, {stored_width(config.dimension, config.quantize)} bytes per vector")]
            if config.quantize
            else []
        ),
        ("tokens", f"{totals.tokens:,}"),
        ("truncated", f"{totals.truncated:,} (at {config.max_length} tokens)"),
        ("shards", f"{numbers['shards_done']} embedded, {numbers['shards_resumed']} resumed"),
        *([("reuse", reuse_text(manifest.reuse))] if manifest.reuse else []),
        ("documents/s", f"{numbers['documents_per_s']:,.1f}" if seconds else "-"),
        *([("chunks/s", f"{numbers['chunks_per_s']:,.1f}" if seconds else "-")] if config.chunked else []),
        ("seconds", f"{seconds:,.1f}"),
        (
            "model",
            f"{config.model.name}{f' @ {config.model.revision[:12]}' if config.model.revision else ''} ({pooling_label(config.pooling)}, layers {','.join(map(str, config.layers))}, "
            f"{'normalized' if config.normalize else 'not normalized'}, {config.precision}, {manifest.device})",
        ),
        *(
            [("prompt", repr(config.prompt) + (f" ({config.prompt_name})" if config.prompt_name else ""))]
            if config.prompt
            else []
        ),
        ("columns", ", ".join(manifest.columns)),
        (
            "long text",
            f"chunk: {config.chunk_tokens} tokens per window, stride {config.stride}, aggregate {config.aggregate}"
            if config.chunked
            else "truncate",
        ),
        ("output", dest),
    ]
    return table("bertflow embed", rows)


@app.command()
def verify(
    dest: Annotated[str, typer.Argument(help="Output directory written by `bertflow embed`")],
    source: Annotated[
        str | None, typer.Option(help="Also check that every id of this SOURCE is present exactly once")
    ] = None,
    storage_option: options.StorageOption = None,
) -> None:
    """Check DEST's parts against its manifest (rows, sha256, schema, unique ids); exit 1 if anything is off."""
    from bertflow.io.verify import verify_dest

    with running(storage=storage_option):
        problems = verify_dest(dest, source)
    if problems:
        for p in problems:
            err.print(f"[red]FAIL[/] {p}", highlight=False, soft_wrap=True)
        raise typer.Exit(1)
    out.print(
        f"[green]OK[/] {dest}" + (f" holds every row of {source} exactly once" if source else " matches its manifest")
    )
