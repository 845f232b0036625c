/// \file
/// The SDK's exception types and the guard that turns any exception from plugin code into
/// `plugin <name>: <what>`.
#pragma once

#include <exception>
#include <stdexcept>
#include <string>
#include <utility>

#include <c10/util/Exception.h>

namespace modalkit {

/// Base of every error modalkit raises on purpose.
class Error : public std::runtime_error {
 public:
  /// Creates an error with a complete, user-facing message.
  explicit Error(const std::string& message);
  /// Out-of-line key function: keeps RTTI of the hierarchy in libmodalkit_sdk.so.
  ~Error() override;
};

/// An error raised by (or inside) a plugin; what() reads `plugin <name>: <message>`.
class PluginError : public Error {
 public:
  /// `plugin` is the plugin's name, `message` what went wrong.
  PluginError(std::string plugin, const std::string& message);
  ~PluginError() override;
  /// The plugin the error came from.
  const std::string& plugin() const noexcept { return plugin_; }

 private:
  std::string plugin_;
};

/// A config value that is missing or of the wrong type; what() starts with its JSON pointer.
class ConfigError : public Error {
 public:
  /// `pointer` is the JSON pointer of the field, `message` what was expected and found.
  ConfigError(const std::string& pointer, const std::string& message);
  ~ConfigError() override;
};

/// Bad input data; what() names the file (and row, when there is one) and what is wrong.
class DataError : public Error {
 public:
  /// `where` is `file` or `file:row`, `message` what is wrong with it.
  DataError(const std::string& where, const std::string& message);
  ~DataError() override;
};

/// Runs `fn` and rethrows anything it throws as a PluginError naming `plugin`. A PluginError
/// raised deeper (say, by an encoder called from a strategy) keeps its own, more precise name.
template <class F>
decltype(auto) guard(const std::string& plugin, F&& fn) {
  try {
    return std::forward<F>(fn)();
  } catch (const PluginError&) {
    throw;
  } catch (const c10::Error& e) {
    // LibTorch's what() carries a C++ backtrace; users need the message.
    throw PluginError(plugin, e.what_without_backtrace());
  } catch (const std::exception& e) {
    throw PluginError(plugin, e.what());
  } catch (...) {
    throw PluginError(plugin, "unknown exception (not derived from std::exception)");
  }
}

}  // namespace modalkit
