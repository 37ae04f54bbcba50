#!/usr/bin/env bash
# Compiles the CUDA kernels in src/cuda with nvcc alone (no CUDA LibTorch
# needed) for sm_90, then runs their tests: the host-side checks always, the
# GPU cases only when a GPU is visible. Usage: check_cuda_kernels.sh [BUILD_DIR]
# Exits with 77 when no nvcc is found, which CTest reports as skipped.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
build_dir=${1:-$root/build-cuda-kernels}

nvcc=${CUDACXX:-}
if [ -z "$nvcc" ]; then
  nvcc=$(command -v nvcc || true)
fi
if [ -z "$nvcc" ] && [ -x /usr/local/cuda/bin/nvcc ]; then
  nvcc=/usr/local/cuda/bin/nvcc
fi
if [ -z "$nvcc" ]; then
  echo "check_cuda_kernels: nvcc not found (CUDACXX, PATH, /usr/local/cuda/bin); skipping the CUDA kernel check"
  exit 77
fi

cmake -S "$root/src/cuda" -B "$build_dir" -G Ninja -DCMAKE_BUILD_TYPE=Release -DCMAKE_CUDA_COMPILER="$nvcc"
cmake --build "$build_dir"
ctest --test-dir "$build_dir" --output-on-failure
