#!/usr/bin/env bash
# Imagewoof, full protocol (9,025 training images, 128 px, 5 epochs, ghostnet_100 from scratch): `ghostnet train`
# and timm's own train.py with the same settings, started together, one thread each, so that both share the machine
# alike. Wall times go to OUT/<run>.wall_s; results in docs/benchmarks.md ("Imagewoof, full protocol").
#
#   SEED=0 benchmarks/imagewoof_vs_timm.sh [OUT]   (needs the timm extra; data from $GHOSTNET_DATA or ../shared/data)
#
# What both runs share: AdamW lr 3e-3, wd 0.05 (not on norms and biases), batch 64, 1 warmup epoch from 1e-5 then
# cosine to 0 counted from step 0 and updated every step (timm: --sched-on-updates; ours: --cosine-from-start;
# tests/test_train.py checks the two schedules are equal at every step), label smoothing 0.1, dropout 0.2 before
# the classifier, RandomResizedCrop 128 with scale 0.35-1 (bilinear) and flip, no colour jitter; evaluation resizes
# to 146 and centre-crops 128 (crop 0.875), on all 3,929 validation images after every epoch; seed $SEED, 1 worker.
set -euo pipefail
cd "$(dirname "$0")/.."
DATA="${GHOSTNET_DATA:-../shared/data}/imagewoof"
OUT="${1:-benchmarks/results/imagewoof_vs_timm}"
TIMM_TRAIN="${TIMM_TRAIN:-../shared/peers/timm/train.py}"
mkdir -p "$OUT"
export OMP_NUM_THREADS=1

timed() {  # timed NAME COMMAND...: run COMMAND, its output to OUT/NAME.log, its wall time to OUT/NAME.wall_s
    local name=$1 start
    shift
    start=$(date +%s.%N)
    "$@" > "$OUT/$name.log" 2>&1
    echo "$(date +%s.%N) - $start" | bc > "$OUT/$name.wall_s"
}

timed ours ghostnet train --recipe imagewoof_ghostnet --data "$DATA" --workers 1 --seed ${SEED:-0} \
    --interpolation bilinear --train-interpolation bilinear --cosine-from-start --warmup-lr 1e-5 \
    --output "$OUT/ours" --no-progress &
timed timm python "$TIMM_TRAIN" --data-dir "$DATA" --train-split train --val-split val --model ghostnet_100 \
    --num-classes 10 --img-size 128 --crop-pct 0.875 --interpolation bilinear --train-interpolation bilinear \
    --scale 0.35 1 --hflip 0.5 --color-jitter 0 --epochs 5 -b 64 --opt adamw --lr 3e-3 --weight-decay 0.05 \
    --sched cosine --sched-on-updates --warmup-epochs 1 --warmup-lr 1e-5 --min-lr 0 --cooldown-epochs 0 \
    --smoothing 0.1 --drop 0.2 --device cpu --workers 1 --seed ${SEED:-0} --output "$OUT/timm" --log-interval 50 &
wait

grep -h "best top-1" "$OUT"/ours.log || true
grep -h "Best metric" "$OUT"/timm.log || true
