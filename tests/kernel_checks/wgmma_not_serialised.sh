#!/usr/bin/env bash
# The own tiled GEMM kernels (framework/kernels/cuda/grouped_gemm{,_fp8}.cu) compiled as a release build compiles
# them (-O3 -DNDEBUG, sm_90a) must not draw any of ptxas's "wgmma.mma_async instructions are serialized"
# notes: C7510 (a function call inside the kernel; a printf was one), C7512 (too few registers), C7517 /
# C7518 (a warpgroup wait ptxas inserts, e.g. around a wgmma issued or waited for inside a branch: the FP8
# main loop's last-block conditions did that). Each makes ptxas wait after every wgmma, silently costing the
# kernels much of their throughput while every value stays right. Nor may they spill registers (a 128 x 256
# f32 accumulator tile leaves little room). Nor may their PTX hold a cluster-scope release on a barrier
# arrive or a cluster-scope acquire on a barrier wait: ptxas turns the first into MEMBAR.GPU + ERRBAR before
# every arrive and the second into an L1 invalidate after every wait, once per k-block in the main loop
# (clusters of two ran at about half speed for it; see sm90_primitives.cuh). Fails on any of these, or on a
# failed compile.
# Usage: wgmma_not_serialised.sh NVCC SOURCE_DIR
set -uo pipefail
NVCC=${1:?usage: wgmma_not_serialised.sh NVCC SOURCE_DIR}
SRC=${2:?usage: wgmma_not_serialised.sh NVCC SOURCE_DIR}
OUT=$(mktemp -d)
trap 'rm -rf "$OUT"' EXIT
kernels=0
cluster_scoped='mbarrier\.arrive\.release\.cluster|mbarrier\.try_wait(\.parity)?\.acquire\.cluster'
for name in grouped_gemm grouped_gemm_fp8; do  # the bf16 and the FP8 forms of grouped_gemm_tiled.cuh's kernel
  mkdir -p "$OUT/keep_$name"
  "$NVCC" -std=c++20 -I"$SRC" -I"$SRC/third_party" -arch=sm_90a -O3 -DNDEBUG -Xptxas -v -x cu -c \
    "$SRC/framework/kernels/cuda/$name.cu" -o "$OUT/$name.o" -keep -keep-dir "$OUT/keep_$name" > "$OUT/$name.log" 2>&1
  rc=$?
  if [[ $rc -ne 0 ]]; then
    tail -20 "$OUT/$name.log"
    echo "wgmma_not_serialised.sh: nvcc failed (rc $rc) on $name.cu" >&2
    exit 1
  fi
  found=$(grep -c "Compiling entry function.*TiledKernel" "$OUT/$name.log")
  if [[ "$found" -eq 0 ]]; then
    echo "wgmma_not_serialised.sh: ptxas compiled no TiledKernel of $name.cu for sm_90a: nothing was checked" >&2
    exit 1
  fi
  serial="wgmma.mma_async instructions are serialized"
  if grep -q "$serial" "$OUT/$name.log"; then
    grep "$serial" "$OUT/$name.log" | cut -c1-200 | head -3
    echo "wgmma_not_serialised.sh: ptxas serialises wgmma in $(grep -c "$serial" "$OUT/$name.log") of $found" \
         "TiledKernel instantiations of $name.cu ($(grep -o "(C75[0-9][0-9])" "$OUT/$name.log" | sort -u | tr '\n' ' '))" >&2
    exit 1
  fi
  # ptxas reports each entry's spills on the lines after its "Compiling entry function" line.
  spilled=$(awk '/Compiling entry function/ { tiled = /TiledKernel/ }
                 tiled && /bytes spill stores/ && !/ 0 bytes spill stores, 0 bytes spill loads/ { n++ }
                 END { print n + 0 }' "$OUT/$name.log")
  if [[ "$spilled" -ne 0 ]]; then
    grep -B2 "bytes spill stores" "$OUT/$name.log" | grep -v " 0 bytes spill stores, 0 bytes spill loads" | head -6
    echo "wgmma_not_serialised.sh: $spilled TiledKernel instantiations of $name.cu spill registers" >&2
    exit 1
  fi
  ptx=$(ls "$OUT/keep_$name"/*.compute_90a.ptx 2>/dev/null | head -1)
  if [[ -z "$ptx" ]]; then
    echo "wgmma_not_serialised.sh: nvcc kept no sm_90a PTX of $name.cu: the barrier scopes were not checked" >&2
    exit 1
  fi
  fenced=$(grep -cE "$cluster_scoped" "$ptx")
  if [[ "$fenced" -ne 0 ]]; then
    grep -E "$cluster_scoped" "$ptx" | sort -u | head -3
    echo "wgmma_not_serialised.sh: $fenced cluster-scope barrier arrives / waits in $name.cu's PTX" >&2
    exit 1
  fi
  kernels=$((kernels + found))
done
echo "grouped_gemm.cu, grouped_gemm_fp8.cu: $kernels TiledKernel instantiations, none with serialised wgmma," \
     "spills or cluster-scope barrier fences"
