#include "dataset.hpp"

#include <fstream>

#include "modalkit/errors.hpp"
#include "registry.hpp"
#include "schema/builtin_schemas.hpp"
#include "schema/json_file.hpp"
#include "schema/json_schema.hpp"

namespace modalkit::host {

Dataset Dataset::open(const std::filesystem::path& file) {
  Dataset ds;
  ds.file_ = file;
  ds.base_dir_ = file.parent_path();
  ds.doc_ = schema::read_json_file(file);
  auto errors = schema::builtin_schema("dataset").validate(ds.doc_);
  if (!errors.empty()) throw schema::ValidationFailed(file.string(), std::move(errors));
  for (const auto& [split, spec] : ds.doc_.at("splits").items()) {
    const std::filesystem::path samples = ds.base_dir_ / spec.at("samples").get<std::string>();
    if (!std::filesystem::exists(samples)) {
      throw DataError(file.string(), "split \"" + split + "\": samples file " + samples.string() + " does not exist");
    }
  }
  return ds;
}

Dataset Dataset::for_samples(const std::filesystem::path& samples_file, const std::string& split) const {
  std::ifstream in(samples_file);
  if (!in) throw DataError(samples_file.string(), "cannot open the samples");
  int64_t count = 0;
  for (std::string line; std::getline(in, line);) {
    if (line.find_first_not_of(" \t\r") != std::string::npos) ++count;
  }
  if (count == 0) throw DataError(samples_file.string(), "holds no samples (one JSON object a line expected)");
  Dataset ds;
  ds.file_ = file_;
  ds.base_dir_ = std::filesystem::absolute(samples_file).parent_path();
  ds.doc_ = doc_;
  ds.doc_["splits"] = {{split, {{"samples", std::filesystem::absolute(samples_file).string()}, {"count", count}}}};
  return ds;
}

const std::string& Dataset::sha256() const {
  // Only a run's metadata needs it, so validate, inspect and eval do not pay for reading every
  // split file twice. dataset.json and the split files it names, so a changed sample list is a
  // changed data set; the sample files those lines point to are not read (70k PNGs would be slow).
  if (sha256_.empty()) {
    std::string digest = "dataset.json " + sha256_file(file_) + "\n";
    for (const auto& [split, spec] : doc_.at("splits").items()) {
      digest += split + " " + sha256_file(base_dir_ / spec.at("samples").get<std::string>()) + "\n";
    }
    sha256_ = sha256_text(digest);
  }
  return sha256_;
}

bool Dataset::has_split(const std::string& split) const { return doc_.at("splits").contains(split); }

const nlohmann::json& Dataset::field(const std::string& name) const {
  const auto& fields = doc_.at("fields");
  if (!fields.contains(name)) {
    throw DataError(file_.string(), "has no field \"" + name + "\" (fields: " + schema::join_keys(fields) + ")");
  }
  return fields.at(name);
}

std::vector<std::string> Dataset::labels(const std::string& name) const {
  const auto& f = field(name);
  if (!f.contains("labels")) throw DataError(file_.string(), "field \"" + name + "\" has no label names");
  return f.at("labels").get<std::vector<std::string>>();
}

const std::vector<Sample>& Dataset::samples(const std::string& split) {
  if (auto it = splits_.find(split); it != splits_.end()) return it->second;
  if (!has_split(split)) {
    throw DataError(file_.string(),
                    "has no split \"" + split + "\" (splits: " + schema::join_keys(doc_.at("splits")) + ")");
  }
  const auto& spec = doc_.at("splits").at(split);
  const std::filesystem::path path = base_dir_ / spec.at("samples").get<std::string>();
  std::ifstream in(path);
  if (!in) throw DataError(path.string(), "cannot open the samples of split \"" + split + "\"");
  std::vector<Sample> out;
  std::string line;
  int64_t line_no = 0;
  while (std::getline(in, line)) {
    ++line_no;
    if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
    const std::string origin = path.string() + ":" + std::to_string(line_no);
    nlohmann::json j = nlohmann::json::parse(line, nullptr, /*allow_exceptions=*/false);
    if (j.is_discarded() || !j.is_object()) throw DataError(origin, "not a JSON object");
    out.push_back(Sample{std::move(j), origin});
  }
  const int64_t declared = spec.at("count").get<int64_t>();
  if (static_cast<int64_t>(out.size()) != declared) {
    throw DataError(path.string(), "holds " + std::to_string(out.size()) + " samples, " + file_.string() +
                                       " declares " + std::to_string(declared) + " for split \"" + split + "\"");
  }
  return splits_.emplace(split, std::move(out)).first->second;
}

}  // namespace modalkit::host
