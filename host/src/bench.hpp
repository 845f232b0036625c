// `modalkit bench`: performance ratios measured in one run against a named baseline, never
// timed assertions (docs/performance.md).
#pragma once

#include <filesystem>
#include <vector>

#include <nlohmann/json.hpp>

#include "registry.hpp"

namespace modalkit::host {

struct BenchOptions {
  /// Pipelines whose train split is loaded; each modality of each is measured.
  std::vector<std::filesystem::path> pipelines;
  /// Each measurement repeats until it has run this long (and at least twice).
  double min_seconds = 1.0;
};

/// The pipelines `bench` measures when none are given: one per modality plugin, from
/// examples/pipelines under the current directory (the source tree).
std::vector<std::filesystem::path> default_bench_pipelines();

/// Loader benchmark. Per pipeline modality: decode + featurize throughput of the train split
/// (samples/s) with 1 and 2 loader threads, and the ratio (baseline: 1 thread). Per pipeline:
/// the cached epoch's speed-up (baseline: an epoch that decodes, i.e. loading + batching, against
/// batching the in-memory features, as every epoch after the first does).
nlohmann::json run_bench(PluginRegistry& registry, const BenchOptions& options);

/// The runtime figures of `bench` (also under "runtime" in run_bench's result): the loader's wait
/// as a fraction of step time after the first epoch (a 2-epoch run of the first pipeline) and
/// the wall time of `modalkit plugins list` against `modalkit --version`.
nlohmann::json runtime_bench(PluginRegistry& registry, const BenchOptions& options);

}  // namespace modalkit::host
