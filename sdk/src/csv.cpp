// RFC 4180 CSV: one state machine, used by the tabular and sensor plugins and the data recipes.
#include "modalkit/csv.hpp"

#include <cmath>
#include <cstdlib>
#include <fstream>
#include <sstream>

#include "modalkit/errors.hpp"

namespace modalkit {

size_t CsvTable::column(const std::string& name) const {
  for (size_t i = 0; i < header.size(); ++i) {
    if (header[i] == name) return i;
  }
  std::string have;
  for (const auto& h : header) have += (have.empty() ? "" : ", ") + h;
  throw DataError(file.string(), "has no column \"" + name + "\" (columns: " + have + ")");
}

CsvTable parse_csv(const std::string& text, const std::string& where, bool has_header) {
  CsvTable table;
  table.file = where;
  std::vector<std::string> row;
  std::string cell;
  bool quoted = false, cell_started = false;
  size_t line = 1, row_line = 1;
  auto end_row = [&] {
    row.push_back(std::move(cell));
    cell.clear();
    cell_started = false;
    // A blank line (one empty cell) is skipped, as most writers end files with a newline.
    if (!(row.size() == 1 && row[0].empty())) {
      const bool first = has_header ? table.header.empty() : table.rows.empty();
      const size_t want = has_header ? table.header.size() : (first ? row.size() : table.rows[0].size());
      if (has_header && first) {
        table.header = std::move(row);
      } else if (row.size() != want) {
        throw DataError(where + ":" + std::to_string(row_line),
                        "row has " + std::to_string(row.size()) + " cells, expected " + std::to_string(want));
      } else {
        table.rows.push_back(std::move(row));
      }
    }
    row.clear();
    row_line = line;
  };
  for (size_t i = 0; i < text.size(); ++i) {
    const char c = text[i];
    if (quoted) {
      if (c == '"') {
        if (i + 1 < text.size() && text[i + 1] == '"') {
          cell += '"';
          ++i;
        } else {
          quoted = false;
        }
      } else {
        if (c == '\n') ++line;
        cell += c;
      }
      continue;
    }
    if (c == '"' && !cell_started) {
      quoted = cell_started = true;
    } else if (c == ',') {
      row.push_back(std::move(cell));
      cell.clear();
      cell_started = false;
    } else if (c == '\n' || c == '\r') {
      if (c == '\r' && i + 1 < text.size() && text[i + 1] == '\n') ++i;
      ++line;
      end_row();
    } else {
      cell += c;
      cell_started = true;
    }
  }
  if (quoted) throw DataError(where + ":" + std::to_string(row_line), "unterminated quoted cell");
  if (!cell.empty() || !row.empty()) end_row();
  if (has_header && table.header.empty()) throw DataError(where, "empty CSV file (no header row)");
  return table;
}

CsvTable read_csv(const std::filesystem::path& file, bool has_header) {
  std::ifstream in(file, std::ios::binary);
  if (!in) throw DataError(file.string(), "cannot open CSV file");
  std::ostringstream text;
  text << in.rdbuf();
  return parse_csv(text.str(), file.string(), has_header);
}

bool parse_number(const std::string& cell, double& value) {
  if (cell.empty()) return false;
  char* end = nullptr;
  value = std::strtod(cell.c_str(), &end);
  return end == cell.c_str() + cell.size() && std::isfinite(value);
}

std::shared_ptr<const CsvTable> CsvCache::get(const std::filesystem::path& file, const std::string& origin) const {
  std::lock_guard<std::mutex> lock(mutex_);
  auto& slot = tables_[file.string()];
  if (!slot) {
    if (!std::filesystem::exists(file)) throw DataError(origin, "CSV file " + file.string() + " does not exist");
    slot = std::make_shared<const CsvTable>(read_csv(file));
  }
  return slot;
}

std::string csv_line(const std::vector<std::string>& cells) {
  std::string out;
  for (size_t i = 0; i < cells.size(); ++i) {
    if (i) out += ',';
    const std::string& c = cells[i];
    if (c.find_first_of(",\"\n\r") == std::string::npos) {
      out += c;
      continue;
    }
    out += '"';
    for (char ch : c) out += ch == '"' ? std::string("\"\"") : std::string(1, ch);
    out += '"';
  }
  return out;
}

}  // namespace modalkit
