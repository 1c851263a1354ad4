"""Model resolution: offline, safetensors only, no foreign code unless asked, defaults from the model."""

from __future__ import annotations

import json
import shutil

import pytest

from bertflow.config import EmbedConfig
from bertflow.errors import InputError, ModelError
from bertflow.model.defaults import model_defaults
from bertflow.model.loading import load_model, resolve_model_path
from bertflow.model.resolve import resolve_config

CUSTOM_CODE = '''
from transformers import BertModel


class MarkedBert(BertModel):
    """Stock BERT that marks itself, so the test can tell this file really ran."""

    bertflow_custom_code_ran = True
'''


def test_bundled_model_defaults_come_from_its_sentence_transformers_files(bundled_model):
    d = model_defaults(bundled_model)
    assert (d.pooling, d.normalize, d.max_length, d.hidden_size, d.num_layers) == ("mean", True, 256, 384, 6)
    resolved = resolve_config(EmbedConfig())
    assert resolved.model.path == str(bundled_model)
    assert (resolved.pooling, resolved.normalize, resolved.max_length, resolved.dimension) == (
        ("mean",),
        True,
        256,
        384,
    )


def test_plain_transformers_model_gets_mean_unnormalized_and_its_position_limit(tiny_bert):
    resolved = resolve_config(
        EmbedConfig(model=str(tiny_bert), pooling="mean_max", layers=(-2, -1), layer_mode="concat")
    )
    assert (resolved.pooling, resolved.normalize, resolved.max_length) == (("mean_max",), False, 512)
    assert resolved.dimension == 32 * 2 * 2


def test_explicit_options_override_model_defaults_and_are_checked_against_it(bundled_model):
    resolved = resolve_config(EmbedConfig(pooling="cls", normalize=False, max_length=128))
    assert (resolved.pooling, resolved.normalize, resolved.max_length) == (("cls",), False, 128)
    with pytest.raises(InputError, match="exceeds the model's limit of 512"):
        resolve_config(EmbedConfig(max_length=1024))
    with pytest.raises(InputError, match=r"this model has 6 layers \(use -1 .. -6\)"):
        resolve_config(EmbedConfig(layers=(-7, -1)))


def test_offline_hub_id_outside_the_cache_says_how_to_get_it(tmp_path, monkeypatch):
    # tests run with HF_HUB_OFFLINE=1 (conftest): nothing is fetched, the error says how to get the model
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    with pytest.raises(
        ModelError,
        match=r"not in the Hugging Face cache and HF_HUB_OFFLINE is set: get it with `hf download org/missing-model`",
    ):
        resolve_model_path("org/missing-model")
    with pytest.raises(ModelError, match="does not exist"):
        resolve_model_path(str(tmp_path / "nowhere"))


def test_model_with_own_code_needs_trust_remote_code(tiny_bert, tmp_path):
    custom = tmp_path / "custom"
    shutil.copytree(tiny_bert, custom)
    (custom / "modeling_marked.py").write_text(CUSTOM_CODE)
    config = json.loads((custom / "config.json").read_text())
    config["auto_map"] = {"AutoModel": "modeling_marked.MarkedBert"}
    (custom / "config.json").write_text(json.dumps(config))

    with pytest.raises(ModelError, match="ships its own code .* pass --trust-remote-code"):
        resolve_config(EmbedConfig(model=str(custom)))

    resolved = resolve_config(EmbedConfig(model=str(custom), trust_remote_code=True))
    _, model = load_model(resolved.model.path, "cpu", "fp32", True)
    assert type(model).__name__ == "MarkedBert" and model.bertflow_custom_code_ran


def test_pickled_weights_are_refused(tiny_bert, tmp_path):
    pickled = tmp_path / "pickled"
    shutil.copytree(tiny_bert, pickled)
    (pickled / "model.safetensors").rename(pickled / "pytorch_model.bin")
    with pytest.raises(ModelError, match="holds no model.safetensors; bertflow loads safetensors weights only"):
        resolve_config(EmbedConfig(model=str(pickled)))
