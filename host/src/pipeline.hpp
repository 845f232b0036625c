// Reading a pipeline file: `--set` overrides, validation against the pipeline schema and each
// plugin's config schema, defaults, and the hash that identifies a resolved pipeline.
#pragma once

#include <filesystem>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "registry.hpp"

namespace modalkit::host {

/// A pipeline after validation, with every default filled in.
struct ResolvedPipeline {
  std::filesystem::path file;      ///< the pipeline file as given
  nlohmann::json doc;              ///< the resolved document
  std::filesystem::path dataset;   ///< data.dataset resolved against the pipeline's directory
  std::string hash;                ///< sha256 of the resolved document's canonical dump
};

/// Applies `path=value` overrides (path as `train.epochs` or `/train/epochs`; value parsed as
/// JSON, or taken as a string when it is not JSON). Throws modalkit::Error on a malformed one.
void apply_overrides(nlohmann::json& doc, const std::vector<std::string>& sets);

/// Reads, overrides, validates and resolves `file`. Throws schema::JsonFileError or
/// schema::ValidationFailed (every error at once, as JSON pointers).
ResolvedPipeline load_pipeline(const std::filesystem::path& file, const std::vector<std::string>& sets,
                               const PluginRegistry& registry);

}  // namespace modalkit::host
