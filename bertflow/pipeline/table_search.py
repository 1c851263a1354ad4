"""Search a published LanceDB table (`bertflow search --db`): embed the query with the settings the table
records, then ask LanceDB: its ANN index where there is one (refined by exact distances on the best
REFINE x k candidates), a flat scan with `exact`, filtered by `where` on kept columns before ranking.
"""

from __future__ import annotations

import pyarrow as pa

from bertflow.config import CHUNK_COLUMNS
from bertflow.errors import InputError, one_line
from bertflow.io import vectorstore
from bertflow.pipeline.search import Hit, embed_query, query_config, query_prompt, snippet, vector_column

REFINE = 10  # ANN candidates per result rescored with the stored vectors
NPROBES = 20  # IVF partitions visited per query (LanceDB's default)
_STRINGS = (pa.string(), pa.large_string())


def search_table(
    db: str,
    table_name: str,
    query: str,
    k: int = 10,
    column: str | None = None,
    prompt: str | None = None,
    prompt_name: str | None = None,
    where: str | None = None,
    exact: bool = False,
) -> list[Hit]:
    """Top-k rows of the table for the query text; scores are cosine similarities."""
    if k < 1:
        raise InputError(f"-k {k}: ask for at least one result")
    conn = vectorstore.connect(db)
    table = vectorstore.open_table(conn, db, table_name)
    if table is None:
        raise InputError(f"database {db} has no table {table_name}: publish a DEST to it with `bertflow publish`")
    rec = vectorstore.record(table, db)
    name, block = vector_column(rec, column)
    config = query_config(rec)
    config = config.model_copy(update={"prompt": query_prompt(config, prompt, prompt_name), "prompt_name": None})
    vector = embed_query(query, config)[block]
    search = table.search(vector, vector_column_name=name).distance_type(vectorstore.METRIC).limit(k)
    if where:
        search = search.where(where, prefilter=True)
    search = search.bypass_vector_index() if exact else search.nprobes(NPROBES).refine_factor(REFINE)
    try:
        found = search.to_arrow().to_pylist()
    except (ValueError, RuntimeError) as e:
        if where:
            raise InputError(f"--where {where!r}: {one_line(e)}") from None
        raise
    text = next((c for c in rec.config.keep if table.schema.field(c).type in _STRINGS), None)
    return [
        Hit(
            row["id"],
            1.0 - float(row["_distance"]),
            snippet(row[text]) if text else None,
            tuple(row[c] for c in CHUNK_COLUMNS) if rec.config.chunked else None,
        )
        for row in found
    ]
