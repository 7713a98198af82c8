#!/usr/bin/env bash
# The README's worked example: the study's section 3.3 grid (generator residual blocks 8/16/32) at toy
# scale on T91 + BSD200, two seeds, scored on Set5 and Set14. A few CPU minutes.
#   docs/sweep-example/run.sh DATA_ROOT WORK_DIR     (DATA_ROOT holds train/T91, train/BSD200, benchmarks/Set5|Set14)
set -euo pipefail
data=${1:?DATA_ROOT}
work=${2:?WORK_DIR}
here=$(cd "$(dirname "$0")" && pwd)

[ -f "$work/t291/manifest.json" ] || \
    srtool prepare folder "$data/train/T91" "$data/train/BSD200" --out "$work/t291" --no-progress
srtool sweep --preset srresnet --data "$work/t291" --out "$work/blocks" \
    --grid model.generator.n_blocks=8,16,32 --seeds 0,1 --jobs 2 --no-progress \
    --set model.generator.n_feats=16 --set model.generator.tail_kernel=3 \
    --set model.generator.batch_norm=false --set model.generator.trunk_batch_norm=false \
    --set train.batch_size=8 --set train.hr_crop=48 --set train.lr=2e-3 --set train.ema_decay=0.9 \
    --set train.epochs=1 --set train.iters_per_epoch=300 --set train.num_workers=0 \
    --set log.every=10 --set validation.every=100 --set checkpoint.every=100 \
    --set "validation.datasets=['$data/benchmarks/Set5']" \
    --eval "$data/benchmarks/Set5" --eval "$data/benchmarks/Set14"
cp "$work/blocks/report.md" "$work/blocks/curves.png" "$work/blocks/comparison.png" "$here/"
