// A data set: its dataset.json and the samples of its splits (JSONL, one object per sample).
#pragma once

#include <filesystem>
#include <map>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace modalkit::host {

/// One sample: field name → value, and where it was read (`file:line`).
struct Sample {
  nlohmann::json fields;  ///< the sample's fields
  std::string origin;     ///< `samples-file:line`
};

/// A data set described by a dataset.json (schemas/dataset.schema.json).
class Dataset {
 public:
  /// Reads and validates `file`; split samples are read on demand. Throws on any error,
  /// naming the file.
  static Dataset open(const std::filesystem::path& file);

  /// This data set's fields with one split, `split`, read from `samples_file` (JSONL, one sample
  /// a line); relative paths in its samples resolve against that file's directory. For
  /// `predict` on samples that are not part of the data set.
  Dataset for_samples(const std::filesystem::path& samples_file, const std::string& split) const;
  /// The samples of `split`, read once; throws modalkit::DataError naming the file and line.
  const std::vector<Sample>& samples(const std::string& split);
  /// The field's declaration; throws when the data set has no such field.
  const nlohmann::json& field(const std::string& name) const;
  /// Label names of a `label` field, in index order.
  std::vector<std::string> labels(const std::string& field) const;
  /// Whether the data set declares `split`.
  bool has_split(const std::string& split) const;
  /// The dataset.json path.
  const std::filesystem::path& file() const { return file_; }
  /// Directory that relative sample paths resolve against.
  const std::filesystem::path& base_dir() const { return base_dir_; }
  /// The dataset.json document.
  const nlohmann::json& doc() const { return doc_; }
  /// sha256 over dataset.json and each split's samples file (identifies the data set's
  /// version in run metadata; the sample files those lines reference are not hashed). Computed
  /// on first use; not thread-safe.
  const std::string& sha256() const;

 private:
  std::filesystem::path file_, base_dir_;
  nlohmann::json doc_;
  mutable std::string sha256_;  // filled by sha256()
  std::map<std::string, std::vector<Sample>> splits_;
};

}  // namespace modalkit::host
