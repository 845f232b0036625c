#include "paths.hpp"

#include <cstdlib>
#include <system_error>
#include <vector>

#ifndef MODALKIT_REL_PLUGIN_DIR
#error "MODALKIT_REL_PLUGIN_DIR must be set by the build (plugin dir relative to the prefix)"
#endif
#ifndef MODALKIT_REL_LIBEXEC_DIR
#error "MODALKIT_REL_LIBEXEC_DIR must be set by the build"
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

std::filesystem::path bench_tool(const std::string& name) {
  std::vector<std::filesystem::path> dirs;
  if (const char* env = std::getenv("MODALKIT_BENCH_DIR"); env != nullptr && *env != '\0') dirs.emplace_back(env);
  const std::filesystem::path prefix = executable_path().parent_path().parent_path();
  dirs.push_back(prefix / MODALKIT_REL_LIBEXEC_DIR / "modalkit");
  dirs.push_back(prefix / "bench");
  for (const auto& d : dirs) {
    std::error_code ec;
    if (std::filesystem::is_regular_file(d / name, ec)) return d / name;
  }
  return {};
}

}  // namespace modalkit::host
