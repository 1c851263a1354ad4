"""`bertflow publish`: a complete DEST into a LanceDB table, kept in sync and indexed."""

from __future__ import annotations

from typing import Annotated

import typer

from bertflow.choices import SYNCS
from bertflow.cli.app import app
from bertflow.cli.common import out, running, table, validated
from bertflow.cli.options import StorageOption

DbOption = Annotated[
    str, typer.Option(help="LanceDB database: a local directory or s3://bucket/path (created if missing)")
]
TableOption = Annotated[str, typer.Option("--table", help="Table in the database")]


@app.command()
def publish(
    dest: Annotated[str, typer.Argument(help="Output directory of `bertflow embed` (local or s3://), complete")],
    db: DbOption,
    table_name: TableOption = "embeddings",
    sync: Annotated[
        str,
        typer.Option(
            help="partition: replace this DEST's partition's rows, touch no other partition's; mirror: the table "
            "mirrors this DEST (rows it lacks are deleted)",
            metavar="|".join(SYNCS),
        ),
    ] = "partition",
    partition: Annotated[
        str | None,
        typer.Option(help="The rows' `partition` value (default: the day DEST was embedded for, else DEST itself)"),
    ] = None,
    index_rows: Annotated[
        int, typer.Option(min=1, help="Build an ANN index (IVF-PQ) on each vector column from this many rows")
    ] = 100_000,
    fts_column: Annotated[str | None, typer.Option(help="A kept text column to give a full-text index")] = None,
    replace: Annotated[
        bool, typer.Option(help="Rebuild a table that holds vectors embedded otherwise, from this DEST alone")
    ] = False,
    storage_option: StorageOption = None,
) -> None:
    """Upsert DEST's rows into a LanceDB table by id (unchanged rows are not rewritten), delete what --sync
    says is gone and the ids an incremental run dropped, index the vectors; record the table version in DEST."""
    from bertflow.config import PublishConfig
    from bertflow.pipeline.publish import publish as run_publish

    target = validated(
        lambda: PublishConfig(
            db=db,
            table=table_name,
            sync=sync,
            partition=partition,
            index_rows=index_rows,
            fts_column=fts_column,
            replace=replace,
        )
    )
    from bertflow.io import lease, parts

    # One writer of DEST at a time: publish rewrites its manifest (`published`), so it holds DEST's lease,
    # taken once DEST is known to be a finished output (a wrong path gets no lease file).
    with running(storage=storage_option):
        parts.read_pooled(dest, "publish")
        with lease.hold(dest, run_name="bertflow publish"):
            done = run_publish(dest, target)
    rows = [
        ("table", f"{done.table} in {done.db}, version {done.version}"),
        ("partition", done.partition),
        ("rows", f"{done.rows:,}: {done.inserted:,} inserted, {done.updated:,} updated, {done.deleted:,} deleted"),
        ("indexed", ", ".join(done.indexed) or f"none (under {index_rows:,} rows: searched exactly)"),
    ]
    out.print(table("bertflow publish", rows))
