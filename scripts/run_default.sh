#!/usr/bin/env bash
# Builds scaffold, then generates the fractal library and trains the U-Net on the
# embedded default config (configs/default.yml) until the validation Dice target.
# Extra arguments go to `scaffold benchmark`.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
build_dir=${BUILD_DIR:-$root/build}

"$root/scripts/build.sh"
"$build_dir/src/scaffold" generate_fractals -c "$root/configs/default.yml"
"$build_dir/src/scaffold" benchmark -c "$root/configs/default.yml" "$@"
