// sha256 of files and strings (OpenSSL), as lower-case hex: plugin pins, run metadata,
// pipeline identity.
#pragma once

#include <filesystem>
#include <string>

namespace modalkit::host {

/// Hex sha256 of a file's contents; throws modalkit::Error naming the file on I/O errors.
std::string sha256_file(const std::filesystem::path& file);
/// Hex sha256 of a string.
std::string sha256_text(const std::string& text);

}  // namespace modalkit::host
