#include "schema/pipeline.hpp"

#include <algorithm>
#include <map>
#include <memory>
#include <utility>

#include "schema/builtin_schemas.hpp"
#include "schema/internal/compiled_schema.hpp"

namespace modalkit::schema {

namespace {

using nlohmann::json;

std::string quoted(const std::string& s) { return internal::preview(json(s)); }

std::string with_article(const std::string& kind) {
  const bool vowel = !kind.empty() && std::string("aeiou").find(kind[0]) != std::string::npos;
  return (vowel ? "an " : "a ") + kind;
}

/// Checks one component (`{plugin, config, sha256}` at `pointer` in `doc`) against its
/// manifest, filling its config's defaults when it is valid.
void check_component(json& component, const std::string& pointer, const std::string& kind,
                     const ManifestLookup& lookup, const std::vector<std::string>& known_plugins,
                     const json& artifacts, const std::function<std::string(const std::string&)>& explain_unknown,
                     std::vector<SchemaError>& errors) {
  const std::string name = component.at("plugin").get<std::string>();
  const Manifest* manifest = lookup ? lookup(name) : nullptr;
  if (manifest == nullptr) {
    std::string why = explain_unknown ? explain_unknown(name) : std::string();
    errors.push_back({pointer + "/plugin", "unknown plugin " + quoted(name) + " (known: " + join_names(known_plugins) + ")" +
                                               (why.empty() ? "" : "; " + why)});
    return;
  }
  if (manifest->kind != kind) {
    errors.push_back({pointer + "/plugin", "plugin " + quoted(name) + " is " + with_article(manifest->kind) +
                                               " plugin, expected " + with_article(kind) + " plugin"});
    return;
  }
  // Artifacts the plugin cannot work without must be named by the pipeline now, not fail
  // when the plugin first asks for them mid-run.
  for (const json& artifact : manifest->artifacts) {
    const std::string artifact_name = artifact.at("name").get<std::string>();
    if (artifact.value("required", true) && !artifacts.contains(artifact_name)) {
      errors.push_back({pointer + "/plugin", "plugin " + quoted(name) + " needs the artifact " + quoted(artifact_name) +
                                                 " (a " + artifact.at("type").get<std::string>() +
                                                 "); name it in /artifacts"});
    }
  }
  std::shared_ptr<const JsonSchema> config_schema = manifest->config_validator;
  if (!config_schema) {
    try {
      config_schema = std::make_shared<const JsonSchema>(
          JsonSchema::compile(manifest->config_schema, manifest->file.string() + ": config_schema"));
    } catch (const SchemaCompileError& e) {
      errors.push_back({pointer + "/plugin", "plugin " + quoted(name) + " has an unusable config_schema: " + e.what()});
      return;
    }
  }
  json& config = component.at("config");
  std::vector<SchemaError> config_errors = config_schema->validate(config);
  if (config_errors.empty()) {
    config_schema->fill_defaults(config);
    return;
  }
  for (SchemaError& e : config_errors) errors.push_back({pointer + "/config" + e.pointer, std::move(e.message)});
}

/// Where the samples come from: one data set (`/data/dataset`, each modality naming its field),
/// or, in a multitask pipeline, one per task (`/tasks/<task>/data`, each task mapping the
/// modalities it sees to its data set's fields). Mixing the two forms is an error.
void check_data_sources(const json& doc, std::vector<SchemaError>& errors) {
  const json& tasks = doc.at("tasks");
  const json& modalities = doc.at("modalities");
  std::vector<std::string> with_data;
  for (const auto& [task, spec] : tasks.items()) {
    if (spec.contains("data")) with_data.push_back(task);
  }
  if (with_data.empty()) {
    if (!doc.at("data").contains("dataset")) {
      errors.push_back({"/data", "missing required field \"dataset\" (or give every task its own, /tasks/<task>/data, "
                                 "for a multitask pipeline)"});
    }
    for (const auto& [m, spec] : modalities.items()) {
      if (!spec.contains("field")) {
        errors.push_back({append_pointer("/modalities", m), "missing required field \"field\" (the data set field it reads)"});
      }
    }
    for (const auto& [task, spec] : tasks.items()) {
      for (const char* key : {"modalities", "weight"}) {
        if (spec.contains(key)) {
          errors.push_back({append_pointer("/tasks", task) + "/" + key,
                            "only for a multitask pipeline, whose tasks name their own data sets (/tasks/" + task + "/data)"});
        }
      }
    }
    if (doc.at("train").contains("task_sampling")) {
      errors.push_back({"/train/task_sampling", "only for a multitask pipeline, whose tasks name their own data sets "
                                                "(/tasks/<task>/data)"});
    }
    return;
  }
  const std::string& first = with_data.front();  // const: a plain std::string& would pick std::quoted by ADL
  const std::string multitask = " in a multitask pipeline (task " + quoted(first) + " names its own data set)";
  if (doc.at("data").contains("dataset")) {
    errors.push_back({"/data/dataset", "must be absent" + multitask + "; give every task its /tasks/<task>/data"});
  }
  std::map<std::string, int> seen;  // modality -> tasks that map it
  for (const auto& [task, spec] : tasks.items()) {
    const std::string at = append_pointer("/tasks", task);
    if (!spec.contains("data")) {
      errors.push_back({at, "missing required field \"data\"" + multitask + ": every task names its data set"});
    }
    if (!spec.contains("modalities")) {
      errors.push_back({at, "missing required field \"modalities\"" + multitask +
                                ": the modalities this task sees, each mapped to a field of its data set"});
      continue;
    }
    for (const auto& [m, field] : spec.at("modalities").items()) {
      if (!modalities.contains(m)) {
        errors.push_back({append_pointer(at + "/modalities", m), "unknown modality " + quoted(m) + " (declared in /modalities: " +
                                                                    join_keys(modalities) + ")"});
      }
      ++seen[m];
    }
  }
  for (const auto& [m, spec] : modalities.items()) {
    if (spec.contains("field")) {
      errors.push_back({append_pointer("/modalities", m) + "/field",
                        "must be absent" + multitask + ": each task maps the modality to its data set's field in "
                                                       "/tasks/<task>/modalities"});
    }
    if (!seen.count(m)) {
      errors.push_back({append_pointer("/modalities", m), "no task sees modality " + quoted(m) +
                                                             " (map it in some /tasks/<task>/modalities, or remove it)"});
    }
  }
}

/// `/data/unlabelled` = "auxiliary" keeps unlabelled training rows for a strategy's auxiliary
/// losses: only where one data set pairs every modality per instance (not a stream, not a
/// multitask pipeline's several sets) and only for a strategy that says it learns from them.
void check_unlabelled(const json& doc, const Manifest* strategy, const ManifestLookup& lookup,
                      const std::vector<std::string>& known_plugins, std::vector<SchemaError>& errors) {
  const json& data = doc.at("data");
  if (!data.contains("unlabelled") || data.at("unlabelled") != "auxiliary") return;
  if (data.contains("stream")) {
    errors.push_back({"/data/unlabelled", "must be absent: a stream has no labels to withhold"});
    return;
  }
  if (!data.contains("dataset")) {
    errors.push_back({"/data/unlabelled", "\"auxiliary\" needs one data set (/data/dataset); a multitask pipeline's tasks "
                                          "read several"});
    return;
  }
  // Held-out splits keep their labels: one that is also the train split would be scored against
  // the withheld ones.
  const json& splits = data.at("splits");
  for (const char* role : {"val", "test"}) {
    if (splits.at(role) == splits.at("train")) {
      errors.push_back({std::string("/data/splits/") + role,
                        "must differ from /data/splits/train under data.unlabelled = \"auxiliary\", whose training "
                        "samples outside the label subset have no labels"});
      return;
    }
  }
  if (strategy == nullptr || strategy->kind != "transfer" || strategy->learns_from_unlabelled) return;
  std::vector<std::string> able;
  for (const auto& name : known_plugins) {
    const Manifest* m = lookup(name);
    if (m != nullptr && m->kind == "transfer" && m->learns_from_unlabelled) able.push_back(name);
  }
  errors.push_back({"/data/unlabelled", "\"auxiliary\" keeps training samples without labels, and transfer plugin " +
                                            quoted(strategy->name) + " has no loss that learns from them; use \"drop\"" +
                                            (able.empty() ? std::string() : ", or a strategy that does (" + join_names(able) + ")")});
}

}  // namespace

std::vector<std::string> metrics_for(const std::string& task_type) {
  if (task_type == "regression") return {"mae", "pearson_r"};
  if (task_type == "generation") return {"accuracy", "exact_match"};
  if (task_type == "multilabel") return {"subset_accuracy", "micro_f1", "macro_f1", "auroc", "auprc"};
  if (task_type == "binary") return {"accuracy", "macro_f1", "auroc", "auprc"};
  return {"accuracy", "macro_f1"};  // multiclass: the ranking metrics are defined for one score per sample
}

bool metric_applies(const std::string& metric, const std::string& task_type) {
  const auto ok = metrics_for(task_type);
  return std::find(ok.begin(), ok.end(), metric) != ok.end();
}

std::string metric_mismatch(const std::string& metric, const std::string& task_type) {
  if (metric_applies(metric, task_type)) return "";
  const auto ok = metrics_for(task_type);
  return "metric " + quoted(metric) + " does not apply to a " + task_type + " task (" +
         (ok.empty() ? std::string("none does yet") : "use " + join_names(ok)) + ")";
}

std::vector<SchemaError> validate_pipeline(nlohmann::json& pipeline, const ManifestLookup& lookup,
                                           const std::vector<std::string>& known_plugins,
                                           const std::function<std::string(const std::string&)>& explain_unknown) {
  const JsonSchema& schema = builtin_schema("pipeline");
  std::vector<SchemaError> errors = schema.validate(pipeline);
  if (!errors.empty()) return errors;  // components are only meaningful in a well-formed pipeline

  json doc = pipeline;  // work on a copy: `pipeline` changes only when everything is valid
  // A task without metrics gets its type's first one (accuracy, subset_accuracy, mae), not the
  // schema's multiclass default, which would be an error for the other types.
  if (!doc.contains("tasks")) doc["tasks"] = json::object();  // task-less (pretraining)
  for (auto& [task, spec] : doc.at("tasks").items()) {
    const auto fits = metrics_for(spec.at("type").get<std::string>());
    if (!spec.contains("metrics") && !fits.empty()) spec["metrics"] = json::array({fits.front()});
  }
  schema.fill_defaults(doc);  // gives every component a `config` object to validate
  // Where the batches come from: modalities fused by a fusion operator, or a stream that cuts
  // whole batches itself (pretraining); never both.
  if (doc.at("data").contains("stream")) {
    const std::string why = " (a pipeline with /data/stream takes whole batches from the stream; it has no modalities, "
                            "fusion or tasks)";
    if (!doc.at("modalities").empty()) errors.push_back({"/modalities", "must be empty" + why});
    if (doc.contains("fusion")) errors.push_back({"/fusion", "must be absent" + why});
    if (!doc.at("tasks").empty()) errors.push_back({"/tasks", "must be empty" + why});
    if (doc.at("data").at("label_fraction") != 1) {
      errors.push_back({"/data/label_fraction", "must be 1: a stream has no labels to withhold"});
    }
    check_component(doc.at("data").at("stream"), "/data/stream", "stream", lookup, known_plugins, doc.at("artifacts"),
                    explain_unknown, errors);
  } else {
    if (doc.at("modalities").empty()) {
      errors.push_back({"/modalities", "declares no modality; a pipeline needs at least one, or a /data/stream that "
                                       "yields whole batches"});
    }
    check_data_sources(doc, errors);
  }
  // A strategy with its own shared backbone (multitask) reads no fusion operator; every other
  // strategy needs one when the pipeline has modalities.
  const Manifest* transfer = lookup ? lookup(doc.at("transfer").at("plugin").get<std::string>()) : nullptr;
  const bool uses_fusion = transfer == nullptr || transfer->kind != "transfer" || transfer->uses_fusion;
  if (!uses_fusion && doc.contains("fusion")) {
    errors.push_back({"/fusion", "must be absent: transfer plugin " + quoted(transfer->name) +
                                     " fuses the modalities in its own backbone and reads no fusion operator"});
  } else if (uses_fusion && !doc.at("data").contains("stream") && !doc.contains("fusion")) {
    errors.push_back({"", "missing required field \"fusion\" (a pipeline with modalities needs a fusion operator, "
                          "e.g. {\"plugin\": \"concat\"})"});
  }
  for (auto& [modality, component] : doc.at("modalities").items()) {
    check_component(component, append_pointer("/modalities", modality), "modality", lookup, known_plugins,
                    doc.at("artifacts"), explain_unknown, errors);
  }
  if (doc.contains("fusion")) {
    check_component(doc.at("fusion"), "/fusion", "fusion", lookup, known_plugins, doc.at("artifacts"), explain_unknown, errors);
  }
  check_component(doc.at("transfer"), "/transfer", "transfer", lookup, known_plugins, doc.at("artifacts"), explain_unknown, errors);

  // The strategy must train every task's type (a generation task needs one that conditions a
  // language model); said with the plugins that do.
  const Manifest* strategy = lookup ? lookup(doc.at("transfer").at("plugin").get<std::string>()) : nullptr;
  for (const auto& [task, spec] : doc.at("tasks").items()) {
    const std::string type = spec.at("type").get<std::string>();
    if (strategy == nullptr || strategy->kind != "transfer" ||
        std::find(strategy->task_types.begin(), strategy->task_types.end(), type) != strategy->task_types.end()) {
      continue;
    }
    std::vector<std::string> able;
    for (const auto& name : known_plugins) {
      const Manifest* m = lookup(name);
      if (m != nullptr && m->kind == "transfer" && std::find(m->task_types.begin(), m->task_types.end(), type) != m->task_types.end()) {
        able.push_back(name);
      }
    }
    errors.push_back({append_pointer("/tasks", task) + "/type",
                      "transfer plugin " + quoted(strategy->name) + " does not train " + type + " tasks (it trains " +
                          join_names(strategy->task_types) + ")" +
                          (able.empty() ? std::string() : "; " + join_names(able) + " do")});
  }
  check_unlabelled(doc, strategy, lookup, known_plugins, errors);
  for (const auto& [task, spec] : doc.at("tasks").items()) {
    const std::string type = spec.at("type").get<std::string>();
    const json& metrics = spec.at("metrics");
    for (std::size_t i = 0; i < metrics.size(); ++i) {
      const std::string metric = metrics[i].get<std::string>();
      if (const std::string why = metric_mismatch(metric, type); !why.empty()) {
        errors.push_back({append_pointer("/tasks", task) + "/metrics/" + std::to_string(i), why});
      }
    }
  }

  // No default object: pipelines without protocols keep the hash they had before protocols existed.
  json no_protocols = json::object();
  for (auto& [name, component] : (doc.at("evaluate").contains("protocols") ? doc.at("evaluate").at("protocols") : no_protocols).items()) {
    if (doc.at("tasks").contains(name)) {
      errors.push_back({append_pointer("/evaluate/protocols", name), "has the name of a task; experiments read both as " + name + "/METRIC"});
    }
    check_component(component, append_pointer("/evaluate/protocols", name), "evaluation", lookup, known_plugins,
                    doc.at("artifacts"), explain_unknown, errors);
  }
  if (const json& evaluate = doc.at("evaluate"); evaluate.contains("modalities")) {
    const json& declared = doc.at("modalities");
    const json& chosen = evaluate.at("modalities");
    for (std::size_t i = 0; i < chosen.size(); ++i) {
      const std::string name = chosen[i].get<std::string>();
      if (!declared.contains(name)) {
        errors.push_back({"/evaluate/modalities/" + std::to_string(i),
                          "unknown modality " + quoted(name) + " (declared: " + join_keys(declared) + ")"});
      }
    }
  }
  if (errors.empty()) pipeline = std::move(doc);
  return errors;
}

}  // namespace modalkit::schema
