#include "schema/manifest.hpp"

#include <utility>
#include <vector>

#include "schema/builtin_schemas.hpp"
#include "schema/internal/compiled_schema.hpp"
#include "schema/json_file.hpp"

namespace modalkit::schema {

std::filesystem::path Manifest::library_path() const { return file.parent_path() / library; }

Manifest parse_manifest(const nlohmann::json& doc, const std::filesystem::path& origin) {
  const std::string where = origin.string();
  std::vector<SchemaError> errors = builtin_schema("plugin").validate(doc);
  if (!errors.empty()) throw ValidationFailed(where, std::move(errors));

  nlohmann::json filled = doc;
  builtin_schema("plugin").fill_defaults(filled);

  Manifest m;
  const std::string library = filled.at("library").get<std::string>();
  if (library.find('/') != std::string::npos || library.find('\0') != std::string::npos || library == "." ||
      library == "..") {
    errors.push_back({"/library", "must be a file name in the manifest's own directory (got " +
                                      internal::preview(filled.at("library")) + ")"});
  }
  try {
    m.config_validator = std::make_shared<const JsonSchema>(
        JsonSchema::compile(filled.at("config_schema"), where + ": config_schema"));
  } catch (const SchemaCompileError& e) {
    errors.push_back({"/config_schema" + e.pointer(), "not a usable JSON Schema: " + e.detail()});
  }
  if (!errors.empty()) throw ValidationFailed(where, std::move(errors));

  m.name = filled.at("name").get<std::string>();
  m.kind = filled.at("kind").get<std::string>();
  m.version = filled.at("version").get<std::string>();
  m.library = library;
  m.description = filled.at("description").get<std::string>();
  // In range: the schema bounds both to [0, 65535].
  m.abi_major = filled.at("abi").at("major").get<int>();
  m.abi_minor = filled.at("abi").at("minor").get<int>();
  m.config_schema = filled.at("config_schema");
  m.output = filled.value("output", nlohmann::json());
  m.artifacts = filled.at("artifacts");
  m.produces = filled.at("produces");
  if (filled.contains("field_types")) m.field_types = filled.at("field_types").get<std::vector<std::string>>();
  m.task_types = filled.contains("task_types") ? filled.at("task_types").get<std::vector<std::string>>()
                                               : std::vector<std::string>{"multiclass", "binary", "multilabel", "regression"};
  m.uses_fusion = filled.value("uses_fusion", true);
  m.learns_from_unlabelled = filled.value("learns_from_unlabelled", false);
  m.raw = doc;
  m.file = origin;
  return m;
}

Manifest load_manifest(const std::filesystem::path& file) { return parse_manifest(read_json_file(file), file); }

}  // namespace modalkit::schema
