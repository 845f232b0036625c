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
      throw Error("--set " + set + ": expected path=value, e.g. --set train.epochs=3");
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
      throw Error("--set " + set + ": cannot set " + path + " (" + e.what() + ")");
    }
  }
}

ResolvedPipeline load_pipeline(const std::filesystem::path& file, const std::vector<std::string>& sets,
                               const PluginRegistry& registry) {
  ResolvedPipeline out;
  out.file = file;
  out.doc = schema::read_json_file(file);
  apply_overrides(out.doc, sets);
  auto lookup = [&](const std::string& name) { return registry.find(name); };
  auto errors = schema::validate_pipeline(out.doc, lookup, registry.names());
  if (!errors.empty()) throw schema::ValidationFailed(file.string(), std::move(errors));
  std::filesystem::path dataset = out.doc.at("data").at("dataset").get<std::string>();
  out.dataset = dataset.is_absolute() ? dataset : file.parent_path() / dataset;
  out.hash = sha256_text(out.doc.dump());
  return out;
}

}  // namespace modalkit::host
