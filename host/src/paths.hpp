// Where the installed host finds its plugins, relative to its own executable, so an install
// tree can move (or be installed with DESTDIR) without any environment variable.
#pragma once

#include <filesystem>
#include <string>

namespace modalkit::host {

/// The running executable (/proc/self/exe).
std::filesystem::path executable_path();
/// `<exe>/../<libdir>/modalkit/plugins`.
std::filesystem::path installed_plugin_dir();
/// `<exe>/../<datadir>/modalkit/schemas`.
std::filesystem::path installed_schema_dir();
/// A baseline program of `modalkit bench` (`modalkit-bench-bare`, `modalkit-bench-link`):
/// $MODALKIT_BENCH_DIR, then `<exe>/../<libexecdir>/modalkit` (installed), then `<exe>/../bench`
/// (the build tree). Empty when none has it.
std::filesystem::path bench_tool(const std::string& name);

}  // namespace modalkit::host
