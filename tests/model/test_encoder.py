"""The engine: token-budget batches, out-of-memory splits, the fused CPU forward, bf16, threads.

On the tiny BERT: its reference is transformers' own forward of the same weights, each text alone.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from prefect.states import Failed

from bertflow.errors import HostError
from bertflow.model import fused as fused_module
from bertflow.model.encoder import Encoder
from bertflow.model.loading import load_model
from bertflow.model.threads import cpu_threads, use_cpu_threads
from bertflow.tasks.policy import is_transient
from bertflow.text.tokenize import Tokenized

TEXTS = [
    "A short one.",
    "Return the indices that would sort an array, along the given axis, using the algorithm specified "
    "by the kind keyword; the result has the same shape as the input.",
    "x",
    "Tokenizers turn text into ids. " * 12,
    "",
    "Mean pooling averages the token vectors of the real tokens and ignores the padding.",
    "Two words",
    "An out-of-memory error on the device splits the batch in half and tries again. " * 3,
]


@pytest.fixture(scope="module")
def tiny(tiny_bert):
    return load_model(str(tiny_bert), "cpu", "fp32")


def encoder(tiny, *, precision="fp32", batch_tokens=None, fused=None, max_length=64) -> Encoder:
    tokenizer, model = tiny
    return Encoder(
        tokenizer,
        model,
        device="cpu",
        precision=precision,
        max_length=max_length,
        batch_tokens=batch_tokens,
        fused=fused,
    )


def each_alone(tiny, texts, **kw) -> np.ndarray:
    """transformers' forward (no fusion), one text per forward pass: no padding anywhere."""
    enc = encoder(tiny, batch_tokens=1, fused=False)
    return enc.embed(enc.tokenizer.tokenize(texts), **kw)


class Recorder:
    """Wraps a forward: records each batch's (rows, width) and ids; raises OOM above `max_rows`."""

    def __init__(self, forward, max_rows: int | None = None) -> None:
        self.forward, self.max_rows = forward, max_rows
        self.shapes: list[tuple[int, int]] = []
        self.rows: list[list[int]] = []
        self.refused: list[int] = []  # appended from several streams

    def __call__(self, input_ids, attention_mask, *args, **kwargs):
        if self.max_rows is not None and len(input_ids) > self.max_rows:
            self.refused.append(len(input_ids))
            raise torch.OutOfMemoryError("injected: CUDA out of memory. Tried to allocate 2.00 GiB")
        self.shapes.append(tuple(input_ids.shape))
        for ids, mask in zip(input_ids.tolist(), attention_mask.tolist()):
            self.rows.append([i for i, m in zip(ids, mask) if m])
        return self.forward(input_ids, attention_mask, *args, **kwargs)


def wrap_forward(monkeypatch, enc: Encoder, max_rows: int | None = None) -> Recorder:
    """Wrap whichever module runs the forward passes: the fused encoder or the transformers model."""
    module = enc._fused if enc._fused is not None else enc.model
    recorder = Recorder(module.forward, max_rows)
    monkeypatch.setattr(module, "forward", recorder)
    return recorder


@pytest.mark.parametrize("fused", [None, False])
@pytest.mark.parametrize("budget", [1, 40, 97, 300])
def test_token_budget_batches_feed_every_row_once_within_budget_and_restore_order(tiny, monkeypatch, fused, budget):
    enc = encoder(tiny, batch_tokens=budget, fused=fused)
    tok = enc.tokenizer.tokenize(TEXTS)
    seen = wrap_forward(monkeypatch, enc)
    out = enc.embed(tok, pooling="mean")

    assert sorted(seen.rows) == sorted(tok.ids)  # every row exactly once, unpadded ids intact
    for rows, width in seen.shapes:
        assert rows * width <= budget or rows == 1, (rows, width)
    expected = each_alone(tiny, TEXTS, pooling="mean")
    assert out.shape == (len(TEXTS), 32)
    assert np.abs(out - expected).max() < 1e-6  # row i is text i: the order is restored
    assert len({tuple(np.round(r, 4)) for r in out}) == len(TEXTS)  # and the rows really differ


@pytest.mark.parametrize("pooling", ["mean", "cls", "max", "mean_max"])
def test_small_budget_equals_one_batch_for_all(tiny, pooling):
    small, huge = encoder(tiny, batch_tokens=16), encoder(tiny, batch_tokens=1 << 20)
    tok = small.tokenizer.tokenize(TEXTS)
    a = small.embed(tok, pooling=pooling, normalize_output=True)
    b = huge.embed(tok, pooling=pooling, normalize_output=True)
    assert np.abs(a - b).max() < 1e-6


@pytest.mark.parametrize("fused", [None, False])
def test_out_of_memory_splits_the_batch_and_gives_the_same_vectors(tiny, monkeypatch, fused):
    enc = encoder(tiny, batch_tokens=1 << 20, fused=fused)  # one batch of 8 rows unless it is split
    tok = enc.tokenizer.tokenize(TEXTS)
    clean = enc.embed(tok, pooling="mean", normalize_output=True)

    seen = wrap_forward(monkeypatch, enc, max_rows=3)
    split = enc.embed(tok, pooling="mean", normalize_output=True)

    assert len(seen.refused) >= 3  # 8 rows refused, then 4 and 4, then run as 2 + 2 + 2 + 2
    assert max(rows for rows, _ in seen.shapes) <= 3
    assert sorted(seen.rows) == sorted(tok.ids)
    assert np.abs(split - clean).max() < 1e-6


@pytest.mark.parametrize("fused", [None, False])
def test_out_of_memory_splits_token_level_batches_and_gives_the_same_token_vectors(tiny, monkeypatch, fused):
    """`--pooling none`: every token's vector, split like pooled batches."""
    enc = encoder(tiny, batch_tokens=1 << 20, fused=fused)
    tok = enc.tokenizer.tokenize(TEXTS)
    clean = enc.token_states(tok, layers=(-2, -1), layer_mode="concat")

    seen = wrap_forward(monkeypatch, enc, max_rows=3)
    split = enc.token_states(tok, layers=(-2, -1), layer_mode="concat")

    assert len(seen.refused) >= 3 and max(rows for rows, _ in seen.shapes) <= 3
    assert [a.shape for a in split] == [(n, 64) for n in tok.n_tokens]  # two layers of 32, concatenated
    assert max(np.abs(a - b).max() for a, b in zip(split, clean)) < 1e-6


def test_after_an_out_of_memory_later_batches_are_split_before_they_are_tried(tiny, monkeypatch):
    enc = encoder(tiny, batch_tokens=1 << 20)
    tok = enc.tokenizer.tokenize(TEXTS)
    seen = wrap_forward(monkeypatch, enc, max_rows=3)
    first = enc.embed(tok, pooling="mean")
    refused = len(seen.refused)
    assert refused >= 2 and enc.memory.splits == refused and enc.memory.budget is not None
    ran = len(seen.shapes)
    again = enc.embed(tok, pooling="mean")  # the next shard on this encoder
    assert len(seen.refused) == refused  # nothing as big as what failed was tried again
    assert all(rows * width <= enc.memory.budget or rows == 1 for rows, width in seen.shapes[ran:])
    assert np.abs(again - first).max() < 1e-6


def test_a_single_row_that_does_not_fit_is_a_one_line_host_error_not_retried(tiny, monkeypatch):
    enc = encoder(tiny, batch_tokens=1 << 20)
    wrap_forward(monkeypatch, enc, max_rows=0)
    with pytest.raises(HostError) as failed:
        enc.embed(enc.tokenizer.tokenize(TEXTS[:3]), pooling="mean")
    message = str(failed.value)
    assert "\n" not in message and "does not fit in the free memory of cpu even alone" in message
    assert "--max-length" in message and failed.value.exit_code == 1
    assert not is_transient(None, None, Failed(data=failed.value))  # Prefect's task retries skip it


@pytest.mark.parametrize(
    ("pooling", "layers", "layer_mode"),
    [
        ("mean", (-1,), "mean"),
        ("cls", (-1,), "mean"),
        ("max", (-2, -1), "concat"),
        ("mean_max", (-2, -1), "mean"),
    ],
)
def test_fused_forward_matches_transformers(tiny, pooling, layers, layer_mode):
    fast, plain = encoder(tiny), encoder(tiny, fused=False)
    assert fast._fused is not None and plain._fused is None
    tok = fast.tokenizer.tokenize(TEXTS)
    kw = {"pooling": pooling, "layers": layers, "layer_mode": layer_mode}
    assert np.abs(fast.embed(tok, **kw) - plain.embed(tok, **kw)).max() < 1e-5


def test_a_row_without_tokens_gives_zeros_not_nan(tiny):
    tok = Tokenized([[], [101, 2023, 102]], np.array([0, 3], dtype=np.int32), np.zeros(2, dtype=bool))
    out = encoder(tiny).embed(tok, pooling="mean")
    assert np.isfinite(out).all()
    assert not out[0].any() and out[1].any()


@pytest.mark.parametrize("fused", [None, False])
def test_bf16_is_close_to_fp32(tiny, fused):
    fp32, bf16 = encoder(tiny, fused=fused), encoder(tiny, precision="bf16", fused=fused)
    tok = fp32.tokenizer.tokenize(TEXTS)
    a = fp32.embed(tok, pooling="mean", normalize_output=True)
    b = bf16.embed(tok, pooling="mean", normalize_output=True)
    assert b.dtype == np.float32
    cosine = (a * b).sum(1)
    assert cosine.min() > 0.99
    assert np.abs(a - b).max() > 0  # really computed in another precision


def test_models_the_fused_forward_does_not_cover_run_through_transformers(tmp_path, bundled_model, tiny):
    from tests.conftest import build_tiny_bert

    path = build_tiny_bert(tmp_path / "silu", bundled_model)
    config = path / "config.json"
    config.write_text(config.read_text().replace('"gelu"', '"silu"'))
    tokenizer, model = load_model(str(path), "cpu", "fp32")
    assert not fused_module.fusable(model, torch.float32)
    enc = Encoder(tokenizer, model, device="cpu", precision="fp32", max_length=64)
    assert enc._fused is None
    with pytest.raises(ValueError, match="no fused CPU forward"):
        Encoder(tokenizer, model, device="cpu", precision="fp32", max_length=64, fused=True)
    out = enc.embed(enc.tokenizer.tokenize(TEXTS[:3]), pooling="mean")
    assert out.shape == (3, 32) and np.isfinite(out).all()


def test_threads_follow_the_cores_given(monkeypatch):
    n = cpu_threads()
    assert 1 <= n <= len(__import__("os").sched_getaffinity(0))
    before = torch.get_num_threads()
    try:
        monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
        torch.set_num_threads(n + 3)
        use_cpu_threads()
        assert torch.get_num_threads() == n
        monkeypatch.setenv("OMP_NUM_THREADS", "1")  # the user's explicit choice wins
        torch.set_num_threads(n + 3)
        use_cpu_threads()
        assert torch.get_num_threads() == n + 3
    finally:
        torch.set_num_threads(before)
