#!/usr/bin/env bash
# The seed's homework, "transfer learning from MNIST to Fashion-MNIST on your CNN", end to end
# on the CPU, with the stage binaries as the pipeline runs them:
#   1. pretrain   Chollet's small convnet from scratch on data/mnist-small (ten digits);
#   2. extract-features + train-head: its frozen base (cut at max_pooling2d_4) as a feature
#      extractor for data/fashion-mnist-small (shirt vs t-shirt_top), a dense head on top;
#   3. fine-tune  the same base from --unfreeze-from (default conv2d_3) with that head, on
#      augmented Fashion images;
#   4. pretrain   the same convnet from scratch on data/fashion-mnist-small alone (the baseline).
# Prints the accuracy table (markdown) and writes it to $RUN/table.md with each stage's wall time.
#
# Usage: crates/pretrain/homework.sh            (settings below; override by environment, e.g.
#        RUN=runs/hw2 SIZE=64 PRETRAIN_EPOCHS=10 crates/pretrain/homework.sh)
set -euo pipefail

root=$(cd "$(dirname "$0")/../.." && pwd)
cd "$root"
RUN=${RUN:-runs/homework}
SIZE=${SIZE:-48}                      # smallest size the small convnet takes (46) rounded up
PRETRAIN_EPOCHS=${PRETRAIN_EPOCHS:-8}
SCRATCH_EPOCHS=${SCRATCH_EPOCHS:-$PRETRAIN_EPOCHS}
HEAD_EPOCHS=${HEAD_EPOCHS:-30}
FINE_EPOCHS=${FINE_EPOCHS:-5}
FINE_STEPS=${FINE_STEPS:-100}
UNFREEZE_FROM=${UNFREEZE_FROM:-conv2d_3}
DEVICE=${DEVICE:-cpu}

cargo xtask data
eval "$(cargo xtask libtorch)"
PROFILE=${PROFILE:-release}             # or dev (debug binaries: libtorch does the work either way)
cargo build --profile "$PROFILE" -p pretrain -p extract-features -p train-head -p fine-tune
BIN=${CARGO_TARGET_DIR:-$root/target}/$([ "$PROFILE" = dev ] && echo debug || echo "$PROFILE")
mkdir -p "$RUN"
: > "$RUN/times.tsv"

# Runs a stage, appending "<name>\t<seconds>" to times.tsv.
stage() {
    local name=$1
    shift
    local start
    start=$(date +%s.%N)
    echo "== $name: $*" >&2
    "$@"
    echo -e "$name\t$(echo "$(date +%s.%N) - $start" | bc)" >> "$RUN/times.tsv"
}

stage pretrain-mnist "$BIN/pretrain" --data data/mnist-small --out "$RUN/pretrain-mnist" \
    --input-size "$SIZE" --epochs "$PRETRAIN_EPOCHS" --device "$DEVICE"
BASE=$RUN/pretrain-mnist/base.safetensors

stage extract "$BIN/extract-features" --data data/fashion-mnist-small --weights "$BASE" \
    --layer max_pooling2d_4 --input-size "$SIZE" --cache-dir "$RUN/cache" --out "$RUN/extract" --device "$DEVICE"
stage train-head "$BIN/train-head" --features "$RUN/extract/features.json" --out "$RUN/head" \
    --epochs "$HEAD_EPOCHS" --lr 1e-4 --device "$DEVICE"

stage fine-tune "$BIN/fine-tune" --data data/fashion-mnist-small --weights "$BASE" --out "$RUN/fine-tune" \
    --input-size "$SIZE" --unfreeze-from "$UNFREEZE_FROM" --head "$RUN/head/head.safetensors" \
    --epochs "$FINE_EPOCHS" --steps-per-epoch "$FINE_STEPS" --lr 1e-4 --device "$DEVICE"

stage scratch-fashion "$BIN/pretrain" --data data/fashion-mnist-small --out "$RUN/scratch-fashion" \
    --input-size "$SIZE" --epochs "$SCRATCH_EPOCHS" --device "$DEVICE"

secs() { awk -v n="$1" '$1 == n { printf "%.0f", $2 }' "$RUN/times.tsv"; }
acc() { jq -r ".$2.acc * 1000 | round / 10" "$RUN/$1/metrics.json"; }
{
    echo "| model (input ${SIZE}x${SIZE}) | trained on | validation acc % | test acc % | wall s |"
    echo "|---|---|---|---|---|"
    echo "| small convnet from scratch (digits, 10 classes) | mnist-small | $(acc pretrain-mnist validation) | $(acc pretrain-mnist test) | $(secs pretrain-mnist) |"
    echo "| MNIST base frozen + dense head (feature extraction) | fashion-mnist-small | $(acc head validation) | $(acc head test) | $(secs extract) + $(secs train-head) |"
    echo "| MNIST base fine-tuned from $UNFREEZE_FROM + that head | fashion-mnist-small | $(acc fine-tune validation) | $(acc fine-tune test) | $(secs fine-tune) |"
    echo "| small convnet from scratch (baseline) | fashion-mnist-small | $(acc scratch-fashion validation) | $(acc scratch-fashion test) | $(secs scratch-fashion) |"
} | tee "$RUN/table.md"
