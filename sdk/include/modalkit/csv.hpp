/// \file
/// CSV (RFC 4180: quoted fields, doubled quotes, CRLF or LF) for plugins and data recipes that
/// read tables. Since SDK ABI 1.1.
#pragma once

#include <filesystem>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

namespace modalkit {

/// A parsed CSV file: the header row and the data rows, each row as many cells as the header.
struct CsvTable {
  std::vector<std::string> header;             ///< column names (the first row)
  std::vector<std::vector<std::string>> rows;  ///< data rows, in file order
  std::filesystem::path file;                  ///< where it was read, for messages

  /// Index of column `name`; throws DataError naming the file and the columns it has.
  size_t column(const std::string& name) const;
};

/// Parses CSV text. Throws DataError naming `where` and the line on an unterminated quote or a
/// row whose cell count differs from the header's. With `has_header` false, `header` is empty
/// and rows may not differ in length from the first row.
CsvTable parse_csv(const std::string& text, const std::string& where, bool has_header = true);

/// Reads and parses a plain CSV file; errors name the file.
CsvTable read_csv(const std::filesystem::path& file, bool has_header = true);

/// Parses a whole cell as a finite number; false for empty cells, text, NaN or infinities.
bool parse_number(const std::string& cell, double& value);

/// `cells` as one CSV line (no newline): cells quoted when they hold a comma, quote or newline.
std::string csv_line(const std::vector<std::string>& cells);

/// CSV files read once and shared by loader threads (a modality's decode runs concurrently).
class CsvCache {
 public:
  /// The parsed `file`; read on first use. Throws DataError naming `origin` when the file does
  /// not exist, and the file (and line) when it does not parse.
  std::shared_ptr<const CsvTable> get(const std::filesystem::path& file, const std::string& origin) const;

 private:
  mutable std::mutex mutex_;
  mutable std::map<std::string, std::shared_ptr<const CsvTable>> tables_;
};

}  // namespace modalkit
