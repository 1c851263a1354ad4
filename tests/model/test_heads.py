"""The mean_lstm head: masking, the pooling it feeds, saving and reloading, refusing a foreign encoder."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from bertflow.config import EmbedConfig
from bertflow.errors import InputError
from bertflow.model import fitted
from bertflow.model.encoder import Encoder
from bertflow.model.heads import HeadConfig, LstmHead, head_from_bytes, head_to_bytes
from bertflow.model.loading import load_model, weights_sha256
from bertflow.model.pooling import pool
from bertflow.model.resolve import resolve_config
from bertflow.model.training import Split, fit_probe, stratified_split


def lstm_by_hand(head: LstmHead, seq: torch.Tensor) -> torch.Tensor:
    """The head's output for one unpadded sequence (n, H): last forward state, first backward state."""
    out, _ = head.lstm(seq.unsqueeze(0))  # (1, n, dirs * hidden)
    hidden = head.lstm.hidden_size
    forward = out[0, -1, :hidden]
    if not head.lstm.bidirectional:
        return forward
    return torch.cat([forward, out[0, 0, hidden:]])


def padded_batch() -> tuple[torch.Tensor, torch.Tensor, list[int]]:
    torch.manual_seed(1)
    lengths = [5, 2, 0, 3]
    h = torch.randn(4, 5, 6)  # (B, T, H): padding slots hold large junk that must not leak in
    mask = torch.zeros(4, 5, dtype=torch.long)
    for row, n in enumerate(lengths):
        mask[row, :n] = 1
        h[row, n:] = 1e3
    return h, mask, lengths


@pytest.mark.parametrize("bidirectional", [False, True])
def test_head_reads_only_real_tokens_and_zeros_an_all_masked_row(bidirectional):
    torch.manual_seed(0)
    head = LstmHead(6, 4, bidirectional).eval()
    h, mask, lengths = padded_batch()
    with torch.no_grad():
        out = head(h, mask)  # (B, S)
        assert out.shape == (4, 8 if bidirectional else 4)
        for row, n in enumerate(lengths):
            want = lstm_by_hand(head, h[row, :n]) if n else torch.zeros(out.shape[1])
            torch.testing.assert_close(out[row], want, rtol=0, atol=1e-6)


def test_mean_lstm_pooling_is_mean_then_head():
    torch.manual_seed(0)
    head = LstmHead(6, 3, True).eval()
    h, mask, lengths = padded_batch()
    with torch.no_grad():
        out = pool(h, mask, "mean_lstm", head=head)
    assert out.shape == (4, 6 + 6)
    for row, n in enumerate(lengths):
        mean = h[row, :n].mean(0) if n else torch.zeros(6)
        torch.testing.assert_close(out[row, :6], mean, rtol=0, atol=1e-6)
    torch.testing.assert_close(out[:, 6:], head(h, mask).detach(), rtol=0, atol=0)
    with pytest.raises(ValueError, match=r"pooling 'mean_lstm' needs a trained head \(--pooler PATH\)"):
        pool(h, mask, "mean_lstm")


def test_mean_lstm_through_the_engine_equals_concat_of_mean_and_head_by_hand(tiny_bert):
    """Batched, padded, length-sorted embedding == each text alone: mean of its states, then the head."""
    torch.manual_seed(3)
    head = LstmHead(32, 5, True).eval()
    tokenizer, model = load_model(str(tiny_bert), "cpu", "fp32")
    encoder = Encoder(tokenizer, model, device="cpu", precision="fp32", max_length=16, batch_tokens=40, head=head)
    texts = ["a short one", "a somewhat longer sentence about embeddings and heads", "", "x " * 40]
    tok = encoder.tokenizer.tokenize(texts)
    got = encoder.embed(tok, pooling="mean_lstm")  # (N, 32 + 10)
    assert got.shape == (4, 42)
    for row, ids in enumerate(tok.ids):
        with torch.no_grad():
            states = model(
                input_ids=torch.tensor([ids]),
                attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                token_type_ids=torch.zeros(1, len(ids), dtype=torch.long),
            ).last_hidden_state[0]  # (n, H)
            want = torch.cat([states.mean(0), lstm_by_hand(head, states)])
        np.testing.assert_allclose(got[row], want.numpy(), rtol=0, atol=2e-5)


def head_config(**kw) -> HeadConfig:
    base = dict(
        input_size=32,
        hidden=5,
        bidirectional=False,
        model="tiny",
        model_sha256="0" * 64,
        layers=(-1,),
        layer_mode="mean",
        max_length=16,
        labels=("a", "b"),
        seed=0,
    )
    return HeadConfig(**{**base, **kw})


def test_saved_head_reloads_to_the_same_outputs(tmp_path):
    torch.manual_seed(4)
    head = LstmHead(32, 5, False).eval()
    config = head_config()
    weights, meta = head_to_bytes(head, config)
    fitted.save_head(str(tmp_path / "head"), weights, meta, b"{}")
    loaded_config, sha = fitted.read_head_config(str(tmp_path / "head"))
    assert loaded_config == config
    reloaded = fitted.load_head(str(tmp_path / "head"), sha)
    h, mask = torch.randn(3, 7, 32), torch.tensor([[1] * 7, [1] * 3 + [0] * 4, [1] + [0] * 6])
    with torch.no_grad():
        assert torch.equal(reloaded(h, mask), head(h, mask))
    with pytest.raises(ValueError, match="do not match pooler.json"):
        head_from_bytes(weights, head_config(hidden=6))


def test_a_head_trained_on_another_encoder_is_refused(tmp_path, tiny_bert):
    tiny_sha = weights_sha256(tiny_bert)
    fitted.save_head(
        str(tmp_path / "head"),
        *head_to_bytes(LstmHead(32, 5, False), head_config(model=str(tiny_bert), model_sha256=tiny_sha)),
        b"{}",
    )
    pooler = str(tmp_path / "head")
    ok = resolve_config(EmbedConfig(model=str(tiny_bert), pooling="mean_lstm", pooler=pooler, max_length=16))
    assert ok.dimension == 32 + 5 and ok.pooler and ok.output_fingerprint()["pooler_sha256"] == ok.pooler.sha256
    with pytest.raises(InputError, match=r"was trained on the encoder .* not on .*: embed with --model"):
        resolve_config(EmbedConfig(pooling="mean_lstm", pooler=pooler, max_length=16))
    with pytest.raises(InputError, match="pass --max-length 16"):
        resolve_config(EmbedConfig(model=str(tiny_bert), pooling="mean_lstm", pooler=pooler))
    with pytest.raises(InputError, match="pass --layers=-1"):
        resolve_config(
            EmbedConfig(model=str(tiny_bert), pooling="mean_lstm", pooler=pooler, max_length=16, layers=(-2, -1))
        )


def test_mean_lstm_and_pooler_go_together():
    for kw in ({"pooling": "mean_lstm"}, {"pooler": "somewhere"}, {"pooling": "mean", "pooler": "somewhere"}):
        with pytest.raises(ValidationError, match="--pooling mean_lstm and --pooler PATH"):
            EmbedConfig(**kw)


def test_stratified_split_keeps_every_class_in_every_part_and_follows_the_seed():
    labels = np.array([0] * 50 + [1] * 20 + [2] * 10)
    split = stratified_split(labels, seed=7)
    assert sorted(np.concatenate([split.train, split.validation, split.test]).tolist()) == list(range(80))
    for part, share in ((split.test, 0.2), (split.validation, 0.1)):
        assert np.bincount(labels[part]).tolist() == [round(50 * share), round(20 * share), round(10 * share)]
    again, other = stratified_split(labels, seed=7), stratified_split(labels, seed=8)
    assert again.test.tolist() == split.test.tolist() and other.test.tolist() != split.test.tolist()


def test_logistic_probe_separates_separable_classes():
    gen = torch.Generator().manual_seed(0)
    y = np.arange(90) % 3
    x = torch.randn(90, 4, generator=gen) * 0.1 + torch.nn.functional.one_hot(torch.from_numpy(y), 4).float() * 3
    split = Split(np.arange(0, 60), np.arange(60, 75), np.arange(75, 90))
    probe, acc = fit_probe(x, y, split, 3)
    assert acc == 1.0
    assert probe.l2 == 0.1  # every strength separates these; ties keep the strongest
