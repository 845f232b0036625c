/// \file
/// The compiled form of a draft-07 schema and the evaluator behind JsonSchema. Internal: include
/// "schema/json_schema.hpp" instead.
///
/// A schema is compiled into a graph of Nodes, one per subschema location, with every keyword
/// checked and parsed once (regexes compiled, `$ref`s resolved), so validation never meets a
/// malformed schema and never recurses without bound.
#pragma once

#include <cstddef>
#include <deque>
#include <memory>
#include <optional>
#include <regex>
#include <string>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "schema/json_schema.hpp"

namespace valijson {
class Schema;
}  // namespace valijson

namespace modalkit::schema::internal {

/// Longest string matched against a `pattern`. libstdc++'s std::regex recurses once per
/// character (about 160 bytes of stack each, more under ASan): a 50 000-character string
/// overflows an 8 MiB stack. Longer strings are refused with an error instead of crashing.
inline constexpr std::size_t kMaxPatternSubject = 4096;
/// Longest `pattern` accepted in a schema; std::regex also recurses while compiling one.
inline constexpr std::size_t kMaxPatternLength = 1024;
/// Deepest nesting of arrays/objects accepted in a document or a schema. Configs nest a handful
/// of levels; the bound keeps every recursive walk (ours, valijson's, nlohmann's) far from the
/// end of the stack whatever the input.
inline constexpr std::size_t kMaxDepth = 128;
/// Deepest chain of subschemas applied while evaluating (document depth times `$ref`/`allOf`
/// indirections); a backstop for documents built in code rather than parsed.
inline constexpr std::size_t kMaxEvalDepth = 1024;

/// A `pattern` or `patternProperties` key: its text (for messages) and the compiled regex.
struct Pattern {
  std::string source;  ///< the ECMAScript regex as written
  std::regex regex;    ///< compiled once, used read-only (thread-safe)
};

/// A numeric bound: its value and its text as written, so messages echo the schema exactly.
struct Bound {
  double value = 0;  ///< for comparisons
  std::string text;  ///< JSON text of the bound, e.g. `0.001`
};

/// JSON types as a bit mask (`type` keyword).
enum TypeBit : unsigned {
  kNull = 1u << 0,
  kBoolean = 1u << 1,
  kObject = 1u << 2,
  kArray = 1u << 3,
  kNumber = 1u << 4,
  kString = 1u << 5,
  kInteger = 1u << 6,
};

/// One subschema, with its keywords parsed. Pointers to other Nodes stay valid for the
/// lifetime of the CompiledSchema that owns them.
struct Node {
  std::string location;                   ///< JSON pointer of this subschema in the schema document
  const nlohmann::json* source = nullptr;  ///< the subschema's JSON (inside CompiledSchema::document)
  std::optional<bool> constant;           ///< set for the boolean schemas `true` / `false`
  const Node* ref = nullptr;              ///< `$ref` target; draft-07 ignores the siblings of `$ref`

  unsigned types = 0;                       ///< TypeBit mask; 0 = any type
  const nlohmann::json* enum_values = nullptr;  ///< `enum` array
  const nlohmann::json* const_value = nullptr;  ///< `const`
  const nlohmann::json* default_value = nullptr;  ///< `default`

  std::optional<Bound> minimum, maximum, exclusive_minimum, exclusive_maximum, multiple_of;
  std::optional<std::size_t> min_length, max_length;  ///< in Unicode code points
  std::optional<Pattern> pattern;
  std::string format;  ///< `date`, `time` and `date-time` are checked; others are annotations

  std::optional<std::size_t> min_items, max_items;
  bool unique_items = false;
  const Node* items = nullptr;              ///< `items` as one schema for every element
  std::vector<const Node*> tuple_items;     ///< `items` as an array of schemas
  bool items_is_tuple = false;
  const Node* additional_items = nullptr;  ///< applies after tuple_items
  const Node* contains = nullptr;

  std::optional<std::size_t> min_properties, max_properties;
  std::vector<std::string> required;
  std::vector<std::pair<std::string, const Node*>> properties;  ///< in key order
  std::vector<std::pair<Pattern, const Node*>> pattern_properties;
  const Node* additional_properties = nullptr;
  const Node* property_names = nullptr;
  std::vector<std::pair<std::string, std::vector<std::string>>> property_dependencies;
  std::vector<std::pair<std::string, const Node*>> schema_dependencies;

  std::vector<const Node*> all_of, any_of, one_of;
  const Node* not_schema = nullptr;
  const Node* if_schema = nullptr;
  const Node* then_schema = nullptr;
  const Node* else_schema = nullptr;

  /// The property's subschema, or nullptr.
  const Node* property(const std::string& key) const;
};

/// A schema after compile(): the document it came from, its node graph, and valijson's
/// compiled form of the same document (the reference implementation, see JsonSchema).
struct CompiledSchema {
  std::string origin;                                ///< as given to JsonSchema::compile
  nlohmann::json document;                           ///< the schema; Nodes point into it
  std::deque<Node> nodes;                            ///< stable addresses
  const Node* root = nullptr;                        ///< the node of document itself
  std::shared_ptr<const valijson::Schema> reference;  ///< valijson's compiled form
};

/// Builds the node graph of `schema` and checks it (see JsonSchema::compile); throws
/// SchemaCompileError. `reference` is left empty.
std::shared_ptr<CompiledSchema> build(const nlohmann::json& schema, const std::string& origin);

/// Every error of `doc` against `node` (see JsonSchema::validate).
std::vector<SchemaError> evaluate(const Node& node, const nlohmann::json& doc);

/// Fills defaults of `node` into `doc` (see JsonSchema::fill_defaults).
void fill_defaults(const Node& node, nlohmann::json& doc);

/// Whether `value` nests arrays/objects more than `limit` levels deep (iterative: safe on any
/// input).
bool exceeds_depth(const nlohmann::json& value, std::size_t limit);

/// `value` as compact JSON, cut to about 60 characters (`...` marks a cut; never inside a UTF-8
/// sequence), for messages.
std::string preview(const nlohmann::json& value);

/// One raw valijson error: its context (`<root>`, `[key]`, ...) and description.
using ReferenceError = std::pair<std::vector<std::string>, std::string>;

/// Turns valijson's errors into SchemaErrors: contexts to JSON pointers, cascade lines ("Failed
/// to validate against schema associated with ...") folded away, the offending value appended.
std::vector<SchemaError> fold_reference_errors(const std::vector<ReferenceError>& raw,
                                               const nlohmann::json& doc);

}  // namespace modalkit::schema::internal
