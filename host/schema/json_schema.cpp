// JsonSchema's public face: compile (our checks, then valijson's parser), validate and fill
// through the compiled node graph, valijson as the reference, and error formatting.

// GCC 12 reports a false -Wmaybe-uninitialized inside libstdc++'s <regex> (std::function in
// _StateT) when optimizing with sanitizers; it must be off before any standard header is read.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif
#include "schema/json_schema.hpp"

#include <utility>

#include "schema/internal/compiled_schema.hpp"

// valijson reports errors by calling abort() unless told to throw. Only this file includes
// valijson, so the setting is the same everywhere it is used (no ODR surprise).
#define VALIJSON_USE_EXCEPTIONS 1
#if defined(__GNUC__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wunused-parameter"
#pragma GCC diagnostic ignored "-Wshadow"
#endif
#include <valijson/adapters/nlohmann_json_adapter.hpp>
#include <valijson/schema.hpp>
#include <valijson/schema_parser.hpp>
#include <valijson/validation_results.hpp>
#include <valijson/validator.hpp>
#if defined(__GNUC__)
#pragma GCC diagnostic pop
#endif

namespace modalkit::schema {

namespace {

std::string compile_message(const std::string& origin, const std::string& pointer, const std::string& detail) {
  return origin + ": " + (pointer.empty() ? std::string("/") : pointer) + ": " + detail;
}

}  // namespace

SchemaCompileError::SchemaCompileError(const std::string& origin, std::string pointer, std::string detail)
    : std::invalid_argument(compile_message(origin, pointer, detail)),
      pointer_(std::move(pointer)),
      detail_(std::move(detail)) {}

JsonSchema::JsonSchema(std::shared_ptr<const internal::CompiledSchema> compiled) : compiled_(std::move(compiled)) {}

JsonSchema JsonSchema::compile(const nlohmann::json& schema, const std::string& origin) {
  std::shared_ptr<internal::CompiledSchema> compiled = internal::build(schema, origin);
  // valijson must accept the schema too: it is the reference our evaluator is tested against.
  try {
    auto reference = std::make_shared<valijson::Schema>();
    valijson::SchemaParser parser(valijson::SchemaParser::kDraft7);
    const valijson::adapters::NlohmannJsonAdapter adapter(compiled->document);
    parser.populateSchema(adapter, *reference);
    compiled->reference = std::move(reference);
  } catch (const std::exception& e) {
    throw SchemaCompileError(origin, "", std::string("rejected by valijson: ") + e.what());
  }
  return JsonSchema(std::move(compiled));
}

std::vector<SchemaError> JsonSchema::validate(const nlohmann::json& doc) const {
  return internal::evaluate(*compiled_->root, doc);
}

void JsonSchema::fill_defaults(nlohmann::json& doc) const { internal::fill_defaults(*compiled_->root, doc); }

const nlohmann::json& JsonSchema::document() const { return compiled_->document; }

const std::string& JsonSchema::origin() const { return compiled_->origin; }

std::vector<SchemaError> reference_validate(const JsonSchema& schema, const nlohmann::json& doc) {
  // A Validator caches compiled regexes and is not thread-safe: one per call.
  valijson::Validator validator(valijson::Validator::kStrongTypes);
  valijson::ValidationResults results;
  const valijson::adapters::NlohmannJsonAdapter adapter(doc);
  if (validator.validate(*schema.compiled_->reference, adapter, &results)) return {};
  std::vector<internal::ReferenceError> raw;
  for (const auto& error : results) raw.emplace_back(error.context, error.description);
  return internal::fold_reference_errors(raw, doc);
}

std::string join_names(const std::vector<std::string>& names) {
  std::string out;
  for (const auto& n : names) out += (out.empty() ? "" : ", ") + n;
  return out.empty() ? "none" : out;
}

std::string join_keys(const nlohmann::json& object) {
  std::vector<std::string> names;
  for (const auto& [key, value] : object.items()) names.push_back(key);
  return join_names(names);
}

std::string format_errors(const std::vector<SchemaError>& errors, const std::string& file) {
  std::string out;
  for (const SchemaError& e : errors) {
    if (!file.empty()) out += file + ": ";
    out += (e.pointer.empty() ? std::string("/") : e.pointer) + ": " + e.message + "\n";
  }
  return out;
}

ValidationFailed::ValidationFailed(std::string file, std::vector<SchemaError> errors)
    : std::runtime_error(format_errors(errors, file)), file_(std::move(file)), errors_(std::move(errors)) {}

std::string append_pointer(const std::string& pointer, const std::string& token) {
  std::string out = pointer;
  out.reserve(pointer.size() + token.size() + 1);
  out += '/';
  for (char c : token) {
    if (c == '~') {
      out += "~0";
    } else if (c == '/') {
      out += "~1";
    } else {
      out += c;
    }
  }
  return out;
}

}  // namespace modalkit::schema
