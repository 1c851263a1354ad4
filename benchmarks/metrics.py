"""throughput.py's yardsticks: the matmul peak measured on the spot, a forward's FLOPs, top-10 overlap.

numpy and torch are imported inside the functions: throughput.py fixes the thread count first.
"""

from __future__ import annotations

import time

from common import say


def matmul_peak(dtype, hidden: int, intermediate: int, device: str = "cpu") -> float:
    """Best GFLOP/s of torch matmuls (MKL and oneDNN on CPU) on this model's own shapes, 2048 rows
    (on a GPU 65,536 rows, the default token budget there)."""
    import torch

    if device == "cuda":
        return cuda_matmul_peak(dtype, hidden, intermediate)
    best = 0.0
    with torch.inference_mode():
        for k, n in ((hidden, 3 * hidden), (hidden, intermediate), (intermediate, hidden)):
            x = torch.randn(2048, k).to(dtype)
            w = (torch.randn(n, k) * 0.05).to(dtype)
            for fn in (
                lambda x=x, w=w: x @ w.t(),
                lambda x=x, w=w: torch.ops.mkldnn._linear_pointwise(x, w, None, "none", [], ""),
            ):
                fn()
                t = time.perf_counter()
                reps = 0
                while time.perf_counter() - t < 0.5:
                    fn()
                    reps += 1
                best = max(best, 2 * 2048 * k * n * reps / (time.perf_counter() - t) / 1e9)
    return best


def cuda_matmul_peak(dtype, hidden: int, intermediate: int, rows: int = 65536) -> float:
    import torch

    best = 0.0
    with torch.inference_mode():
        for k, n in ((hidden, 3 * hidden), (hidden, intermediate), (intermediate, hidden)):
            x = torch.randn(rows, k, device="cuda").to(dtype)
            w = (torch.randn(n, k, device="cuda") * 0.05).to(dtype)
            for _ in range(3):
                x @ w.t()
            torch.cuda.synchronize()
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            for _ in range(50):
                x @ w.t()
            end.record()
            torch.cuda.synchronize()
            best = max(best, 2 * rows * k * n * 50 / (start.elapsed_time(end) / 1e3) / 1e9)
    return best


def model_flops(n_tokens, config) -> float:
    """Matmul FLOPs of one forward over these (unpadded) sequences: projections, FFN, attention."""
    import numpy as np

    h, i, layers = config.hidden_size, config.intermediate_size, config.num_hidden_layers
    lengths = np.asarray(n_tokens, dtype=np.float64)
    per_token = 2 * (4 * h * h + 2 * h * i)  # Q, K, V, output projection; FFN up and down
    attention = 4 * h * (lengths**2).sum()  # QK^T and AV per sequence
    return layers * (per_token * lengths.sum() + attention)


def top10_overlap(a, b) -> float:
    """Mean share of each row's 10 nearest neighbours (cosine, self excluded) that a and b agree on."""
    import numpy as np

    def neighbours(x):
        x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
        sim = x @ x.T
        np.fill_diagonal(sim, -np.inf)
        return np.argpartition(-sim, 10, axis=1)[:, :10]

    na, nb = neighbours(a), neighbours(b)
    return float(np.mean([len(set(x) & set(y)) / 10 for x, y in zip(na, nb)]))


def matmul_peaks(device: str, config, flops_per_token: float) -> dict[str, float]:
    """GFLOP/s per precision this device runs (fp32; bf16 where supported; fp16 on a GPU), printed."""
    import torch

    dtypes = {"fp32": torch.float32, "bf16": torch.bfloat16}
    if device == "cuda":
        dtypes["fp16"] = torch.float16
    elif not torch.ops.mkldnn._is_mkldnn_bf16_supported():
        del dtypes["bf16"]
    peak = {p: matmul_peak(d, config.hidden_size, config.intermediate_size, device) for p, d in dtypes.items()}
    for p, g in peak.items():
        say(
            f"matmul peak {p}: {g:.0f} GFLOP/s = {g * 1e9 / flops_per_token:,.0f} tokens/s of this model on this corpus"
        )
    return peak
