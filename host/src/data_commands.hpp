// `modalkit data validate` and `modalkit data inspect`: what a data set holds, checked sample by
// sample through the modality plugins that will read it in a pipeline.
#pragma once

#include <filesystem>
#include <map>
#include <string>

#include <nlohmann/json.hpp>

#include "registry.hpp"

namespace modalkit::host {

/// Options of both commands.
struct DataCheckOptions {
  int threads = 2;          ///< decode threads
  int max_errors = 20;      ///< errors listed in full (all are counted)
  /// Field name → config for the modality plugin that decodes it (defaults otherwise), e.g.
  /// `{"height": 32, "width": 32}` for images of another size.
  std::map<std::string, nlohmann::json> field_configs;
};

/// Validates a data set: dataset.json against the schema, each split's samples file (JSON lines,
/// declared counts), and every sample's every field — label values in the label set, numbers
/// finite, media fields decoded by the modality plugin that reads their type (the first by name
/// whose manifest lists it in `field_types`). Returns `{dataset, name, valid, error_count,
/// errors: ["origin: message", ...], splits: {split: {samples, fields: {field: {checked, failed,
/// plugin?}}}}}`. Throws only when dataset.json itself cannot be read or fails its schema.
nlohmann::json validate_dataset(const std::filesystem::path& file, PluginRegistry& registry,
                                const DataCheckOptions& options);

/// Describes a data set: per split the sample count; per label field the count of each label;
/// per number field count, mean, std, min, max; per media field (decoded through its plugin)
/// the decoded shapes and the mean, std, min, max of the decoded values.
nlohmann::json inspect_dataset(const std::filesystem::path& file, PluginRegistry& registry,
                               const DataCheckOptions& options);

/// The text `data validate` and `data inspect` print for a report.
std::string format_validation(const nlohmann::json& report);
std::string format_inspection(const nlohmann::json& report);

}  // namespace modalkit::host
