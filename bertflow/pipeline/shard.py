"""One shard's work as library steps: read its rows -> tokenize -> embed -> write its part.

Each step takes the run's `ResolvedConfig` and what the step before returned; `tasks/embed.py`
wraps each in a Prefect task. The part of a shard is written whole or not at all.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime, timezone

import numpy as np
import polars as pl
import torch

from bertflow.io import reuse as reuse_io
from bertflow.io import schema, sources, storage
from bertflow.io.manifest import DOCUMENTS_DIR, DocumentsPart, PartInfo, Reject, ShardJob, ShardResult, ShardSpec
from bertflow.io.parts import serialize_part
from bertflow.model.encoder import Encoder
from bertflow.model.fitted import reduce_vectors
from bertflow.pipeline import reuse
from bertflow.pipeline.engine_stats import EngineStats, engine_fields
from bertflow.pipeline.reuse import Reuse
from bertflow.progress import OnProgress
from bertflow.resolved import ResolvedConfig
from bertflow.text.tokenize import Chunks, Tokenized, TokenText
from bertflow.vectors import normalize, quantize, truncate


@dataclass(frozen=True)
class ShardText:
    """A shard's documents with a text (columns id, text, *keep), and those set aside with the reason."""

    frame: pl.DataFrame
    rejects: list[Reject]
    hashes: pl.Series | None = None  # `text_hash` of each row of `frame`; None: computed when needed
    previous: pl.DataFrame | None = None  # `--reuse`: rows of earlier outputs this shard may copy

    def text_hashes(self) -> pl.Series:
        return self.hashes if self.hashes is not None else reuse_io.text_hashes(self.frame["text"].to_list())


@dataclass(frozen=True)
class ShardTokens:
    """What the model is fed (`tok`, one row per document or per chunk) and what the part writes beside it.

    Under `--reuse`, `tok` holds only the rows to embed; `reused` the rows copied instead.
    """

    tok: Tokenized
    documents: int  # the shard's documents; rows of `tok` are windows of them under `--long-text chunk`
    chunks: Chunks | None = None  # `--long-text chunk`: every window (`tok`: those to embed)
    token_text: TokenText | None = None  # `--pooling none`: every document's token strings and spans
    window_hashes: pl.Series | None = None  # `--long-text chunk`: `text_hash` of each window (its token ids)
    reused: Reuse | None = None


# (N, D) pooled vectors, or per document a (T_i, H) array of its tokens' vectors (`--pooling none`).
Vectors = np.ndarray | list[np.ndarray]


def read_text(job: ShardJob) -> ShardText:
    """Read one shard's rows from SOURCE (documents with a null text go to rejects) and hash their texts;
    under `--reuse`, read the rows of earlier outputs it may copy."""
    spec, config = job.spec, job.config
    frame = sources.read_shard(spec, config.id_column, config.text_column, config.keep)
    null = frame["text"].is_null()
    rejects = [Reject(id=i, reason="null text") for i in frame.filter(null)["id"].to_list()] if null.any() else []
    frame = frame.filter(~null) if rejects else frame
    hashes = reuse_io.text_hashes(frame["text"].to_list()) if config.text_hash else None
    previous = reuse.previous_rows(job, frame, hashes) if hashes is not None else None
    return ShardText(frame, rejects, hashes, previous)


def tokenize(encoder: Encoder, text: ShardText, config: ResolvedConfig) -> ShardTokens:
    """Token ids for the run's mode: truncated at max length, cut into windows, or kept per token;
    rows found in an earlier output are set aside instead of fed to the model."""
    texts = text.frame["text"].to_list()
    if config.chunked:
        chunks = encoder.tokenizer.tokenize_chunks(
            texts, config.chunk_tokens or config.max_length, config.stride, config.prompt or ""
        )
        hashes = reuse.window_hashes(chunks) if config.text_hash else None
        found = reuse.match_windows(text.frame, chunks, hashes, text.previous) if hashes is not None else None
        tok = chunks.tok if found is None else reuse.take(chunks.tok, found.fresh())
        return ShardTokens(tok, len(texts), chunks=chunks, window_hashes=hashes, reused=found)
    found = reuse.match_documents(text.frame, text.previous)
    if config.token_level:  # the part writes every document's tokens: all are tokenized
        token_text = encoder.tokenizer.tokenize_tokens(texts)
        tok = token_text.tok if found is None else reuse.take(token_text.tok, found.fresh())
        return ShardTokens(tok, len(texts), token_text=token_text, reused=found)
    fresh = texts if found is None else [texts[i] for i in found.fresh().tolist()]
    return ShardTokens(encoder.tokenizer.tokenize(fresh, config.prompt or ""), len(texts), reused=found)


def embed(
    encoder: Encoder, tokens: ShardTokens, config: ResolvedConfig, on_documents: OnProgress | None = None
) -> Vectors:
    """Forward passes and pooling per batch; (N, sum D) float32 in row order, or per-token arrays.

    Args:
        on_documents: called with the number of documents each batch finished (not chunks).
    """
    tok = tokens.tok
    if tokens.reused is not None and not config.chunked and on_documents is not None:
        on_documents(len(tokens.reused.rows))  # documents copied from an earlier output are done
    if config.token_level:
        return encoder.token_states(
            tok,
            layers=config.layers,
            layer_mode=config.layer_mode,
            normalize_output=config.normalize,
            on_rows=on_documents,
        )
    several = len(config.pooling) > 1
    vectors = encoder.embed(
        tok,
        pooling=config.pooling,
        layers=config.layers,
        layer_mode=config.layer_mode,
        normalize_output=config.normalize and not several,
        on_rows=None if config.chunked else on_documents,  # rows are windows there, not documents
        exclude_special=config.exclude_special,
        exclude_first=encoder.tokenizer.prompt_length(config.prompt)
        if config.prompt and not config.include_prompt
        else 0,
    )
    if config.chunked and on_documents is not None:
        on_documents(tokens.documents)
    if not several:
        vectors = reduce_vectors(config, vectors)  # --reduction, then L2 again when normalizing
        vectors = truncate(vectors, config.truncate_dim, config.normalize)  # --truncate-dim, likewise
        vectors = vectors.reshape(len(tok.ids), config.dimension)  # (N, D), even when all rows were rejected
        return quantize(vectors, config.quantize, config.quantize_ranges)  # --quantize: (N, stored width) int8/uint8
    widths = list(config.embedding_columns().values())
    vectors = vectors.reshape(len(tok.ids), sum(widths))  # (N, sum D): one block per strategy
    if config.normalize:  # each strategy's vector on its own, as its single-pooling run would
        at = 0
        for w in widths:
            vectors[:, at : at + w] = normalize(torch.from_numpy(vectors[:, at : at + w])).numpy()
            at += w
    return vectors


def part_table(
    spec: ShardSpec, config: ResolvedConfig, text: ShardText, tokens: ShardTokens, vectors: Vectors
) -> pl.DataFrame:
    """The part's table in the output schema: a row per document (or per chunk), columns as `config.columns()`.

    Rows copied from an earlier output (`tokens.reused`) take their place among the rows embedded.
    """
    frame, found = text.frame, tokens.reused
    vectors = reuse.all_vectors(config, vectors, found)
    hashes = text.text_hashes() if config.text_hash else None
    if tokens.token_text is not None:
        t = tokens.token_text
        if not isinstance(vectors, list):
            raise TypeError("a token-level part takes per-document token vectors (`embed` under --pooling none)")
        return schema.token_frame(
            frame,
            t.tokens,
            t.offsets,
            t.special,
            vectors,
            t.tok.n_tokens,
            t.tok.truncated,
            config.keep,
            spec.id_kind,
            config.dimension,
            hashes,
        )
    leading: list[pl.Series] = []
    if tokens.chunks is not None:
        c = tokens.chunks
        frame = frame[c.doc]  # (C rows) each window's id and kept columns
        leading = [
            pl.Series("chunk_index", c.chunk_index, dtype=pl.Int32),
            pl.Series("char_start", c.char_start, dtype=pl.Int64),
            pl.Series("char_end", c.char_end, dtype=pl.Int64),
        ]
        n_tokens, truncated, hashes = c.tok.n_tokens, c.tok.truncated, tokens.window_hashes
    else:
        copied = found.previous if found is not None else None
        n_tokens = reuse.scatter(tokens.tok.n_tokens, None if copied is None else copied["n_tokens"].to_numpy(), found)
        truncated = reuse.scatter(
            tokens.tok.truncated, None if copied is None else copied["truncated"].to_numpy(), found
        )
    if not isinstance(vectors, np.ndarray):
        raise TypeError("a pooled part takes one (N, D) array of vectors (`embed` with a pooling)")
    return schema.part_frame(
        frame,
        vectors,
        n_tokens,
        truncated,
        config.keep,
        spec.id_kind,
        config.stored_columns(),
        leading,
        hashes,
    )


def write_part(
    job: ShardJob,
    text: ShardText,
    tokens: ShardTokens,
    vectors: Vectors,
    seconds: float,
    stats: EngineStats | None = None,
    device: str | None = None,
    host: str | None = None,
) -> ShardResult:
    """Build the part's table and write it (and, under `--aggregate`, its documents/ part first) to DEST,
    each atomically.

    Args:
        seconds: the shard's time from reading to its last vector; `stats.seconds` of it in `embed`.
        device: what the vectors were computed on (`bertflow.model.cards.label`), for the manifest.
        host: the machine that ran the shard, for the manifest (and the report's timeline).
    """
    dest, spec, config = job.dest, job.spec, job.config
    table = part_table(spec, config, text, tokens, vectors)
    rejects = text.rejects
    n_tokens, truncated = table["n_tokens"], table["truncated"]
    found = tokens.reused
    engine = engine_fields(stats or EngineStats())  # time, padding, memory splits, load, busy
    info = PartInfo(
        fingerprint=job.fingerprint,
        rows=len(table),
        tokens=int(n_tokens.sum()),
        truncated=int(truncated.sum()),
        seconds=seconds,
        rejects=rejects,
        reused=0 if found is None else len(found.rows),
        reused_tokens=0 if found is None else int(n_tokens.to_numpy()[found.rows].sum()),
        device=device,
        host=host,
        finished_at=datetime.now(timezone.utc),
        **engine,
    )
    documents_part = None
    if config.aggregated:  # written first: a main part on its own is not a finished shard
        docs = schema.document_frame(
            table,
            config.embedding_columns(),
            config.keep,
            config.aggregate,
            config.normalize,
            text.text_hashes() if config.text_hash else None,
        )
        docs_data = serialize_part(docs, info.model_copy(update={"rows": len(docs)}))
        storage.write_atomic(storage.join(dest, DOCUMENTS_DIR, spec.name), docs_data)
        documents_part = DocumentsPart(
            name=f"{DOCUMENTS_DIR}/{spec.name}", rows=len(docs), sha256=hashlib.sha256(docs_data).hexdigest()
        )
    data = serialize_part(table, info)
    storage.write_atomic(storage.join(dest, spec.name), data)
    return ShardResult(
        name=spec.name,
        pieces=spec.pieces,
        documents=spec.rows - len(rejects),
        rows=info.rows,
        rejected=len(rejects),
        tokens=info.tokens,
        truncated=info.truncated,
        seconds=seconds,
        sha256=hashlib.sha256(data).hexdigest(),
        rejects=rejects,
        documents_part=documents_part,
        reused=info.reused,
        reused_tokens=info.reused_tokens,
        device=device,
        host=host,
        finished_at=info.finished_at,
        **engine,
    )
