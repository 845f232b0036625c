/// \file
/// Checks shared by the schema fuzz targets. A failed check aborts, which libFuzzer reports as a
/// crash with the input that caused it.
#pragma once

#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "schema/json_schema.hpp"

namespace modalkit::fuzz {

/// Aborts with `what` and the offending document.
[[noreturn]] inline void fail(const std::string& what, const nlohmann::json& doc) {
  std::fprintf(stderr, "fuzz check failed: %s\ndocument: %s\n", what.c_str(),
               doc.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace).c_str());
  std::abort();
}

/// Every error must have a message that is valid UTF-8 (messages end up in JSON output, where
/// nlohmann would throw on anything else) and a well-formed pointer.
inline void check_errors(const std::vector<schema::SchemaError>& errors, const nlohmann::json& doc) {
  for (const auto& e : errors) {
    if (e.message.empty()) fail("empty message at " + e.pointer, doc);
    try {
      (void)nlohmann::json(e.message).dump();
      (void)nlohmann::json::json_pointer(e.pointer);
    } catch (const nlohmann::json::exception& x) {
      fail(std::string("bad error text: ") + x.what() + " in " + e.pointer + ": " + e.message, doc);
    }
  }
}

/// Whether the schema uses a keyword where valijson 1.0 is known to be wrong, so the two
/// implementations may rightly disagree: `format` (applied to non-strings: rejects them, or throws
/// on objects) and `multipleOf` (truncates fractions: accepts 2.5 as a multiple of 1).
inline bool valijson_unreliable(const schema::JsonSchema& schema) {
  const std::string text = schema.document().dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
  return text.find("\"format\"") != std::string::npos || text.find("\"multipleOf\"") != std::string::npos;
}

/// Our evaluator and valijson must agree on whether `doc` is valid. Skipped when ours refused a
/// value as too long or deep to check (valijson would crash on exactly those), and for schemas
/// where valijson is known to be wrong.
inline void check_agreement(const schema::JsonSchema& schema, const nlohmann::json& doc, const char* what) {
  const std::vector<schema::SchemaError> ours = schema.validate(doc);
  check_errors(ours, doc);
  if (valijson_unreliable(schema)) return;
  for (const auto& e : ours) {
    if (e.message.find("too long to match") != std::string::npos || e.message.find("deeper than") != std::string::npos ||
        e.message.find("nested too deeply") != std::string::npos) {
      return;
    }
  }
  const std::vector<schema::SchemaError> reference = schema::reference_validate(schema, doc);
  if (ours.empty() != reference.empty()) {
    fail(std::string(what) + ": evaluator and valijson disagree\nschema: " + schema.document().dump() +
             "\nours:\n" + schema::format_errors(ours, "") + "valijson:\n" + schema::format_errors(reference, ""),
         doc);
  }
}

}  // namespace modalkit::fuzz
