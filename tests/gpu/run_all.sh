#!/usr/bin/env bash
# Everything the GPU machine verifies, in one command, each step bounded in time and logged under OUT_DIR:
# the GPU test suite, fathom bench (bf16) beside a PyTorch peer when one is given, its kernel summary, fathom
# bench with train.expert_gemm own / own_wgrad (and own with the tiled kernels' cluster and TMA-store
# options) and with train.deterministic, fathom bench in fp8 with each train.fp8_expert_gemm choice and the default's kernel summary, the
# own tiled GEMM's benchmarks beside cuBLASLt's, the calibration profile, the HF export/import checks against
# transformers, the TensorBoard and Megatron reader tests, and the FP8 accuracy script.
# Usage (repo root, after a CUDA build):
#   bash tests/gpu/run_all.sh BUILD_DIR OUT_DIR [PEER_SCRIPT]
# Bench start-up (memory plan, cuDNN plans) takes 30-60 s on an H200: the timeouts allow for it.
set -uo pipefail
BUILD=${1:?usage: run_all.sh BUILD_DIR OUT_DIR [PEER_SCRIPT]}
OUT_DIR=${2:?usage: run_all.sh BUILD_DIR OUT_DIR [PEER_SCRIPT]}
PEER=${3:-}
F="$BUILD/fathom"
[[ -x "$F" ]] || { echo "run_all.sh: no fathom binary at $F" >&2; exit 2; }
mkdir -p "$OUT_DIR"
T0=$(date +%s)
step() { echo "[$(( $(date +%s) - T0 )) s] $*"; }
SMALL="recipes/small.yaml --set model.num_nextn_predict_layers=0"

timeout 400 "$BUILD/tests/gpu_tests" > "$OUT_DIR/gpu_tests.log" 2>&1; step "gpu_tests rc $?"
grep -E "^\[  (FAILED|PASSED) |^\[  SKIPPED \] [0-9]" "$OUT_DIR/gpu_tests.log"
timeout 150 "$F" bench $SMALL > "$OUT_DIR/bench_bf16.log" 2>&1; step "bench rc $?"
grep -E 'step ms|tokens/s|TFLOP/s/GPU|peak memory|activations|host waits' "$OUT_DIR/bench_bf16.log"
# The bf16 experts on the own tiled kernels: all three from the device counts (train.expert_gemm own: no MoE
# host waits), or only the weight gradients (own_wgrad).
# own_pairs: own with the tiled kernels' launch options (clusters of two sharing A, TMA stores).
PAIRS="--set train.expert_gemm_cluster=2 --set train.expert_gemm_tma_store=true"
for which in own own_wgrad own_pairs; do
  opts="--set train.expert_gemm=$which"
  [[ $which == own_pairs ]] && opts="--set train.expert_gemm=own $PAIRS"
  timeout 150 "$F" bench $SMALL $opts > "$OUT_DIR/bench_bf16_$which.log" 2>&1
  step "bench $which rc $?"; grep -E 'step ms|tokens/s|^  experts |host waits|expert wgrad|tiled expert' "$OUT_DIR/bench_bf16_$which.log"
done
# What train.deterministic costs (cuDNN's attention plans without atomics, or the own kernels).
timeout 150 "$F" bench $SMALL --set train.deterministic=true > "$OUT_DIR/bench_bf16_deterministic.log" 2>&1
step "bench deterministic rc $?"
grep -E 'step ms|tokens/s|^  attention |^attention|deterministic' "$OUT_DIR/bench_bf16_deterministic.log"
# Per-kernel times and the device's idle gaps over the last ~3 steps (tests/kernel_summary, when built).
KS="$BUILD/tests/kernel_summary/libfathom_kernel_summary.so"
if [[ -f "$KS" ]]; then
  FATHOM_KERNEL_SUMMARY="$OUT_DIR/kernels.txt" FATHOM_KERNEL_SUMMARY_WINDOW_MS=250 LD_PRELOAD="$KS" \
    timeout 150 "$F" bench $SMALL --warmup 1 --steps 4 > "$OUT_DIR/bench_kernels.log" 2>&1
  step "kernel summary rc $?"; head -2 "$OUT_DIR/kernels.txt"
else
  step "kernel summary skipped: $KS not built (target fathom_kernel_summary)"
fi
if [[ -n "$PEER" ]]; then
  timeout 300 python3 "$PEER" --modes compact+compile > "$OUT_DIR/peer.log" 2>&1; step "peer rc $?"
  grep -E '"mode"' "$OUT_DIR/peer.log"
  timeout 300 python3 tests/gpu/peer_profile.py "$PEER" > "$OUT_DIR/peer_kernels.log" 2>&1; step "peer profile rc $?"
  grep -A7 '^peer kernels' "$OUT_DIR/peer_kernels.log"
fi
# FP8 beside bf16, once per expert-kernel choice (train.fp8_expert_gemm), and the default's kernel summary.
for which in cublaslt own own_all own_all_pairs; do
  opts="--set train.fp8_expert_gemm=$which"
  [[ $which == own_all_pairs ]] && opts="--set train.fp8_expert_gemm=own_all $PAIRS"
  timeout 150 "$F" bench $SMALL --set train.precision=fp8 $opts \
    > "$OUT_DIR/bench_fp8_$which.log" 2>&1; step "bench fp8 ($which) rc $?"
  grep -E 'step ms|tokens/s|^  (attention|experts|optimizer) ' "$OUT_DIR/bench_fp8_$which.log"
done
if [[ -f "$KS" ]]; then
  FATHOM_KERNEL_SUMMARY="$OUT_DIR/kernels_fp8.txt" FATHOM_KERNEL_SUMMARY_WINDOW_MS=250 LD_PRELOAD="$KS" \
    timeout 150 "$F" bench $SMALL --set train.precision=fp8 --warmup 1 --steps 4 > "$OUT_DIR/bench_fp8_kernels.log" 2>&1
  step "fp8 kernel summary rc $?"; head -2 "$OUT_DIR/kernels_fp8.txt"
fi
# The own tiled grouped GEMM (bf16 NT / NN / TN and FP8 forms; clusters of 1 and 2, register or TMA stores)
# beside cuBLASLt at the bench's expert shapes: whether it can take over the expert GEMMs (and with them the
# MoE's device-side counts). The FP8 setup quantises on the CPU. (fp8_gemm_bench's BM_Gemm/fwd/7/3 ran past 100 s once on 2026-12-04: it runs alone,
# after the rest, so a stall there costs only itself.)
timeout 240 "$BUILD/tests/gpu_bench/gpu_bench" \
  --benchmark_filter='BM_OwnTiled|BM_Batched<Form::k(NT|NN|TNOverwrite), Layout::kTiled>/batched:1/' \
  > "$OUT_DIR/own_kernels.log" 2>&1; step "own kernel benchmarks rc $?"
grep -E '^BM_' "$OUT_DIR/own_kernels.log"
timeout 180 "$BUILD/tests/gpu_bench/gpu_bench" --benchmark_filter='BM_Gemm/(fwd|dgrad|wgrad)/[78]/' \
  > "$OUT_DIR/fp8_kernels.log" 2>&1; step "fp8 kernel benchmarks rc $?"
grep -E '^BM_' "$OUT_DIR/fp8_kernels.log"
timeout 150 "$F" bench $SMALL --profile "$OUT_DIR/h200-small.yaml" > "$OUT_DIR/profile.log" 2>&1; step "profile rc $?"
for shape in "2048 1" "2048 2" "4096 1"; do
  set -- $shape
  timeout 150 "$F" bench $SMALL --warmup 2 --steps 8 --set train.seq_len=$1 --set train.micro_batch_size=$2 \
    > "$OUT_DIR/bench_$1_$2.log" 2>&1; step "bench seq $1 micro-batch $2 rc $?"
  grep -E 'step ms|activations' "$OUT_DIR/bench_$1_$2.log"
done
timeout 120 python3 tests/checkpoint/hf_check.py --fathom "$F" --out "$OUT_DIR/hf_check" > "$OUT_DIR/hf_check.log" 2>&1
step "hf_check rc $?"; tail -5 "$OUT_DIR/hf_check.log"
timeout 60 "$BUILD/tests/framework_tests" --gtest_filter='RunLogTest.TensorBoard*' > "$OUT_DIR/tensorboard.log" 2>&1
step "tensorboard reader rc $?"
timeout 60 "$BUILD/tests/launch_tests" --gtest_filter='PreprocessTest.Megatrons*' > "$OUT_DIR/megatron.log" 2>&1
step "megatron reader rc $?"
# FP8 against bf16 on real text the model cannot memorise in the run (the demo corpus is memorised within
# ~100 steps, after which the curves part): Python's standard library sources, as one document per file.
python3 - "$OUT_DIR/pycorpus.jsonl" <<'PY'
import glob, json, sys
with open(sys.argv[1], "w") as out:
    for f in sorted(glob.glob("/usr/lib/python3*/**/*.py", recursive=True)):
        text = open(f, errors="replace").read()
        if text.strip():
            out.write(json.dumps({"text": text}) + "\n")
PY
"$F" preprocess --input "$OUT_DIR/pycorpus.jsonl" --output-prefix "$OUT_DIR/pycorpus" > "$OUT_DIR/preprocess.log" 2>&1
step "preprocess rc $?"
CONTROL=1 OUT_DIR="$OUT_DIR/fp8" timeout 600 bash tests/gpu/fp8_accuracy.sh "$BUILD" 200 --set data.source=megatron \
  --set data.path="$OUT_DIR/pycorpus" > "$OUT_DIR/fp8_accuracy.log" 2>&1; step "fp8 accuracy rc $?"; grep -E "^control|^mean" "$OUT_DIR/fp8_accuracy.log"
