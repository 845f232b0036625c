// Reading a pipeline file: `--set` overrides, validation against the pipeline schema and each
// plugin's config schema, defaults, and the hash that identifies a resolved pipeline.
#pragma once

#include <filesystem>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "modalkit/errors.hpp"
#include "registry.hpp"

namespace modalkit::host {

/// A pipeline after validation, with every default filled in.
struct ResolvedPipeline {
  std::filesystem::path file;      ///< the pipeline file as given
  nlohmann::json doc;              ///< the resolved document
  std::filesystem::path base_dir;  ///< relative paths (data set, artifacts) resolve against this
  std::filesystem::path dataset;   ///< data.dataset resolved against base_dir
  std::string hash;                ///< sha256 of the resolved document's canonical dump
};

/// A command-line mistake (exit code 2): a malformed `--set`, an unknown `--modalities` entry.
class UsageError : public Error {
 public:
  using Error::Error;
};

/// Applies `path=value` overrides (path as `train.epochs` or `/train/epochs`; value parsed as
/// JSON, or taken as a string when it is not JSON). Throws UsageError on a malformed one.
void apply_overrides(nlohmann::json& doc, const std::vector<std::string>& sets);

/// Reads, overrides, validates and resolves `file`. Throws schema::JsonFileError or
/// schema::ValidationFailed (every error at once, as JSON pointers).
/// Relative paths resolve against `base_dir`, by default the file's own directory.
ResolvedPipeline load_pipeline(const std::filesystem::path& file, const std::vector<std::string>& sets,
                               const PluginRegistry& registry, std::filesystem::path base_dir = {});

/// The resolved pipeline a run was trained with (`RUN/pipeline.json`), its relative paths
/// resolved against the original pipeline's directory (recorded in `RUN/run.json`).
ResolvedPipeline load_run_pipeline(const std::filesystem::path& run_dir, const PluginRegistry& registry);

/// `/evaluate/protocols` of a resolved pipeline, or an empty object when it has none (the key
/// has no default, so that pipelines without protocols keep their earlier hash).
inline const nlohmann::json& evaluation_protocols(const nlohmann::json& doc) {
  static const nlohmann::json none = nlohmann::json::object();
  const nlohmann::json& evaluate = doc.at("evaluate");
  return evaluate.contains("protocols") ? evaluate.at("protocols") : none;
}

}  // namespace modalkit::host
