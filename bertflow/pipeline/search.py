"""Search a DEST: embed a query exactly as DEST's vectors were made, then scan DEST's parts.

An interactive look-up, so no flow. Storage only through `storage`; parts are read one at a
time and only the best k rows of each are kept, so memory follows the largest part, not DEST.
Scores are cosine similarities (the dot product when DEST is normalized).

A chunked DEST (`--long-text chunk`) is searched window by window: each hit names its chunk and
character span. A DEST with several vector columns (`--pooling mean,cls`) is searched in one of
them (`--column`, by default the first). Token-level DESTs (`--pooling none`) are refused.

Quantized DESTs (`--quantize`) are scored against the float query: int8/uint8 rows as the values their
buckets stand for (the manifest records the ranges); binary rows first by Hamming distance to the
query's bits, then the best `rescore` x k of each part by the float query against their ±1 vectors
(sentence-transformers' rescoring; `rescore` 0 keeps the Hamming ranking).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl
import torch

from bertflow.choices import PACKED_QUANTIZE
from bertflow.config import CHUNK_COLUMNS, EmbedConfig
from bertflow.errors import InputError
from bertflow.io import parts, storage
from bertflow.io.manifest import Manifest
from bertflow.io.vectorstore import TableRecord
from bertflow.model.resolve import encoder_for, resolve_config
from bertflow.model.st_files import read_settings
from bertflow.pipeline import shard as steps
from bertflow.resolved import ResolvedConfig, fingerprint_diff
from bertflow.vectors import dequantize, hamming, quantize

SNIPPET_CHARS = 160
RESCORE = 4  # binary DESTs: candidates per part by Hamming distance, as a multiple of k, rescored with the float query
# The recorded settings a query must be embedded with, as the manifest's fingerprint names them.
QUERY_SETTINGS = (
    "model_sha256",
    "pooling",
    "layers",
    "layer_mode",
    "normalize",
    "max_length",
    "pooler_sha256",
    "reduction_sha256",
    "exclude_special",
    "truncate_dim",
)


@dataclass(frozen=True)
class Hit:
    id: int | str
    score: float
    snippet: str | None
    chunk: tuple[int, int, int] | None = None  # chunked DESTs: (chunk_index, char_start, char_end)


def read_searchable(dest: str) -> Manifest:
    return parts.read_pooled(dest, "search")


def vector_column(manifest: Manifest | TableRecord, column: str | None) -> tuple[str, slice]:
    """The column to search and where its block lies in the query's vector (several poolings are
    embedded together, in the manifest's column order)."""
    columns = manifest.config.embedding_columns()
    names, widths = list(columns), list(columns.values())
    name = column or names[0]
    if name not in columns:
        raise InputError(f"--column {name}: the vector columns are {', '.join(names)}")
    start = sum(widths[: names.index(name)])
    return name, slice(start, start + columns[name])


def query_config(manifest: Manifest | TableRecord) -> ResolvedConfig:
    """The run's settings as DEST's manifest (or a published table) records them; the model must still have
    the same weights."""
    recorded = manifest.config
    # The resolved path first (a relative --model may not resolve from here), else the name.
    here = Path(recorded.model.path).is_dir()
    model = recorded.model.path if here else recorded.model.name
    precision = recorded.precision if recorded.precision != "fp16" or torch.cuda.is_available() else "fp32"
    resolved = resolve_config(
        EmbedConfig(
            model=model,
            revision=None if here else recorded.model.revision,
            pooling=recorded.pooling,
            layers=recorded.layers,
            layer_mode=recorded.layer_mode,
            normalize=recorded.normalize,
            max_length=recorded.max_length,
            precision=precision,
            exclude_special=recorded.exclude_special,
            pooler=recorded.pooler.uri if recorded.pooler else None,
            reduction=recorded.reduction.uri if recorded.reduction else None,
            truncate_dim=recorded.truncate_dim,
        )
    )
    now = resolved.output_fingerprint()
    for key in fingerprint_diff(manifest.fingerprint, now, QUERY_SETTINGS)[:1]:
        raise InputError(
            f"the vectors were embedded with {key} {manifest.fingerprint.get(key)!r}, but {recorded.model.name} "
            f"gives {now.get(key)!r} here; search needs the model, head and reduction that made them"
        )
    return resolved


def embed_query(query: str, config: ResolvedConfig) -> np.ndarray:
    """The query's vector (D,), through the very steps that embedded DEST's rows."""
    encoder = encoder_for(config)
    text = steps.ShardText(pl.DataFrame({"id": [0], "text": [query]}), [])
    return steps.embed(encoder, steps.tokenize(encoder, text, config), config)[0]


def _cosine(vectors: np.ndarray, query: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(vectors, axis=1) * np.linalg.norm(query)  # (N,)
    return np.divide(vectors @ query, norms, out=np.zeros(len(vectors), np.float32), where=norms > 0)


def similarity(
    stored: np.ndarray, query: np.ndarray, config: ResolvedConfig, k: int, rescore: int = RESCORE
) -> np.ndarray:
    """(N,) similarity of each stored row (N, W) to the float query (D,); -inf for binary rows left out of rescoring."""
    how = config.quantize
    if how is None:
        return _cosine(stored, query)
    if how not in PACKED_QUANTIZE:
        return _cosine(dequantize(stored, how, config.quantize_ranges), query)
    dim = len(query)
    by_bits = 1 - 2 * hamming(stored, quantize(query[None, :], how)[0]) / dim  # cosine of the sign vectors
    if rescore == 0:
        return by_bits.astype(np.float32)
    best = np.argsort(-by_bits, kind="stable")[: k * rescore]
    out = np.full(len(stored), -np.inf, np.float32)
    out[best] = _cosine(dequantize(stored[best], how, dim=dim), query)
    return out


def scan(
    dest: str, manifest: Manifest, query: np.ndarray, k: int, vectors: str = "embedding", rescore: int = RESCORE
) -> list[Hit]:
    """The k rows of DEST nearest the query in column `vectors`, best first (ties keep DEST's order)."""
    column = next(iter(parts.string_columns(dest, manifest)), None)  # the results show its text
    chunked = manifest.config.chunked
    extra = [*(CHUNK_COLUMNS if chunked else ()), *([column] if column else [])]
    scores = np.empty(0, np.float32)
    rows: list[tuple[int | str, str | None, tuple[int, int, int] | None]] = []  # (id, snippet, chunk) of each score
    for shard in manifest.shards:
        uri = storage.join(dest, shard.name)
        with storage.translated(uri), storage.open_input(uri) as src:
            frame = pl.read_parquet(src, columns=["id", vectors, *extra])
        if frame.is_empty():
            continue
        part = similarity(frame[vectors].to_numpy(), query, manifest.config, k, rescore)  # (N,)
        top = np.sort(np.argpartition(-part, min(k, len(part)) - 1)[:k])  # this part's best k, in row order
        best = frame[top]
        snippets = best[column].to_list() if column else [None] * len(best)
        chunks = list(best.select(CHUNK_COLUMNS).iter_rows()) if chunked else [None] * len(best)
        scores = np.concatenate([scores, part[top]])
        rows += zip(best["id"].to_list(), snippets, chunks)
        keep = np.argsort(-scores, kind="stable")[:k]
        scores, rows = scores[keep], [rows[i] for i in keep]
    return [Hit(i, float(s), snippet(t), c) for s, (i, t, c) in zip(scores, rows)]


def snippet(text: str | None) -> str | None:
    if text is None:
        return None
    flat = " ".join(text.split())
    return flat if len(flat) <= SNIPPET_CHARS else flat[: SNIPPET_CHARS - 1] + "…"


def query_prompt(config: ResolvedConfig, prompt: str | None = None, prompt_name: str | None = None) -> str | None:
    """The prompt put before a query: `prompt`, the model's prompt `prompt_name`, else its prompt named
    "query" if it has one, else none. Passages and queries often differ (e5: "passage: " / "query: "),
    so DEST's own prompt is never assumed."""
    if prompt is not None and prompt_name is not None:
        raise InputError("--query-prompt and --query-prompt-name both give the query's prompt: pass one")
    if prompt is not None:
        return prompt or None
    prompts = read_settings(Path(config.model.path)).prompts
    if prompt_name is not None and prompt_name not in prompts:
        known = ", ".join(sorted(prompts)) or "none"
        raise InputError(f"--query-prompt-name {prompt_name}: the model's prompts are {known}")
    return prompts.get(prompt_name or "query") or None


def search(
    dest: str,
    query: str,
    k: int = 10,
    column: str | None = None,
    prompt: str | None = None,
    prompt_name: str | None = None,
    rescore: int = RESCORE,
) -> list[Hit]:
    """Top-k rows of DEST for the query text, embedded with DEST's recorded settings.

    Args:
        column: the vector column of a DEST with several (`--pooling mean,cls`); default the first.
        prompt, prompt_name: the query's prompt (see `query_prompt`).
        rescore: a binary DEST: rescore this many times k candidates per part (0: Hamming only).
    """
    if k < 1:
        raise InputError(f"-k {k}: ask for at least one result")
    if rescore < 0:
        raise InputError(f"--rescore {rescore}: give 0 (rank by Hamming distance only) or more candidates per result")
    manifest = read_searchable(dest)
    name, block = vector_column(manifest, column)
    config = query_config(manifest)
    config = config.model_copy(update={"prompt": query_prompt(config, prompt, prompt_name), "prompt_name": None})
    return scan(dest, manifest, embed_query(query, config)[block], k, name, rescore)
