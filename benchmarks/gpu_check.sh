#!/usr/bin/env bash
# One-shot GPU session script (the device time is short): trains the bundled `compact` model with
# `srtool prepare` + `srtool train` only, then runs the CUDA tests and the GPU throughput benchmarks.
# Everything it reports lands in $OUT. Expects, carried beside the checkout (see benchmarks/README.md):
#   .whl/      pydantic, platformdirs, pypng wheels for the GPU host's Python
#   .gpudata/  T91/ and BSD200/ training images, bench/Set5 (HR + LR) for validation
# Usage on the GPU host:  bash benchmarks/gpu_check.sh [TRAIN_SECONDS]
set -u
TRAIN_SECONDS=${1:-210}
OUT=${OUT:-/tmp/gpu_out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD
SR="python3 -m srtool"
log() { echo "[$(date +%T)] $*" | tee -a "$OUT/summary.txt"; }

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"
python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name())" | tee -a "$OUT/gpu.txt"

log "prepare T91 + BSD200"
$SR prepare folder .gpudata/T91 .gpudata/BSD200 --out /tmp/t291 --scale 4 --workers 16 > "$OUT/prepare.log" 2>&1 || { log "prepare failed"; tail -5 "$OUT/prepare.log"; }

COMMON=(--preset compact --data /tmp/t291 --device cuda --no-progress
        --set "validation.datasets=['.gpudata/bench/Set5']" --set train.num_workers=8)

log "probe: 300 iterations to measure it/s"
timeout 90 $SR train "${COMMON[@]}" --out /tmp/probe --set train.iters_per_epoch=300 \
  --set validation.every=300 --set checkpoint.every=300 --set log.every=50 > "$OUT/probe.log" 2>&1
RATE=$(python3 - <<'PY'
import json
recs = [json.loads(l) for l in open("/tmp/probe/log.jsonl") if '"train"' in l]
print(max(r["it_per_s"] for r in recs[1:]) if len(recs) > 1 else 0)
PY
)
ITERS=$(python3 -c "r=float('${RATE:-0}'); print(max(1000, min(60000, int(r * $TRAIN_SECONDS) // 1000 * 1000)))")
log "probe rate ${RATE} it/s -> training ${ITERS} iterations"

log "train compact"
timeout $((TRAIN_SECONDS + 90)) $SR train "${COMMON[@]}" --out /tmp/compact --set train.iters_per_epoch="$ITERS" \
  --set validation.every=$((ITERS / 4)) --set checkpoint.every=$((ITERS / 4)) --set log.every=100 > "$OUT/train.log" 2>&1
log "train exit $?"
cp /tmp/compact/exports/best.safetensors /tmp/compact/exports/best.json /tmp/compact/curves.png \
   /tmp/compact/log.jsonl "$OUT/" 2>/dev/null
tail -3 "$OUT/train.log" | tee -a "$OUT/summary.txt"

log "CUDA tests"
timeout 100 python3 -m pytest -q -p no:cacheprovider tests/test_cuda.py > "$OUT/cuda_tests.log" 2>&1
tail -3 "$OUT/cuda_tests.log" | tee -a "$OUT/summary.txt"

log "train throughput (full presets, batch 16, crop 128, bf16)"
timeout 70 python3 benchmarks/bench_train.py --gpu --steps 10 > "$OUT/bench_train_gpu.log" 2>&1
tail -12 "$OUT/bench_train_gpu.log" | tee -a "$OUT/summary.txt"
log "upscale throughput (CUDA section of bench_upscale)"
timeout 60 python3 benchmarks/bench_upscale.py --quick --json "$OUT/bench_upscale.json" > "$OUT/bench_upscale.log" 2>&1
grep -A20 "^CUDA" "$OUT/bench_upscale.log" | tee -a "$OUT/summary.txt"
log "done"
