#!/usr/bin/env bash
# The own tiled GEMM kernels (framework/kernels/cuda/grouped_gemm.cu) compiled as a release build compiles
# them (-O3 -DNDEBUG, sm_90a) must not draw ptxas's C7510, "wgmma.mma_async instructions are serialized":
# any function call inside a wgmma kernel (a printf was one) makes ptxas wait after every wgmma, silently
# costing the kernels much of their throughput. Fails on that message or on a failed compile.
# Usage: wgmma_not_serialised.sh NVCC SOURCE_DIR
set -uo pipefail
NVCC=${1:?usage: wgmma_not_serialised.sh NVCC SOURCE_DIR}
SRC=${2:?usage: wgmma_not_serialised.sh NVCC SOURCE_DIR}
OUT=$(mktemp -d)
trap 'rm -rf "$OUT"' EXIT
"$NVCC" -std=c++20 -I"$SRC" -I"$SRC/third_party" -arch=sm_90a -O3 -DNDEBUG -Xptxas -v -x cu -c \
  "$SRC/framework/kernels/cuda/grouped_gemm.cu" -o "$OUT/grouped_gemm.o" > "$OUT/log" 2>&1
rc=$?
if [[ $rc -ne 0 ]]; then
  tail -20 "$OUT/log"
  echo "wgmma_not_serialised.sh: nvcc failed (rc $rc) on grouped_gemm.cu" >&2
  exit 1
fi
kernels=$(grep -c "Compiling entry function.*TiledKernel" "$OUT/log")
if [[ "$kernels" -eq 0 ]]; then
  echo "wgmma_not_serialised.sh: ptxas compiled no TiledKernel for sm_90a: nothing was checked" >&2
  exit 1
fi
if grep -q "C7510" "$OUT/log"; then
  grep "C7510" "$OUT/log" | head -3
  echo "wgmma_not_serialised.sh: ptxas serialises wgmma in $(grep -c C7510 "$OUT/log") of $kernels TiledKernel" \
       "instantiations (a function call inside the kernel?)" >&2
  exit 1
fi
echo "grouped_gemm.cu: $kernels TiledKernel instantiations, none with serialised wgmma"
