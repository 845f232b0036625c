#include "schema/json_file.hpp"

#include <cerrno>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <utility>

#include "schema/internal/compiled_schema.hpp"

namespace modalkit::schema {

namespace {

std::string where(const std::string& file, std::size_t line, std::size_t column) {
  if (line == 0) return file;
  return file + ":" + std::to_string(line) + ":" + std::to_string(column);
}

/// 1-based line and column (in UTF-8 characters) of byte `offset` in `text`.
std::pair<std::size_t, std::size_t> line_column(std::string_view text, std::size_t offset) {
  offset = std::min(offset, text.size());
  std::size_t line = 1;
  std::size_t column = 1;
  for (std::size_t i = 0; i < offset; ++i) {
    const auto c = static_cast<unsigned char>(text[i]);
    if (c == '\n') {
      ++line;
      column = 1;
    } else if ((c & 0xC0) != 0x80) {
      ++column;
    }
  }
  return {line, column};
}

/// Refuses nesting deeper than internal::kMaxDepth before parsing, naming where it happens.
/// nlohmann's parser copes with any depth, but copying, comparing or printing the result
/// recurses, as does every schema walk after it.
void check_nesting(std::string_view text, const std::string& origin) {
  std::size_t depth = 0;
  bool in_string = false;
  bool escaped = false;
  for (std::size_t i = 0; i < text.size(); ++i) {
    const char c = text[i];
    if (in_string) {
      if (escaped) {
        escaped = false;
      } else if (c == '\\') {
        escaped = true;
      } else if (c == '"') {
        in_string = false;
      }
    } else if (c == '"') {
      in_string = true;
    } else if (c == '[' || c == '{') {
      if (++depth > internal::kMaxDepth) {
        const auto [line, column] = line_column(text, i);
        throw JsonFileError(origin, line, column,
                            "arrays/objects nested deeper than " + std::to_string(internal::kMaxDepth) + " levels");
      }
    } else if ((c == ']' || c == '}') && depth > 0) {
      --depth;
    }
  }
}

/// Offset of the first number outside strings too large for a double (what nlohmann refuses
/// with out_of_range.406, which carries no position), or npos.
std::size_t overflowing_number(std::string_view text) {
  bool in_string = false;
  bool escaped = false;
  for (std::size_t i = 0; i < text.size(); ++i) {
    const char c = text[i];
    if (in_string) {
      if (escaped) {
        escaped = false;
      } else if (c == '\\') {
        escaped = true;
      } else if (c == '"') {
        in_string = false;
      }
    } else if (c == '"') {
      in_string = true;
    } else if (c == '-' || (c >= '0' && c <= '9')) {
      std::size_t end = i;
      while (end < text.size() && text[end] != '\0' && std::strchr("0123456789+-.eE", text[end]) != nullptr) ++end;
      const std::string token(text.substr(i, end - i));
      if (std::isinf(std::strtod(token.c_str(), nullptr))) return i;
      i = end - 1;
    }
  }
  return std::string_view::npos;
}

/// `text` with invalid UTF-8 replaced by U+FFFD. nlohmann's messages quote the input ("last
/// read: '...'"), and a message that is not UTF-8 would make the JSON output of a tool throw.
std::string valid_utf8(const std::string& text) {
  using nlohmann::json;
  return json::parse(json(text).dump(-1, ' ', false, json::error_handler_t::replace)).get<std::string>();
}

/// nlohmann's message without its "[json.exception.parse_error.101] parse error at line 1,
/// column 2: " prefix: our own prefix says where, in characters rather than bytes.
std::string parse_problem(const nlohmann::json::parse_error& e) {
  const std::string what = e.what();
  const std::size_t start = what.find("parse error");
  if (start == std::string::npos) return what;
  const std::size_t colon = what.find(": ", start);
  return colon == std::string::npos ? what : what.substr(colon + 2);
}

}  // namespace

JsonFileError::JsonFileError(std::string file, std::size_t line, std::size_t column, const std::string& problem)
    : std::runtime_error(where(file, line, column) + ": " + problem),
      file_(std::move(file)),
      line_(line),
      column_(column) {}

nlohmann::json parse_json_text(std::string_view text, const std::string& origin) {
  if (text.size() > kMaxJsonBytes) {
    throw JsonFileError(origin, 0, 0,
                        "is " + std::to_string(text.size()) + " bytes, larger than the 16 MiB allowed for a JSON document");
  }
  check_nesting(text, origin);
  try {
    return nlohmann::json::parse(text.begin(), text.end());
  } catch (const nlohmann::json::parse_error& e) {
    // e.byte counts the characters read, the offending one included.
    const std::size_t offset = e.byte > 0 ? e.byte - 1 : 0;
    const auto [line, column] = line_column(text, offset);
    throw JsonFileError(origin, line, column, valid_utf8(parse_problem(e)));
  } catch (const nlohmann::json::exception& e) {
    // out_of_range.406: a number beyond double range, e.g. 1e400.
    std::string problem = valid_utf8(e.what());
    if (const std::size_t close = problem.find("] "); problem.rfind("[json.exception.", 0) == 0 && close != std::string::npos) {
      problem = problem.substr(close + 2);
    }
    const std::size_t offset = overflowing_number(text);
    if (offset == std::string_view::npos) throw JsonFileError(origin, 0, 0, problem);
    const auto [line, column] = line_column(text, offset);
    throw JsonFileError(origin, line, column, problem);
  }
}

nlohmann::json read_json_file(const std::filesystem::path& file) {
  const std::string name = file.string();
  std::error_code ec;
  if (std::filesystem::is_directory(file, ec)) throw JsonFileError(name, 0, 0, "cannot open (Is a directory)");
  if (std::filesystem::is_regular_file(file, ec)) {
    const std::uintmax_t size = std::filesystem::file_size(file, ec);
    if (!ec && size > kMaxJsonBytes) {
      throw JsonFileError(name, 0, 0, "is " + std::to_string(size) +
                                          " bytes, larger than the 16 MiB allowed for a JSON document");
    }
  }
  std::ifstream in(file, std::ios::binary);
  if (!in) throw JsonFileError(name, 0, 0, std::string("cannot open (") + std::strerror(errno) + ")");
  // Read at most one byte past the limit: the size reported by the file system is not to be
  // trusted for pipes and /proc files, and memory stays bounded either way.
  std::string text;
  char buffer[65536];
  while (in) {
    in.read(buffer, sizeof buffer);
    text.append(buffer, static_cast<std::size_t>(in.gcount()));
    if (text.size() > kMaxJsonBytes) {
      throw JsonFileError(name, 0, 0, "is larger than the 16 MiB allowed for a JSON document");  // a pipe
    }
  }
  if (in.bad()) throw JsonFileError(name, 0, 0, std::string("cannot read (") + std::strerror(errno) + ")");
  return parse_json_text(text, name);
}

}  // namespace modalkit::schema
