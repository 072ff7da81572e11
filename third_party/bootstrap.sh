#!/usr/bin/env bash
# Installs fathom's Debian 12 dependencies (only those missing) and builds it into ./build (or $FATHOM_BUILD).
# The CUDA backend is built where nvcc is found (FATHOM_CUDA=AUTO); pass -DFATHOM_CUDA=OFF to skip it.
# Usage: bash third_party/bootstrap.sh [extra cmake -D options]
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

packages=(cmake ninja-build g++ make pkg-config libopenmpi-dev openmpi-bin libhdf5-dev libabsl-dev
          libyaml-cpp-dev nlohmann-json3-dev libgtest-dev libgmock-dev libbenchmark-dev)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "bootstrap: installing ${missing[*]}"
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

build=${FATHOM_BUILD:-build}
cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release "$@" >/dev/null
cmake --build "$build" -j "$(nproc)"
echo "bootstrap: built $build/fathom"
