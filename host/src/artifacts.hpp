// Typed, hashed artifacts: a file one pipeline or recipe produces and another uses (a tokenizer,
// word vectors, a language model). Beside each file FILE sits FILE.artifact.json saying its type
// and sha256; a consumer declares the type it needs and the host checks both before use.
#pragma once

#include <filesystem>
#include <string>

#include <nlohmann/json.hpp>

namespace modalkit::host {

/// Writes `file`.artifact.json: `{"type", "sha256", "file", "produced_by"}` plus `extra`, and
/// returns that document.
nlohmann::json write_artifact_sidecar(const std::filesystem::path& file, const std::string& type,
                            const std::string& produced_by, const nlohmann::json& extra = nlohmann::json::object());

/// Checks artifact `name` at `file` against the `type` a plugin declared: the file and its
/// sidecar exist, the types agree, the sha256 matches. Returns the sidecar; throws
/// modalkit::Error naming the artifact, the file and what differs.
nlohmann::json check_artifact(const std::string& name, const std::filesystem::path& file, const std::string& type);

}  // namespace modalkit::host
