#!/usr/bin/env bash
# Installs the Debian 12 packages that scaffold-cpp needs to build, run and test.
# Does nothing when all are present; needs root (or sudo) otherwise.
set -euo pipefail

packages=(
  build-essential cmake ninja-build ccache git
  libtorch-dev libdnnl-dev libopenblas0-pthread
  libyaml-cpp-dev libcli11-dev libspdlog-dev libfmt-dev nlohmann-json3-dev libssl-dev
  libopenmpi-dev openmpi-bin
  libgtest-dev libgmock-dev libbenchmark-dev libstb-dev librandom123-dev
  python3-numpy
  chromium  # headless browser for the report page test
)

missing=()
for pkg in "${packages[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$pkg")
  fi
done

if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi

echo "install_deps: installing ${missing[*]}" >&2
sudo_cmd=()
if [ "$(id -u)" -ne 0 ]; then
  sudo_cmd=(sudo)
fi
"${sudo_cmd[@]}" apt-get update -qq
DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}"
