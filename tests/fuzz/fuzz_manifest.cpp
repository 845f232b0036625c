// libFuzzer target: bytes -> parse_json_text -> parse_manifest. Only the documented exceptions
// (JsonFileError, ValidationFailed) may come out; anything else, a sanitizer report or a failed
// check is a bug. A manifest's config_schema is arbitrary JSON from a plugin author, so this also
// fuzzes the schema compiler, and compares our evaluator with valijson on a few documents.
#include <cstddef>
#include <cstdint>
#include <string_view>
#include <utility>

#include "fuzz_common.hpp"
#include "schema/builtin_schemas.hpp"
#include "schema/json_file.hpp"
#include "schema/manifest.hpp"

using modalkit::fuzz::check_agreement;
using modalkit::fuzz::check_errors;
using modalkit::fuzz::fail;
using namespace modalkit::schema;

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  nlohmann::json doc;
  try {
    doc = parse_json_text(std::string_view(reinterpret_cast<const char*>(data), size), "fuzz.plugin.json");
  } catch (const JsonFileError& e) {
    try {
      (void)nlohmann::json(e.what()).dump();  // messages must be UTF-8 for JSON output
    } catch (const nlohmann::json::exception&) {
      fail(std::string("JsonFileError message is not UTF-8: ") + e.what(), nullptr);
    }
    return 0;
  }
  check_agreement(builtin_schema("plugin"), doc, "plugin schema");
  try {
    const Manifest m = parse_manifest(doc, "plugins/fuzz/fuzz.plugin.json");
    if (m.library.find('/') != std::string::npos || m.library == ".." || m.library == ".") fail("library escapes", doc);
    if (!m.config_validator) fail("no compiled config schema", doc);
    if (m.raw != doc) fail("raw differs from the input", doc);
    // The config schema against a few documents: the empty config, its own defaults filled in,
    // and arbitrary parts of the input.
    const JsonSchema& config = *m.config_validator;
    nlohmann::json filled = nlohmann::json::object();
    config.fill_defaults(filled);
    for (const nlohmann::json* candidate : {&std::as_const(filled), &std::as_const(doc), &m.config_schema, &m.artifacts}) {
      check_agreement(config, *candidate, "config schema");
      nlohmann::json copy = *candidate;
      config.fill_defaults(copy);
    }
    // `examples` (an annotation) lets the fuzzer supply arbitrary documents next to the schema.
    if (const auto it = m.config_schema.find("examples"); it != m.config_schema.end() && it->is_array()) {
      for (const nlohmann::json& example : *it) {
        check_agreement(config, example, "config schema example");
        nlohmann::json copy = example;
        config.fill_defaults(copy);
      }
    }
  } catch (const ValidationFailed& e) {
    if (e.errors().empty()) fail("ValidationFailed without errors", doc);
    check_errors(e.errors(), doc);
  }
  return 0;
}
