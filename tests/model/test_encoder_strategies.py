"""The engine's extra strategies against transformers' own hidden states on a tiny BERT."""

import numpy as np
import pytest
import torch
from transformers import AutoModel, AutoTokenizer

from bertflow.config import EmbedConfig
from bertflow.model.encoder import Encoder
from bertflow.model.loading import load_model
from bertflow.model.resolve import resolve_config

TEXTS = ["a short one", "a somewhat longer sentence with more words in it", "x"]


@pytest.fixture(scope="module")
def reference(tiny_bert):
    tok = AutoTokenizer.from_pretrained(tiny_bert)
    model = AutoModel.from_pretrained(tiny_bert).eval()
    batch = tok(TEXTS, padding=True, return_tensors="pt")
    with torch.no_grad():
        states = model(**batch, output_hidden_states=True).hidden_states
    return states, batch["attention_mask"]


def run(tiny_bert, pooling):
    resolved = resolve_config(EmbedConfig(model=str(tiny_bert), pooling=pooling))
    tokenizer, model = load_model(resolved.model.path, "cpu", "fp32")
    enc = Encoder(tokenizer, model, device="cpu", precision="fp32", max_length=resolved.max_length)
    return resolved, enc.embed(enc.tokenizer.tokenize(TEXTS), pooling=pooling)


def test_first_last_avg_is_the_masked_mean_of_layers_one_and_last(tiny_bert, reference):
    states, mask = reference
    resolved, out = run(tiny_bert, "first_last_avg")
    m = mask.unsqueeze(-1).float()
    want = (((states[1] + states[-1]) / 2) * m).sum(1) / m.sum(1)
    assert resolved.dimension == 32
    np.testing.assert_allclose(out, want.numpy(), atol=1e-5)


def test_mean_sqrt_len_and_last_token(tiny_bert, reference):
    states, mask = reference
    last = states[-1]
    m = mask.unsqueeze(-1).float()
    _, sqrt_len = run(tiny_bert, "mean_sqrt_len")
    np.testing.assert_allclose(sqrt_len, ((last * m).sum(1) / m.sum(1).sqrt()).numpy(), atol=1e-5)
    _, last_token = run(tiny_bert, "last_token")
    lengths = mask.sum(1) - 1  # the [SEP] of each row
    np.testing.assert_allclose(last_token, last[torch.arange(3), lengths].numpy(), atol=1e-5)


def test_first_last_avg_refuses_layers():
    with pytest.raises(ValueError, match="drop --layers"):
        EmbedConfig(pooling="first_last_avg", layers=(-2, -1))
