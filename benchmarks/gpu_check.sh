#!/usr/bin/env bash
# One-shot GPU session script (the device time is short, ~15 min in all): the CUDA tests, the training
# throughput benchmark before/after the sync-free step and CUDA graphs, then the remaining minutes train
# the next bundled `compact` model with `srtool prepare` + `srtool train` on T91 + BSD200 only, and
# `srtool eval` scores it on Set5/Set14 next to the current bundled model.
# Everything it reports lands in $OUT. Expects, carried beside the checkout (see benchmarks/README.md):
#   .whl/      pydantic, platformdirs, pypng wheels for the GPU host's Python
#   .gpudata/  T91/ and BSD200/ training images, bench/Set5 and bench/Set14 (HR + LR)
# Usage on the GPU host:  bash benchmarks/gpu_check.sh [TRAIN_SECONDS]
set -u
TRAIN_SECONDS=${1:-240}
OUT=${OUT:-/tmp/gpu_out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD
SR="python3 -m srtool"
log() { echo "[$(date +%T)] $*" | tee -a "$OUT/summary.txt"; }

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"
python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name())" | tee -a "$OUT/gpu.txt"

# Order (issue 13): the checks first, then the remaining minutes train the next bundled model.
log "CUDA tests (incl. the CUDA-graph step vs eager, with torch's sync debug mode)"
timeout 150 python3 -m pytest -q -p no:cacheprovider tests/test_cuda.py > "$OUT/cuda_tests.log" 2>&1
tail -3 "$OUT/cuda_tests.log" | tee -a "$OUT/summary.txt"

log "train throughput before/after (full presets, batch 16, crop 128, bf16; warm-up + compile excluded)"
# before = per-step host read (the old step); eager = sync-free step; graphs = + CUDA graphs (reduce-overhead)
timeout 240 python3 benchmarks/bench_train.py --gpu --steps 20 --presets srgan esrgan --modes before eager graphs \
  > "$OUT/bench_train_gpu.log" 2>&1
tail -8 "$OUT/bench_train_gpu.log" | tee -a "$OUT/summary.txt"

log "prepare T91 + BSD200"
$SR prepare folder .gpudata/T91 .gpudata/BSD200 --out /tmp/t291 --scale 4 --workers 16 > "$OUT/prepare.log" 2>&1 || { log "prepare failed"; tail -5 "$OUT/prepare.log"; }

COMMON=(--preset compact --data /tmp/t291 --device cuda --no-progress
        --set "validation.datasets=['.gpudata/bench/Set5']" --set train.num_workers=8)
# the faster trainer: CUDA graphs when the probe shows they work, else the sync-free eager step
FAST=(--set train.compile=true --set train.compile_mode=reduce-overhead)

log "probe: 300 iterations to measure it/s (CUDA graphs)"
timeout 120 $SR train "${COMMON[@]}" "${FAST[@]}" --out /tmp/probe --set train.iters_per_epoch=300 \
  --set validation.every=300 --set checkpoint.every=300 --set log.every=50 > "$OUT/probe.log" 2>&1 || {
  log "graphs probe failed (see probe.log): eager"; FAST=(); rm -rf /tmp/probe
  timeout 90 $SR train "${COMMON[@]}" --out /tmp/probe --set train.iters_per_epoch=300 \
    --set validation.every=300 --set checkpoint.every=300 --set log.every=50 > "$OUT/probe_eager.log" 2>&1; }
RATE=$(python3 - <<'PY'
import json
recs = [json.loads(l) for l in open("/tmp/probe/log.jsonl") if '"train"' in l]
print(max(r["it_per_s"] for r in recs[1:]) if len(recs) > 1 else 0)
PY
)
ITERS=$(python3 -c "r=float('${RATE:-0}'); print(max(1000, min(200000, int(r * $TRAIN_SECONDS) // 1000 * 1000)))")
log "probe rate ${RATE} it/s -> training ${ITERS} iterations"

log "train compact (T91 + BSD200 only)"
timeout $((TRAIN_SECONDS + 120)) $SR train "${COMMON[@]}" "${FAST[@]}" --out /tmp/compact \
  --set train.iters_per_epoch="$ITERS" --set validation.every=$((ITERS / 4)) --set checkpoint.every=$((ITERS / 4)) \
  --set log.every=100 > "$OUT/train.log" 2>&1
log "train exit $?"
cp /tmp/compact/exports/best.safetensors /tmp/compact/exports/best.json /tmp/compact/curves.png \
   /tmp/compact/log.jsonl "$OUT/" 2>/dev/null
tail -3 "$OUT/train.log" | tee -a "$OUT/summary.txt"

log "eval the candidate (bar: Set5 >= 31.74 dB, Set14 >= 28.26 dB, Y protocol; README only from this output)"
timeout 90 $SR eval -m /tmp/compact/exports/best.safetensors -m default -d .gpudata/bench/Set5 -d .gpudata/bench/Set14 \
  --device cuda --json "$OUT/eval_candidate.json" > "$OUT/eval_candidate.log" 2>&1
tail -12 "$OUT/eval_candidate.log" | tee -a "$OUT/summary.txt"
log "done"
