// Errors, config access and the out-of-line key functions that anchor the interfaces' RTTI in
// libmodalkit_sdk.so (so dynamic_pointer_cast works between host and plugins).
#include <utility>

#include "modalkit/component.hpp"
#include "modalkit/config.hpp"
#include "modalkit/context.hpp"
#include "modalkit/errors.hpp"

namespace modalkit {

Error::Error(const std::string& message) : std::runtime_error(message) {}
Error::~Error() = default;

PluginError::PluginError(std::string plugin, const std::string& message)
    : Error("plugin " + plugin + ": " + message), plugin_(std::move(plugin)) {}
PluginError::~PluginError() = default;

ConfigError::ConfigError(const std::string& pointer, const std::string& message)
    : Error((pointer.empty() ? std::string("/") : pointer) + ": " + message) {}
ConfigError::~ConfigError() = default;

DataError::DataError(const std::string& where, const std::string& message)
    : Error(where + ": " + message) {}
DataError::~DataError() = default;

Context::~Context() = default;

Component::~Component() = default;

void Component::attach_library(std::string plugin_name, std::shared_ptr<const void> library) {
  plugin_name_ = std::move(plugin_name);
  library_ = std::move(library);
}

Config::Config(nlohmann::json values, std::string pointer)
    : values_(std::move(values)), pointer_(std::move(pointer)) {
  if (!values_.is_object()) {
    throw ConfigError(pointer_, "expected an object, found " + describe(values_));
  }
}

bool Config::contains(std::string_view key) const {
  return values_.find(std::string(key)) != values_.end();
}

const nlohmann::json& Config::require(std::string_view key) const {
  auto it = values_.find(std::string(key));
  if (it == values_.end()) throw ConfigError(child_pointer(key), "missing required value");
  return *it;
}

Config Config::at(std::string_view key) const {
  const nlohmann::json& v = require(key);
  if (!v.is_object()) {
    throw ConfigError(child_pointer(key), "expected an object, found " + describe(v));
  }
  return Config(v, child_pointer(key));
}

std::string Config::child_pointer(std::string_view key) const {
  // RFC 6901 escaping, so the pointer can be pasted into `--set`.
  std::string escaped;
  for (char c : key) {
    if (c == '~') {
      escaped += "~0";
    } else if (c == '/') {
      escaped += "~1";
    } else {
      escaped += c;
    }
  }
  return pointer_ + "/" + escaped;
}

std::string Config::describe(const nlohmann::json& v) {
  std::string dumped = v.dump();
  if (dumped.size() > 60) dumped = dumped.substr(0, 57) + "...";
  return std::string(v.type_name()) + " " + dumped;
}

}  // namespace modalkit
