"""Where a GPU's time goes in bertflow's engine: GPU busy share, padding, achieved TFLOP/s (issue 17's baseline).

For the bundled all-MiniLM-L6-v2 and a random-initialised bert-base-sized BERT (`BertConfig()`:
12 layers, 768 wide, same vocabulary; speed only), in fp16 and bf16, on the sample corpus's
docstrings repeated to `--docs`: tokenization (CPU) timed on its own, then `Encoder.embed` timed
end to end after a warm-up, with the GPU's utilisation sampled every 20 ms through NVML
(`torch.cuda.utilization`: the share of each sample period in which a kernel ran). Reports
documents/s, tokens/s, the busy share, padded/real tokens of the token-budget batches, and the
model FLOPs done per second (`metrics.model_flops`: projections, FFN and attention over the real
tokens) against the matmul peak measured in the same run on the model's own shapes in the same
precision (`metrics.cuda_matmul_peak`, 65,536 rows), and against the card's datasheet dense peak.

Needs only torch, transformers, tokenizers, safetensors, pydantic and nvidia-ml-py, so it runs on a
bare GPU host beside the repository (PYTHONPATH=.):

    python benchmarks/gpu_engine.py --model PATH_TO_MINILM [--docs 20000] [--out DIR] [--peak-tflops 989]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import torch
from corpus import build_tiny_bert
from metrics import cuda_matmul_peak, model_flops

HERE = Path(__file__).resolve().parent
SAMPLE = HERE.parent / "data" / "sample" / "docs.jsonl"


class Busy:
    """Samples the GPU's utilisation (NVML) in a thread while the block runs; `share` is the mean."""

    def __init__(self, every: float = 0.02) -> None:
        self.every, self.samples, self._stop = every, [], threading.Event()

    def __enter__(self) -> Busy:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(self.every):
            self.samples.append(torch.cuda.utilization())

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    @property
    def share(self) -> float:
        return float(np.mean(self.samples)) / 100 if self.samples else float("nan")


def measure(
    name: str, path: Path, precision: str, texts: list[str], max_length: int, peak: float, budget: int | None = None
) -> dict:
    from bertflow.model.encoder import Encoder
    from bertflow.model.loading import load_model
    from bertflow.text.batching import token_budget_batches

    tokenizer, model = load_model(str(path), "cuda", precision)  # type: ignore[arg-type]
    enc = Encoder(tokenizer, model, device="cuda", precision=precision, max_length=max_length, batch_tokens=budget)  # type: ignore[arg-type]
    started = time.perf_counter()
    tok = enc.tokenizer.tokenize(texts)
    tokenize_s = time.perf_counter() - started
    enc.embed(enc.tokenizer.tokenize(texts[:2000]), pooling="mean")  # warm-up: kernels, allocator
    torch.cuda.synchronize()
    with Busy() as busy:
        started = time.perf_counter()
        enc.embed(tok, pooling="mean", normalize_output=True)
        torch.cuda.synchronize()
        embed_s = time.perf_counter() - started
    real = int(tok.n_tokens.sum())
    batches = token_budget_batches(tok.n_tokens, enc.batch_tokens)
    padded = int(sum(len(b) * int(tok.n_tokens[b].max()) for b in batches))
    cfg = model.config
    tflops = model_flops(tok.n_tokens, cfg) / embed_s / 1e12
    dtype = torch.float16 if precision == "fp16" else torch.bfloat16
    measured = cuda_matmul_peak(dtype, cfg.hidden_size, cfg.intermediate_size) / 1e3  # TFLOP/s, this card, now
    row = {
        "model": name,
        "precision": precision,
        "documents": len(texts),
        "real_tokens": real,
        "batch_tokens": enc.batch_tokens,
        "batches": len(batches),
        "padded_over_real": round(padded / real, 4),
        "tokenize_s": round(tokenize_s, 3),
        "embed_s": round(embed_s, 3),
        "documents_per_s": round(len(texts) / embed_s, 1),
        "tokens_per_s": round(real / embed_s, 1),
        "gpu_busy": round(busy.share, 3),
        "busy_samples": len(busy.samples),
        "tflops": round(tflops, 2),
        "matmul_peak_tflops": round(measured, 1),
        "share_of_peak": round(tflops / measured, 4),  # of the matmul peak measured above
        "share_of_datasheet": round(tflops / peak, 4),
    }
    print(json.dumps(row), flush=True)
    del enc, model
    torch.cuda.empty_cache()
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, required=True, help="the bundled all-MiniLM-L6-v2 directory")
    parser.add_argument("--docs", type=int, default=20_000)
    parser.add_argument("--out", type=Path, default=HERE / "results")
    parser.add_argument(
        "--peak-tflops",
        type=float,
        default=989.0,
        help="the datasheet dense fp16 peak (H100/H200 SXM), beside the measured one",
    )
    parser.add_argument("--budgets", default="", help="also MiniLM fp16 at these --batch-tokens, comma-separated")
    args = parser.parse_args()
    lines = [json.loads(line)["text"] for line in SAMPLE.read_text().splitlines()]
    texts = (lines * (args.docs // len(lines) + 1))[: args.docs]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        base = build_tiny_bert(Path(tmp) / "bert-base", layers=12, hidden=768, heads=12, tokenizer=args.model)
        for name, path, max_length in (("all-MiniLM-L6-v2", args.model, 256), ("bert-base (random)", base, 512)):
            for precision in ("fp16", "bf16"):
                rows.append(measure(name, path, precision, texts, max_length, args.peak_tflops))
        for budget in [int(b) for b in args.budgets.split(",") if b]:
            rows.append(measure("all-MiniLM-L6-v2", args.model, "fp16", texts, 256, args.peak_tflops, budget))
    head = (
        "| model | precision | batch tokens | docs/s | tokens/s | GPU busy | padded/real | TFLOP/s "
        "| matmul peak | of peak | of datasheet | tokenize s | embed s |"
    )
    table = [head, "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        table.append(
            f"| {r['model']} | {r['precision']} | {r['batch_tokens']:,} | {r['documents_per_s']:,.0f} | {r['tokens_per_s']:,.0f} | "
            f"{r['gpu_busy']:.0%} | {r['padded_over_real']:.3f} | {r['tflops']:.1f} | {r['matmul_peak_tflops']:.0f} | "
            f"{r['share_of_peak']:.1%} | {r['share_of_datasheet']:.1%} | "
            f"{r['tokenize_s']:.2f} | {r['embed_s']:.2f} |"
        )
    device = torch.cuda.get_device_name(0)
    md = f"{device}, torch {torch.__version__}, {args.docs:,} docstrings of data/sample (repeated)\n\n" + "\n".join(
        table
    )
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "gpu_engine.json").write_text(
        json.dumps({"device": device, "torch": torch.__version__, "rows": rows}, indent=2) + "\n"
    )
    (args.out / "gpu_engine.md").write_text(md + "\n")
    print(md)


if __name__ == "__main__":
    main()
