#!/usr/bin/env bash
# Runs every benchmark of docs/benchmarks.md in one go on this machine and
# prints the results; nothing is asserted. Builds first (scripts/build.sh).
#
# Usage: bench/run_all.sh [quick]
#   quick  skips scale 6 and the datagen scales above 6 (about 5 minutes
#          instead of about 20 on 2 cores)
#
# Environment: BUILD_DIR (default build/), WORK (scratch folder, default
# /tmp/scaffold-bench), THREADS (default: all cores this process may use).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
build_dir=${BUILD_DIR:-$root/build}
work=${WORK:-/tmp/scaffold-bench}
threads=${THREADS:-$(nproc)}
quick=${1:-}

"$root/scripts/build.sh" >/dev/null
bench="$build_dir/bench"
scaffold="$build_dir/src/scaffold"
rm -rf "$work"
mkdir -p "$work"

section() { printf '\n== %s ==\n' "$*"; }

section "machine"
lscpu | grep -E 'Model name|^CPU\(s\)' || true
if grep -qw avx512f /proc/cpuinfo; then echo "AVX-512: yes"; else echo "AVX-512: no"; fi
echo "threads: $threads"

section "sequential write bandwidth (dd, O_DIRECT, 2 GiB)"
dd if=/dev/zero of="$work/dd.bin" bs=1M count=2048 oflag=direct 2>&1 | tail -1
rm -f "$work/dd.bin"

section "3D convolution: oneDNN against LibTorch, with the FMA peak"
"$bench/bench_conv" "$threads" 10

if [[ -x "$bench/bench_norm" ]]; then
  section "GroupNorm + ReLU: fused kernel against LibTorch"
  OMP_NUM_THREADS=$threads "$bench/bench_norm"
fi

if [[ -x "$bench/bench_pool" ]]; then
  section "2x2x2 max pool on ChannelsLast3d: our kernel against LibTorch"
  OMP_NUM_THREADS=$threads "$bench/bench_pool"
fi

section "training step, both convolution backends, with the FMA peak"
if [[ "$quick" == quick ]]; then
  "$bench/bench_step" --threads "$threads" --scale 4 --layers 1
  "$bench/bench_step" --threads "$threads" --scale 5 --layers 2
else
  "$bench/bench_step" --threads "$threads"
  section "peak memory at scale 6 (oneDNN backend), batch 1 and 2"
  "$bench/bench_step" --threads "$threads" --scale 6 --layers 3 --backend onednn --batch 1 --steps 3
  "$bench/bench_step" --threads "$threads" --scale 6 --layers 3 --backend onednn --batch 2 --steps 3
fi

section "data generation"
OMP_NUM_THREADS=$threads "$bench/bench_datagen" "$work/datagen" 4 "$([[ "$quick" == quick ]] && echo 6 || echo 7)"

if command -v mpiexec >/dev/null; then
  mpi_flags=()
  # Not a pipe into grep -q: with pipefail, mpiexec's SIGPIPE would fail the test.
  mpi_version=$(mpiexec --version 2>&1 || true)
  if [[ "$mpi_version" == *"Open MPI"* || "$mpi_version" == *"OpenRTE"* ]]; then mpi_flags=(--oversubscribe --allow-run-as-root); fi

  section "MPI all-reduce, 2 ranks"
  mpiexec "${mpi_flags[@]}" -n 2 "$bench/bench_allreduce"

  section "weak scaling 1 -> 2 ranks, one thread each, scale 4, local batch 1"
  cat >"$work/weak.yml" <<EOF
problem_scale: 4
unet_bottleneck_dim: 3
n_categories: 3
n_instances_used_per_fractal: 144
local_batch_size: 1
epochs: 2
warmup_batches: 4
dataset_dir: $work/data
fract_base_dir: $work/fractals
EOF
  OMP_NUM_THREADS=1 "$scaffold" -q generate_dataset -c "$work/weak.yml"
  for ranks in 1 2; do
    (cd "$work" && OMP_NUM_THREADS=1 mpiexec "${mpi_flags[@]}" -n "$ranks" "$scaffold" -q benchmark \
      -c weak.yml --base-run-dir "runs$ranks" >/dev/null 2>&1)
    result=$(ls -d "$work/runs$ranks"/*/result.json)
    /usr/bin/python3 - "$result" "$ranks" <<'EOF'
import json, sys
r = json.load(open(sys.argv[1]))
steps = r["total_optimizer_steps"]
step = r["median_minibatch_s"]
print(f'{sys.argv[2]} rank(s): median step {step*1e3:.1f} ms, {r["train_samples_per_s"]:.2f} samples/s '
      f'(all ranks), {steps} steps per rank, all-reduce wait {r["comm_wait_s"]:.2f} s '
      f'(about {100*r["comm_wait_s"]/(steps*step):.1f}% of the steps)')
EOF
  done
fi
