// libFuzzer target: bytes -> parse_json_text -> validate_pipeline, with two fake modality
// plugins, a fusion and a transfer plugin. Checks beyond "no crash": our evaluator agrees with
// valijson on the pipeline schema, every error pointer resolves in the document, and a pipeline
// that validated still validates after its defaults were filled in (filling is idempotent).
#include <cstddef>
#include <cstdint>
#include <map>
#include <string_view>

#include "fuzz_common.hpp"
#include "schema/builtin_schemas.hpp"
#include "schema/json_file.hpp"
#include "schema/manifest.hpp"
#include "schema/pipeline.hpp"

using modalkit::fuzz::check_agreement;
using modalkit::fuzz::check_errors;
using modalkit::fuzz::fail;
using namespace modalkit::schema;

namespace {

const std::map<std::string, Manifest>& manifests() {
  static const std::map<std::string, Manifest> all = [] {
    auto make = [](const char* name, const char* kind, const char* config_schema) {
      nlohmann::json doc = {{"name", name},
                            {"kind", kind},
                            {"version", "1.0.0"},
                            {"abi", {{"major", 1}, {"minor", 0}}},
                            {"library", std::string("libmodalkit_") + name + ".so"},
                            {"description", "fuzz"},
                            {"config_schema", nlohmann::json::parse(config_schema)}};
      return parse_manifest(doc, std::string("/fuzz/") + name + ".plugin.json");
    };
    std::map<std::string, Manifest> out;
    for (Manifest m : {make("image", "modality",
                            R"({"type": "object", "additionalProperties": false, "properties": {
                                  "d_model": {"type": "integer", "minimum": 1, "default": 64},
                                  "channels": {"type": "integer", "enum": [1, 3], "default": 1},
                                  "size": {"type": "array", "items": {"type": "integer", "minimum": 4},
                                           "minItems": 2, "maxItems": 2, "default": [28, 28]}}})"),
                       make("sensor", "modality",
                            R"({"type": "object", "properties": {
                                  "window": {"type": "integer", "minimum": 1, "default": 16},
                                  "norm": {"type": "string", "enum": ["none", "zscore"], "default": "zscore"}},
                                "patternProperties": {"^x-": {"type": "string"}}})"),
                       make("concat", "fusion",
                            R"({"type": "object", "additionalProperties": false, "properties": {
                                  "modality_embeddings": {"type": "boolean", "default": true}}})"),
                       make("supervised", "transfer",
                            R"({"type": "object", "properties": {
                                  "modalities": {"type": "array", "items": {"type": "string"}, "uniqueItems": true},
                                  "weight": {"type": "number", "exclusiveMinimum": 0, "maximum": 10}},
                                "dependencies": {"weight": ["modalities"]}})")}) {
      out.emplace(m.name, std::move(m));
    }
    return out;
  }();
  return all;
}

const Manifest* lookup(const std::string& name) {
  const auto it = manifests().find(name);
  return it == manifests().end() ? nullptr : &it->second;
}

bool resolves(const nlohmann::json& doc, const std::string& pointer) {
  try {
    (void)doc.at(nlohmann::json::json_pointer(pointer));
    return true;
  } catch (const nlohmann::json::exception&) {
    return false;
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  nlohmann::json doc;
  try {
    doc = parse_json_text(std::string_view(reinterpret_cast<const char*>(data), size), "fuzz.pipeline.json");
  } catch (const JsonFileError& e) {
    try {
      (void)nlohmann::json(e.what()).dump();  // messages must be UTF-8 for JSON output
    } catch (const nlohmann::json::exception&) {
      fail(std::string("JsonFileError message is not UTF-8: ") + e.what(), nullptr);
    }
    return 0;
  }
  const std::vector<std::string> known = {"concat", "image", "sensor", "supervised"};
  check_agreement(builtin_schema("pipeline"), doc, "pipeline schema");

  const nlohmann::json original = doc;
  nlohmann::json with_defaults = doc;
  builtin_schema("pipeline").fill_defaults(with_defaults);
  const std::vector<SchemaError> errors = validate_pipeline(doc, lookup, known);
  check_errors(errors, original);
  for (const auto& e : errors) {
    if (!resolves(original, e.pointer) && !resolves(with_defaults, e.pointer)) {
      fail("error pointer does not resolve: " + e.pointer + ": " + e.message, original);
    }
  }
  if (errors.empty()) {
    nlohmann::json again = doc;
    const std::vector<SchemaError> second = validate_pipeline(again, lookup, known);
    if (!second.empty()) fail("filled pipeline no longer validates:\n" + format_errors(second, ""), doc);
    if (again != doc) fail("filling defaults twice changed the pipeline", doc);
  } else if (doc != original) {
    fail("an invalid pipeline was modified", original);
  }
  return 0;
}
