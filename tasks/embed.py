"""Prefect tasks of an embedding run: each one thin, one side effect, retried only if it can help.

Data moves between the tasks of one shard in memory: caching and result persistence are off,
so large frames are never hashed or written anywhere but the final part.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Iterator
from datetime import datetime, timezone

import numpy as np
import polars as pl
import torch
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.tasks import exponential_backoff

import bertflow
from bertflow import progress
from bertflow.config import EmbedConfig, ResolvedConfig
from bertflow.errors import InputError, TransientStorageError
from bertflow.io import parts, sources, storage
from bertflow.io.manifest import (
    DOCUMENTS_DIR,
    MANIFEST_NAME,
    REJECTS_NAME,
    DocumentsPart,
    FittedInfo,
    Manifest,
    ModelInfo,
    PartInfo,
    Reject,
    ShardResult,
    ShardSpec,
    Totals,
    shard_fingerprint,
)
from bertflow.model import fitted
from bertflow.model.encoder import Chunks, Encoder, Tokenized, TokenText
from bertflow.model.loading import load_model, pick_device, resolve_config
from bertflow.model.pooling import normalize


@contextlib.contextmanager
def storage_from_block(name: str | None) -> Iterator[None]:
    """Use the storage options kept in the Prefect Secret block `name` (JSON) in this process."""
    if not name:
        yield
        return
    from prefect.blocks.system import Secret

    try:
        options = Secret.load(name).get()
    except ValueError:
        raise InputError(
            f"no Prefect Secret block named {name!r}; create it (value: JSON of storage options) "
            "or drop --storage-block"
        ) from None
    if not isinstance(options, dict):
        raise InputError(
            f"Secret block {name!r} must hold a JSON object of storage options, e.g. "
            '{"key": "...", "secret": "...", "endpoint_url": "..."}'
        )
    with storage.storage_options({str(k): str(v) for k, v in options.items()}):
        yield


def is_transient(task, task_run, state) -> bool:
    """Retry storage hiccups and device out-of-memory; never bad input."""
    exc = state.data if isinstance(state.data, BaseException) else None
    if exc is None:
        try:
            state.result()
        except BaseException as e:
            exc = e
    return isinstance(exc, (TransientStorageError, torch.OutOfMemoryError))


IN_MEMORY = {"cache_policy": NO_CACHE, "persist_result": False}
RETRY = {
    "retries": 4,
    "retry_delay_seconds": exponential_backoff(1),
    "retry_jitter_factor": 0.5,
    "retry_condition_fn": is_transient,
}


@task(name="resolve_config", **IN_MEMORY)
def resolve_embed_config(config: EmbedConfig) -> ResolvedConfig:
    """Read the model's files (not its weights into memory) to fill every default."""
    return resolve_config(config)


@task(name="plan_shards", **IN_MEMORY, **RETRY)
def plan_source(source: str, config: ResolvedConfig) -> list[ShardSpec]:
    """Read SOURCE's ids and layout (storage) and split it into shards."""
    return sources.plan_shards(
        source,
        id_column=config.id_column,
        text_column=config.text_column,
        keep=config.keep,
        shard_rows=config.shard_rows,
    )


def fingerprints(plan: list[ShardSpec], config: ResolvedConfig) -> dict[str, str]:
    output = config.output_fingerprint()
    return {spec.name: shard_fingerprint(spec, output) for spec in plan}


def _manifest(source: str, config: ResolvedConfig, plan: list[ShardSpec], device: str | None, **kw) -> Manifest:
    return Manifest(
        bertflow_version=bertflow.__version__,
        source=source,
        model=ModelInfo(
            name=config.model,
            path=config.model_path,
            sha256=config.model_sha256,
            dimension=config.dimension,
            max_length=config.max_length,
        ),
        pooling=config.pooling,
        layers=list(config.layers),
        layer_mode=config.layer_mode,
        normalize=config.normalize,
        precision=config.precision,
        device=device,
        id_column=config.id_column,
        text_column=config.text_column,
        keep=list(config.keep),
        shard_rows=config.shard_rows,
        columns=config.columns(),
        embedding_columns=None if config.pooling == "none" else config.embedding_columns(),
        exclude_special=config.exclude_special,
        long_text=config.long_text,
        **(
            {"chunk_tokens": config.chunk_tokens, "stride": config.stride, "aggregate": config.aggregate}
            if config.long_text == "chunk"
            else {}
        ),
        document_columns=config.document_columns(),
        fingerprint=config.output_fingerprint(),
        planned_shards=len(plan),
        **kw,
        pooler=FittedInfo(uri=config.pooler, sha256=config.pooler_sha256) if config.pooler else None,
        reduction=FittedInfo(uri=config.reduction, sha256=config.reduction_sha256) if config.reduction else None,
    )


@task(name="prepare_dest", **IN_MEMORY, **RETRY)
def prepare_dest(
    source: str, dest: str, config: ResolvedConfig, plan: list[ShardSpec], overwrite: bool
) -> dict[str, ShardResult]:
    """Check DEST (storage) against this run, clear it on overwrite, mark it running; return finished parts."""
    if storage.is_local(dest) and storage.is_local(source):
        src, dst = storage.canonical(source).rstrip("/") + "/", storage.canonical(dest).rstrip("/") + "/"
        if dst.startswith(src):
            raise InputError(
                f"DEST {dest} is inside SOURCE {source}; its parts would become input: choose another DEST"
            )
    if overwrite:
        parts.clear_dest(dest)
    else:
        parts.check_compatible(dest, parts.read_manifest(dest), config.output_fingerprint())
    parts.remove_temporaries(dest)
    done = parts.complete_parts(dest, plan, fingerprints(plan, config), documents=config.aggregate != "none")
    manifest = _manifest(source, config, plan, None, status="running", created_at=datetime.now(timezone.utc))
    storage.write_atomic(storage.join(dest, MANIFEST_NAME), parts.manifest_bytes(manifest))
    progress.start(sum(s.rows for s in plan), sum(s.rows for s in plan if s.name in done))
    if done:
        get_run_logger().info("resuming: %d of %d shards already complete in %s", len(done), len(plan), dest)
    return done


@task(name="read_shard", **IN_MEMORY, **RETRY)
def read_shard(spec: ShardSpec, config: ResolvedConfig) -> tuple[pl.DataFrame, list[Reject]]:
    """Read one shard's rows from SOURCE (storage, only the needed columns); set aside null texts."""
    frame = sources.read_shard(spec, config.id_column, config.text_column, config.keep)
    return split_rejects(frame)


def get_encoder(config: ResolvedConfig) -> Encoder:
    """The process-wide model (loaded once) wrapped for this run's length and batch settings."""
    device = pick_device(config.device)
    tokenizer, model = load_model(config.model_path, device, config.precision, config.trust_remote_code)
    return Encoder(
        tokenizer,
        model,
        device=device,
        precision=config.precision,
        max_length=config.max_length,
        batch_tokens=config.batch_tokens,
        head=fitted.head_for(config),
    )


@task(name="tokenize", **IN_MEMORY)
def tokenize_texts(texts: list[str], config: ResolvedConfig) -> Tokenized:
    """Tokenize with the model's fast tokenizer (CPU threads), truncating at max_length."""
    return get_encoder(config).tokenize(texts)


@task(name="chunk", **IN_MEMORY)
def chunk_texts(texts: list[str], config: ResolvedConfig) -> Chunks:
    """Cut texts into overlapping token windows with the model's fast tokenizer (CPU), nothing truncated."""
    return get_encoder(config).tokenize_chunks(texts, config.chunk_tokens, config.stride)


@task(name="tokenize_tokens", **IN_MEMORY)
def tokenize_tokens(texts: list[str], config: ResolvedConfig) -> TokenText:
    """Tokenize with the model's fast tokenizer (CPU), keeping token strings and char spans."""
    return get_encoder(config).tokenize_tokens(texts)


@task(name="embed_token_states", **IN_MEMORY, **RETRY)
def embed_token_states(tok: Tokenized, config: ResolvedConfig) -> list[np.ndarray]:
    """Forward passes on the device; every token's vector, (T_i, H) float32 per row."""
    return get_encoder(config).token_states(
        tok,
        layers=config.layers,
        layer_mode=config.layer_mode,
        normalize_output=config.normalize,
        on_rows=progress.advance,
    )


@task(name="embed", **IN_MEMORY, **RETRY)
def embed_tokens(tok: Tokenized, config: ResolvedConfig) -> np.ndarray:
    """Forward passes and pooling per batch on the device; (N, D) float32 in input order."""
    several = len(config.poolings) > 1
    vectors = get_encoder(config).embed(
        tok,
        pooling=config.poolings if several else config.pooling,
        layers=config.layers,
        layer_mode=config.layer_mode,
        normalize_output=config.normalize and not several,
        on_rows=None if config.long_text == "chunk" else progress.advance,  # rows are windows there, not documents
        exclude_special=config.exclude_special,
    )
    if not several:
        vectors = fitted.reduce_vectors(config, vectors)  # --reduction, then L2 again when normalizing
        # A shard whose rows were all rejected still writes Array(Float32, D), like every other part.
        return vectors.reshape(len(tok.ids), config.dimension)
    widths = list(config.embedding_columns().values())
    vectors = vectors.reshape(len(tok.ids), sum(widths))  # (N, sum D): one block per strategy
    if config.normalize:  # each strategy's vector on its own, as its single-pooling run would
        at = 0
        for w in widths:
            vectors[:, at : at + w] = normalize(torch.from_numpy(vectors[:, at : at + w])).numpy()
            at += w
    return vectors


@task(name="write_part", **IN_MEMORY, **RETRY)
def write_part(
    dest: str,
    spec: ShardSpec,
    config: ResolvedConfig,
    frame: pl.DataFrame,
    tok: Tokenized,
    embeddings: np.ndarray | list[np.ndarray],
    rejects: list[Reject],
    fingerprint: str,
    seconds: float,
    chunks: Chunks | None = None,
    tokens: TokenText | None = None,
) -> ShardResult:
    """Write one finished part (and its documents/ part under --aggregate) to DEST (storage), each atomically.

    Args:
        chunks: `--long-text chunk`: the windows `tok` came from; one row per window.
        tokens: `--pooling none`: token strings and spans; `embeddings` is then one (T_i, H) array per row.
    """
    leading = []
    if chunks is not None:
        progress.advance(len(frame))  # the bar counts documents
        frame = frame[chunks.doc]  # (C rows) each window's id and kept columns
        leading = [
            pl.Series("chunk_index", chunks.chunk_index, dtype=pl.Int32),
            pl.Series("char_start", chunks.char_start, dtype=pl.Int64),
            pl.Series("char_end", chunks.char_end, dtype=pl.Int64),
        ]
    if tokens is not None:
        table = parts.token_frame(
            frame,
            tokens.tokens,
            tokens.offsets,
            tokens.special,
            embeddings,
            tok.n_tokens,
            tok.truncated,
            config.keep,
            spec.id_kind,
            config.dimension,
        )
    else:
        table = parts.part_frame(
            frame,
            embeddings,
            tok.n_tokens,
            tok.truncated,
            config.keep,
            spec.id_kind,
            config.embedding_columns(),
            leading,
        )
    info = PartInfo(
        fingerprint=fingerprint,
        rows=len(table),
        tokens=int(tok.n_tokens.sum()),
        truncated=int(tok.truncated.sum()),
        seconds=seconds,
        rejects=rejects,
    )
    documents = None
    if config.aggregate != "none":  # written first: a main part on its own is not a finished shard
        docs = parts.document_frame(table, config.embedding_columns(), config.keep, config.aggregate, config.normalize)
        docs_data = parts.serialize_part(docs, info.model_copy(update={"rows": len(docs)}))
        storage.write_atomic(storage.join(dest, DOCUMENTS_DIR, spec.name), docs_data)
        documents = DocumentsPart(
            name=f"{DOCUMENTS_DIR}/{spec.name}", rows=len(docs), sha256=hashlib.sha256(docs_data).hexdigest()
        )
    data = parts.serialize_part(table, info)
    storage.write_atomic(storage.join(dest, spec.name), data)
    result = ShardResult(
        name=spec.name,
        pieces=spec.pieces,
        rows=info.rows,
        rejected=len(rejects),
        tokens=info.tokens,
        truncated=info.truncated,
        seconds=seconds,
        sha256=hashlib.sha256(data).hexdigest(),
        rejects=rejects,
        documents=documents,
    )
    get_run_logger().info(
        "%s: %d rows, %d tokens in %.1fs (%.0f docs/s, %.0f tokens/s)%s",
        spec.name,
        info.rows,
        info.tokens,
        seconds,
        info.rows / max(seconds, 1e-9),
        info.tokens / max(seconds, 1e-9),
        f", {info.truncated} truncated at {config.max_length} tokens" if info.truncated else "",
    )
    return result


def split_rejects(frame: pl.DataFrame) -> tuple[pl.DataFrame, list[Reject]]:
    """Rows with null text cannot be embedded: they go to rejects, with the reason."""
    null = frame["text"].is_null()
    if not null.any():
        return frame, []
    rejected = frame.filter(null)["id"].to_list()
    return frame.filter(~null), [Reject(id=i, reason="null text") for i in rejected]


@task(name="finalize_dest", **IN_MEMORY, **RETRY)
def finalize_dest(
    source: str,
    dest: str,
    config: ResolvedConfig,
    plan: list[ShardSpec],
    results: list[ShardResult],
    seconds: float,
    created_at: datetime,
) -> Manifest:
    """Write _rejects.parquet, then the complete manifest last (storage)."""
    by_name = {r.name: r for r in results}
    ordered = [by_name[s.name] for s in plan]
    id_kind = plan[0].id_kind
    rejects = parts.rejects_bytes(ordered, id_kind)
    rejects_uri = storage.join(dest, REJECTS_NAME)
    if rejects is not None:
        storage.write_atomic(rejects_uri, rejects)
    else:
        storage.remove(rejects_uri)
    totals = Totals(
        rows=sum(r.rows for r in ordered),
        skipped=sum(r.rejected for r in ordered),
        tokens=sum(r.tokens for r in ordered),
        truncated=sum(r.truncated for r in ordered),
        seconds=round(seconds, 3),
    )
    manifest = _manifest(
        source,
        config,
        plan,
        pick_device(config.device),
        status="complete",
        shards=ordered,
        totals=totals,
        rejects=REJECTS_NAME if rejects is not None else None,
        created_at=created_at,
        documents=[r.documents for r in ordered if r.documents is not None],
        completed_at=datetime.now(timezone.utc),
    )
    storage.write_atomic(storage.join(dest, MANIFEST_NAME), parts.manifest_bytes(manifest))
    logger = get_run_logger()
    if totals.truncated:
        logger.warning("%d rows were longer than %d tokens and were truncated", totals.truncated, config.max_length)
    if totals.skipped:
        logger.warning("%d rows were not embedded (see %s)", totals.skipped, rejects_uri)
    return manifest
