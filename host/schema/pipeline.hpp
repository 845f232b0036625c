/// \file
/// Validating a pipeline document: its structure against schemas/pipeline.schema.json, then each
/// component against its plugin's manifest, with every error reported at once as a JSON pointer.
#pragma once

#include <functional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "schema/json_schema.hpp"
#include "schema/manifest.hpp"

namespace modalkit::schema {

/// Looks up a plugin's manifest by name; nullptr when unknown. The returned manifest must stay
/// alive while validate_pipeline runs.
using ManifestLookup = std::function<const Manifest*(const std::string& name)>;

/// The metrics that apply to a task type ("multiclass", "binary", "multilabel", "regression",
/// "generation"); the host's metric code and validate share this one table.
std::vector<std::string> metrics_for(const std::string& task_type);
/// Whether `metric` is in metrics_for(task_type).
bool metric_applies(const std::string& metric, const std::string& task_type);
/// Why `metric` does not apply to `task_type`, naming the ones that do; "" when it applies.
std::string metric_mismatch(const std::string& metric, const std::string& task_type);

/// Validates `pipeline` and returns every error (empty = valid):
/// 1. its structure against the pipeline schema; only if that holds, for each component
///    (`/modalities/<m>`, `/fusion`, `/transfer`):
/// 2. its plugin must be known (`/modalities/m/plugin: unknown plugin "x" (known: a, b)`, listing
///    `known_plugins`) and of the slot's kind ("modality", "fusion", "transfer");
/// 3. its `config` must satisfy the manifest's config_schema, pointers re-anchored
///    (`/modalities/image/config/d_model: must be >= 1 (got 0)`);
/// 4. its manifest's required artifacts must be named in `/artifacts`;
/// 5. `evaluate.modalities` entries must name declared modalities (`/evaluate/modalities/0`);
/// 6. each task's metrics must apply to its type (`/tasks/t/metrics/0`).
/// On success, fills in the pipeline schema's defaults and each config's defaults; on failure
/// leaves `pipeline` as it was.
/// `explain_unknown`, when given, adds why a plugin of that name was not found (e.g. its
/// manifest was skipped at discovery); it returns "" when it knows nothing.
std::vector<SchemaError> validate_pipeline(
    nlohmann::json& pipeline, const ManifestLookup& lookup, const std::vector<std::string>& known_plugins,
    const std::function<std::string(const std::string& name)>& explain_unknown = {});

}  // namespace modalkit::schema
