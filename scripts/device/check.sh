#!/usr/bin/env bash
# Builds and checks scaffold-cpp on a CUDA GPU machine that has no package
# registry, then measures it.
#
# Needs on that machine: the CUDA toolkit (nvcc; CUDA_HOME, default
# /usr/local/cuda), CMake, Ninja, a C++ compiler, python3 with a CUDA PyTorch
# (its LibTorch is found through torch.utils.cmake_prefix_path), and the
# device-deps/ folder that scripts/device/prepare.sh fills.
#
# Stages, in this order (--stages picks a comma-separated subset):
#   deps       verify and unpack device-deps/debs into BUILD_DIR/deps (dpkg-deb -x)
#   configure  CMake against the pip LibTorch with CMAKE_CUDA_ARCHITECTURES=90
#   build      every target
#   test       the CTest suite, then the kernel tests under compute-sanitizer
#   kernels    bench_cuda_group_norm_relu at scale 7: fused against LibTorch's GroupNorm + ReLU
#   step       bench_cuda_step at scales 6, 7 and 8: step time and peak GPU memory
#   baseline   bench/pytorch_baseline.py: parameter check, then one step at scale 7
#   benchmark  scaffold benchmark at scale 5 to its Dice target, when the CLI can train on CUDA
# A failed stage is recorded and the next ones still run, except that nothing
# runs after a failed deps or configure stage. The build keeps going past a
# failed target, so the stages after a partly failed build use what was built.
#
# A first build and the test suite take several minutes on their own, so a
# session with a per-command time limit runs --stages deps,configure,build,test
# first and --stages kernels,step,baseline,benchmark in a second command on the
# same build directory.
#
# Logs go to $OUT when it is set (the device tool's output folder), otherwise to
# BUILD_DIR/logs: build.log, test.log, measurements.log, benchmark.log and
# summary.txt. The summary is also printed at the end.
#
# Usage: scripts/device/check.sh [--dry-run] [--stages LIST] [--build-dir DIR] [--jobs N]
#   --dry-run     print the commands without running them
#   --build-dir   default build-device (kept between calls while the machine stays up)
#   --jobs        parallel compile jobs, default: all cores
# Environment: CUDA_HOME (default /usr/local/cuda), PYTHON (default python3),
# TORCH_CMAKE_PREFIX (LibTorch's CMake folder; default: asked from PYTHON's torch).
# The stage functions are called by name, which shellcheck cannot follow.
# shellcheck disable=SC2317
set -uo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
all_stages=(deps configure build test kernels step baseline benchmark)

dry_run=0
stages_arg=$(IFS=,; echo "${all_stages[*]}")
build_dir=$root/build-device
jobs=$(nproc)
while [ $# -gt 0 ]; do
  case "$1" in
    --dry-run) dry_run=1 ;;
    --stages) stages_arg=${2:?--stages needs a value}; shift ;;
    --build-dir) build_dir=${2:?--build-dir needs a value}; shift ;;
    --jobs) jobs=${2:?--jobs needs a value}; shift ;;
    -h|--help) sed -n '2,/^set -uo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "check.sh: unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
  shift
done
case "$build_dir" in /*) ;; *) build_dir=$root/$build_dir ;; esac

IFS=, read -r -a stages <<< "$stages_arg"
for stage in "${stages[@]}"; do
  if ! [[ " ${all_stages[*]} " == *" $stage "* ]]; then
    echo "check.sh: unknown stage '$stage'. Stages: ${all_stages[*]}" >&2
    exit 2
  fi
done

log_dir=${OUT:-$build_dir/logs}
deps_prefix=$build_dir/deps
deps_lib=$deps_prefix/usr/lib/x86_64-linux-gnu
cuda_home=${CUDA_HOME:-/usr/local/cuda}
python=${PYTHON:-python3}
summary=()
if [ "$dry_run" -eq 0 ]; then
  mkdir -p "$log_dir"
fi

# The unpacked packages: headers without CMake configs (Random123, stb) through
# CPATH, -lstb through LIBRARY_PATH, and their shared libraries at run time.
export CPATH=$deps_prefix/usr/include${CPATH:+:$CPATH}
export LIBRARY_PATH=$deps_lib${LIBRARY_PATH:+:$LIBRARY_PATH}
export LD_LIBRARY_PATH=$deps_lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
export PATH=$cuda_home/bin:$PATH
# CMake 4 rejects package configs that ask for policies older than 3.5.
export CMAKE_POLICY_VERSION_MINIMUM=3.5
# Tells a CUDA LibTorch's CMake config the target GPU instead of probing it.
export TORCH_CUDA_ARCH_LIST=9.0

# Runs a command with a time limit in seconds, appending its output to a log
# (or prints it under --dry-run).
run() {
  local limit=$1 log=$2
  shift 2
  if [ "$dry_run" -eq 1 ]; then
    printf '+'
    printf ' %q' "$@"
    printf '   # limit %ss, log %s\n' "$limit" "$(basename "$log")"
    return 0
  fi
  {
    printf '\n+'
    printf ' %q' "$@"
    printf '\n'
  } >> "$log"
  timeout -k 10 "$limit" "$@" >> "$log" 2>&1
  local status=$?
  if [ "$status" -eq 124 ]; then
    echo "check.sh: timed out after ${limit}s: $*" >> "$log"
  fi
  return "$status"
}

stage_deps() {
  local log=$log_dir/build.log
  if [ ! -f "$root/device-deps/SHA256SUMS" ]; then
    echo "check.sh: $root/device-deps/SHA256SUMS not found. Run scripts/device/prepare.sh where apt works and carry device-deps" | tee -a "$log"
    return 1
  fi
  run 60 "$log" bash -c "cd '$root/device-deps' && sha256sum --check --quiet SHA256SUMS" || return 1
  run 60 "$log" rm -rf "$deps_prefix" || return 1
  local deb
  for deb in "$root"/device-deps/debs/*.deb; do
    run 60 "$log" dpkg-deb -x "$deb" "$deps_prefix" || return 1
  done
}

torch_cmake_prefix() {
  if [ -n "${TORCH_CMAKE_PREFIX:-}" ]; then
    echo "$TORCH_CMAKE_PREFIX"
    return
  fi
  "$python" -c 'import torch; print(torch.utils.cmake_prefix_path)' 2>/dev/null
}

# NCCL headers and library: the toolkit's, else those of the nvidia-nccl wheel.
nccl_root() {
  if [ -f "$cuda_home/include/nccl.h" ]; then
    return 0
  fi
  "$python" -c 'import nvidia.nccl as m; print(list(m.__path__)[0])' 2>/dev/null
}

stage_configure() {
  local log=$log_dir/build.log
  local torch_prefix
  torch_prefix=$(torch_cmake_prefix)
  if [ -z "$torch_prefix" ]; then
    if [ "$dry_run" -eq 0 ]; then
      echo "check.sh: '$python -c \"import torch\"' failed. Set PYTHON to a python3 with a CUDA PyTorch, or TORCH_CMAKE_PREFIX" | tee -a "$log"
      return 1
    fi
    torch_prefix='<torch.utils.cmake_prefix_path>'
  fi

  local nccl
  nccl=$(nccl_root)

  local args=(
    -S "$root" -B "$build_dir" -G Ninja
    -DCMAKE_BUILD_TYPE=Release
    "-DCMAKE_PREFIX_PATH=$deps_prefix/usr;$torch_prefix"
    -DCMAKE_CUDA_COMPILER="$cuda_home/bin/nvcc"
    -DCUDAToolkit_ROOT="$cuda_home"
    -DCMAKE_CUDA_ARCHITECTURES=90
    -DSCAFFOLD_CUDA_ARCHITECTURES=90
    -DOPENSSL_ROOT_DIR="$deps_prefix/usr"
  )
  if [ -n "$nccl" ]; then
    args+=(-DNCCL_ROOT="$nccl")
  fi

  run 300 "$log" cmake "${args[@]}" || return 1
  if [ "$dry_run" -eq 0 ] && ! grep -q "scaffold: CUDA LibTorch found" "$log"; then
    echo "check.sh: the LibTorch in $torch_prefix is not a CUDA build, so the CUDA sources were not configured" | tee -a "$log"
    return 1
  fi
}

stage_build() {
  # -k 0: Ninja builds every target it can after a failure.
  run 540 "$log_dir/build.log" cmake --build "$build_dir" --parallel "$jobs" -- -k 0
}

stage_test() {
  local log=$log_dir/test.log status=0
  # Several tests at once, each with two OpenMP threads.
  run 420 "$log" env OMP_NUM_THREADS=2 ctest --test-dir "$build_dir" --parallel 8 --timeout 300 \
    --output-on-failure || status=1
  local kernels=$build_dir/tests/test_cuda_kernels
  if [ "$dry_run" -eq 1 ] || command -v compute-sanitizer >/dev/null; then
    run 180 "$log" compute-sanitizer --tool memcheck --error-exitcode 1 "$kernels" || status=1
    run 180 "$log" compute-sanitizer --tool racecheck --error-exitcode 1 "$kernels" \
      --gtest_filter='Shapes/*N2_S120*:Shapes/*N3_S512*:Shapes/*N2_S3_*' || status=1
  else
    echo "check.sh: compute-sanitizer not found, so the kernel memory and race checks were skipped" | tee -a "$log"
  fi
  return "$status"
}

stage_kernels() {
  run 180 "$log_dir/measurements.log" "$build_dir/bench/bench_cuda_group_norm_relu" --scale 7
}

stage_step() {
  local log=$log_dir/measurements.log
  if [ "$dry_run" -eq 0 ] && command -v nvidia-smi >/dev/null; then
    run 30 "$log" nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv
  fi
  run 360 "$log" "$build_dir/bench/bench_cuda_step" --scale 6 --scale 7 --scale 8
}

stage_baseline() {
  local log=$log_dir/measurements.log status=0
  run 120 "$log" "$python" "$root/bench/pytorch_baseline.py" --check-params || status=1
  run 240 "$log" "$python" "$root/bench/pytorch_baseline.py" --scale 7 --batch 1 || status=1
  return "$status"
}

stage_benchmark() {
  local log=$log_dir/benchmark.log
  local scaffold=$build_dir/src/scaffold
  # The trainer places the model on a device only once the CLI has --device.
  if [ "$dry_run" -eq 0 ] && ! "$scaffold" benchmark --help 2>/dev/null | grep -q -- '--device'; then
    echo "check.sh: skipped because 'scaffold benchmark' has no --device option and trains on CPU only" | tee -a "$log"
    return 2
  fi
  local work=$build_dir/benchmark-work
  [ "$dry_run" -eq 1 ] && echo "# only when 'scaffold benchmark --help' lists --device:"
  run 300 "$log" "$scaffold" benchmark -c "$root/configs/benchmark_default.yml" --problem-scale 5 --device cuda \
    --base-run-dir "$work/runs" --dataset-dir "$work/datasets" --fract-base-dir "$work/fractals"
}

print_environment() {
  echo "check.sh: $(date -u +%Y-%m-%dT%H:%M:%SZ) on $(uname -n), stages: ${stages[*]}"
  if [ "$dry_run" -eq 1 ]; then
    return
  fi
  (command -v nvidia-smi >/dev/null && nvidia-smi -L) || echo "nvidia-smi: not found"
  (command -v nvcc >/dev/null && nvcc --version | tail -n 1) || echo "nvcc: not found"
  "$python" -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda, "available", torch.cuda.is_available())' \
    2>/dev/null || echo "torch: not importable with $python"
  cmake --version | head -n 1
  c++ --version | head -n 1
  # Exported oneDNN functions of LibTorch: when there are any, a build with
  # -DSCAFFOLD_WITH_ONEDNN=ON would load two oneDNN versions that share them.
  local torch_lib
  torch_lib=$("$python" -c 'import os, torch; print(os.path.join(os.path.dirname(torch.__file__), "lib"))' 2>/dev/null)
  if [ -n "$torch_lib" ] && [ -f "$torch_lib/libtorch_cpu.so" ] && command -v nm >/dev/null; then
    echo "libtorch_cpu.so exports $(nm -D --defined-only "$torch_lib/libtorch_cpu.so" | grep -c ' T dnnl_') dnnl_* functions"
  fi
}

environment=$(print_environment)
echo "$environment"
failed_hard=0
for stage in "${stages[@]}"; do
  if [ "$failed_hard" -eq 1 ]; then
    summary+=("$(printf '%-10s %-8s' "$stage" "not run")")
    continue
  fi
  [ "$dry_run" -eq 1 ] && echo "# stage $stage"
  start=$(date +%s)
  "stage_$stage"
  status=$?
  seconds=$(( $(date +%s) - start ))
  case "$status" in
    0) result=ok ;;
    2) result=skipped ;;
    *) result=FAILED ;;
  esac
  if [ "$dry_run" -eq 1 ]; then
    result=dry-run
  fi
  summary+=("$(printf '%-10s %-8s %5ss' "$stage" "$result" "$seconds")")
  if [ "$result" = FAILED ] && [[ "$stage" =~ ^(deps|configure)$ ]]; then
    failed_hard=1
  fi
done

{
  echo "$environment"
  echo "stage      result     time"
  printf '%s\n' "${summary[@]}"
  if [ "$dry_run" -eq 0 ]; then
    # The first build errors, the measurement lines of each program, and the test totals.
    grep -m 20 -E '^FAILED: |error:' "$log_dir/build.log" 2>/dev/null
    grep -hE '^(scale=|channels=|pytorch_baseline |parameter check|bench_cuda_)' "$log_dir/measurements.log" 2>/dev/null
    grep -hE 'tests passed|tests failed|ERROR SUMMARY' "$log_dir/test.log" 2>/dev/null
    grep -hE 'figure of merit|Dice target' "$log_dir/benchmark.log" 2>/dev/null
    echo "logs: $log_dir"
  fi
} | if [ "$dry_run" -eq 0 ]; then tee "$log_dir/summary.txt"; else cat; fi

for line in "${summary[@]}"; do
  if [[ "$line" == *FAILED* ]]; then
    exit 1
  fi
done
exit 0
