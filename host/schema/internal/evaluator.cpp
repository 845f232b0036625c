// Evaluating documents against a compiled schema, with messages that say what was expected and
// what was found; filling defaults; and shared helpers (depth check, value previews).
//
// Folding: the evaluator never emits the "child failed" lines that valijson adds at every level
// above an error; only the keyword that actually failed is reported, at the deepest pointer.
// When a value fails its `type`, `enum` or `const`, that one error is all that is said about it
// (its other keywords would only repeat the mismatch). For `anyOf`/`oneOf`, the alternative that
// got furthest into the value is reported, or one combined line when all fail at the value itself.
// GCC 12 reports a false -Wmaybe-uninitialized inside libstdc++'s <regex> (std::function in
// _StateT) when optimizing with sanitizers; it must be off before any standard header is read.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <functional>
#include <unordered_map>
#include <unordered_set>

#include "schema/internal/compiled_schema.hpp"

namespace modalkit::schema::internal {

namespace {

using nlohmann::json;

constexpr std::size_t kPreviewLimit = 60;  // characters of an offending value shown in a message
constexpr std::size_t kEnumListLimit = 20;  // enum values listed in a message

/// An error while evaluating: a requirement and the value found, kept apart so alternatives and
/// key checks can recombine them.
struct Issue {
  Issue(std::string pointer_, std::string requirement_, std::string got_ = "", bool type_mismatch_ = false)
      : pointer(std::move(pointer_)), requirement(std::move(requirement_)), got(std::move(got_)),
        type_mismatch(type_mismatch_) {}
  std::string pointer;
  std::string requirement;  ///< e.g. `must be >= 1`
  std::string got;          ///< preview of the offending value; empty = not shown
  bool type_mismatch = false;  ///< the value is of a type this subschema does not accept at all
};

std::size_t pointer_depth(const std::string& pointer) {
  return static_cast<std::size_t>(std::count(pointer.begin(), pointer.end(), '/'));
}

/// Number of Unicode code points (what minLength/maxLength count) in valid UTF-8.
std::size_t code_points(const std::string& s) {
  std::size_t n = 0;
  for (unsigned char c : s) n += (c & 0xC0) != 0x80 ? 1 : 0;
  return n;
}

std::string plural(std::size_t n, const char* one, const char* many) {
  return std::to_string(n) + " " + (n == 1 ? one : many);
}

bool type_matches(unsigned types, const json& v) {
  switch (v.type()) {
    case json::value_t::null: return (types & kNull) != 0;
    case json::value_t::boolean: return (types & kBoolean) != 0;
    case json::value_t::object: return (types & kObject) != 0;
    case json::value_t::array: return (types & kArray) != 0;
    case json::value_t::string: return (types & kString) != 0;
    case json::value_t::number_integer:
    case json::value_t::number_unsigned: return (types & (kInteger | kNumber)) != 0;
    case json::value_t::number_float: return (types & kNumber) != 0;
    default: return false;  // binary, discarded: never produced by our parser
  }
}

std::string type_phrase(unsigned types) {
  std::vector<const char*> names;
  if (types & kObject) names.push_back("an object");
  if (types & kArray) names.push_back("an array");
  if (types & kString) names.push_back("a string");
  if (types & kNumber) {
    names.push_back("a number");
  } else if (types & kInteger) {
    names.push_back("an integer");
  }
  if (types & kBoolean) names.push_back("a boolean");
  if (types & kNull) names.push_back("null");
  std::string out;
  for (std::size_t i = 0; i < names.size(); ++i) {
    if (i > 0) out += (i + 1 == names.size()) ? " or " : ", ";
    out += names[i];
  }
  return out;
}

std::string values_phrase(const json& values) {
  if (values.empty()) return "cannot take any value (its enum is empty)";
  if (values.size() == 1) return "must be " + preview(values[0]);
  std::string out = "must be one of ";
  for (std::size_t i = 0; i < values.size() && i < kEnumListLimit; ++i) {
    out += (i > 0 ? ", " : "") + preview(values[i]);
  }
  if (values.size() > kEnumListLimit) out += ", ... (" + std::to_string(values.size()) + " values)";
  return out;
}

bool same_kind(const json& a, const json& b) {
  return (a.is_number() && b.is_number()) || a.type() == b.type();
}

/// `format`: the three formats valijson checks, with its patterns and day-of-month rule, so the
/// two implementations agree. Other formats are annotations (draft-07 makes them optional).
bool format_ok(const std::string& format, const std::string& s) {
  if (s.size() > 64) return format != "date" && format != "time" && format != "date-time";
  static const std::regex date("^([0-9]+)-(0[1-9]|1[012])-(0[1-9]|[12][0-9]|3[01])$");
  static const std::regex time(
      "^([01][0-9]|2[0-3]):([0-5][0-9]):([0-5][0-9]|60)(\\.[0-9]+)?(([Zz])|([\\+|\\-]([01][0-9]|2[0-3]):[0-5][0-9]))$");
  static const std::regex date_time(
      "^([0-9]+)-(0[1-9]|1[012])-(0[1-9]|[12][0-9]|3[01])[Tt]([01][0-9]|2[0-3]):([0-5][0-9]):([0-5][0-9]|60)(\\.[0-9]+)?"
      "(([Zz])|([\\+|\\-]([01][0-9]|2[0-3]):[0-5][0-9]))$");
  auto day_fits = [](const std::smatch& m) {
    const int month = std::stoi(m[2].str());
    const int day = std::stoi(m[3].str());
    if (month == 2) return day <= 29;
    if (month == 4 || month == 6 || month == 9 || month == 11) return day <= 30;
    return true;
  };
  std::smatch m;
  if (format == "date") return std::regex_match(s, m, date) && day_fits(m);
  if (format == "time") return std::regex_match(s, time);
  if (format == "date-time") return std::regex_match(s, m, date_time) && day_fits(m);
  return true;
}

const char* format_phrase(const std::string& format) {
  if (format == "date") return "must be a date (YYYY-MM-DD)";
  if (format == "time") return "must be a time (hh:mm:ss with a time zone, e.g. 16:52:45Z)";
  return "must be a date-time (e.g. 2022-07-18T16:52:45Z)";
}

bool is_multiple(const json& v, const Bound& of) {
  // Exact for integers; a relative tolerance for fractions (0.3 is not exactly 3 * 0.1).
  const bool integral_divisor = std::floor(of.value) == of.value && of.value <= 9007199254740992.0;
  if (v.is_number_integer() && integral_divisor) {
    const auto d = static_cast<std::uint64_t>(of.value);
    if (v.is_number_unsigned()) return v.get<std::uint64_t>() % d == 0;
    const std::int64_t x = v.get<std::int64_t>();
    const std::uint64_t magnitude = x < 0 ? (0 - static_cast<std::uint64_t>(x)) : static_cast<std::uint64_t>(x);
    return magnitude % d == 0;
  }
  const double q = v.get<double>() / of.value;
  if (!std::isfinite(q)) return false;
  return std::fabs(q - std::nearbyint(q)) <= 1e-9 * std::max(1.0, std::fabs(q));
}

/// Equality-consistent hash (1 and 1.0 hash alike, as they compare equal), for uniqueItems.
std::size_t value_hash(const json& v) {
  std::size_t h = static_cast<std::size_t>(v.is_number() ? 99 : static_cast<int>(v.type()));
  auto mix = [&h](std::size_t x) { h ^= x + 0x9e3779b97f4a7c15ULL + (h << 6) + (h >> 2); };
  if (v.is_number()) {
    mix(std::hash<double>()(v.get<double>()));
  } else if (v.is_string()) {
    mix(std::hash<std::string>()(v.get_ref<const std::string&>()));
  } else if (v.is_boolean()) {
    mix(v.get<bool>() ? 1 : 2);
  } else if (v.is_array() || v.is_object()) {
    mix(v.size());  // shallow: keeps hashing cheap and non-recursive; equality decides
  }
  return h;
}

class Evaluator {
 public:
  /// `refusals` collects errors that no combinator may hide (a value too long or too deep to
  /// check): hiding them would report a document as valid that was never checked.
  explicit Evaluator(std::vector<Issue>* refusals) : refusals_(refusals) {}

  void eval(const Node* n, const json& v, std::string& ptr, std::size_t depth, std::vector<Issue>& out) {
    if (depth > kMaxEvalDepth) {
      refuse(out, {ptr, "is nested too deeply to validate (more than " + std::to_string(kMaxEvalDepth) +
                            " levels of schema)", "", false});
      return;
    }
    while (n->ref != nullptr) n = n->ref;  // chains end: loops were refused by compile()
    if (n->constant) {
      if (!*n->constant) out.push_back({ptr, "is not allowed here", "", false});
      return;
    }
    if (!check_value(*n, v, ptr, out)) return;
    if (v.is_number()) check_number(*n, v, ptr, out);
    if (v.is_string()) check_string(*n, v, ptr, out);
    if (v.is_array()) check_array(*n, v, ptr, depth, out);
    if (v.is_object()) check_object(*n, v, ptr, depth, out);
    check_combinators(*n, v, ptr, depth, out);
  }

  /// Whether `v` is valid against `n` (errors discarded; refusals still recorded).
  bool matches(const Node* n, const json& v, std::string& ptr, std::size_t depth) {
    std::vector<Issue> scratch;
    eval(n, v, ptr, depth, scratch);
    return scratch.empty();
  }

 private:
  void refuse(std::vector<Issue>& out, Issue issue) {
    out.push_back(issue);
    if (refusals_ != nullptr) refusals_->push_back(std::move(issue));
  }

  /// `type`, `enum`, `const`: false when the value is not of an accepted kind at all.
  bool check_value(const Node& n, const json& v, const std::string& ptr, std::vector<Issue>& out) {
    const bool type_ok = n.types == 0 || type_matches(n.types, v);
    const bool enum_ok = n.enum_values == nullptr ||
                         std::find(n.enum_values->begin(), n.enum_values->end(), v) != n.enum_values->end();
    const bool const_ok = n.const_value == nullptr || *n.const_value == v;
    if (type_ok && enum_ok && const_ok) return true;
    // The enum/const says most precisely what is allowed, so it wins over the type.
    Issue issue{ptr, "", preview(v), !type_ok};
    if (!enum_ok) {
      issue.requirement = values_phrase(*n.enum_values);
      issue.type_mismatch = issue.type_mismatch ||
                            std::none_of(n.enum_values->begin(), n.enum_values->end(),
                                         [&](const json& e) { return same_kind(e, v); });
    } else if (!const_ok) {
      issue.requirement = "must be " + preview(*n.const_value);
      issue.type_mismatch = issue.type_mismatch || !same_kind(*n.const_value, v);
    } else {
      issue.requirement = "must be " + type_phrase(n.types);
    }
    out.push_back(std::move(issue));
    return false;
  }

  void check_number(const Node& n, const json& v, const std::string& ptr, std::vector<Issue>& out) {
    const double x = v.get<double>();
    if (n.minimum && x < n.minimum->value) out.push_back({ptr, "must be >= " + n.minimum->text, preview(v)});
    if (n.exclusive_minimum && x <= n.exclusive_minimum->value) {
      out.push_back({ptr, "must be > " + n.exclusive_minimum->text, preview(v)});
    }
    if (n.maximum && x > n.maximum->value) out.push_back({ptr, "must be <= " + n.maximum->text, preview(v)});
    if (n.exclusive_maximum && x >= n.exclusive_maximum->value) {
      out.push_back({ptr, "must be < " + n.exclusive_maximum->text, preview(v)});
    }
    if (n.multiple_of && !is_multiple(v, *n.multiple_of)) {
      out.push_back({ptr, "must be a multiple of " + n.multiple_of->text, preview(v)});
    }
  }

  void check_string(const Node& n, const json& v, const std::string& ptr, std::vector<Issue>& out) {
    const std::string& s = v.get_ref<const std::string&>();
    if (n.min_length || n.max_length) {
      const std::size_t len = code_points(s);
      if (n.min_length && len < *n.min_length) {
        out.push_back({ptr, "must be at least " + plural(*n.min_length, "character", "characters") + " long", preview(v)});
      }
      if (n.max_length && len > *n.max_length) {
        out.push_back({ptr, "must be at most " + plural(*n.max_length, "character", "characters") + " long", preview(v)});
      }
    }
    if (n.pattern) {
      if (s.size() > kMaxPatternSubject) {
        refuse(out, {ptr, "is too long to match against the pattern " + n.pattern->source + " (" +
                              std::to_string(s.size()) + " bytes; the limit is " +
                              std::to_string(kMaxPatternSubject) + ")", "", false});
      } else if (!std::regex_search(s, n.pattern->regex)) {
        out.push_back({ptr, "must match the pattern " + n.pattern->source, preview(v)});
      }
    }
    if (!n.format.empty() && !format_ok(n.format, s)) out.push_back({ptr, format_phrase(n.format), preview(v)});
  }

  void check_array(const Node& n, const json& v, std::string& ptr, std::size_t depth, std::vector<Issue>& out) {
    if (n.min_items && v.size() < *n.min_items) {
      out.push_back({ptr, "must have at least " + plural(*n.min_items, "item", "items"), preview(v)});
    }
    if (n.max_items && v.size() > *n.max_items) {
      out.push_back({ptr, "must have at most " + plural(*n.max_items, "item", "items"), preview(v)});
    }
    if (n.unique_items) check_unique(v, ptr, out);
    const std::size_t base = ptr.size();
    for (std::size_t i = 0; i < v.size(); ++i) {
      const Node* item = nullptr;
      if (!n.items_is_tuple) {
        item = n.items;
      } else if (i < n.tuple_items.size()) {
        item = n.tuple_items[i];
      } else {
        item = n.additional_items;
        if (item != nullptr && item->ref == nullptr && item->constant == false) {
          out.push_back({ptr, "must have at most " + plural(n.tuple_items.size(), "item", "items"), preview(v)});
          break;
        }
      }
      if (item == nullptr) continue;
      ptr += '/';
      ptr += std::to_string(i);
      eval(item, v[i], ptr, depth + 1, out);
      ptr.resize(base);
    }
    if (n.contains != nullptr) {
      bool found = false;
      for (std::size_t i = 0; i < v.size() && !found; ++i) {
        ptr += '/';
        ptr += std::to_string(i);
        found = matches(n.contains, v[i], ptr, depth + 1);
        ptr.resize(base);
      }
      if (!found) {
        out.push_back({ptr, "must contain an item matching " + preview(*n.contains->source), preview(v)});
      }
    }
  }

  static void check_unique(const json& v, const std::string& ptr, std::vector<Issue>& out) {
    std::unordered_multimap<std::size_t, std::size_t> seen;  // hash -> index
    for (std::size_t j = 0; j < v.size(); ++j) {
      const std::size_t h = value_hash(v[j]);
      auto [lo, hi] = seen.equal_range(h);
      for (auto it = lo; it != hi; ++it) {
        if (v[it->second] == v[j]) {
          out.push_back({ptr, "must not contain duplicates (items " + std::to_string(it->second) + " and " +
                                  std::to_string(j) + " are both " + preview(v[j]) + ")", ""});
          return;
        }
      }
      seen.emplace(h, j);
    }
  }

  static std::string allowed_keys(const Node& n) {
    std::string out;
    for (const auto& [name, node] : n.properties) out += (out.empty() ? "" : ", ") + preview(json(name));
    for (const auto& [pattern, node] : n.pattern_properties) {
      out += (out.empty() ? "keys matching " : ", or keys matching ") + pattern.source;
    }
    return out.empty() ? "no keys are allowed here" : "allowed: " + out;
  }

  void check_object(const Node& n, const json& v, std::string& ptr, std::size_t depth, std::vector<Issue>& out) {
    for (const std::string& key : n.required) {
      if (!v.contains(key)) out.push_back({ptr, "missing required field " + preview(json(key)), ""});
    }
    for (const auto& [key, needs] : n.property_dependencies) {
      if (!v.contains(key)) continue;
      for (const std::string& other : needs) {
        if (!v.contains(other)) {
          out.push_back({ptr, "missing field " + preview(json(other)) + " (required when " + preview(json(key)) +
                                  " is present)", ""});
        }
      }
    }
    if (n.min_properties && v.size() < *n.min_properties) {
      out.push_back({ptr, "must have at least " + plural(*n.min_properties, "key", "keys"), preview(v)});
    }
    if (n.max_properties && v.size() > *n.max_properties) {
      out.push_back({ptr, "must have at most " + plural(*n.max_properties, "key", "keys"), preview(v)});
    }
    if (n.property_names != nullptr) {
      for (const auto& [key, value] : v.items()) {
        std::vector<Issue> key_issues;
        std::string key_ptr = ptr;
        eval(n.property_names, json(key), key_ptr, depth + 1, key_issues);
        for (const Issue& k : key_issues) {
          out.push_back({ptr, "invalid key " + preview(json(key)) + ": " + k.requirement, ""});
        }
      }
    }
    for (const auto& [key, dep] : n.schema_dependencies) {
      if (v.contains(key)) eval(dep, v, ptr, depth + 1, out);
    }

    const Node* additional = n.additional_properties;
    while (additional != nullptr && additional->ref != nullptr) additional = additional->ref;
    const bool closed = additional != nullptr && additional->constant == false;
    const std::size_t base = ptr.size();
    for (const auto& [key, value] : v.items()) {
      bool covered = false;
      const Node* prop = n.property(key);
      const std::string child = append_pointer("", key);
      if (prop != nullptr) {
        covered = true;
        ptr += child;
        eval(prop, value, ptr, depth + 1, out);
        ptr.resize(base);
      }
      for (const auto& [pattern, node] : n.pattern_properties) {
        if (key.size() > kMaxPatternSubject) {
          refuse(out, {ptr, "has a key too long to match against the pattern " + pattern.source + " (" +
                                std::to_string(key.size()) + " bytes; the limit is " +
                                std::to_string(kMaxPatternSubject) + ")", "", false});
          covered = true;
          continue;
        }
        if (!std::regex_search(key, pattern.regex)) continue;
        covered = true;
        ptr += child;
        eval(node, value, ptr, depth + 1, out);
        ptr.resize(base);
      }
      if (covered || additional == nullptr) continue;
      if (closed) {
        out.push_back({ptr, "unknown key " + preview(json(key)) + " (" + allowed_keys(n) + ")", ""});
      } else {
        ptr += child;
        eval(additional, value, ptr, depth + 1, out);
        ptr.resize(base);
      }
    }
  }

  void check_combinators(const Node& n, const json& v, std::string& ptr, std::size_t depth, std::vector<Issue>& out) {
    for (const Node* branch : n.all_of) eval(branch, v, ptr, depth + 1, out);
    if (!n.any_of.empty()) alternatives(n.any_of, false, v, ptr, depth, out);
    if (!n.one_of.empty()) alternatives(n.one_of, true, v, ptr, depth, out);
    if (n.not_schema != nullptr && matches(n.not_schema, v, ptr, depth + 1)) {
      out.push_back({ptr, "must not match " + preview(*n.not_schema->source), preview(v)});
    }
    if (n.if_schema != nullptr) {
      const Node* branch = matches(n.if_schema, v, ptr, depth + 1) ? n.then_schema : n.else_schema;
      if (branch != nullptr) eval(branch, v, ptr, depth + 1, out);
    }
  }

  void alternatives(const std::vector<const Node*>& branches, bool exactly_one, const json& v, std::string& ptr,
                    std::size_t depth, std::vector<Issue>& out) {
    std::vector<std::vector<Issue>> results(branches.size());
    std::vector<std::size_t> passing;
    for (std::size_t i = 0; i < branches.size(); ++i) {
      eval(branches[i], v, ptr, depth + 1, results[i]);
      if (results[i].empty()) passing.push_back(i);
    }
    if (exactly_one && passing.size() > 1) {
      out.push_back({ptr, "must match exactly one of the oneOf alternatives, but matches #" +
                              std::to_string(passing[0]) + " and #" + std::to_string(passing[1]), preview(v)});
      return;
    }
    if (!passing.empty()) return;
    // Report the alternative the value was meant for: the one whose errors lie deepest inside
    // it, preferring those whose type the value has. When several fit equally, say what each
    // would need, in one line.
    const std::size_t here = pointer_depth(ptr);
    std::vector<std::pair<std::size_t, bool>> scores;  // (deepest error, value has the right type)
    for (const std::vector<Issue>& issues : results) {
      std::size_t deepest = 0;
      bool mismatch_here = false;
      for (const Issue& issue : issues) {
        deepest = std::max(deepest, pointer_depth(issue.pointer));
        mismatch_here = mismatch_here || (issue.type_mismatch && issue.pointer == ptr);
      }
      scores.emplace_back(deepest, !mismatch_here);
    }
    const auto best = *std::max_element(scores.begin(), scores.end());
    std::vector<std::size_t> chosen;
    for (std::size_t i = 0; i < scores.size(); ++i) {
      if (scores[i] == best) chosen.push_back(i);
    }
    if (best.first > here || chosen.size() == 1) {
      out.insert(out.end(), results[chosen[0]].begin(), results[chosen[0]].end());
      return;
    }
    Issue combined{ptr, "", "", !best.second};
    for (std::size_t i : chosen) {
      std::string part;
      for (const Issue& issue : results[i]) {
        part += (part.empty() ? "" : " and ") + issue.requirement;
        if (!issue.got.empty()) combined.got = issue.got;
      }
      combined.requirement += (combined.requirement.empty() ? "" : ", or ") + part;
    }
    out.push_back(std::move(combined));
  }

  std::vector<Issue>* refusals_;
};

void fill(const Node* n, json& v, std::size_t depth) {
  if (depth > kMaxEvalDepth) return;
  while (n->ref != nullptr) n = n->ref;
  if (n->constant) return;
  Evaluator probe(nullptr);
  std::string scratch_ptr;
  if (v.is_object()) {
    for (const auto& [key, prop] : n->properties) {
      const Node* target = prop;
      while (target->ref != nullptr) target = target->ref;
      if (target->default_value != nullptr && !v.contains(key)) v[key] = *target->default_value;
    }
    for (auto& [key, value] : v.items()) {
      bool covered = false;
      if (const Node* prop = n->property(key)) {
        covered = true;
        fill(prop, value, depth + 1);
      }
      for (const auto& [pattern, node] : n->pattern_properties) {
        if (key.size() <= kMaxPatternSubject && std::regex_search(key, pattern.regex)) {
          covered = true;
          fill(node, value, depth + 1);
        }
      }
      if (!covered && n->additional_properties != nullptr) fill(n->additional_properties, value, depth + 1);
    }
    for (const auto& [key, dep] : n->schema_dependencies) {
      if (v.contains(key)) fill(dep, v, depth + 1);
    }
  } else if (v.is_array()) {
    for (std::size_t i = 0; i < v.size(); ++i) {
      const Node* item = !n->items_is_tuple ? n->items
                                            : (i < n->tuple_items.size() ? n->tuple_items[i] : n->additional_items);
      if (item != nullptr) fill(item, v[i], depth + 1);
    }
  }
  for (const Node* branch : n->all_of) fill(branch, v, depth + 1);
  // anyOf/oneOf: defaults of the first alternative the value satisfies.
  for (const auto* branches : {&n->any_of, &n->one_of}) {
    for (const Node* branch : *branches) {
      if (probe.matches(branch, v, scratch_ptr, depth + 1)) {
        fill(branch, v, depth + 1);
        break;
      }
    }
  }
  if (n->if_schema != nullptr) {
    const Node* branch = probe.matches(n->if_schema, v, scratch_ptr, depth + 1) ? n->then_schema : n->else_schema;
    if (branch != nullptr) fill(branch, v, depth + 1);
  }
}

/// Drops exact repeats (the same requirement reached through two `allOf` branches), keeping order.
std::vector<SchemaError> unique_errors(std::vector<SchemaError> errors) {
  std::unordered_set<std::string> seen;
  std::vector<SchemaError> out;
  for (SchemaError& e : errors) {
    if (seen.insert(e.pointer + '\0' + e.message).second) out.push_back(std::move(e));
  }
  return out;
}

}  // namespace

std::vector<SchemaError> evaluate(const Node& node, const nlohmann::json& doc) {
  if (exceeds_depth(doc, kMaxDepth)) {
    return {{"", "nests arrays/objects deeper than " + std::to_string(kMaxDepth) + " levels"}};
  }
  std::vector<Issue> issues;
  std::vector<Issue> refusals;
  Evaluator evaluator(&refusals);
  std::string ptr;
  evaluator.eval(&node, doc, ptr, 0, issues);
  // A refusal hidden by a combinator (inside `not`, or a failed anyOf alternative) still means
  // the document was not fully checked.
  issues.insert(issues.end(), refusals.begin(), refusals.end());
  std::vector<SchemaError> out;
  out.reserve(issues.size());
  for (const Issue& issue : issues) {
    out.push_back({issue.pointer, issue.requirement + (issue.got.empty() ? "" : " (got " + issue.got + ")")});
  }
  return unique_errors(std::move(out));
}

void fill_defaults(const Node& node, nlohmann::json& doc) {
  if (exceeds_depth(doc, kMaxDepth)) return;
  fill(&node, doc, 0);
}

bool exceeds_depth(const nlohmann::json& value, std::size_t limit) {
  std::vector<std::pair<const json*, std::size_t>> stack{{&value, 0}};
  while (!stack.empty()) {
    auto [v, depth] = stack.back();
    stack.pop_back();
    if (!v->is_structured()) continue;
    if (depth + 1 > limit) return true;
    for (const json& child : *v) stack.emplace_back(&child, depth + 1);
  }
  return false;
}

std::string preview(const nlohmann::json& value) {
  // Replace invalid UTF-8 instead of throwing: documents built in code may contain any bytes.
  std::string text = value.dump(-1, ' ', false, json::error_handler_t::replace);
  if (text.size() <= kPreviewLimit) return text;
  std::size_t cut = kPreviewLimit - 3;
  while (cut > 0 && (static_cast<unsigned char>(text[cut]) & 0xC0) == 0x80) --cut;  // not mid-character
  return text.substr(0, cut) + "...";
}

std::vector<SchemaError> fold_reference_errors(const std::vector<ReferenceError>& raw, const nlohmann::json& doc) {
  auto is_cascade = [](const std::string& d) {
    return (d.rfind("Failed to validate against", 0) == 0 && d.find("exactly one") == std::string::npos) ||
           d.rfind("Failed to validate item #", 0) == 0;
  };
  auto convert = [&](const ReferenceError& r) {
    std::string pointer;
    for (std::size_t i = 1; i < r.first.size(); ++i) {  // [0] is "<root>"
      const std::string& token = r.first[i];
      const bool bracketed = token.size() >= 2 && token.front() == '[' && token.back() == ']';
      pointer = append_pointer(pointer, bracketed ? token.substr(1, token.size() - 2) : token);
    }
    std::string message = r.second;
    while (!message.empty() && message.back() == '.') message.pop_back();
    try {
      message += " (got " + preview(doc.at(json::json_pointer(pointer))) + ")";
    } catch (const json::exception&) {
      // the context names a key that is not in the document (e.g. an array index as a key)
    }
    return SchemaError{pointer, message};
  };
  std::vector<SchemaError> out;
  for (const ReferenceError& r : raw) {
    if (!is_cascade(r.second)) out.push_back(convert(r));
  }
  if (out.empty()) {
    for (const ReferenceError& r : raw) out.push_back(convert(r));  // only summaries: better than nothing
  }
  if (out.empty()) out.push_back({"", "does not match the schema (valijson gave no detail)"});
  return unique_errors(std::move(out));
}

}  // namespace modalkit::schema::internal
