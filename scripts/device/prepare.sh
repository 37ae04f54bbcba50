#!/usr/bin/env bash
# Gathers what a GPU machine without a package registry needs to build
# scaffold-cpp: the Debian 12 .deb files of the build dependencies that such a
# machine lacks (a pip PyTorch brings LibTorch, the CUDA toolkit brings nvcc,
# cuDNN and NCCL). Runs on a Debian 12 machine that reaches the apt registry.
#
# Writes device-deps/ (ignored by git) in the repository root:
#   debs/*.deb    the packages, fetched with apt-get download
#   manifest.txt  package, version and size of each .deb
#   SHA256SUMS    checksums, verified by scripts/device/check.sh
# then checks that the working tree plus device-deps/ stays within the
# 64 MiB that travel to the GPU machine.
#
# Usage: scripts/device/prepare.sh [--with-onednn]
#   --with-onednn  also fetch oneDNN (libdnnl-dev), for a build with
#                  -DSCAFFOLD_WITH_ONEDNN=ON (off by default in CUDA builds)
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
out=$root/device-deps
limit_bytes=$((64 * 1024 * 1024))

# Development packages and the runtime libraries they point to. Header-only
# packages (CLI11, nlohmann-json, Random123) have no runtime part.
packages=(
  libyaml-cpp-dev libyaml-cpp0.7
  libfmt-dev libfmt9
  libspdlog-dev libspdlog1.10
  libcli11-dev
  nlohmann-json3-dev
  libgtest-dev libgmock-dev
  libbenchmark-dev libbenchmark1debian
  libstb-dev libstb0
  librandom123-dev
  libssl-dev libssl3
)

for arg in "$@"; do
  case "$arg" in
    --with-onednn) packages+=(libdnnl-dev libdnnl2) ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "prepare.sh: unknown argument '$arg' (see --help)" >&2; exit 2 ;;
  esac
done

for tool in apt-get dpkg-deb sha256sum; do
  if ! command -v "$tool" >/dev/null; then
    echo "prepare.sh: $tool not found. Run this script on Debian 12 with apt" >&2
    exit 1
  fi
done

# Fetch into a fresh temporary folder and swap it in, so that an interrupted
# run never leaves a half-filled debs/ behind.
staging=$(mktemp -d "$root/.device-deps.XXXXXX")
trap 'rm -rf "$staging"' EXIT
mkdir -p "$staging/debs"
echo "prepare.sh: downloading ${#packages[@]} packages"
if ! (cd "$staging/debs" && apt-get download "${packages[@]}"); then
  echo "prepare.sh: apt-get download failed. Run 'apt-get update' (as root) and check the package names" >&2
  exit 1
fi

# Dependencies outside the list are printed, so that a missing runtime
# library shows up here and not on the GPU machine. Not printed: libraries
# that any machine with a C++ compiler has, and catch2 and googletest (the
# source package), which the -dev packages name but the build does not use.
not_fetched='^(libc6|libstdc\+\+6|libgcc-s1|libgomp1|zlib1g|debconf|catch2|googletest)$'
declare -A listed=()
for package in "${packages[@]}"; do
  listed[$package]=1
done
{
  printf '%-24s %-36s %10s\n' package version bytes
  for deb in "$staging"/debs/*.deb; do
    printf '%-24s %-36s %10s\n' "$(dpkg-deb -f "$deb" Package)" "$(dpkg-deb -f "$deb" Version)" "$(stat -c %s "$deb")"
  done
} > "$staging/manifest.txt"
for deb in "$staging"/debs/*.deb; do
  depends=$(dpkg-deb -f "$deb" Depends | tr ',' '\n' | sed 's/^ *//; s/ .*//; s/|.*//' | sed '/^$/d')
  for dependency in $depends; do
    if [ -z "${listed[$dependency]:-}" ] && ! [[ "$dependency" =~ $not_fetched ]]; then
      echo "prepare.sh: note: $(dpkg-deb -f "$deb" Package) depends on $dependency, which is not fetched"
    fi
  done
done
(cd "$staging" && sha256sum debs/*.deb > SHA256SUMS)

rm -rf "$out"
mv "$staging" "$out"
trap - EXIT
cat "$out/manifest.txt"

# What travels: tracked and untracked files that git does not ignore, plus the
# carried device-deps/ folder.
debs_bytes=$(du -cb "$out" | tail -1 | cut -f1)
if command -v git >/dev/null && git -C "$root" rev-parse --is-inside-work-tree >/dev/null 2>&1; then
  tree_bytes=$(cd "$root" && git ls-files -z --cached --others --exclude-standard |
               xargs -0 -r stat -c %s 2>/dev/null | awk '{ total += $1 } END { print total + 0 }')
else
  tree_bytes=0
  echo "prepare.sh: not a git checkout, so only device-deps/ is counted"
fi
total=$((debs_bytes + tree_bytes))
awk -v debs="$debs_bytes" -v tree="$tree_bytes" -v total="$total" 'BEGIN {
  printf "prepare.sh: device-deps %.1f MiB + working tree %.1f MiB = %.1f MiB of the 64 MiB limit\n",
         debs / 1048576, tree / 1048576, total / 1048576 }'
if [ "$total" -gt "$limit_bytes" ]; then
  echo "prepare.sh: over the 64 MiB limit. Drop packages or remove untracked files" >&2
  exit 1
fi
echo "prepare.sh: done. Carry 'device-deps' and run: bash scripts/device/check.sh"
