#include "paths.hpp"

#include <system_error>

#ifndef MODALKIT_REL_PLUGIN_DIR
#error "MODALKIT_REL_PLUGIN_DIR must be set by the build (plugin dir relative to the prefix)"
#endif
#ifndef MODALKIT_REL_SCHEMA_DIR
#error "MODALKIT_REL_SCHEMA_DIR must be set by the build"
#endif

namespace modalkit::host {

std::filesystem::path executable_path() {
  std::error_code ec;
  auto p = std::filesystem::read_symlink("/proc/self/exe", ec);
  return ec ? std::filesystem::path() : p;
}

std::filesystem::path installed_plugin_dir() {
  return executable_path().parent_path().parent_path() / MODALKIT_REL_PLUGIN_DIR;
}

std::filesystem::path installed_schema_dir() {
  return executable_path().parent_path().parent_path() / MODALKIT_REL_SCHEMA_DIR;
}

}  // namespace modalkit::host
