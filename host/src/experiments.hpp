// `modalkit experiments run NAME`: an experiment file (rows x settings x seeds) run as training
// runs, resumably, and summarised as a table with mean ± std over seeds and a paired comparison
// against the baseline row.
#pragma once

#include <filesystem>
#include <string>

#include <nlohmann/json.hpp>

#include "registry.hpp"

namespace modalkit::host {

/// Options of `modalkit experiments run`.
struct ExperimentOptions {
  bool quick = false;               ///< the experiment's `quick` variant (embedded data); never into docs
  bool dry_run = false;             ///< list the runs and their estimated cost, run nothing
  std::filesystem::path out;        ///< where the runs go (default runs/experiments/NAME[-quick])
};

/// Finds `examples/experiments/NAME.json` under the working directory, or takes NAME as a path
/// to an experiment file.
std::filesystem::path find_experiment(const std::string& name);

/// Runs (or, dry, lists) the experiment in `file`; returns the table as markdown. A full run
/// also rewrites the experiment's section of its results document (docs/results.md).
std::string run_experiment(const std::filesystem::path& file, PluginRegistry& registry, const ExperimentOptions& options);

}  // namespace modalkit::host
