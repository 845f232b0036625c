#include "pipeline.hpp"

#include "hashing.hpp"
#include "modalkit/errors.hpp"
#include "schema/json_file.hpp"
#include "schema/json_schema.hpp"
#include "schema/pipeline.hpp"

namespace modalkit::host {

void apply_overrides(nlohmann::json& doc, const std::vector<std::string>& sets) {
  for (const auto& set : sets) {
    const auto eq = set.find('=');
    if (eq == std::string::npos || eq == 0) {
      throw UsageError("--set " + set + ": expected path=value, e.g. --set train.epochs=3");
    }
    std::string path = set.substr(0, eq);
    const std::string text = set.substr(eq + 1);
    if (path[0] != '/') {
      std::string pointer;
      for (char c : path) pointer += (c == '.') ? '/' : c;
      path = "/" + pointer;
    }
    nlohmann::json value = nlohmann::json::parse(text, nullptr, /*allow_exceptions=*/false);
    if (value.is_discarded()) value = text;  // a bare word is a string
    try {
      doc[nlohmann::json::json_pointer(path)] = value;
    } catch (const nlohmann::json::exception& e) {
      throw UsageError("--set " + set + ": cannot set " + path + " (" + e.what() + ")");
    }
  }
}

ResolvedPipeline load_pipeline(const std::filesystem::path& file, const std::vector<std::string>& sets,
                               const PluginRegistry& registry, std::filesystem::path base_dir) {
  ResolvedPipeline out;
  out.file = file;
  out.base_dir = base_dir.empty() ? file.parent_path() : std::move(base_dir);
  out.doc = schema::read_json_file(file);
  apply_overrides(out.doc, sets);
  auto lookup = [&](const std::string& name) { return registry.find(name); };
  auto explain = [&](const std::string& name) { return registry.skipped_reason(name); };
  auto errors = schema::validate_pipeline(out.doc, lookup, registry.names(), explain);
  if (!errors.empty()) throw schema::ValidationFailed(file.string(), std::move(errors));
  out.sources = data_sources(out.doc, out.base_dir);
  out.multitask = out.sources.front().pointer != "/data";
  out.dataset = out.sources.front().file;
  // How a run is shown is not what it computes: the progress display is hashed at its default, so
  // a run started under a terminal resumes from a script (and existing hashes stay as they were).
  nlohmann::json identity = out.doc;
  if (identity.contains("train") && identity["train"].contains("progress")) identity["train"]["progress"] = "auto";
  out.hash = sha256_text(identity.dump());
  return out;
}

std::vector<DataSource> data_sources(const nlohmann::json& doc, const std::filesystem::path& base_dir) {
  const nlohmann::json& data = doc.at("data");
  auto resolve = [&](const nlohmann::json& path) {
    const std::filesystem::path p = path.get<std::string>();
    return p.is_absolute() ? p : base_dir / p;
  };
  std::vector<DataSource> out;
  if (data.contains("dataset")) {  // validate_pipeline: then no task names its own
    DataSource s;
    s.pointer = "/data";
    s.file = resolve(data.at("dataset"));
    for (const auto& [task, spec] : doc.at("tasks").items()) s.tasks.push_back(task);
    for (const auto& [m, spec] : doc.at("modalities").items()) {
      s.fields[m] = spec.at("field");
      s.pointers[m] = schema::append_pointer("/modalities", m) + "/field";
    }
    s.label_fraction = data.at("label_fraction");
    for (const auto& [role, split] : data.at("splits").items()) {
      s.splits[role] = split;
      s.split_pointers[role] = "/data/splits/" + role;
    }
    out.push_back(std::move(s));
    return out;
  }
  for (const auto& [task, spec] : doc.at("tasks").items()) {
    const nlohmann::json& own = spec.at("data");
    DataSource s;
    s.pointer = schema::append_pointer("/tasks", task) + "/data";
    s.file = resolve(own.at("dataset"));
    s.tasks = {task};
    for (const auto& [m, field] : spec.at("modalities").items()) {
      s.fields[m] = field;
      s.pointers[m] = schema::append_pointer(schema::append_pointer("/tasks", task) + "/modalities", m);
    }
    s.label_fraction = own.value("label_fraction", data.at("label_fraction").get<double>());
    for (const auto& [role, split] : data.at("splits").items()) {  // the task's own names win
      const bool mine = own.contains("splits") && own.at("splits").contains(role);
      s.splits[role] = mine ? own.at("splits").at(role) : split;
      s.split_pointers[role] = mine ? s.pointer + "/splits/" + role : "/data/splits/" + role;
    }
    s.weight = spec.value("weight", 1.0);
    out.push_back(std::move(s));
  }
  return out;
}

ResolvedPipeline load_run_pipeline(const std::filesystem::path& run_dir, const PluginRegistry& registry) {
  const std::filesystem::path run_file = run_dir / "run.json";
  if (!std::filesystem::exists(run_file)) {
    throw Error(run_dir.string() + ": not a run directory (no run.json)");
  }
  const nlohmann::json run = schema::read_json_file(run_file);
  if (!run.is_object() || !run.contains("pipeline_dir") || !run.at("pipeline_dir").is_string()) {
    throw Error(run_file.string() + ": has no \"pipeline_dir\" (a run from an older modalkit: pass PIPELINE.json)");
  }
  return load_pipeline(run_dir / "pipeline.json", {}, registry, run.at("pipeline_dir").get<std::string>());
}

}  // namespace modalkit::host
