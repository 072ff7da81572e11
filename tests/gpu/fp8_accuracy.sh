#!/usr/bin/env bash
# train.precision fp8 against bf16 on the GPU (issue 14): trains recipes/small.yaml STEPS steps twice from the
# same seed (train.precision bf16, then fp8; everything else the recipe's), prints both main-LM loss curves
# (every 10 steps) and the relative difference of the means of the last 20 steps (the DeepSeek-V3 report's
# goal: <= 0.25%). Exits 1 when the difference exceeds 0.25%, 2 on bad usage; the logs stay in $OUT_DIR.
# Usage (repo root, after a CUDA build):  [CONTROL=1] bash tests/gpu/fp8_accuracy.sh [BUILD_DIR] [STEPS] [--set k=v ...]
#   BUILD_DIR defaults to $BUILD or /tmp/build (.device/build.sh's), STEPS to 200 (>= 40).
set -euo pipefail
BUILD_DIR=${1:-${BUILD:-/tmp/build}}
STEPS=${2:-200}
shift $(($# > 2 ? 2 : $#))
FATHOM="$BUILD_DIR/fathom"
[[ -x "$FATHOM" ]] || { echo "fp8_accuracy.sh: no fathom binary at $FATHOM (pass the build dir)" >&2; exit 2; }
[[ "$STEPS" =~ ^[0-9]+$ && "$STEPS" -ge 40 ]] || { echo "fp8_accuracy.sh: STEPS must be an integer >= 40, got $STEPS" >&2; exit 2; }
OUT_DIR=${OUT_DIR:-$(mktemp -d /tmp/fp8_accuracy.XXXXXX)}
mkdir -p "$OUT_DIR"
# CONTROL=1 adds a second bf16 run (bf16b): GPU runs are not bitwise reproducible, so the two bf16 runs part
# as the trajectory amplifies rounding noise, and their difference is the floor below which a precision's
# effect cannot be seen in one pair of runs. It is printed, not used: the goal stays 0.25%.
RUNS="bf16 fp8"
[[ "${CONTROL:-0}" == 1 ]] && RUNS="bf16 fp8 bf16b"
for run in $RUNS; do
  precision=${run%b}
  echo "training recipes/small.yaml, $STEPS steps, train.precision $precision -> $OUT_DIR/$run.log"
  "$FATHOM" train recipes/small.yaml --set train.steps="$STEPS" --set train.precision="$precision" "$@" \
    > "$OUT_DIR/$run.log" 2>&1 || { tail -20 "$OUT_DIR/$run.log"; exit 1; }
  # "step    12/200 | lm 7.1234 | ..." -> "12 7.1234"
  sed -nE 's/^step +([0-9]+)\/[0-9]+ \| lm ([0-9.eE+-]+).*/\1 \2/p' "$OUT_DIR/$run.log" > "$OUT_DIR/$run.lm"
  [[ $(wc -l < "$OUT_DIR/$run.lm") -eq "$STEPS" ]] || {
    echo "fp8_accuracy.sh: $run run logged $(wc -l < "$OUT_DIR/$run.lm") of $STEPS steps" >&2; exit 1; }
done
if [[ -f "$OUT_DIR/bf16b.lm" && "${CONTROL:-0}" == 1 ]]; then
  paste "$OUT_DIR/bf16.lm" "$OUT_DIR/bf16b.lm" | awk -v steps="$STEPS" '
    { a[$1] = $2; b[$3] = $4 }
    END {
      x = 0; y = 0
      for (s = steps - 19; s <= steps; s++) { x += a[s]; y += b[s] }
      x /= 20; y /= 20; d = (y - x) / x; if (d < 0) d = -d
      printf "control: two bf16 runs, mean of the last 20 steps %.5f and %.5f, %.3f%% apart (the floor)\n", x, y, 100 * d
    }'
fi
paste "$OUT_DIR/bf16.lm" "$OUT_DIR/fp8.lm" | awk -v steps="$STEPS" '
  { bf[$1] = $2; f8[$3] = $4 }
  END {
    printf "%6s %12s %12s %10s\n", "step", "lm bf16", "lm fp8", "fp8/bf16-1"
    for (s = 1; s <= steps; s++)
      if (s == 1 || s % 10 == 0) printf "%6d %12.5f %12.5f %9.3f%%\n", s, bf[s], f8[s], 100 * (f8[s] / bf[s] - 1)
    a = 0; b = 0
    for (s = steps - 19; s <= steps; s++) { a += bf[s]; b += f8[s] }
    a /= 20; b /= 20; d = (b - a) / a; if (d < 0) d = -d
    printf "mean of the last 20 steps: bf16 %.5f, fp8 %.5f, relative difference %.3f%% (goal <= 0.25%%)\n", a, b, 100 * d
    exit d > 0.0025 ? 1 : 0
  }'
