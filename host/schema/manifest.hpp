/// \file
/// Plugin manifests (`<name>.plugin.json`, schemas/plugin.schema.json), read without loading the
/// plugin's library: discovery, `plugins list`, `describe` and config validation need only this.
#pragma once

#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "schema/json_schema.hpp"

namespace modalkit::schema {

/// A validated manifest, with the plugin schema's defaults filled in.
struct Manifest {
  std::string name;         ///< plugin name, `^[a-z][a-z0-9_]*$`
  std::string kind;         ///< "modality", "fusion", "transfer", "evaluation", "language_model" or "stream"
  std::string version;      ///< the plugin's semantic version
  std::string library;      ///< file name of the library, in the manifest's directory
  std::string description;  ///< one paragraph for `plugins list`
  int abi_major = 0;        ///< SDK ABI major the library was built for
  int abi_minor = 0;        ///< SDK ABI minor the library was built for
  nlohmann::json config_schema;  ///< draft-07 schema of the component's `config` (default `{"type":"object"}`)
  nlohmann::json output;         ///< `{kind, width}`, or null when the manifest does not say
  nlohmann::json artifacts;      ///< array of `{name, type, required}` (default `[]`)
  nlohmann::json produces;       ///< array of `{name, type, file, description}` written to the run directory (default `[]`)
  /// Modality plugins: the data set field types the plugin reads (empty: not declared).
  std::vector<std::string> field_types;
  /// Transfer plugins: the task types the strategy trains (default: all but generation).
  std::vector<std::string> task_types;
  /// Transfer plugins: whether the strategy reads the pipeline's fusion operator (default true).
  bool uses_fusion = true;
  /// Transfer plugins: whether the strategy learns from training rows without labels (default false).
  bool learns_from_unlabelled = false;
  /// The manifest exactly as written (no defaults), so it can be compared with the copy
  /// embedded in the library.
  nlohmann::json raw;
  std::filesystem::path file;  ///< the .plugin.json path (the origin given to parse_manifest)
  /// config_schema, compiled once by parse_manifest (validate_pipeline compiles config_schema
  /// itself when this is null, e.g. for a Manifest built by hand).
  std::shared_ptr<const JsonSchema> config_validator;

  /// Where the library must be: file.parent_path() / library.
  std::filesystem::path library_path() const;
};

/// Validates `doc` against the plugin schema (throws ValidationFailed naming `origin`, with
/// every error), fills defaults, then checks what a schema cannot: `config_schema` compiles
/// (errors point inside it, e.g. `/config_schema/properties/d_model/minimum`) and `library` is a
/// plain file name (no '/', not "." or "..", no NUL), because a library must sit in its
/// manifest's own directory.
Manifest parse_manifest(const nlohmann::json& doc, const std::filesystem::path& origin);

/// Reads and parses a manifest file; throws JsonFileError or ValidationFailed.
Manifest load_manifest(const std::filesystem::path& file);

}  // namespace modalkit::schema
