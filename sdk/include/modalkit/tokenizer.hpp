/// \file
/// A SentencePiece tokenizer (the `tokenizer` artifact, type `sentencepiece`) for every plugin
/// that turns text into piece ids or back: the text modality, the language-model stream and the
/// strategies that caption or answer with a language model. Since SDK ABI 1.3.
///
/// SentencePiece cannot be loaded into a process that also holds LibTorch on Debian 12 (their
/// protobuf copies collide at start-up), so the model is served by the `modalkit-spm` helper
/// program over a socket pair. Its path comes from the `MODALKIT_SPM_HELPER` environment
/// variable, which the host sets to the helper installed beside the text plugin; tests and other
/// embedders set it themselves.
#pragma once

#include <cstdint>
#include <filesystem>
#include <memory>
#include <string>
#include <vector>

namespace modalkit {

/// A running tokenizer helper. Calls are serialised (one request at a time), so a Tokenizer may
/// be shared by loader threads; a helper that dies gives an Error, never a signal.
class Tokenizer {
 public:
  /// Starts the helper on `model`. Throws Error naming the model and the helper when the helper
  /// is missing or cannot load the model.
  explicit Tokenizer(const std::filesystem::path& model);
  ~Tokenizer();
  Tokenizer(const Tokenizer&) = delete;
  Tokenizer& operator=(const Tokenizer&) = delete;

  /// Piece ids of `text` (no BOS or EOS).
  std::vector<int64_t> encode(const std::string& text) const;
  /// The text of `ids` (BOS, EOS and padding are dropped).
  std::string decode(const std::vector<int64_t>& ids) const;
  /// Number of pieces (the vocabulary size a language model over them needs).
  int64_t pieces() const;
  /// Ids of the special pieces; -1 when the model has none.
  int64_t bos() const;
  int64_t eos() const;
  int64_t pad() const;
  /// The sha256 the model's artifact sidecar (`MODEL.artifact.json`) records; empty without one.
  /// A language model stores it so that it is never run with another tokenizer's ids.
  const std::string& sha256() const;
  /// The model file.
  const std::filesystem::path& model() const;

 private:
  struct State;
  std::unique_ptr<State> state_;
};

/// The helper program: `MODALKIT_SPM_HELPER` when set; otherwise `modalkit-spm` found on PATH
/// (empty when neither).
std::filesystem::path spm_helper_path();

}  // namespace modalkit
