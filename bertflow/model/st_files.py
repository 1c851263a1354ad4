"""What a model's sentence-transformers files say: its pooling, normalisation, length limit and prompts.

`modules.json` lists the steps sentence-transformers runs after the transformer. bertflow implements
Transformer, Pooling (cls, mean, max, mean_sqrt_len, last_token; one mode) and Normalize. Any other
module (Dense, LayerNorm, WeightedLayerPooling, ...) or pooling mode (weightedmean, several modes
concatenated) would make bertflow's vectors differ from the model's own: a run that relies on the
model's defaults is refused with the reason (`Settings.unsupported`), never silently given `mean`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from bertflow.errors import ModelError

# sentence-transformers pooling modes -> bertflow's poolings; the legacy config keys, in its concatenation order
POOLING_MODES = {
    "cls": "cls",
    "max": "max",
    "mean": "mean",
    "mean_sqrt_len_tokens": "mean_sqrt_len",
    "lasttoken": "last_token",
}
LEGACY_KEYS = {
    "pooling_mode_cls_token": "cls",
    "pooling_mode_max_tokens": "max",
    "pooling_mode_mean_tokens": "mean",
    "pooling_mode_mean_sqrt_len_tokens": "mean_sqrt_len_tokens",
    "pooling_mode_weightedmean_tokens": "weightedmean",
    "pooling_mode_lasttoken": "lasttoken",
}
KNOWN_MODULES = {"Transformer", "Pooling", "Normalize"}


def read_json(path: Path) -> dict | list | None:
    """A JSON file's content; None if it does not exist."""
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except json.JSONDecodeError as e:
        raise ModelError(f"{path} is not valid JSON: {e}") from None


@dataclass(frozen=True)
class Settings:
    """The model's own choices; `unsupported` says why bertflow cannot reproduce them (None: it can)."""

    pooling: str = "mean"
    normalize: bool = False
    max_seq_length: int | None = None
    include_prompt: bool = True
    prompts: dict[str, str] = field(default_factory=dict)
    default_prompt_name: str | None = None
    unsupported: str | None = None


def _pooling_modes(config: dict) -> tuple[str, ...]:
    """The modes of a Pooling module's config, new (`pooling_mode`) or legacy (`pooling_mode_*` flags) style."""
    mode = config.get("pooling_mode")
    if isinstance(mode, str):
        return (mode,)
    if isinstance(mode, list):
        return tuple(str(m) for m in mode)
    on = tuple(m for key, m in LEGACY_KEYS.items() if config.get(key) is True)
    return on or ("mean",)


def _prompts(path: Path) -> tuple[dict[str, str], str | None]:
    config = read_json(path / "config_sentence_transformers.json")
    if not isinstance(config, dict):
        return {}, None
    prompts = config.get("prompts") or {}
    if not isinstance(prompts, dict) or not all(isinstance(v, str) for v in prompts.values()):
        raise ModelError(f"{path / 'config_sentence_transformers.json'}: 'prompts' must map names to texts")
    default = config.get("default_prompt_name")
    return {str(k): v for k, v in prompts.items()}, str(default) if default else None


def read_settings(path: Path) -> Settings:
    """The settings in the model directory's sentence-transformers files (defaults without them)."""
    prompts, default_prompt = _prompts(path)
    modules = read_json(path / "modules.json")
    if not isinstance(modules, list):
        return Settings(prompts=prompts, default_prompt_name=default_prompt)
    pooling, normalize, include_prompt, problems = "mean", False, True, []
    for module in modules:
        kind = str(module.get("type", "")).rsplit(".", 1)[-1]
        where = str(module.get("path", "")) or "."
        if kind == "Normalize":
            normalize = True
        elif kind == "Pooling":
            config = read_json(path / where / "config.json") or {}
            include_prompt = bool(config.get("include_prompt", True)) if isinstance(config, dict) else True
            modes = _pooling_modes(config) if isinstance(config, dict) else ("mean",)
            if len(modes) == 1 and modes[0] in POOLING_MODES:
                pooling = POOLING_MODES[modes[0]]
            else:
                problems.append(f"pooling {'+'.join(modes)} ({where})")
        elif kind not in KNOWN_MODULES:
            problems.append(f"a {kind} module ({where})")
    st_config = read_json(path / "sentence_bert_config.json")
    max_seq = st_config.get("max_seq_length") if isinstance(st_config, dict) else None
    unsupported = None
    if problems:
        unsupported = (
            f"the model's sentence-transformers pipeline has {', '.join(problems)}, which bertflow does not "
            "implement (it implements Transformer, Pooling with one of "
            f"{', '.join(sorted(POOLING_MODES))}, and Normalize); its vectors would not be the model's own"
        )
    return Settings(
        pooling, normalize, int(max_seq) if max_seq else None, include_prompt, prompts, default_prompt, unsupported
    )
