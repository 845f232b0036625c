#!/usr/bin/env bash
# Set-up for a fresh Debian 12 machine: installs the packages modalkit needs (only those
# missing), configures the release build in build/ and builds it. Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."

packages=(
  build-essential pkg-config python3 meson ninja-build ccache
  libtorch-dev libopenblas0-pthread        # OpenBLAS: Debian's reference BLAS is ~35x slower
  libgloo-dev                              # c10d's Gloo headers: distributed training (launch)
  libboost-dev libboost-filesystem-dev libboost-program-options-dev
  nlohmann-json3-dev libvalijson-dev libspdlog-dev libssl-dev zlib1g-dev libstb-dev
  libsndfile1-dev libsamplerate0-dev       # audio plugin: decoding (WAV, FLAC) and resampling
  libsentencepiece-dev                     # text plugin and the text-corpus recipe: the tokenizer
  espeak-ng dataset-fashion-mnist          # recipes spoken-words, av-fashion, fashion-mnist (and their test)
  festival festvox-kallpc16k festvox-kdlpc16k festvox-us-slt-hts wordnet-base  # recipe spoken-topics
  libgtest-dev libgmock-dev
  clang libclang-rt-14-dev                 # libFuzzer targets of the test suite
)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "setup: installing ${missing[*]}"
  sudo=""
  if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi
  $sudo apt-get update -q
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

if [ ! -f build/build.ninja ]; then
  meson setup build --buildtype=release
fi
meson compile -C build
