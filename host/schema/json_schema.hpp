/// \file
/// Draft-07 JSON Schema validation with errors a user can act on: every error at once, each as
/// a JSON pointer into the document plus what was expected and what was found, and the schema's
/// `default`s filled in afterwards. No LibTorch here, so fuzz targets and tools build in seconds.
#pragma once

#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace modalkit::schema {

/// One violation of a schema.
struct SchemaError {
  std::string pointer;  ///< RFC 6901 JSON pointer to the offending value ("" = the root)
  std::string message;  ///< what was expected and what was found, e.g. `must be >= 1 (got 0)`
};

/// Thrown by JsonSchema::compile when a schema cannot be used. what() is
/// `ORIGIN: /schema/location: problem`; pointer() and detail() give the parts, so a caller that
/// embeds schemas in larger documents (a manifest's config_schema) can re-anchor the pointer.
class SchemaCompileError : public std::invalid_argument {
 public:
  /// `origin` names the schema's source, `pointer` the location inside the schema.
  SchemaCompileError(const std::string& origin, std::string pointer, std::string detail);
  /// Location of the problem inside the schema document ("" = its root).
  const std::string& pointer() const noexcept { return pointer_; }
  /// The problem, without origin and pointer.
  const std::string& detail() const noexcept { return detail_; }

 private:
  std::string pointer_;
  std::string detail_;
};

namespace internal {
struct CompiledSchema;
}  // namespace internal

/// A compiled draft-07 schema. Cheap to copy (shares the compiled form) and safe to use from
/// several threads at once.
///
/// Validation is our own evaluator over a pre-compiled node graph, because valijson 1.0 cannot
/// be given untrusted documents: it overflows the stack on long strings under `pattern`, throws
/// on `format` applied to non-strings, says nothing when `propertyNames` fails, and its messages
/// name neither the expected nor the found value. valijson still compiles every schema (a schema
/// it rejects is refused) and serves as the oracle of the differential tests and fuzz targets
/// (reference_validate). Only local `$ref`s (`#...`) are supported: a plugin's schema cannot make
/// the host fetch anything.
class JsonSchema {
 public:
  /// Compiles `schema`; throws SchemaCompileError (a std::invalid_argument) naming `origin` when
  /// it is not a usable schema: not draft-07, an unknown keyword (a typo would silently do
  /// nothing; vendor extensions must start with `x-`), a bad regex, an unresolvable or
  /// non-local `$ref`, a `$ref` loop that never descends into the document, or a `default` that
  /// its own schema rejects (filling it in would make a valid document invalid).
  static JsonSchema compile(const nlohmann::json& schema, const std::string& origin);

  /// Every error at once, cascades folded, each with the offending value; empty when valid.
  std::vector<SchemaError> validate(const nlohmann::json& doc) const;

  /// Walks the schema's `default`s into `doc`: missing properties of objects, recursively,
  /// including inside objects that were themselves filled from a default. Call after validate()
  /// reported no errors (on an invalid document it fills what it can).
  void fill_defaults(nlohmann::json& doc) const;

  /// The schema document as compiled.
  const nlohmann::json& document() const;

  /// Where the schema came from (as given to compile()).
  const std::string& origin() const;

 private:
  explicit JsonSchema(std::shared_ptr<const internal::CompiledSchema> compiled);
  friend std::vector<SchemaError> reference_validate(const JsonSchema& schema, const nlohmann::json& doc);

  std::shared_ptr<const internal::CompiledSchema> compiled_;
};

/// Validates `doc` with valijson alone, its errors converted to JSON pointers with cascades
/// folded. For differential tests and fuzzing only: valijson is unsafe on untrusted documents
/// (see JsonSchema), so call it only on documents within the limits validate() enforces; it may
/// throw std::runtime_error (e.g. `format` applied to an object).
std::vector<SchemaError> reference_validate(const JsonSchema& schema, const nlohmann::json& doc);

/// `FILE: /a/b: message` lines, one per error, each ending in '\n' (pointer "" shown as "/");
/// without the `FILE: ` part when `file` is empty.
std::string format_errors(const std::vector<SchemaError>& errors, const std::string& file);

/// Thrown when a document fails validation; what() is format_errors(errors, file).
class ValidationFailed : public std::runtime_error {
 public:
  /// `file` names the document (a path, or a description such as "embedded manifest").
  ValidationFailed(std::string file, std::vector<SchemaError> errors);
  /// Every error found, in document order.
  const std::vector<SchemaError>& errors() const noexcept { return errors_; }
  /// The document the errors are about.
  const std::string& file() const noexcept { return file_; }

 private:
  std::string file_;
  std::vector<SchemaError> errors_;
};

/// "a, b, c" for error messages listing what is known; "none" when `names` is empty.
std::string join_names(const std::vector<std::string>& names);
/// join_names of an object's keys, in document order.
std::string join_keys(const nlohmann::json& object);

/// Appends `token` to JSON pointer `pointer`, escaping `~` as `~0` and `/` as `~1`.
std::string append_pointer(const std::string& pointer, const std::string& token);

}  // namespace modalkit::schema
