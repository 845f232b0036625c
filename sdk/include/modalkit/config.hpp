/// \file
/// Typed, read-only access to a component's validated `config` object.
#pragma once

#include <string>
#include <string_view>

#include <nlohmann/json.hpp>

#include "modalkit/errors.hpp"

namespace modalkit {

/// A component's config after the host validated it against the manifest's `config_schema` and
/// filled the defaults in. Lookups that fail name the JSON pointer in the pipeline, such as
/// `/modalities/image/config/channels: expected integer, found string "8"`.
class Config {
 public:
  /// An empty config at the document root.
  Config() = default;
  /// Wraps `values`, which sits at `pointer` in its pipeline (for messages).
  Config(nlohmann::json values, std::string pointer);

  /// The value of `key` as T; throws ConfigError when it is missing or of another type.
  template <class T>
  T get(std::string_view key) const {
    const nlohmann::json& v = require(key);
    try {
      check_type<T>(v, key);
      return v.get<T>();
    } catch (const nlohmann::json::exception&) {
      throw ConfigError(child_pointer(key), "cannot be read as the requested type (found " +
                                                describe(v) + ")");
    }
  }
  /// The value of `key` as T, or `fallback` when the key is absent (wrong types still throw).
  template <class T>
  T get_or(std::string_view key, T fallback) const {
    return contains(key) ? get<T>(key) : fallback;
  }
  /// Whether `key` is present.
  bool contains(std::string_view key) const;
  /// The nested object at `key`, as a Config; throws ConfigError when absent or not an object.
  Config at(std::string_view key) const;
  /// The whole config as JSON.
  const nlohmann::json& json() const noexcept { return values_; }
  /// The JSON pointer of this config in its pipeline.
  const std::string& pointer() const noexcept { return pointer_; }

 private:
  const nlohmann::json& require(std::string_view key) const;
  std::string child_pointer(std::string_view key) const;
  static std::string describe(const nlohmann::json& v);
  template <class T>
  void check_type(const nlohmann::json& v, std::string_view key) const {
    const char* expected = nullptr;
    if constexpr (std::is_same_v<T, bool>) {
      if (!v.is_boolean()) expected = "boolean";
    } else if constexpr (std::is_integral_v<T>) {
      if (!v.is_number_integer()) expected = "integer";
    } else if constexpr (std::is_floating_point_v<T>) {
      if (!v.is_number()) expected = "number";
    } else if constexpr (std::is_same_v<T, std::string>) {
      if (!v.is_string()) expected = "string";
    }
    if (expected != nullptr) {
      throw ConfigError(child_pointer(key),
                        std::string("expected ") + expected + ", found " + describe(v));
    }
  }

  nlohmann::json values_ = nlohmann::json::object();
  std::string pointer_;
};

}  // namespace modalkit
