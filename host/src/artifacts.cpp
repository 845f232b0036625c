#include "artifacts.hpp"

#include <fstream>

#include "hashing.hpp"
#include "modalkit/errors.hpp"

namespace fs = std::filesystem;

namespace modalkit::host {

namespace {
fs::path sidecar_of(const fs::path& file) {
  fs::path s = file;
  s += ".artifact.json";
  return s;
}
}  // namespace

nlohmann::json write_artifact_sidecar(const fs::path& file, const std::string& type, const std::string& produced_by,
                                      const nlohmann::json& extra) {
  nlohmann::json doc = extra;
  doc["type"] = type;
  doc["sha256"] = sha256_file(file);
  doc["file"] = file.filename().string();
  doc["produced_by"] = produced_by;
  std::ofstream out(sidecar_of(file));
  out << doc.dump(2) << '\n';
  if (!out) throw Error("cannot write " + sidecar_of(file).string());
  return doc;
}

nlohmann::json check_artifact(const std::string& name, const fs::path& file, const std::string& type) {
  const std::string what = "artifact \"" + name + "\" (" + file.string() + ")";
  if (!fs::exists(file)) throw Error(what + ": no such file");
  std::ifstream in(sidecar_of(file));
  const nlohmann::json doc = nlohmann::json::parse(in, nullptr, false);
  if (!in.is_open() || doc.is_discarded() || !doc.is_object() || !doc.contains("type") || !doc.contains("sha256")) {
    throw Error(what + ": missing or unreadable " + sidecar_of(file).filename().string() +
                " (every artifact carries its type and sha256 beside it)");
  }
  if (doc["type"] != type) {
    throw Error(what + ": is of type " + doc["type"].dump() + ", the plugin needs \"" + type + "\"");
  }
  const std::string actual = sha256_file(file);
  if (doc["sha256"] != actual) {
    throw Error(what + ": sha256 " + actual + " differs from the " + doc["sha256"].get<std::string>() +
                " recorded when it was made (the file changed since)");
  }
  return doc;
}

}  // namespace modalkit::host
