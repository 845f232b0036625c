/// \file
/// Reading JSON documents (manifests, pipelines, dataset.json) with errors that name the file,
/// line and column, and with bounded memory and nesting whatever the input.
#pragma once

#include <cstddef>
#include <filesystem>
#include <stdexcept>
#include <string>
#include <string_view>

#include <nlohmann/json.hpp>

namespace modalkit::schema {

/// Largest JSON document read (16 MiB). A DOM costs several times the text's size, so an
/// accidental multi-gigabyte file must not be loaded to find out it is not a pipeline.
inline constexpr std::size_t kMaxJsonBytes = std::size_t{16} << 20;

/// A JSON document that cannot be read or parsed. what() is `FILE:LINE:COL: problem` for a
/// problem at a place in the text, otherwise `FILE: problem`; the problem text is always UTF-8.
class JsonFileError : public std::runtime_error {
 public:
  /// `line` and `column` are 1-based; 0 when the problem has no position.
  JsonFileError(std::string file, std::size_t line, std::size_t column, const std::string& problem);
  /// The file (or origin) concerned.
  const std::string& file() const noexcept { return file_; }
  /// 1-based line of the problem, 0 when it has none.
  std::size_t line() const noexcept { return line_; }
  /// 1-based column (in characters) of the problem, 0 when it has none.
  std::size_t column() const noexcept { return column_; }

 private:
  std::string file_;
  std::size_t line_;
  std::size_t column_;
};

/// Reads and parses a JSON file (strict JSON: no comments, no trailing commas). Throws
/// JsonFileError: `FILE: cannot open (No such file or directory)`, `FILE: ... larger than
/// 16 MiB`, `FILE:LINE:COL: syntax error ...`, or nesting deeper than 128 levels.
nlohmann::json read_json_file(const std::filesystem::path& file);

/// Parses JSON text with the same rules and errors as read_json_file; `origin` names the text in
/// messages (e.g. "embedded manifest of libmodalkit_image.so").
nlohmann::json parse_json_text(std::string_view text, const std::string& origin);

}  // namespace modalkit::schema
