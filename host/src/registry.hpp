// Plugin discovery (manifests only, no dlopen) and loading (Boost.DLL, handshake first).
#pragma once

#include <filesystem>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "modalkit/abi.h"
#include "hashing.hpp"
#include "modalkit/component.hpp"
#include "schema/manifest.hpp"

namespace modalkit::host {

/// A manifest that could not be used, and why (shown by `plugins list`, never fatal there).
struct DiscoveryProblem {
  std::filesystem::path file;  ///< the manifest or directory concerned
  std::string message;         ///< what is wrong
};

/// A loaded plugin library whose descriptor passed the handshake.
struct LoadedPlugin {
  schema::Manifest manifest;                 ///< the manifest it was loaded through
  const modalkit_plugin_descriptor* descriptor = nullptr;  ///< its descriptor (static storage)
  std::shared_ptr<const void> library;       ///< keeps the library mapped
  std::string sha256;                        ///< of the library file, as loaded
};

/// The search path: `--plugin-path` entries, then MODALKIT_PLUGIN_PATH (colon-separated), then
/// the install dir found relative to the running executable.
std::vector<std::filesystem::path> plugin_search_path(const std::vector<std::string>& cli_paths);

/// Manifests found on a search path, and the plugins loaded from them. Libraries, once loaded,
/// stay mapped until the process ends (never unloaded from a static destructor).
class PluginRegistry {
 public:
  /// Scans each directory (recursively, a few levels deep) for `*.plugin.json`. The first
  /// manifest of a name wins; later ones are recorded as shadowed problems.
  explicit PluginRegistry(const std::vector<std::filesystem::path>& search_path);

  /// Manifests by plugin name.
  const std::map<std::string, schema::Manifest>& manifests() const { return manifests_; }
  /// The manifest of `name`, or nullptr.
  const schema::Manifest* find(const std::string& name) const;
  /// Names of all discovered plugins, sorted.
  std::vector<std::string> names() const;
  /// Manifests that were skipped, and why.
  const std::vector<DiscoveryProblem>& problems() const { return problems_; }
  /// Why discovery skipped a file named `<name>.plugin.json` ("" when none was skipped): what
  /// an "unknown plugin" message adds so the user sees the real cause.
  std::string skipped_reason(const std::string& name) const;
  /// The directories searched, in order.
  const std::vector<std::filesystem::path>& search_path() const { return search_path_; }

  /// Loads plugin `name` (once): location and permission rules, optional sha256 pin, dlopen,
  /// entry symbol, handshake, name/version/manifest cross-check, factory table. Throws
  /// PluginError (`plugin <name>: ...`) when any of them fails.
  const LoadedPlugin& load(const std::string& name, const std::optional<std::string>& sha256_pin = {});

  /// Loads `plugin` and makes its component of `kind`, cast to T (a modalkit interface).
  template <class T>
  std::shared_ptr<T> create(const std::string& plugin, int32_t kind, const CreateArgs& args,
                            const std::optional<std::string>& sha256_pin = {}) {
    std::shared_ptr<Component> made = create_component(plugin, kind, args, sha256_pin);
    auto typed = std::dynamic_pointer_cast<T>(made);
    if (!typed) throw_wrong_type(plugin, kind);
    return typed;
  }

 private:
  std::shared_ptr<Component> create_component(const std::string& plugin, int32_t kind,
                                               const CreateArgs& args,
                                               const std::optional<std::string>& sha256_pin);
  [[noreturn]] static void throw_wrong_type(const std::string& plugin, int32_t kind);
  void scan(const std::filesystem::path& dir, int depth);

  std::vector<std::filesystem::path> search_path_;
  std::map<std::string, schema::Manifest> manifests_;
  std::vector<DiscoveryProblem> problems_;
  std::map<std::string, LoadedPlugin> loaded_;
};

/// Kind name as in manifests ("modality", ...) for a modalkit_kind value.
const char* kind_name(int32_t kind);
/// The modalkit_kind value of a manifest kind name; 0 when unknown.
int32_t kind_value(const std::string& name);

/// Refuses a plugin directory or library that someone other than its owner can write to, or
/// that belongs to another user than root or us. Throws modalkit::Error saying how to fix it.
void check_trusted_location(const std::filesystem::path& path, const std::string& what);

}  // namespace modalkit::host
