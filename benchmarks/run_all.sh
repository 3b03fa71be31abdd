#!/usr/bin/env bash
# Regenerate every speed/memory/quality section of BENCHMARKS.md, one script after the other
# (never in parallel: on 2 cores anything running beside a benchmark slows torch 2-15x).
#   bash benchmarks/run_all.sh            # all of them (about 40 min on 2 quiet cores)
#   bash benchmarks/run_all.sh flow onnx  # only these
# The paper's experiments are separate: benchmarks/paper_experiments.py (see docs/experiments.md).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
export PYTHONUNBUFFERED=1
DATA=${BENCH_DATA:-results/bench-data}
all=(synth loader flow features masks metrics onnx latency)
todo=("${@:-${all[@]}}")
for b in "${todo[@]}"; do
  echo "=== $b ($(date -u +%H:%M:%S))"
  case $b in
    synth)    $PY benchmarks/bench_synth.py ;;
    loader)   $PY benchmarks/bench_loader.py ;;
    flow)     $PY benchmarks/bench_flow.py ;;
    features) $PY benchmarks/bench_features.py ;;
    masks)
      [ -f "$DATA/realiad_jsons/bottle_cap.json" ] || $PY -m multiflow synth --out "$DATA" \
          --train 4 --test-good 4 --test-defect 18 --size 256 --seed 0 --workers 2
      $PY benchmarks/bench_masks.py --data "$DATA" --isnet-limit 4 ;;
    metrics)  $PY -m benchmarks.bench_metrics --samples 760 ;;
    onnx)     $PY benchmarks/bench_onnx.py ;;
    latency)  $PY benchmarks/bench_latency.py ;;
    *) echo "unknown benchmark $b" >&2; exit 2 ;;
  esac
done
