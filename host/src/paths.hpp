// Where the installed host finds its plugins, relative to its own executable, so an install
// tree can move (or be installed with DESTDIR) without any environment variable.
#pragma once

#include <filesystem>

namespace modalkit::host {

/// The running executable (/proc/self/exe).
std::filesystem::path executable_path();
/// `<exe>/../<libdir>/modalkit/plugins`.
std::filesystem::path installed_plugin_dir();
/// `<exe>/../<datadir>/modalkit/schemas`.
std::filesystem::path installed_schema_dir();

}  // namespace modalkit::host
