"""throughput.py's rows 1 and 2: sentence-transformers `encode` and bertflow's engine, taking turns.

They take turns on slices of ~1,000 documents, so a neighbour's job on a shared machine slows all
of them alike and the ratios hold.
"""

from __future__ import annotations

from collections.abc import Callable

from common import CpuMeter, say
from throughput_report import Bench

Runner = Callable[[list[str]], object]


def st_runners(bench: Bench) -> dict[str, Runner]:
    """sentence-transformers `encode` (batch 32) in fp32; on a GPU in fp16 too, with and without cuDNN attention."""
    import torch
    from sentence_transformers import SentenceTransformer

    path, device = bench.config.model.path, bench.args.device

    def load(dtype):  # dtype given: left alone, transformers loads weights in the dtype they were saved in.
        model = SentenceTransformer(path, device=device, model_kwargs={"dtype": dtype})
        model.max_seq_length = bench.args.max_length
        return model

    def encoder(model) -> Runner:
        return lambda xs: model.encode(xs, batch_size=32, convert_to_numpy=True)

    runners = {"st": encoder(load(torch.float32))}
    if device == "cuda":  # on a GPU, sentence-transformers in half precision too: the fair peer of fp16
        st16 = load(torch.float16)
        runners["st16"] = encoder(st16)
        from torch.nn.attention import sdpa_kernel

        from bertflow.model.encoder import _CUDA_ATTENTION

        def st16_no_cudnn(xs):  # the attention kernels bertflow picks on CUDA, for a like-for-like row
            with sdpa_kernel(_CUDA_ATTENTION):
                return st16.encode(xs, batch_size=32, convert_to_numpy=True)

        runners["st16_no_cudnn"] = st16_no_cudnn
    return runners


def engine_runners(bench: Bench, tokenizer, model) -> tuple[dict[str, Runner], dict]:
    """bertflow's engine (tokenize + embed, in memory) per precision the device has a matmul peak for."""
    from bertflow.model.encoder import Encoder
    from bertflow.model.loading import load_model

    config, device, max_length = bench.config, bench.args.device, bench.args.max_length
    runners, encoders = {}, {}
    for precision in ("fp32", "bf16", "fp16"):
        if precision not in bench.peak:
            if precision == "bf16":
                say(f"engine {precision}: skipped, this CPU has no bf16 matmul support")
            continue
        weights = (
            model if device == "cpu" or precision == "fp32" else load_model(config.model.path, device, precision)[1]
        )
        enc = Encoder(tokenizer, weights, device=device, precision=precision, max_length=max_length)
        encoders[precision] = enc
        runners[precision] = lambda xs, enc=enc: enc.embed(
            enc.tokenizer.tokenize(xs), pooling=config.pooling, normalize_output=config.normalize
        )
    return runners, encoders


def take_turns(bench: Bench, runners: dict[str, Runner], engines: list[str], hidden: int) -> tuple[dict, dict, int]:
    """Every runner on every slice, first one rotating: (embeddings, [seconds, others' CPU s], slices) per runner."""
    import numpy as np

    texts = bench.texts
    for run in runners.values():
        run(texts[:64])  # warm-up, not timed
    order = np.random.default_rng(0).permutation(len(texts))  # slices alike in length
    slices = np.array_split(order, max(1, round(len(texts) / 1000)))
    outputs = {k: np.empty((len(texts), hidden), dtype=np.float32) for k in runners}
    spent = {k: [0.0, 0.0] for k in runners}  # seconds, other processes' CPU seconds
    say(f"sentence-transformers and engine ({', '.join(engines)}) in turns on {len(slices)} slices ...")
    for k, rows in enumerate(slices):
        part = [texts[i] for i in rows]
        names = list(runners)
        for name in names[k % len(names) :] + names[: k % len(names)]:  # rotate who goes first
            with CpuMeter() as m:
                outputs[name][rows] = runners[name](part)
            spent[name][0] += m.seconds
            spent[name][1] += m.others_cores * m.seconds
    return outputs, spent, len(slices)


def engine_rows(bench: Bench, tokenizer, model) -> tuple[dict, dict, object]:
    """Rows 1 and 2, recorded in `bench`; returns the encoders, every runner's embeddings, and ST's (the reference)."""
    runners = st_runners(bench)
    engines, encoders = engine_runners(bench, tokenizer, model)
    runners.update(engines)
    outputs, spent, n_slices = take_turns(bench, runners, list(encoders), model.config.hidden_size)
    del runners  # the sentence-transformers models go before the flow rows
    ref = outputs["st"]
    secs, others = spent["st"]
    bench.add("sentence-transformers encode (batch 32)", "fp32", secs, others / secs)
    for key, name in (
        ("st16", "sentence-transformers encode (batch 32)"),
        ("st16_no_cudnn", "sentence-transformers encode (batch 32), cuDNN attention off as in bertflow"),
    ):
        if key in outputs:
            secs, others = spent[key]
            bench.add(name, "fp16", secs, others / secs, (outputs[key], ref, "sentence-transformers fp32"))
    for precision, enc in encoders.items():
        base, against = (ref, "sentence-transformers") if precision == "fp32" else (outputs["fp32"], "engine fp32")
        secs, others = spent[precision]
        extra = {"fused": enc._fused is not None, "batch_tokens": enc.batch_tokens, "slices": n_slices}
        vs = (outputs[precision], base, against)
        bench.add("bertflow engine (tokenize + embed)", precision, secs, others / secs, vs, extra)
    return encoders, outputs, ref
