#!/usr/bin/env bash
# fine-tune benchmark (a program, not a test): one fine-tuning epoch (block5 + head, 100 steps of
# 20 images) at 64x64 on the CPU in plain mode (augment, frozen blocks 1-4, then block5 + head)
# against cached-trunk mode (block4_pool of K augmented passes from extract-features, then block5
# + head), medians of RUNS runs each; then validation and test accuracy of both modes with a
# small budget (1 head epoch + 2 fine-tuning epochs) on data/fashion-mnist-small.
#
# Usage: crates/fine-tune/bench/fine_tune_bench.sh   (env: WEIGHTS, OUT, RUNS, PASSES, SIZE,
# SKIP_ACCURACY=1 for the timings only)
set -euo pipefail
cd "$(git rev-parse --show-toplevel)"
eval "$(cargo xtask libtorch)"
cargo build --release --quiet -p fine-tune -p extract-features
WEIGHTS=${WEIGHTS:-$(cargo xtask weights)}
OUT=${OUT:-runs/bench-fine-tune}
RUNS=${RUNS:-3}
PASSES=${PASSES:-5}
SIZE=${SIZE:-64}
DATA=data/fashion-mnist-small
FT=target/release/fine-tune
common=(--data "$DATA" --weights "$WEIGHTS" --input-size "$SIZE" --device cpu --seed 0)
export RUST_LOG=${RUST_LOG:-warn}

median() { sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

echo "== trunk cache: block4_pool at ${SIZE}x${SIZE}, $PASSES augmented passes of train (plus plain validation/test)"
start=$(date +%s.%N)
target/release/extract-features --data "$DATA" --weights "$WEIGHTS" --layer block4_pool --input-size "$SIZE" \
  --augment-passes "$PASSES" --device cpu --cache-dir "$OUT/cache" --out "$OUT/extract"
echo "extraction: $(echo "$(date +%s.%N) - $start" | bc) s"
cached=(--trunk-cache "$OUT/extract/features.json")

echo "== one fine-tuning epoch (100 steps x 20 images, validation on 1000 images included), $RUNS runs per mode, interleaved"
rm -f "$OUT"/epoch-plain.txt "$OUT"/epoch-cached.txt
for r in $(seq "$RUNS"); do
  for mode in plain cached; do
    extra=()
    [ "$mode" = cached ] && extra=("${cached[@]}")
    "$FT" "${common[@]}" --head-epochs 0 --epochs 1 --out "$OUT/epoch-$mode-$r" "${extra[@]}" 2>/dev/null
    s=$(jq .summary.median_epoch_seconds "$OUT/epoch-$mode-$r/stage.json")
    echo "$mode run $r: epoch $s s (load $(cut -d' ' -f1 /proc/loadavg))"
    echo "$s" >>"$OUT/epoch-$mode.txt"
  done
done
p=$(median <"$OUT/epoch-plain.txt"); c=$(median <"$OUT/epoch-cached.txt")
echo "median epoch: plain $p s ($(echo "2000 / $p" | bc -l | cut -c1-6) img/s), cached-trunk $c s ($(echo "2000 / $c" | bc -l | cut -c1-6) img/s), ratio $(echo "$p / $c" | bc -l | cut -c1-5)x"

[ -n "${SKIP_ACCURACY:-}" ] && exit 0
echo "== accuracy: 1 head epoch (lr 2e-5) + 2 fine-tuning epochs (lr 1e-5), seed defaults otherwise"
for mode in plain cached; do
  extra=()
  [ "$mode" = cached ] && extra=("${cached[@]}")
  "$FT" "${common[@]}" --head-epochs 1 --epochs 2 --out "$OUT/acc-$mode" "${extra[@]}" 2>/dev/null
  jq -r --arg m "$mode" '"\($m): validation acc \(.summary.validation_acc), test acc \(.summary.test_acc), \(.seconds | floor) s"' "$OUT/acc-$mode/stage.json"
done
