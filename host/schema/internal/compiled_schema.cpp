// Compiling a schema document into the Node graph: every keyword checked against the draft-07
// meta-schema's rules (with messages that point into the schema), regexes compiled, `$ref`s
// resolved, loops that would never end refused, and each `default` checked against its own
// subschema. The walk uses a work queue, not recursion, so no schema can exhaust the stack.

// GCC 12 reports a false -Wmaybe-uninitialized inside libstdc++'s <regex> (std::function in
// _StateT) when optimizing with sanitizers; it must be off before any standard header is read.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif
#include "schema/internal/compiled_schema.hpp"

#include <algorithm>
#include <map>
#include <set>
#include <string_view>

namespace modalkit::schema::internal {

const Node* Node::property(const std::string& key) const {
  for (const auto& [name, node] : properties) {
    if (name == key) return node;
  }
  return nullptr;
}

namespace {

using nlohmann::json;

/// Every keyword of draft-07 (validation and annotation). Anything else in a schema object is
/// refused unless it starts with "x-": in a config schema a typo such as "requried" or
/// "minimun" would otherwise silently check nothing.
const std::set<std::string, std::less<>>& draft7_keywords() {
  static const std::set<std::string, std::less<>> words = {
      "$id", "$schema", "$ref", "$comment", "title", "description", "default", "readOnly",
      "writeOnly", "examples", "multipleOf", "maximum", "exclusiveMaximum", "minimum",
      "exclusiveMinimum", "maxLength", "minLength", "pattern", "additionalItems", "items",
      "maxItems", "minItems", "uniqueItems", "contains", "maxProperties", "minProperties",
      "required", "additionalProperties", "definitions", "properties", "patternProperties",
      "dependencies", "propertyNames", "const", "enum", "type", "format", "contentMediaType",
      "contentEncoding", "if", "then", "else", "allOf", "anyOf", "oneOf", "not"};
  return words;
}

unsigned type_bit(std::string_view name) {
  if (name == "null") return kNull;
  if (name == "boolean") return kBoolean;
  if (name == "object") return kObject;
  if (name == "array") return kArray;
  if (name == "number") return kNumber;
  if (name == "string") return kString;
  if (name == "integer") return kInteger;
  return 0;
}

int hex_digit(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

class Builder {
 public:
  explicit Builder(CompiledSchema& out) : out_(out) {}

  void run() {
    if (exceeds_depth(out_.document, kMaxDepth)) {
      fail("", "nests deeper than " + std::to_string(kMaxDepth) + " levels");
    }
    out_.root = node_for(out_.document, "");
    const json& root = out_.document;
    if (root.is_object()) {
      if (auto it = root.find("$schema"); it != root.end()) check_draft(*it);
    }
    while (!queue_.empty()) {
      Node* n = queue_.front();
      queue_.pop_front();
      fill(*n);
    }
    check_loops();
    check_defaults();
  }

 private:
  [[noreturn]] void fail(const std::string& location, const std::string& detail) const {
    throw SchemaCompileError(out_.origin, location, detail);
  }

  /// The node for the subschema `s` at `location`, created (and queued for filling) on first
  /// use, so a subschema reached twice (by its path and by a `$ref`) is one node.
  Node* node_for(const json& s, const std::string& location) {
    if (auto it = by_location_.find(location); it != by_location_.end()) return it->second;
    Node& n = out_.nodes.emplace_back();
    n.location = location;
    n.source = &s;
    by_location_.emplace(location, &n);
    queue_.push_back(&n);
    return &n;
  }

  void check_draft(const json& v) const {
    if (!v.is_string()) fail("/$schema", "must be a string (got " + preview(v) + ")");
    std::string uri = v.get<std::string>();
    if (!uri.empty() && uri.back() == '#') uri.pop_back();
    if (uri != "http://json-schema.org/draft-07/schema" && uri != "https://json-schema.org/draft-07/schema") {
      fail("/$schema", "only draft-07 is supported (\"http://json-schema.org/draft-07/schema#\"), got " +
                           preview(v));
    }
  }

  Pattern compile_pattern(const std::string& location, const std::string& text) const {
    if (text.size() > kMaxPatternLength) {
      fail(location, "regular expression is too long (" + std::to_string(text.size()) +
                         " characters; the limit is " + std::to_string(kMaxPatternLength) + ")");
    }
    try {
      return Pattern{text, std::regex(text, std::regex::ECMAScript)};
    } catch (const std::regex_error& e) {
      fail(location, "not a valid ECMAScript regular expression " + preview(json(text)) + ": " + e.what());
    }
  }

  /// Resolves a `$ref` value: only fragments of this document ("#", "#/definitions/x").
  Node* resolve_ref(const std::string& location, const std::string& ref) {
    if (ref.empty() || ref[0] != '#') {
      fail(location, "only references inside this schema (\"#/...\") are supported, got " + preview(json(ref)));
    }
    std::string pointer;  // the fragment, percent-decoded (RFC 3986)
    for (std::size_t i = 1; i < ref.size(); ++i) {
      if (ref[i] == '%') {
        const int hi = i + 2 < ref.size() ? hex_digit(ref[i + 1]) : -1;
        const int lo = i + 2 < ref.size() ? hex_digit(ref[i + 2]) : -1;
        if (hi < 0 || lo < 0) fail(location, "bad percent-encoding in " + preview(json(ref)));
        pointer += static_cast<char>(hi * 16 + lo);
        i += 2;
      } else {
        pointer += ref[i];
      }
    }
    const json* target = nullptr;
    std::string canonical;
    try {
      const json::json_pointer ptr(pointer);
      target = &out_.document.at(ptr);
      canonical = ptr.to_string();
    } catch (const json::exception&) {
      fail(location, "reference " + preview(json(ref)) + " does not resolve inside this schema");
    }
    return node_for(*target, canonical);
  }

  std::size_t count(const Node& n, const char* key, const json& v) const {
    if (!v.is_number_integer() || (!v.is_number_unsigned() && v.get<std::int64_t>() < 0)) {
      fail(append_pointer(n.location, key), "must be a non-negative integer (got " + preview(v) + ")");
    }
    return static_cast<std::size_t>(v.get<std::uint64_t>());
  }

  Bound number(const Node& n, const char* key, const json& v) const {
    if (!v.is_number()) fail(append_pointer(n.location, key), "must be a number (got " + preview(v) + ")");
    return Bound{v.get<double>(), v.dump()};
  }

  void expect_string(const Node& n, const std::string& key, const json& v) const {
    if (!v.is_string()) fail(append_pointer(n.location, key), "must be a string (got " + preview(v) + ")");
  }

  std::vector<std::string> string_list(const std::string& location, const json& v) const {
    if (!v.is_array()) fail(location, "must be an array of strings (got " + preview(v) + ")");
    std::vector<std::string> out;
    std::set<std::string> seen;
    for (std::size_t i = 0; i < v.size(); ++i) {
      if (!v[i].is_string()) fail(append_pointer(location, std::to_string(i)), "must be a string (got " + preview(v[i]) + ")");
      const std::string& s = v[i].get_ref<const std::string&>();
      if (!seen.insert(s).second) fail(location, "lists " + preview(v[i]) + " twice");
      out.push_back(s);
    }
    return out;
  }

  std::vector<const Node*> schema_list(const Node& n, const char* key, const json& v) {
    const std::string location = append_pointer(n.location, key);
    if (!v.is_array() || v.empty()) fail(location, "must be a non-empty array of schemas (got " + preview(v) + ")");
    std::vector<const Node*> out;
    for (std::size_t i = 0; i < v.size(); ++i) out.push_back(node_for(v[i], append_pointer(location, std::to_string(i))));
    return out;
  }

  void fill(Node& n) {
    const json& s = *n.source;
    if (s.is_boolean()) {
      n.constant = s.get<bool>();
      return;
    }
    if (!s.is_object()) fail(n.location, "a schema must be an object or a boolean (got " + preview(s) + ")");
    for (const auto& [key, value] : s.items()) {
      if (draft7_keywords().count(key) == 0 && key.rfind("x-", 0) != 0) {
        fail(append_pointer(n.location, key),
             "unknown keyword " + preview(json(key)) +
                 " (JSON Schema draft-07; a vendor extension must start with \"x-\")");
      }
    }
    auto sub = [&](const char* key) { return node_for(s.at(key), append_pointer(n.location, key)); };

    for (const char* key : {"$id", "$comment", "title", "description", "format", "contentMediaType", "contentEncoding"}) {
      if (auto it = s.find(key); it != s.end()) expect_string(n, key, *it);
    }
    for (const char* key : {"readOnly", "writeOnly", "uniqueItems"}) {
      if (auto it = s.find(key); it != s.end() && !it->is_boolean()) {
        fail(append_pointer(n.location, key), "must be true or false (got " + preview(*it) + ")");
      }
    }
    if (auto it = s.find("$schema"); it != s.end()) expect_string(n, "$schema", *it);
    if (auto it = s.find("examples"); it != s.end() && !it->is_array()) {
      fail(append_pointer(n.location, "examples"), "must be an array (got " + preview(*it) + ")");
    }
    if (auto it = s.find("definitions"); it != s.end()) {
      const std::string location = append_pointer(n.location, "definitions");
      if (!it->is_object()) fail(location, "must be an object of schemas (got " + preview(*it) + ")");
      for (const auto& [name, def] : it->items()) node_for(def, append_pointer(location, name));
    }
    if (auto it = s.find("$ref"); it != s.end()) {
      expect_string(n, "$ref", *it);
      n.ref = resolve_ref(append_pointer(n.location, "$ref"), it->get<std::string>());
      return;  // draft-07: "All other properties in a "$ref" object MUST be ignored."
    }

    if (auto it = s.find("type"); it != s.end()) {
      const std::string location = append_pointer(n.location, "type");
      auto one = [&](const json& t, const std::string& where) {
        const unsigned bit = t.is_string() ? type_bit(t.get_ref<const std::string&>()) : 0u;
        if (bit == 0) {
          fail(where, "must be one of \"null\", \"boolean\", \"object\", \"array\", \"number\", \"string\", "
                      "\"integer\" (got " + preview(t) + ")");
        }
        if ((n.types & bit) != 0) fail(location, "lists " + preview(t) + " twice");
        n.types |= bit;
      };
      if (it->is_array()) {
        if (it->empty()) fail(location, "must not be an empty array");
        for (std::size_t i = 0; i < it->size(); ++i) one((*it)[i], append_pointer(location, std::to_string(i)));
      } else {
        one(*it, location);
      }
    }
    if (auto it = s.find("enum"); it != s.end()) {
      if (!it->is_array()) fail(append_pointer(n.location, "enum"), "must be an array (got " + preview(*it) + ")");
      n.enum_values = &*it;
    }
    if (auto it = s.find("const"); it != s.end()) n.const_value = &*it;
    if (auto it = s.find("default"); it != s.end()) n.default_value = &*it;

    if (auto it = s.find("multipleOf"); it != s.end()) {
      n.multiple_of = number(n, "multipleOf", *it);
      if (!(n.multiple_of->value > 0)) fail(append_pointer(n.location, "multipleOf"), "must be > 0 (got " + it->dump() + ")");
    }
    if (auto it = s.find("minimum"); it != s.end()) n.minimum = number(n, "minimum", *it);
    if (auto it = s.find("maximum"); it != s.end()) n.maximum = number(n, "maximum", *it);
    if (auto it = s.find("exclusiveMinimum"); it != s.end()) n.exclusive_minimum = number(n, "exclusiveMinimum", *it);
    if (auto it = s.find("exclusiveMaximum"); it != s.end()) n.exclusive_maximum = number(n, "exclusiveMaximum", *it);
    if (auto it = s.find("minLength"); it != s.end()) n.min_length = count(n, "minLength", *it);
    if (auto it = s.find("maxLength"); it != s.end()) n.max_length = count(n, "maxLength", *it);
    if (auto it = s.find("pattern"); it != s.end()) {
      expect_string(n, "pattern", *it);
      n.pattern = compile_pattern(append_pointer(n.location, "pattern"), it->get<std::string>());
    }
    if (auto it = s.find("format"); it != s.end()) n.format = it->get<std::string>();

    if (auto it = s.find("minItems"); it != s.end()) n.min_items = count(n, "minItems", *it);
    if (auto it = s.find("maxItems"); it != s.end()) n.max_items = count(n, "maxItems", *it);
    if (auto it = s.find("uniqueItems"); it != s.end()) n.unique_items = it->get<bool>();
    if (auto it = s.find("items"); it != s.end()) {
      if (it->is_array()) {
        n.items_is_tuple = true;
        const std::string location = append_pointer(n.location, "items");
        for (std::size_t i = 0; i < it->size(); ++i) {
          n.tuple_items.push_back(node_for((*it)[i], append_pointer(location, std::to_string(i))));
        }
      } else {
        n.items = sub("items");
      }
    }
    if (s.contains("additionalItems")) n.additional_items = sub("additionalItems");
    if (s.contains("contains")) n.contains = sub("contains");

    if (auto it = s.find("minProperties"); it != s.end()) n.min_properties = count(n, "minProperties", *it);
    if (auto it = s.find("maxProperties"); it != s.end()) n.max_properties = count(n, "maxProperties", *it);
    if (auto it = s.find("required"); it != s.end()) n.required = string_list(append_pointer(n.location, "required"), *it);
    if (auto it = s.find("properties"); it != s.end()) {
      const std::string location = append_pointer(n.location, "properties");
      if (!it->is_object()) fail(location, "must be an object of schemas (got " + preview(*it) + ")");
      for (const auto& [name, prop] : it->items()) {
        n.properties.emplace_back(name, node_for(prop, append_pointer(location, name)));
      }
    }
    if (auto it = s.find("patternProperties"); it != s.end()) {
      const std::string location = append_pointer(n.location, "patternProperties");
      if (!it->is_object()) fail(location, "must be an object of schemas (got " + preview(*it) + ")");
      for (const auto& [regex, prop] : it->items()) {
        const std::string where = append_pointer(location, regex);
        n.pattern_properties.emplace_back(compile_pattern(where, regex), node_for(prop, where));
      }
    }
    if (s.contains("additionalProperties")) n.additional_properties = sub("additionalProperties");
    if (s.contains("propertyNames")) n.property_names = sub("propertyNames");
    if (auto it = s.find("dependencies"); it != s.end()) {
      const std::string location = append_pointer(n.location, "dependencies");
      if (!it->is_object()) fail(location, "must be an object (got " + preview(*it) + ")");
      for (const auto& [name, dep] : it->items()) {
        const std::string where = append_pointer(location, name);
        if (dep.is_array()) {
          n.property_dependencies.emplace_back(name, string_list(where, dep));
        } else {
          n.schema_dependencies.emplace_back(name, node_for(dep, where));
        }
      }
    }

    if (auto it = s.find("allOf"); it != s.end()) n.all_of = schema_list(n, "allOf", *it);
    if (auto it = s.find("anyOf"); it != s.end()) n.any_of = schema_list(n, "anyOf", *it);
    if (auto it = s.find("oneOf"); it != s.end()) n.one_of = schema_list(n, "oneOf", *it);
    if (s.contains("not")) n.not_schema = sub("not");
    if (s.contains("if")) n.if_schema = sub("if");
    if (s.contains("then")) n.then_schema = sub("then");
    if (s.contains("else")) n.else_schema = sub("else");
  }

  /// Subschemas applied to the same value as `n` (no step into the document).
  static std::vector<const Node*> same_value_edges(const Node& n) {
    std::vector<const Node*> out;
    if (n.ref != nullptr) out.push_back(n.ref);
    out.insert(out.end(), n.all_of.begin(), n.all_of.end());
    out.insert(out.end(), n.any_of.begin(), n.any_of.end());
    out.insert(out.end(), n.one_of.begin(), n.one_of.end());
    for (const Node* p : {n.not_schema, n.if_schema, n.then_schema, n.else_schema}) {
      if (p != nullptr) out.push_back(p);
    }
    for (const auto& [name, dep] : n.schema_dependencies) out.push_back(dep);
    return out;
  }

  /// Refuses a loop of subschemas that apply to the same value (`{"$ref": "#"}`,
  /// `{"allOf": [{"$ref": "#"}]}`): evaluating it would never end. Loops through `properties`
  /// or `items` are fine: each turn descends into the (finite) document. Iterative DFS.
  void check_loops() const {
    enum class Mark { kNew, kOnStack, kDone };
    std::map<const Node*, Mark> mark;
    for (const Node& start : out_.nodes) {
      if (mark[&start] != Mark::kNew) continue;
      std::vector<std::pair<const Node*, std::vector<const Node*>>> stack;
      stack.emplace_back(&start, same_value_edges(start));
      mark[&start] = Mark::kOnStack;
      while (!stack.empty()) {
        auto& [node, pending] = stack.back();
        if (pending.empty()) {
          mark[node] = Mark::kDone;
          stack.pop_back();
          continue;
        }
        const Node* next = pending.back();
        pending.pop_back();
        Mark& m = mark[next];
        if (m == Mark::kOnStack) {
          fail(next->location.empty() ? "" : next->location,
               "refers back to itself (through $ref, allOf, anyOf, oneOf, not, if/then/else or "
               "dependencies) without descending into the document; validation would never end");
        }
        if (m == Mark::kNew) {
          m = Mark::kOnStack;
          stack.emplace_back(next, same_value_edges(*next));
        }
      }
    }
  }

  /// A default that its own subschema rejects would turn a valid document into an invalid one
  /// when filled in; refuse the schema instead of surprising the pipeline author.
  void check_defaults() const {
    for (const Node& n : out_.nodes) {
      if (n.default_value == nullptr || n.ref != nullptr) continue;
      const std::vector<SchemaError> errors = evaluate(n, *n.default_value);
      if (!errors.empty()) {
        const SchemaError& e = errors.front();
        fail(append_pointer(n.location, "default"),
             "is not valid against its own schema: " + (e.pointer.empty() ? std::string("/") : e.pointer) +
                 ": " + e.message);
      }
    }
  }

  CompiledSchema& out_;
  std::map<std::string, Node*> by_location_;
  std::deque<Node*> queue_;
};

}  // namespace

std::shared_ptr<CompiledSchema> build(const nlohmann::json& schema, const std::string& origin) {
  auto out = std::make_shared<CompiledSchema>();
  out->origin = origin;
  out->document = schema;
  Builder(*out).run();
  return out;
}

}  // namespace modalkit::schema::internal
