"""Parity with references nobody here wrote, on the bundled real model and real text.

sentence-transformers' `encode` and raw transformers outputs are computed once per session;
our engine (and, for mean pooling, the whole flow) must reproduce them within 1e-5.
"""

from __future__ import annotations

import json

import numpy as np
import polars as pl
import pytest
import torch

from bertflow.config import EmbedConfig
from bertflow.model.encoder import Encoder
from bertflow.model.loading import load_model
from bertflow.model.resolve import resolve_config

pytestmark = pytest.mark.slow

N_TEXTS = 200
TOL = 1e-5


@pytest.fixture(scope="session")
def parity_texts(sample_texts) -> list[str]:
    # every 13th docstring: modules across the whole standard library, some over 256 tokens
    texts = sample_texts[::13][:N_TEXTS]
    assert len(texts) == N_TEXTS
    return texts


@pytest.fixture(scope="session")
def st_model(bundled_model):
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(bundled_model), device="cpu")


@pytest.fixture(scope="session")
def st_reference(st_model, parity_texts) -> np.ndarray:
    return st_model.encode(parity_texts)  # (N, 384), mean pooled and normalized by the model's modules


@pytest.fixture(scope="session")
def hf_tokenizer(bundled_model):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(bundled_model))


@pytest.fixture(scope="session")
def cls_reference(bundled_model, hf_tokenizer, parity_texts) -> np.ndarray:
    """`last_hidden_state[:, 0]` from transformers, in batches of similar length to keep it fast."""
    from transformers import AutoModel

    model = AutoModel.from_pretrained(str(bundled_model)).eval()
    order = sorted(range(len(parity_texts)), key=lambda i: len(parity_texts[i]))
    out = np.empty((len(parity_texts), model.config.hidden_size), dtype=np.float32)
    with torch.inference_mode():
        for k in range(0, len(order), 32):
            rows = order[k : k + 32]
            batch = hf_tokenizer(
                [parity_texts[i] for i in rows], padding=True, truncation=True, max_length=256, return_tensors="pt"
            )
            out[rows] = model(**batch).last_hidden_state[:, 0].numpy()
    return out


def make_encoder(bundled_model, batch_tokens: int | None = None) -> Encoder:
    """Our engine as the embedding task builds it: resolved config, the process's cached model."""
    config = resolve_config(
        EmbedConfig(model=str(bundled_model), pooling="mean", normalize=True, device="cpu", batch_tokens=batch_tokens)
    )
    tokenizer, model = load_model(config.model.path, "cpu", config.precision)
    return Encoder(
        tokenizer,
        model,
        device="cpu",
        precision=config.precision,
        max_length=config.max_length,
        batch_tokens=config.batch_tokens,
    )


@pytest.fixture(scope="session")
def engine(bundled_model) -> Encoder:
    return make_encoder(bundled_model)  # the default CPU batch budget


@pytest.fixture(scope="session")
def tokenized(engine, parity_texts):
    return engine.tokenizer.tokenize(parity_texts)


def test_model_defaults_resolve_to_what_sentence_transformers_uses(st_model, bundled_model):
    config = resolve_config(EmbedConfig())  # the default model is the bundled one
    assert config.model.path == str(bundled_model)
    assert config.pooling == ("mean",)
    assert config.normalize is True
    assert config.max_length == st_model.max_seq_length == 256
    assert config.dimension == st_model.get_embedding_dimension() == 384


def test_token_counts_and_truncation_match_the_hf_tokenizer(tokenized, hf_tokenizer, parity_texts):
    full = [len(ids) for ids in hf_tokenizer(parity_texts)["input_ids"]]
    cut = [len(ids) for ids in hf_tokenizer(parity_texts, truncation=True, max_length=256)["input_ids"]]
    assert tokenized.n_tokens.tolist() == cut
    assert tokenized.truncated.tolist() == [n > 256 for n in full]
    assert tokenized.truncated.sum() >= 5  # the sample exercises truncation


def test_mean_normalized_matches_sentence_transformers_encode(engine, tokenized, st_reference):
    ours = engine.embed(tokenized, pooling="mean", normalize_output=True)
    assert ours.dtype == np.float32 and ours.shape == st_reference.shape == (N_TEXTS, 384)
    assert np.abs(ours - st_reference).max() < TOL


def test_cls_unnormalized_matches_transformers_last_hidden_state(engine, tokenized, cls_reference):
    ours = engine.embed(tokenized, pooling="cls", normalize_output=False)
    assert np.abs(ours - cls_reference).max() < TOL
    assert not np.allclose(np.linalg.norm(ours, axis=1), 1.0)  # really not normalized


def test_a_text_embeds_the_same_alone_and_inside_a_batch_of_long_texts(bundled_model, parity_texts, tokenized):
    by_length = np.argsort(tokenized.n_tokens, kind="stable")
    short = [parity_texts[i] for i in by_length[:4]]
    long = [parity_texts[i] for i in by_length[-4:]]
    everything = make_encoder(bundled_model, batch_tokens=1 << 20)  # one forward pass for all 8
    alone = make_encoder(bundled_model, batch_tokens=1)  # one forward pass per text
    mixed = everything.tokenizer.tokenize(long + short)
    assert mixed.n_tokens[:4].min() == 256 and mixed.n_tokens[4:].max() < 20  # heavy padding for the short ones
    for pooling, norm in (("mean", True), ("max", False)):
        together = everything.embed(mixed, pooling=pooling, normalize_output=norm)
        single = alone.embed(mixed, pooling=pooling, normalize_output=norm)
        assert np.abs(together - single).max() < TOL, pooling


def test_flow_output_parts_match_sentence_transformers(
    prefect_harness, tmp_path, bundled_model, parity_texts, st_reference
):
    from bertflow.flows.embed import embed_dataset

    src = tmp_path / "docs.jsonl"
    src.write_text("".join(json.dumps({"id": f"doc-{i}", "text": t}) + "\n" for i, t in enumerate(parity_texts)))
    dest = tmp_path / "out"
    manifest = embed_dataset(
        str(src), str(dest), EmbedConfig(model=str(bundled_model), pooling="mean", normalize=True, shard_rows=80)
    )
    assert [s.rows for s in manifest.shards] == [80, 80, 40]
    parts = pl.read_parquet(dest / "part-*.parquet")
    assert parts.schema["embedding"] == pl.Array(pl.Float32, 384)
    assert parts["id"].to_list() == [f"doc-{i}" for i in range(N_TEXTS)]
    assert np.abs(parts["embedding"].to_numpy() - st_reference).max() < TOL


@pytest.mark.parametrize(("pooling", "layer_mode"), [("cls", "concat"), ("mean", "mean")])
def test_several_layers_match_transformers_hidden_states(tiny_bert, parity_texts, pooling, layer_mode):
    """On the tiny BERT: layers -2,-1 from `output_hidden_states`, each text alone, no padding."""
    from transformers import AutoModel, AutoTokenizer

    texts = parity_texts[:40]
    config = resolve_config(
        EmbedConfig(
            model=str(tiny_bert),
            pooling=pooling,
            layers=(-2, -1),
            layer_mode=layer_mode,
            normalize=False,
            max_length=64,
            device="cpu",
        )
    )
    assert config.dimension == (64 if layer_mode == "concat" else 32)
    tokenizer, model = load_model(config.model.path, "cpu", "fp32")
    encoder = Encoder(tokenizer, model, device="cpu", precision="fp32", max_length=64, batch_tokens=2048)
    ours = encoder.embed(encoder.tokenizer.tokenize(texts), pooling=pooling, layers=(-2, -1), layer_mode=layer_mode)

    hf_tok = AutoTokenizer.from_pretrained(str(tiny_bert))
    hf = AutoModel.from_pretrained(str(tiny_bert)).eval()
    expected = []
    with torch.inference_mode():
        for text in texts:
            hs = hf(
                **hf_tok(text, truncation=True, max_length=64, return_tensors="pt"), output_hidden_states=True
            ).hidden_states
            if layer_mode == "concat":  # [CLS] of layer -2, then of layer -1
                expected.append(torch.cat([hs[-2][0, 0], hs[-1][0, 0]]).numpy())
            else:  # the two layers averaged, then averaged over the tokens
                expected.append(((hs[-2][0] + hs[-1][0]) / 2).mean(0).numpy())
    assert ours.shape == (40, config.dimension)
    assert np.abs(ours - np.stack(expected)).max() < TOL
