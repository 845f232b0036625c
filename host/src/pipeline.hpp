// Reading a pipeline file: `--set` overrides, validation against the pipeline schema and each
// plugin's config schema, defaults, and the hash that identifies a resolved pipeline.
#pragma once

#include <filesystem>
#include <map>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "modalkit/errors.hpp"
#include "registry.hpp"

namespace modalkit::host {

/// One data set a run reads, and what the pipeline reads from it. A pipeline with
/// `/data/dataset` has one source holding every task and modality; a multitask pipeline has one
/// per task (`/tasks/<task>/data`), holding that task and the modalities it maps.
struct DataSource {
  std::string pointer;                         ///< where the pipeline names it: `/data` or `/tasks/<task>/data`
  std::filesystem::path file;                  ///< its dataset.json, resolved against the pipeline's directory
  std::vector<std::string> tasks;              ///< tasks whose targets it holds
  std::map<std::string, std::string> fields;   ///< modality → the field it reads: the modalities it holds
  std::map<std::string, std::string> pointers; ///< modality → where the pipeline names that field
  double label_fraction = 1;                   ///< share of its train split whose labels are used
  std::map<std::string, std::string> splits;   ///< role (train, val, test) → this data set's split
  std::map<std::string, std::string> split_pointers;  ///< role → where the pipeline names that split
  double weight = 1;                           ///< multitask: the loss weight of its task's batches
};

/// A pipeline after validation, with every default filled in.
struct ResolvedPipeline {
  std::filesystem::path file;      ///< the pipeline file as given
  nlohmann::json doc;              ///< the resolved document
  std::filesystem::path base_dir;  ///< relative paths (data set, artifacts) resolve against this
  std::filesystem::path dataset;   ///< the first source's data set (the only one unless multitask)
  std::vector<DataSource> sources; ///< the data sets it reads, in task order for a multitask pipeline
  bool multitask = false;          ///< the tasks name their own data sets
  std::string hash;                ///< sha256 of the resolved document's canonical dump, train.progress at its default
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

/// The data sources of a validated, resolved document (see DataSource), paths resolved against
/// `base_dir`.
std::vector<DataSource> data_sources(const nlohmann::json& doc, const std::filesystem::path& base_dir);

/// The resolved pipeline a run was trained with (`RUN/pipeline.json`), its relative paths
/// resolved against the original pipeline's directory (recorded in `RUN/run.json`).
ResolvedPipeline load_run_pipeline(const std::filesystem::path& run_dir, const PluginRegistry& registry);

/// Whether a resolved pipeline keeps the training rows outside its label subset, without their
/// labels, for the strategy's auxiliary losses (`/data/unlabelled` = "auxiliary"). The key has
/// no default, so that pipelines without it keep their earlier hash; absent means "drop".
inline bool keeps_unlabelled(const nlohmann::json& doc) {
  const nlohmann::json& data = doc.at("data");
  return data.contains("unlabelled") && data.at("unlabelled") == "auxiliary";
}

/// `/evaluate/protocols` of a resolved pipeline, or an empty object when it has none (the key
/// has no default, so that pipelines without protocols keep their earlier hash).
inline const nlohmann::json& evaluation_protocols(const nlohmann::json& doc) {
  static const nlohmann::json none = nlohmann::json::object();
  const nlohmann::json& evaluate = doc.at("evaluate");
  return evaluate.contains("protocols") ? evaluate.at("protocols") : none;
}

}  // namespace modalkit::host
