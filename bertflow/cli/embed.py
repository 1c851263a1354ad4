"""`bertflow embed` and `bertflow verify`: write a DEST, check a DEST."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from bertflow.cli.app import app
from bertflow.cli.common import Bar, csv, err, fail, out, running, table, validated
from bertflow.cli.common import layers as parse_layers
from bertflow.config import DEFAULT_MODEL, EmbedConfig, pooling_label
from bertflow.io.manifest import Manifest


@app.command()
def embed(
    source: Annotated[
        str, typer.Argument(help="File, directory or glob of .parquet/.jsonl/.ndjson/.csv/.txt; local or s3://")
    ],
    dest: Annotated[
        str, typer.Argument(help="Output directory (local or s3://): parts, _manifest.json, _rejects.parquet")
    ],
    model: Annotated[
        str, typer.Option(help="Local Hugging Face model directory or hub id (from the local cache)")
    ] = DEFAULT_MODEL,
    pooling: Annotated[
        str | None,
        typer.Option(
            help="cls, mean, max, mean_max, mean_sqrt_len, last_token, first_last_avg, several comma-separated (one pass, a column each), none (token-level), or mean_lstm with --pooler (default: the model's own)"
        ),
    ] = None,
    exclude_special: Annotated[
        bool, typer.Option(help="Leave special tokens ([CLS], [SEP]) out of mean and max pooling")
    ] = False,
    long_text: Annotated[
        str, typer.Option(help="Texts longer than the model's limit: 'truncate' or 'chunk' (a row per token window)")
    ] = "truncate",
    chunk_tokens: Annotated[
        int | None,
        typer.Option(help="Tokens per window with --long-text chunk, special tokens included (default: --max-length)"),
    ] = None,
    stride: Annotated[int, typer.Option(help="Tokens shared by consecutive windows with --long-text chunk")] = 0,
    aggregate: Annotated[
        str,
        typer.Option(
            help="With --long-text chunk: also write one row per document under documents/: none, mean (token-weighted) or max"
        ),
    ] = "none",
    pooler: Annotated[
        str | None, typer.Option(help="Head trained by `bertflow train-pooler`, for --pooling mean_lstm")
    ] = None,
    reduction: Annotated[
        str | None, typer.Option(help="PCA/whitening fitted by `bertflow fit-reduction`, applied before writing")
    ] = None,
    layers: Annotated[str, typer.Option(help="Layers to pool, negative indices: -1, or -4,-3,-2,-1")] = "-1",
    layer_mode: Annotated[str, typer.Option(help="Combine several layers by 'mean' or 'concat'")] = "mean",
    normalize: Annotated[
        bool | None, typer.Option("--normalize/--no-normalize", help="L2-normalize (default: the model's own)")
    ] = None,
    max_length: Annotated[
        int | None, typer.Option(help="Truncate at this many tokens (default: the model's limit)")
    ] = None,
    id_column: Annotated[str, typer.Option(help="Column holding unique row ids")] = "id",
    text_column: Annotated[str, typer.Option(help="Column holding the text to embed")] = "text",
    keep: Annotated[str | None, typer.Option(help="Comma-separated columns to pass through to the output")] = None,
    shard_rows: Annotated[int, typer.Option(help="Rows per output part (the unit of resume and fan-out)")] = 10_000,
    batch_tokens: Annotated[
        int | None, typer.Option(help="Padded tokens per forward pass (default per device)")
    ] = None,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or mps")] = "auto",
    precision: Annotated[str, typer.Option(help="fp32, bf16 or fp16")] = "fp32",
    trust_remote_code: Annotated[
        bool,
        typer.Option(help="Allow a model's own Python code to run (off: safetensors and stock architectures only)"),
    ] = False,
    overwrite: Annotated[bool, typer.Option(help="Delete bertflow's output in DEST and start over")] = False,
    pool: Annotated[
        str | None,
        typer.Option(
            help="Run each shard as an embed-shard run on this work pool's workers (see `bertflow deploy`); default: all in this process"
        ),
    ] = None,
    storage_option: Annotated[
        list[str] | None,
        typer.Option(
            help="KEY=VALUE for the filesystem (e.g. endpoint_url=..., key=..., secret=...); repeatable; never logged or stored"
        ),
    ] = None,
    storage_block: Annotated[
        str | None,
        typer.Option(
            help="Prefect Secret block whose JSON value holds the storage options (for workers and deployments)"
        ),
    ] = None,
) -> None:
    """Embed every row of SOURCE into Parquet parts under DEST (rerun the same command to resume)."""
    config = validated(
        lambda: EmbedConfig(
            model=model,
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
            batch_tokens=batch_tokens,
            device=device,
            precision=precision,
            trust_remote_code=trust_remote_code,
            pooler=pooler,
            reduction=reduction,
            storage_block=storage_block,
        )  # fmt: skip
    )
    if pool and storage_option:
        fail(
            "--storage-option stays in this process and cannot reach the workers of --pool; "
            "give the workers those settings in their environment (AWS_* variables) instead"
        )
    from bertflow.flows.embed import embed_dataset

    with running(Bar("embedding", unit="documents"), storage_option):
        manifest = embed_dataset(source, dest, config, overwrite, pool=pool)
    out.print(summary(manifest, dest))


def summary(manifest: Manifest, dest: str) -> Table:
    """The closing table: what was written, how fast, with which settings."""
    totals, config = manifest.totals, manifest.config
    assert totals is not None
    fresh = [s for s in manifest.shards if not s.resumed]
    seconds = totals.seconds
    columns = config.embedding_columns()
    rows = [
        ("documents embedded", f"{totals.documents:,}"),
        *([("chunks", f"{totals.rows:,}")] if config.chunked else []),
        ("rejected (see _rejects.parquet)" if totals.rejected else "rejected", f"{totals.rejected:,}"),
        ("dimension", ", ".join(f"{c} {w}" for c, w in columns.items()) if len(columns) > 1 else str(config.dimension)),
        ("tokens", f"{totals.tokens:,}"),
        ("truncated", f"{totals.truncated:,} (at {config.max_length} tokens)"),
        ("shards", f"{len(fresh)} embedded, {len(manifest.shards) - len(fresh)} resumed"),
        ("documents/s", f"{sum(s.documents + s.rejected for s in fresh) / seconds:,.1f}" if seconds else "-"),
        *([("chunks/s", f"{sum(s.rows for s in fresh) / seconds:,.1f}" if seconds else "-")] if config.chunked else []),
        ("seconds", f"{seconds:,.1f}"),
        (
            "model",
            f"{config.model.name} ({pooling_label(config.pooling)}, layers {','.join(map(str, config.layers))}, "
            f"{'normalized' if config.normalize else 'not normalized'}, {config.precision}, {manifest.device})",
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
    storage_option: Annotated[list[str] | None, typer.Option(help="KEY=VALUE for the filesystem; repeatable")] = None,
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
