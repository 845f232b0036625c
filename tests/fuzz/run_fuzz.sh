#!/usr/bin/env bash
# Builds the JSON Schema fuzz targets (clang libFuzzer + ASan + UBSan, no LibTorch, so seconds)
# and runs each for SECONDS on a copy of its seed corpus (the committed corpus stays as it is).
#
#   tests/fuzz/run_fuzz.sh BUILD_DIR [SECONDS=60]
#
# Exits non-zero when a target crashes, fails a check or a sanitizer fires; the reproducer is
# written to BUILD_DIR/artifacts/. Re-run one with: BUILD_DIR/fuzz_pipeline ARTIFACT.
# Environment: CXX (default clang++), FUZZ_JOBS (parallel compiles, default 2).
set -euo pipefail

if [[ $# -lt 1 || $# -gt 2 ]]; then
  sed -n '2,10p' "$0" >&2
  exit 2
fi
build_dir=$(mkdir -p "$1" && cd "$1" && pwd)
seconds=${2:-60}
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cxx=${CXX:-clang++}
jobs=${FUZZ_JOBS:-2}

python3 "$root/sdk/tools/modalkit-embed" "$build_dir/embedded_schemas.hpp" \
  kPluginSchema="$root/schemas/plugin.schema.json" \
  kPipelineSchema="$root/schemas/pipeline.schema.json" \
  kDatasetSchema="$root/schemas/dataset.schema.json" \
  kExperimentSchema="$root/schemas/experiment.schema.json"

common=(-std=c++17 -g -O1 -Wall -Wextra -Werror -fno-sanitize-recover=undefined
        -I"$root/host" -I"$build_dir")
sources=("$root"/host/schema/*.cpp "$root"/host/schema/internal/*.cpp)

# The library is instrumented for coverage and sanitizers but has no main; the targets link
# libFuzzer's. One object per source, `jobs` compiles at a time.
mkdir -p "$build_dir/obj"
objects=()
for src in "${sources[@]}"; do
  obj="$build_dir/obj/$(basename "$src" .cpp).o"
  objects+=("$obj")
  "$cxx" "${common[@]}" -fsanitize=fuzzer-no-link,address,undefined -c "$src" -o "$obj" &
  while (( $(jobs -rp | wc -l) >= jobs )); do wait -n; done
done
wait

for target in fuzz_manifest fuzz_pipeline; do
  "$cxx" "${common[@]}" -fsanitize=fuzzer,address,undefined -I"$root/tests/fuzz" \
    "$root/tests/fuzz/$target.cpp" "${objects[@]}" -o "$build_dir/$target"
done

status=0
mkdir -p "$build_dir/artifacts"
for target in fuzz_manifest fuzz_pipeline; do
  corpus_name=${target#fuzz_}
  work="$build_dir/corpus-$corpus_name"
  rm -rf "$work"
  cp -r "$root/tests/fuzz/corpus/$corpus_name" "$work"
  echo "== $target: ${seconds}s on a copy of tests/fuzz/corpus/$corpus_name"
  if ! "$build_dir/$target" "$work" -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 \
      -dict="$root/tests/fuzz/json.dict" -artifact_prefix="$build_dir/artifacts/$target-" \
      -print_final_stats=1 2> "$build_dir/$target.log"; then
    status=1
    echo "!! $target failed; see $build_dir/$target.log and $build_dir/artifacts/" >&2
    grep -E "ERROR|SUMMARY|fuzz check failed|runtime error" "$build_dir/$target.log" | head -20 >&2 || true
  else
    grep -E "stat::number_of_executed_units|cov:" "$build_dir/$target.log" | tail -2
  fi
done
exit "$status"
