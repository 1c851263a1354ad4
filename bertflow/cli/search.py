"""`bertflow search`: the rows of a DEST nearest a query text."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from bertflow.cli.app import app
from bertflow.cli.common import fail, out, running
from bertflow.cli.options import StorageOption


@app.command()
def search(
    args: Annotated[
        list[str],
        typer.Argument(
            help="DEST (output directory of `bertflow embed`, local or s3://) and the text to search for; "
            "with --db only the text",
            metavar="[DEST] QUERY",
        ),
    ],
    db: Annotated[
        str | None,
        typer.Option(help="Search a table of this LanceDB database (see `bertflow publish`) instead of a DEST"),
    ] = None,
    table_name: Annotated[str, typer.Option("--table", help="With --db: the table")] = "embeddings",
    where: Annotated[
        str | None, typer.Option(help="With --db: an SQL filter on kept columns, e.g. \"label = 'x'\"")
    ] = None,
    exact: Annotated[bool, typer.Option(help="With --db: a flat scan instead of the ANN index")] = False,
    k: Annotated[int, typer.Option("-k", "--top-k", help="How many results")] = 10,
    column: Annotated[
        str | None, typer.Option(help="Vector column to search in a DEST with several poolings (default: the first)")
    ] = None,
    query_prompt: Annotated[
        str | None,
        typer.Option(
            help='Text put before the query, e.g. "query: " for e5 models (default: the model\'s "query" prompt, if any)'
        ),
    ] = None,
    query_prompt_name: Annotated[
        str | None,
        typer.Option(help="One of the model's named prompts (config_sentence_transformers.json) for the query"),
    ] = None,
    rescore: Annotated[
        int,
        typer.Option(
            help="A binary DEST (--quantize binary): rescore this many times k candidates found by Hamming distance "
            "with the float query (0: Hamming ranking only)"
        ),
    ] = 4,
    storage_option: StorageOption = None,
) -> None:
    """Embed QUERY with DEST's own model, pooling, layers, reduction and normalization; print the k nearest rows.

    Quantized DESTs are scored with the float query: int8/uint8 rows by their calibrated values, binary rows
    by Hamming distance and then, for the best candidates, by the float query against their sign vectors.

    In a chunked DEST each result is one window of a text: its chunk index and character span are shown.

    With --db, a published table is searched with its ANN index (refined by exact distances), or exactly
    with --exact, after filtering on --where; the query is embedded as the table records.
    """
    from bertflow.pipeline.search import search as run_search
    from bertflow.pipeline.table_search import search_table

    wanted = "QUERY (DEST comes from --db)" if db else "DEST and QUERY"
    if len(args) != (1 if db else 2):
        fail(f"give {wanted}; got {len(args)} argument{'s' if len(args) != 1 else ''}")
    if not db and (where is not None or exact or table_name != "embeddings"):
        fail("--where, --exact and --table search a published table: add --db URI")
    query = args[-1]
    with running(storage=storage_option):
        if db:
            hits = search_table(db, table_name, query, k, column, query_prompt, query_prompt_name, where, exact)
        else:
            hits = run_search(args[0], query, k, column, query_prompt, query_prompt_name, rescore)
    chunked = any(hit.chunk is not None for hit in hits)
    table = Table(title=f"top {len(hits)} for {query!r} (cosine)", title_justify="left")
    for name in ("#", "score", "id", *(("chunk", "chars") if chunked else ()), "text"):
        table.add_column(name, overflow="fold")
    for rank, hit in enumerate(hits, 1):
        span = (str(hit.chunk[0]), f"{hit.chunk[1]}-{hit.chunk[2]}") if hit.chunk is not None else ()
        table.add_row(str(rank), f"{hit.score:.4f}", str(hit.id), *span, hit.snippet or "")
    out.print(table)
