"""`bertflow search`: embed a query exactly as DEST's vectors were made, then scan DEST's parts.

An interactive look-up, so no flow. Storage only through `storage`; parts are read one at a
time and only the best k rows of each are kept, so memory follows the largest part, not DEST.
Scores are cosine similarities (the dot product when DEST is normalized).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl

from bertflow.tasks import parts, storage
from bertflow.tasks.config import EmbedConfig, ResolvedConfig
from bertflow.tasks.errors import InputError
from bertflow.tasks.manifest import Manifest

SNIPPET_CHARS = 160
# The recorded settings a query must be embedded with, as the manifest's fingerprint names them.
QUERY_SETTINGS = ("model_sha256", "pooling", "layers", "layer_mode", "normalize", "max_length", "pooler_sha256",
                  "reduction_sha256")


@dataclass(frozen=True)
class Hit:
    id: int | str
    score: float
    snippet: str | None


def read_searchable(dest: str) -> Manifest:
    manifest = parts.read_manifest(dest)
    if manifest is None:
        raise InputError(f"DEST {dest} has no _manifest.json; search a DEST written by `bertflow embed`")
    if manifest.status != "complete":
        raise InputError(f"DEST {dest} is not complete (status {manifest.status!r}); rerun its embed command to finish it")
    return manifest


def query_config(manifest: Manifest) -> ResolvedConfig:
    """The run's settings as DEST's manifest records them; the model must still have the same weights."""
    import torch

    from bertflow.tasks.model import resolve_config

    # The resolved path first (a relative --model may not resolve from here), else the name.
    model = manifest.model.path if Path(manifest.model.path).is_dir() else manifest.model.name
    precision = manifest.precision if manifest.precision != "fp16" or torch.cuda.is_available() else "fp32"
    resolved = resolve_config(EmbedConfig(
        model=model, pooling=manifest.pooling, layers=tuple(manifest.layers), layer_mode=manifest.layer_mode,
        normalize=manifest.normalize, max_length=manifest.model.max_length, precision=precision,
        pooler=manifest.pooler.uri if manifest.pooler else None,
        reduction=manifest.reduction.uri if manifest.reduction else None,
    ))
    now = resolved.output_fingerprint()
    for key in QUERY_SETTINGS:
        if manifest.fingerprint.get(key) != now.get(key):
            raise InputError(
                f"DEST was embedded with {key} {manifest.fingerprint.get(key)!r}, but {manifest.model.name} "
                f"gives {now.get(key)!r} here; search needs the model, head and reduction that made DEST"
            )
    return resolved


def embed_query(query: str, config: ResolvedConfig) -> np.ndarray:
    """The query's vector (D,), through the very tasks that embedded DEST's rows."""
    from bertflow.tasks.embed import embed_tokens, tokenize_texts

    return embed_tokens.fn(tokenize_texts.fn([query], config), config)[0]


def _snippet_column(manifest: Manifest, dest: str) -> str | None:
    """The first kept column holding strings, whose text the results show."""
    if not manifest.keep or not manifest.shards:
        return None
    uri = storage.join(dest, manifest.shards[0].name)
    with storage.translated(uri), storage.open_input(uri) as src:
        schema = pl.read_parquet_schema(src)
    return next((c for c in manifest.keep if schema.get(c) == pl.String), None)


def _cosine(vectors: np.ndarray, query: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(vectors, axis=1) * np.linalg.norm(query)  # (N,)
    return np.divide(vectors @ query, norms, out=np.zeros(len(vectors), np.float32), where=norms > 0)


def scan(dest: str, manifest: Manifest, query: np.ndarray, k: int) -> list[Hit]:
    """The k rows of DEST nearest the query, best first (ties keep DEST's order)."""
    column = _snippet_column(manifest, dest)
    scores, ids, snippets = np.empty(0, np.float32), [], []
    for shard in manifest.shards:
        uri = storage.join(dest, shard.name)
        with storage.translated(uri), storage.open_input(uri) as src:
            frame = pl.read_parquet(src, columns=["id", "embedding", *([column] if column else [])])
        if frame.is_empty():
            continue
        part = _cosine(frame["embedding"].to_numpy(), query)  # (N,)
        top = np.sort(np.argpartition(-part, min(k, len(part)) - 1)[:k])  # this part's best k, in row order
        scores = np.concatenate([scores, part[top]])
        ids += frame["id"].gather(top).to_list()
        snippets += frame[column].gather(top).to_list() if column else [None] * len(top)
        keep = np.argsort(-scores, kind="stable")[:k]
        scores, ids, snippets = scores[keep], [ids[i] for i in keep], [snippets[i] for i in keep]
    return [Hit(i, float(s), _short(t)) for i, s, t in zip(ids, scores, snippets)]


def _short(text: str | None) -> str | None:
    if text is None:
        return None
    flat = " ".join(text.split())
    return flat if len(flat) <= SNIPPET_CHARS else flat[: SNIPPET_CHARS - 1] + "…"


def search(dest: str, query: str, k: int = 10) -> list[Hit]:
    """Top-k rows of DEST for the query text, embedded with DEST's recorded settings."""
    if k < 1:
        raise InputError(f"-k {k}: ask for at least one result")
    manifest = read_searchable(dest)
    config = query_config(manifest)
    return scan(dest, manifest, embed_query(query, config), k)
