"""`bertflow train-pooler`, `fit-reduction` and `search`, registered on the app of `bertflow.cli`."""

from __future__ import annotations

from typing import Annotated

import typer
from pydantic import ValidationError
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from bertflow.cli import _layers, _options, _validation_message, app, err, fail, out
from bertflow.config import DEFAULT_MODEL
from bertflow.errors import BertflowError

StorageOption = Annotated[
    list[str] | None, typer.Option(help="KEY=VALUE for the filesystem; repeatable; never logged or stored")
]


class _Stages:
    """One progress bar per stage a flow reports through `bertflow.progress`."""

    def __init__(self, progress: Progress, names: tuple[str, ...]) -> None:
        self.progress, self.names, self.task = progress, list(names), None

    def start(self, total: int, done: int) -> None:
        if self.task is not None:
            self.progress.remove_task(self.task)
        name = self.names.pop(0) if self.names else "working"
        self.task = self.progress.add_task(name, total=total, completed=done)

    def advance(self, n: int) -> None:
        if self.task is not None:
            self.progress.advance(self.task, n)


def _progress() -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=err,
        transient=True,
        disable=not err.is_terminal,
    )


def _table(title: str, rows: list[tuple[str, str]]) -> Table:
    table = Table(title=title, show_header=False, title_justify="left")
    table.add_column(style="bold")
    table.add_column()
    for k, v in rows:
        table.add_row(k, v)
    return table


@app.command("train-pooler")
def train_pooler(
    data: Annotated[
        str, typer.Argument(help="Labelled rows: file, directory or glob of .parquet/.jsonl/.csv; local or s3://")
    ],
    out_dir: Annotated[
        str, typer.Argument(metavar="OUT", help="Directory for pooler.safetensors, pooler.json, report.json")
    ],
    label_column: Annotated[str, typer.Option(help="Column holding each row's class label")],
    text_column: Annotated[str, typer.Option(help="Column holding the text")] = "text",
    id_column: Annotated[str, typer.Option(help="Column holding unique row ids")] = "id",
    model: Annotated[str, typer.Option(help="The encoder (kept frozen); embed with the same one")] = DEFAULT_MODEL,
    layers: Annotated[str, typer.Option(help="Layers whose token states the head reads: -1, or -4,-3,-2,-1")] = "-1",
    layer_mode: Annotated[str, typer.Option(help="Combine several layers by 'mean' or 'concat'")] = "mean",
    max_length: Annotated[
        int | None, typer.Option(help="Truncate at this many tokens (default: the model's limit)")
    ] = None,
    epochs: Annotated[
        int, typer.Option(help="At most this many epochs (stops early when validation accuracy stalls)")
    ] = 10,
    hidden: Annotated[int, typer.Option(help="LSTM hidden size per direction")] = 256,
    bidirectional: Annotated[bool, typer.Option("--bidirectional", help="A BiLSTM (output 2 x hidden)")] = False,
    seed: Annotated[int, typer.Option(help="Seed of the split, the initialisation and the batch order")] = 0,
    storage_option: StorageOption = None,
) -> None:
    """Train a mean_lstm pooling head on DATA's labels (encoder frozen); report accuracy against plain mean pooling."""
    from bertflow.tasks.train_pooler import TrainConfig

    try:
        config = TrainConfig(
            label_column=label_column,
            text_column=text_column,
            id_column=id_column,
            model=model,
            layers=_layers(layers),
            layer_mode=layer_mode,
            max_length=max_length,
            epochs=epochs,
            hidden=hidden,
            bidirectional=bidirectional,
            seed=seed,
        )
    except ValidationError as e:
        fail(_validation_message(e))

    from bertflow.flows.train_pooler import train_pooler as train_flow
    from bertflow.io.storage import storage_options
    from bertflow.progress import reporting_to

    progress = _progress()
    try:
        with (
            progress,
            reporting_to(_Stages(progress, ("encoding", "epochs"))),
            storage_options(_options(storage_option)),
        ):
            report = train_flow(data, out_dir, config)
    except BertflowError as e:
        fail(str(e))
    acc, rows = report.test_accuracy, report.rows
    out.print(
        _table(
            "bertflow train-pooler",
            [
                (
                    "examples",
                    f"{rows['train']:,} train, {rows['validation']:,} validation, {rows['test']:,} test"
                    + (f", {rows['skipped']:,} skipped" if rows["skipped"] else ""),
                ),
                ("classes", str(len(report.classes))),
                ("epochs", f"{report.epochs_run} run, kept epoch {report.best_epoch}"),
                (
                    "held-out accuracy",
                    f"majority {acc['majority']:.3f} | logistic regression on mean {acc['mean']:.3f} | "
                    f"on mean+{'bi' if report.bidirectional else ''}lstm {acc['mean_lstm']:.3f}",
                ),
                ("head", f"{out_dir} (use: bertflow embed ... --pooling mean_lstm --pooler {out_dir})"),
            ],
        )
    )


@app.command("fit-reduction")
def fit_reduction(
    dest: Annotated[str, typer.Argument(help="Output directory of `bertflow embed` to fit on")],
    out_dir: Annotated[
        str, typer.Argument(metavar="OUT", help="Directory for reduction.safetensors and reduction.json")
    ],
    method: Annotated[
        str, typer.Option(help="pca (keep the top directions) or whiten (and scale them to unit variance)")
    ] = "pca",
    dim: Annotated[int | None, typer.Option(help="Output dimension (default: the embeddings' own)")] = None,
    storage_option: StorageOption = None,
) -> None:
    """Fit PCA or whitening on DEST's embeddings, one part at a time; apply it with `bertflow embed --reduction OUT`."""
    from bertflow.model.reduction import METHODS

    if method not in METHODS:
        fail(f"--method {method!r}: choose one of {', '.join(METHODS)}")
    if dim is not None and dim < 1:
        fail(f"--dim {dim}: give a positive dimension")
    from bertflow.flows.fit_reduction import fit_reduction as fit_flow
    from bertflow.io.storage import storage_options

    try:
        with storage_options(_options(storage_option)):
            config = fit_flow(dest, out_dir, method, dim)
    except BertflowError as e:
        fail(str(e))
    out.print(
        _table(
            "bertflow fit-reduction",
            [
                ("method", f"{config.method}, {config.input_dim} -> {config.dim} dimensions"),
                ("fitted on", f"{config.rows:,} rows of {dest}"),
                ("variance kept", f"{config.explained_variance:.1%}"),
                ("reduction", f"{out_dir} (use: bertflow embed ... --reduction {out_dir})"),
            ],
        )
    )


@app.command()
def search(
    dest: Annotated[str, typer.Argument(help="Output directory of `bertflow embed` (local or s3://)")],
    query: Annotated[str, typer.Argument(help="Text to search for")],
    k: Annotated[int, typer.Option("-k", "--top-k", help="How many results")] = 10,
    column: Annotated[
        str | None, typer.Option(help="Vector column to search in a DEST with several poolings (default: the first)")
    ] = None,
    storage_option: StorageOption = None,
) -> None:
    """Embed QUERY with DEST's own model, pooling, layers, reduction and normalization; print the k nearest rows.

    In a chunked DEST each result is one window of a text: its chunk index and character span are shown.
    """
    from bertflow.io.storage import storage_options
    from bertflow.pipeline.search import search as run_search

    try:
        with storage_options(_options(storage_option)):
            hits = run_search(dest, query, k, column)
    except BertflowError as e:
        fail(str(e))
    chunked = any(hit.chunk is not None for hit in hits)
    table = Table(title=f"top {len(hits)} for {query!r} (cosine)", title_justify="left")
    for name in ("#", "score", "id", *(("chunk", "chars") if chunked else ()), "text"):
        table.add_column(name, overflow="fold")
    for rank, hit in enumerate(hits, 1):
        where = (str(hit.chunk[0]), f"{hit.chunk[1]}-{hit.chunk[2]}") if hit.chunk is not None else ()
        table.add_row(str(rank), f"{hit.score:.4f}", str(hit.id), *where, hit.snippet or "")
    out.print(table)
