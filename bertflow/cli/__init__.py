"""The `bertflow` command: parse options into a validated config, call a flow, show the result."""

from __future__ import annotations

import os

# Process-level defaults, set before Prefect is imported: the CLI draws its own progress and
# summary, so Prefect's console logs (still sent to the API and the UI) stay quiet, and the
# temporary server sends no telemetry. Users can override each one in their environment.
os.environ.setdefault("PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL", "CRITICAL")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "90")

import sys
from typing import Annotated, NoReturn, Optional

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from bertflow.config import DEFAULT_MODEL, EmbedConfig
from bertflow.errors import BertflowError

app = typer.Typer(
    help="Turn collections of text into embedding datasets with BERT-family models, orchestrated by Prefect.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,  # locals may hold credentials
    add_completion=False,
)
err = Console(stderr=True)
out = Console()


@app.callback()
def _root() -> None:
    """Turn collections of text into embedding datasets with BERT-family models, orchestrated by Prefect."""


def fail(message: str, code: int = 2) -> NoReturn:
    err.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def _validation_message(e: ValidationError) -> str:
    first = e.errors()[0]
    where = ".".join(str(x) for x in first["loc"])
    msg = first["msg"].removeprefix("Value error, ")
    return f"--{where.replace('_', '-')}: {msg}" if where else msg


def _csv(value: str | None) -> tuple[str, ...]:
    return tuple(v.strip() for v in value.split(",") if v.strip()) if value else ()


def _layers(value: str) -> tuple[int, ...]:
    try:
        return tuple(int(v) for v in _csv(value))
    except ValueError:
        fail(f"--layers {value!r}: give comma-separated negative integers such as -1 or -4,-3,-2,-1")


class _Bar:
    """Rows-done progress bar fed by the embedding task through `bertflow.progress`."""

    def __init__(self, progress: Progress) -> None:
        self.progress = progress
        self.task = None

    def start(self, total_rows: int, done_rows: int) -> None:
        self.task = self.progress.add_task("embedding", total=total_rows, completed=done_rows)

    def advance(self, rows: int) -> None:
        if self.task is not None:
            self.progress.advance(self.task, rows)


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
    try:
        config = EmbedConfig(
            model=model,
            pooling=pooling,
            exclude_special=exclude_special,
            long_text=long_text,
            chunk_tokens=chunk_tokens,
            stride=stride,
            aggregate=aggregate,
            layers=_layers(layers),
            layer_mode=layer_mode,
            normalize=normalize,
            max_length=max_length,
            id_column=id_column,
            text_column=text_column,
            keep=_csv(keep),
            shard_rows=shard_rows,
            batch_tokens=batch_tokens,
            device=device,
            precision=precision,
            trust_remote_code=trust_remote_code,
            pooler=pooler,
            reduction=reduction,
            storage_block=storage_block,
        )
    except ValidationError as e:
        fail(_validation_message(e))

    if pool and storage_option:
        fail(
            "--storage-option stays in this process and cannot reach the workers of --pool; "
            "give the workers those settings in their environment (AWS_* variables) instead"
        )
    from bertflow.flows.embed import embed_dataset
    from bertflow.io.storage import storage_options
    from bertflow.progress import reporting_to

    progress = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("rows"),
        TimeRemainingColumn(),
        console=err,
        transient=True,
        disable=not err.is_terminal,
    )
    try:
        with progress, reporting_to(_Bar(progress)), storage_options(_options(storage_option)):
            manifest = embed_dataset(source, dest, config, overwrite, pool=pool)
    except BertflowError as e:
        fail(str(e))
    _summary(manifest, dest)


def _options(pairs: list[str] | None) -> dict[str, str]:
    options = {}
    for pair in pairs or ():
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            fail(
                f"--storage-option {pair.split('=')[0]!r}: expected KEY=VALUE, e.g. endpoint_url=http://localhost:9000"
            )
        options[key.strip()] = value
    return options


@app.command()
def verify(
    dest: Annotated[str, typer.Argument(help="Output directory written by `bertflow embed`")],
    source: Annotated[
        str | None, typer.Option(help="Also check that every id of this SOURCE is present exactly once")
    ] = None,
    storage_option: Annotated[
        list[str] | None, typer.Option(help="KEY=VALUE for the filesystem; repeatable")
    ] = None,
) -> None:
    """Check DEST's parts against its manifest (rows, sha256, schema, unique ids); exit 1 if anything is off."""
    from bertflow.io.storage import storage_options
    from bertflow.io.verify import verify_dest

    try:
        with storage_options(_options(storage_option)):
            problems = verify_dest(dest, source)
    except BertflowError as e:
        fail(str(e))
    if problems:
        for p in problems:
            err.print(f"[red]FAIL[/] {p}", highlight=False, soft_wrap=True)
        raise typer.Exit(1)
    out.print(
        f"[green]OK[/] {dest}" + (f" holds every row of {source} exactly once" if source else " matches its manifest")
    )


def _summary(manifest, dest: str) -> None:
    totals = manifest.totals
    fresh = [s for s in manifest.shards if not s.resumed]
    fresh_rows = sum(s.rows + s.rejected for s in fresh)
    table = Table(title="bertflow embed", show_header=False, title_justify="left")
    table.add_column(style="bold")
    table.add_column(overflow="fold")  # a long DEST must show whole, not end in an ellipsis
    rows = [
        ("rows embedded", f"{totals.rows:,}"),
        ("skipped (see _rejects.parquet)" if totals.skipped else "skipped", f"{totals.skipped:,}"),
        (
            "dimension",
            ", ".join(f"{c} {w}" for c, w in manifest.embedding_columns.items())
            if len(manifest.embedding_columns or {}) > 1
            else str(manifest.model.dimension),
        ),
        ("tokens", f"{totals.tokens:,}"),
        ("truncated", f"{totals.truncated:,} (at {manifest.model.max_length} tokens)"),
        ("shards", f"{len(fresh)} embedded, {len(manifest.shards) - len(fresh)} resumed"),
        ("docs/s", f"{fresh_rows / totals.seconds:,.1f}" if totals.seconds else "-"),
        ("seconds", f"{totals.seconds:,.1f}"),
        (
            "model",
            f"{manifest.model.name} ({manifest.pooling}, layers {','.join(map(str, manifest.layers))}, "
            f"{'normalized' if manifest.normalize else 'not normalized'}, {manifest.precision}, {manifest.device})",
        ),
        ("columns", ", ".join(manifest.columns)),
        (
            "long text",
            f"chunk: {manifest.chunk_tokens} tokens per window, stride {manifest.stride}, "
            f"aggregate {manifest.aggregate}"
            if manifest.long_text == "chunk"
            else "truncate",
        ),
        ("output", dest),
    ]
    for k, v in rows:
        table.add_row(k, v)
    out.print(table)


from bertflow.cli import (
    fit,  # noqa: F401  (registers train-pooler/fit-reduction/search)
    service,  # noqa: F401  (registers deploy/serve/backfill)
)


def main() -> None:  # pragma: no cover - console entry point for `python -m bertflow`
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
