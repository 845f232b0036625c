// Typed, hashed artifacts: the sidecar written beside a file, and the checks a consumer runs.
#include <unistd.h>

#include <fstream>

#include <gtest/gtest.h>

#include "artifacts.hpp"
#include "hashing.hpp"

namespace fs = std::filesystem;

namespace {

std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const std::exception& e) {
    return e.what();
  }
  return "";
}

TEST(Artifacts, SidecarRecordsTypeAndHashAndChecksCatchEachMismatch) {
  const fs::path dir = fs::current_path() / ("tmp-artifacts-" + std::to_string(::getpid()));
  fs::remove_all(dir);
  fs::create_directories(dir);
  const fs::path file = dir / "tok.model";
  std::ofstream(file) << "pieces";
  modalkit::host::write_artifact_sidecar(file, "sentencepiece", "modalkit data prepare text-corpus", {{"pieces", 8}});
  auto doc = modalkit::host::check_artifact("tokenizer", file, "sentencepiece");
  EXPECT_EQ(doc["sha256"], modalkit::host::sha256_text("pieces"));
  EXPECT_EQ(doc["produced_by"], "modalkit data prepare text-corpus");
  EXPECT_EQ(doc["pieces"], 8);

  auto error = error_of([&] { modalkit::host::check_artifact("tokenizer", file, "word-vectors"); });
  EXPECT_NE(error.find("artifact \"tokenizer\" (" + file.string() + ")"), std::string::npos) << error;
  EXPECT_NE(error.find("is of type \"sentencepiece\", the plugin needs \"word-vectors\""), std::string::npos) << error;

  std::ofstream(file, std::ios::app) << "!";
  error = error_of([&] { modalkit::host::check_artifact("tokenizer", file, "sentencepiece"); });
  EXPECT_NE(error.find("sha256 " + modalkit::host::sha256_text("pieces!")), std::string::npos) << error;
  EXPECT_NE(error.find("the file changed since"), std::string::npos) << error;

  fs::remove(dir / "tok.model.artifact.json");
  error = error_of([&] { modalkit::host::check_artifact("tokenizer", file, "sentencepiece"); });
  EXPECT_NE(error.find("missing or unreadable tok.model.artifact.json"), std::string::npos) << error;
  error = error_of([&] { modalkit::host::check_artifact("tokenizer", dir / "none", "sentencepiece"); });
  EXPECT_NE(error.find("no such file"), std::string::npos) << error;
  fs::remove_all(dir);
}

}  // namespace
