#!/usr/bin/env bash
# Builds everything and runs the whole test suite with CTest.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
build_dir=${BUILD_DIR:-$root/build}

"$root/scripts/build.sh"
# Tests run one at a time: each uses both cores through OpenMP and LibTorch.
ctest --test-dir "$build_dir" --output-on-failure --timeout 900
