"""`bertflow train-pooler` and `bertflow fit-reduction`: fit what `bertflow embed --pooler/--reduction` apply."""

from __future__ import annotations

from typing import Annotated, cast

import typer

from bertflow.cli.app import app
from bertflow.cli.common import Bar, fail, out, running, table, validated
from bertflow.cli.common import layers as parse_layers
from bertflow.cli.options import StorageOption
from bertflow.config import DEFAULT_MODEL


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
    from bertflow.pipeline.pooler import TrainConfig

    config = validated(
        lambda: TrainConfig(
            label_column=label_column,
            text_column=text_column,
            id_column=id_column,
            model=model,
            layers=parse_layers(layers),
            layer_mode=layer_mode,
            max_length=max_length,
            epochs=epochs,
            hidden=hidden,
            bidirectional=bidirectional,
            seed=seed,
        )  # fmt: skip
    )
    from bertflow.flows.train_pooler import train_pooler as train_flow

    with running(Bar("encoding", "epochs"), storage_option, flow=True):
        report = train_flow(data, out_dir, config)
    acc, rows = report.test_accuracy, report.rows
    examples = f"{rows['train']:,} train, {rows['validation']:,} validation, {rows['test']:,} test"
    out.print(
        table(
            "bertflow train-pooler",
            [
                ("examples", examples + (f", {rows['rejected']:,} rejected" if rows["rejected"] else "")),
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
    from bertflow.model.reduction import METHODS, Method

    if method not in METHODS:
        fail(f"--method {method!r}: choose one of {', '.join(METHODS)}")
    if dim is not None and dim < 1:
        fail(f"--dim {dim}: give a positive dimension")
    from bertflow.flows.fit_reduction import fit_reduction as fit_flow

    with running(storage=storage_option, flow=True):
        config = fit_flow(dest, out_dir, cast(Method, method), dim)  # one of METHODS, checked above
    out.print(
        table(
            "bertflow fit-reduction",
            [
                ("method", f"{config.method}, {config.input_dim} -> {config.dim} dimensions"),
                ("fitted on", f"{config.rows:,} rows of {dest}"),
                ("variance kept", f"{config.explained_variance:.1%}"),
                ("reduction", f"{out_dir} (use: bertflow embed ... --reduction {out_dir})"),
            ],
        )
    )
