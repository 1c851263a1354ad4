"""A run's settings resolved: EmbedConfig -> ResolvedConfig (every default filled in from the model's own
files, checked against it), and ResolvedConfig -> the Encoder that embeds with them."""

from __future__ import annotations

import time
from pathlib import Path

from bertflow.choices import TOKEN_LEVEL
from bertflow.config import EmbedConfig
from bertflow.errors import InputError, ModelError
from bertflow.locks import KeyedLocks
from bertflow.model import cards, hub
from bertflow.model.defaults import ModelDefaults, model_defaults, special_tokens
from bertflow.model.encoder import Encoder
from bertflow.model.fitted import attach, head_for
from bertflow.model.loading import (
    check_custom_code,
    config_sha256,
    load_model,
    pick_device,
    resolve_model_path,
    tokenizer_sha256,
    weights_sha256,
)
from bertflow.model.pooling import output_dim
from bertflow.resolved import TEXT_HASH, ModelRef, ResolvedConfig

AUTO_UNTIL_SIZED = 10_000  # ResolvedConfig.shard_rows of `--shard-rows auto` before SOURCE is scanned and sized


def _check_lengths(config: EmbedConfig, d: ModelDefaults, max_length: int) -> None:
    if max_length > d.position_limit:
        raise InputError(
            f"--max-length {max_length} exceeds the model's limit of {d.position_limit} tokens; "
            f"use at most {d.position_limit}"
        )
    if any(-i > d.num_layers for i in config.layers):
        raise InputError(
            f"--layers {','.join(map(str, config.layers))}: this model has {d.num_layers} layers "
            f"(use -1 .. -{d.num_layers})"
        )


def _chunk_tokens(config: EmbedConfig, d: ModelDefaults, path: Path, max_length: int) -> int | None:
    """`--chunk-tokens` (default: the run's max length), checked against the model; None unless chunking."""
    if config.long_text != "chunk":
        return None
    chunk_tokens = config.chunk_tokens or max_length
    if chunk_tokens > d.position_limit:
        raise InputError(
            f"--chunk-tokens {chunk_tokens} exceeds the model's limit of {d.position_limit} tokens; "
            f"use at most {d.position_limit}"
        )
    content = chunk_tokens - special_tokens(path)
    if config.stride >= content:
        raise InputError(
            f"--stride {config.stride} must be less than the {content} text tokens of a window "
            f"(--chunk-tokens {chunk_tokens} less the model's special tokens)"
        )
    return chunk_tokens


def _prompt(config: EmbedConfig, d: ModelDefaults) -> tuple[str | None, str | None]:
    """(prompt text, its name): --prompt, --prompt-name, else the model's default prompt, as sentence-transformers."""
    if config.prompt is not None:
        return config.prompt or None, None
    name = config.prompt_name or d.st.default_prompt_name
    if name is None:
        return None, None
    if name not in d.st.prompts:
        known = ", ".join(sorted(d.st.prompts)) or "none"
        raise InputError(f"--prompt-name {name}: the model's prompts are {known} (config_sentence_transformers.json)")
    return d.st.prompts[name] or None, name


def resolve_config(config: EmbedConfig) -> ResolvedConfig:
    """Fill every default from the model's own files; validate what depends on the model."""
    if config.revision and not hub.is_hub_id(config.model):
        raise InputError(f"--revision {config.revision}: it pins a Hub id (ORG/NAME), not {config.model!r}")
    path = resolve_model_path(config.model, config.revision)
    check_custom_code(path, config.trust_remote_code)
    d = model_defaults(path)
    max_length = config.max_length or d.max_length
    _check_lengths(config, d, max_length)
    if config.pooling is None and d.st.unsupported:
        raise ModelError(
            f"model {config.model!r}: {d.st.unsupported}; pass --pooling to embed with the transformer alone"
        )
    pooling = config.pooling or (d.pooling,)
    d.check_pooling(pooling)  # a decoder-only model: last_token (or its own pooling) only
    prompt, prompt_name = _prompt(config, d)
    token_level = pooling == (TOKEN_LEVEL,)
    widths = {
        p: output_dim(d.hidden_size, "mean" if p == TOKEN_LEVEL else p, len(config.layers), config.layer_mode)
        for p in pooling
    }
    resolved = ResolvedConfig(
        model=ModelRef(
            name=config.model,
            path=str(path),
            revision=hub.commit_of(path),
            sha256=weights_sha256(path),
            tokenizer_sha256=tokenizer_sha256(path),
            config_sha256=config_sha256(path, config.trust_remote_code),
        ),
        pooling=pooling,
        prompt=None if token_level else prompt,
        prompt_name=None if token_level else prompt_name,
        include_prompt=d.st.include_prompt,
        dimensions=widths,
        layers=config.layers,
        layer_mode=config.layer_mode,
        # token-level output is the model's own states unless asked otherwise
        normalize=(d.normalize and not token_level) if config.normalize is None else config.normalize,
        max_length=max_length,
        id_column=config.id_column,
        text_column=config.text_column,
        keep=config.keep,
        # "auto" is sized once SOURCE is scanned (bertflow.pipeline.sizing); until then, the default
        shard_rows=config.shard_rows if isinstance(config.shard_rows, int) else AUTO_UNTIL_SIZED,
        batch_tokens=config.batch_tokens,
        device=config.device,
        devices=config.devices,
        precision=config.precision,
        trust_remote_code=config.trust_remote_code,
        exclude_special=config.exclude_special,
        long_text=config.long_text,
        chunk_tokens=_chunk_tokens(config, d, path, max_length),
        stride=config.stride,
        aggregate=config.aggregate,
        storage_block=config.storage_block,
        text_hash=TEXT_HASH,
    )
    resolved = attach(resolved, config.pooler, config.reduction)  # checks --pooler/--reduction, final dimension
    # int8/uint8 ranges are calibrated on the run's data afterwards (`bertflow.pipeline.quantize`)
    return _truncated(resolved, config.truncate_dim).model_copy(update={"quantize": config.quantize})


def _truncated(resolved: ResolvedConfig, dim: int | None) -> ResolvedConfig:
    """Record --truncate-dim (a single pooling's vectors cut to their first `dim` dimensions)."""
    if dim is None:
        return resolved
    if dim >= resolved.dimension:
        raise InputError(f"--truncate-dim {dim}: the vectors have {resolved.dimension} dimensions; give fewer")
    return resolved.model_copy(update={"truncate_dim": dim, "dimensions": {resolved.pooling[0]: dim}})


# Per model (path, device, precision, trust_remote_code, card): a lock, so the two lanes of a card load its
# model once while other cards load theirs; and the models this process has loaded.
_LOCKS: KeyedLocks[tuple[object, ...]] = KeyedLocks()
_LOADED: set[tuple[object, ...]] = set()


def encoder_for(config: ResolvedConfig) -> Encoder:
    """The process-wide model (loaded once per path, device, precision and card: the calling thread's
    current CUDA device) set up for this run."""
    return loaded_encoder(config)[0]


def loaded_encoder(config: ResolvedConfig) -> tuple[Encoder, float]:
    """`encoder_for`, and the seconds this call spent loading the model onto its device (0.0: it was there)."""
    device = pick_device(config.device)
    card = cards.current(device)
    key = (config.model.path, device, config.precision, config.trust_remote_code, card)
    with _LOCKS(key):
        started, fresh = time.perf_counter(), key not in _LOADED
        tokenizer, model = load_model(config.model.path, device, config.precision, config.trust_remote_code, card)
        _LOADED.add(key)
    seconds = time.perf_counter() - started if fresh else 0.0
    encoder = Encoder(
        tokenizer,
        model,
        device=device,
        precision=config.precision,
        max_length=config.max_length,
        batch_tokens=config.batch_tokens,
        head=head_for(config),
    )
    return encoder, seconds
