"""`bertflow report`: one self-contained HTML page that shows a DEST (and, with --compare, another)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from bertflow.cli.app import app
from bertflow.cli.common import out, running
from bertflow.cli.options import StorageOption


@app.command()
def report(
    dest: Annotated[str, typer.Argument(help="Output directory of `bertflow embed` (local or s3://), complete")],
    color_by: Annotated[
        str | None, typer.Option(help="A kept column whose values colour the map and group the label figures")
    ] = None,
    compare: Annotated[
        str | None,
        typer.Option(help="Another output of the same texts (another model or pooling): neighbour overlap, labels"),
    ] = None,
    output: Annotated[Path, typer.Option("-o", "--output", help="The HTML file to write")] = Path("report.html"),
    sample: Annotated[int, typer.Option(help="Rows sampled for the map and norms (5,000 of them for pairs)")] = 20_000,
    duplicate_threshold: Annotated[
        float, typer.Option(help="Cosine from which two rows count as near-duplicates")
    ] = 0.95,
    storage_option: StorageOption = None,
) -> None:
    """A map of sampled vectors (PCA), token lengths against the max length, vector norms, rejects by reason,
    the shards on a timeline by host and device, near-duplicate pairs; with --compare, two outputs side by side.
    Opens offline in any browser."""
    from bertflow.cli.common import fail
    from bertflow.pipeline.report_data import gather
    from bertflow.pipeline.report_page import page

    if not output.parent.is_dir():
        fail(f"-o {output}: the folder {output.parent} does not exist; create it or write elsewhere")
    with running(storage=storage_option):
        data = gather(dest, color_by, compare, sample, duplicate_threshold)
        text = page(data)
    tmp = output.with_name(f".{output.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(output)
    out.print(f"wrote {output} ({len(data.ids):,} sampled rows of {data.rows:,}; {len(data.timeline)} shards)")
