"""A model's sentence-transformers files honoured in full: prompts (and include_prompt), pooling modes, modules
bertflow does not implement. References come from sentence-transformers itself, on copies of the bundled model."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from bertflow.config import EmbedConfig
from bertflow.errors import InputError, ModelError
from bertflow.model.resolve import resolve_config
from bertflow.pipeline.search import embed_query, query_prompt

TOL = 1e-5
PROMPTS = {"query": "query: ", "passage": "passage: ", "classification": "Classify the topic: "}


def variant(tmp_path: Path, bundled: Path, *, pooling: dict | None = None, modules: list | None = None, **st) -> Path:
    """A copy of the bundled model with its Pooling config, modules.json or config_sentence_transformers.json changed."""
    out = tmp_path / "model"
    shutil.copytree(bundled, out)
    if pooling is not None:
        (out / "1_Pooling" / "config.json").write_text(json.dumps({"word_embedding_dimension": 384, **pooling}))
    if modules is not None:
        (out / "modules.json").write_text(json.dumps(modules))
    if st:
        (out / "config_sentence_transformers.json").write_text(json.dumps(st))
    return out


def ours(model: Path, texts: list[str], **options) -> np.ndarray:
    config = resolve_config(EmbedConfig(model=str(model), **options))
    return np.stack([embed_query(t, config) for t in texts])


def st_encode(model: Path, texts: list[str], **kwargs) -> np.ndarray:
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(model), device="cpu").encode(texts, **kwargs)


@pytest.fixture(scope="module")
def texts(sample_texts) -> list[str]:
    return [t[:300] for t in sample_texts[:6]]


def test_a_prompt_changes_the_vector_exactly_as_a_manual_prefix(bundled_model, texts):
    prompted = ours(bundled_model, texts, prompt="query: ")
    by_hand = ours(bundled_model, ["query: " + t for t in texts])
    np.testing.assert_allclose(prompted, by_hand, atol=TOL)
    assert np.abs(prompted - ours(bundled_model, texts)).max() > 1e-3  # the prompt did something


@pytest.mark.parametrize("include_prompt", [True, False])
def test_named_prompts_and_include_prompt_match_sentence_transformers(tmp_path, bundled_model, texts, include_prompt):
    model = variant(
        tmp_path,
        bundled_model,
        pooling={"pooling_mode": "mean", "include_prompt": include_prompt},
        prompts=PROMPTS,
        default_prompt_name=None,
    )
    resolved = resolve_config(EmbedConfig(model=str(model), prompt_name="classification"))
    assert (resolved.prompt, resolved.prompt_name, resolved.include_prompt) == (
        "Classify the topic: ",
        "classification",
        include_prompt,
    )
    got = ours(model, texts, prompt_name="classification")
    np.testing.assert_allclose(got, st_encode(model, texts, prompt_name="classification"), atol=TOL)
    if not include_prompt:  # the prompt's tokens (and [CLS]) are left out of the mean, as sentence-transformers does
        assert (
            np.abs(got - ours(model, texts, prompt="Classify the topic: ", pooling="mean", normalize=True)).max() == 0
        )
        with_prompt = variant(tmp_path / "with", bundled_model, prompts=PROMPTS)
        assert np.abs(got - ours(with_prompt, texts, prompt_name="classification")).max() > 1e-3


def test_the_default_prompt_applies_unless_another_is_given(tmp_path, bundled_model, texts):
    model = variant(tmp_path, bundled_model, prompts=PROMPTS, default_prompt_name="passage")
    assert resolve_config(EmbedConfig(model=str(model))).prompt == "passage: "
    np.testing.assert_allclose(ours(model, texts), st_encode(model, texts), atol=TOL)  # ST applies it by default too
    assert resolve_config(EmbedConfig(model=str(model), prompt="")).prompt is None  # --prompt "" turns it off
    with pytest.raises(
        InputError, match=r"--prompt-name title: the model's prompts are classification, passage, query"
    ):
        resolve_config(EmbedConfig(model=str(model), prompt_name="title"))
    with pytest.raises(ValueError, match="--prompt and --prompt-name both"):
        EmbedConfig(prompt="x", prompt_name="query")


def test_the_prompt_is_part_of_the_fingerprint(bundled_model):
    plain, prompted = resolve_config(EmbedConfig()), resolve_config(EmbedConfig(prompt="query: "))
    assert plain.embedding_fingerprint()["prompt"] is None
    assert prompted.embedding_fingerprint()["prompt"] == "query: "
    assert "prompt" not in plain.output_fingerprint() and prompted.output_fingerprint()["prompt"] == "query: "


def test_search_takes_the_models_query_prompt_unless_told(tmp_path, bundled_model):
    model = variant(tmp_path, bundled_model, prompts=PROMPTS)
    config = resolve_config(EmbedConfig(model=str(model), prompt_name="passage"))
    assert query_prompt(config) == "query: "
    assert query_prompt(config, prompt_name="classification") == "Classify the topic: "
    assert query_prompt(config, prompt="Represent this sentence for searching relevant passages: ").startswith("Repr")
    assert query_prompt(config, prompt="") is None
    assert query_prompt(resolve_config(EmbedConfig())) is None  # no prompts: none assumed, not DEST's own
    with pytest.raises(InputError, match="--query-prompt-name doc: the model's prompts are"):
        query_prompt(config, prompt_name="doc")


@pytest.mark.parametrize(
    ("pooling", "ours_name"),
    [
        ({"pooling_mode": "cls"}, "cls"),
        ({"pooling_mode": "lasttoken"}, "last_token"),
        ({"pooling_mode_mean_sqrt_len_tokens": True}, "mean_sqrt_len"),
        ({"pooling_mode_max_tokens": True}, "max"),
    ],
)
def test_every_single_pooling_mode_is_read_and_matches_sentence_transformers(
    tmp_path, bundled_model, texts, pooling, ours_name
):
    model = variant(tmp_path, bundled_model, pooling=pooling)
    assert resolve_config(EmbedConfig(model=str(model))).pooling == (ours_name,)
    np.testing.assert_allclose(ours(model, texts), st_encode(model, texts), atol=TOL)


@pytest.mark.parametrize(
    ("pooling", "modules", "named"),
    [
        ({"pooling_mode": "weightedmean"}, None, "pooling weightedmean"),
        ({"pooling_mode_mean_tokens": True, "pooling_mode_max_tokens": True}, None, "pooling max\\+mean"),
        (None, ["Transformer", "Pooling", "Dense", "Normalize"], "a Dense module"),
        (None, ["Transformer", "Pooling", "LayerNorm"], "a LayerNorm module"),
    ],
)
def test_what_bertflow_cannot_reproduce_is_refused_never_replaced_by_mean(
    tmp_path, bundled_model, pooling, modules, named
):
    listed = None
    if modules:
        listed = [
            {
                "idx": i,
                "name": str(i),
                "path": "" if m == "Transformer" else f"{i}_{m}",
                "type": f"sentence_transformers.models.{m}",
            }
            for i, m in enumerate(modules)
        ]
    model = variant(tmp_path, bundled_model, pooling=pooling, modules=listed)
    with pytest.raises(ModelError, match=f"{named} .*does not implement.*pass --pooling") as e:
        resolve_config(EmbedConfig(model=str(model)))
    assert "\n" not in str(e.value)
    # an explicit --pooling is the user's choice: the transformer's states, pooled as asked
    assert resolve_config(EmbedConfig(model=str(model), pooling="mean")).pooling == ("mean",)
