// The text modality: UTF-8 text (inline or from files), typo and word-drop perturbations on the
// raw string, SentencePiece pieces (the pipeline's `tokenizer` artifact, through the SDK's
// Tokenizer) as features, and a Transformer encoder over piece embeddings. Texts differ in length: collate pads and masks.
#include <fstream>
#include <memory>
#include <mutex>
#include <sstream>

#include <torch/nn/modules/embedding.h>

#include "modalkit/context.hpp"
#include "modalkit/layers.hpp"
#include "modalkit/modality.hpp"
#include "modalkit/plugin.hpp"
#include "modalkit/tokenizer.hpp"
#include "text_manifest.hpp"

namespace {

using modalkit::DataError;

/// Piece embeddings plus learned positions, then Transformer layers that attend over real
/// pieces only (the key-padding mask), then a LayerNorm. One token per piece.
class TextEncoder : public modalkit::Encoder {
 public:
  TextEncoder(int64_t vocab, int64_t max_len, const modalkit::TokenTransformerOptions& options) {
    const int64_t d_model = options.d_model();
    embedding_ = register_module("embedding", torch::nn::Embedding(vocab, d_model));
    position_ = register_parameter("position", torch::randn({max_len, d_model}) * 0.02);
    transformer_ = register_module(
        "transformer", modalkit::TokenTransformer(options));
  }

  modalkit::Sequence forward(const modalkit::ModalityInput& input) override {
    auto x = embedding_->forward(input.data) + position_.narrow(0, 0, input.data.size(1));
    return {transformer_->forward(x, input.mask), input.mask};
  }

 private:
  torch::nn::Embedding embedding_{nullptr};
  modalkit::TokenTransformer transformer_{nullptr};
  torch::Tensor position_;
};

class TextModality : public modalkit::ModalityPlugin {
 public:
  explicit TextModality(const modalkit::CreateArgs& args)
      : context_(args.context), transformer_(modalkit::token_transformer_options(args.config, args.d_model)) {
    const modalkit::Config& c = args.config;
    from_file_ = c.get<std::string>("source") == "file";
    max_bytes_ = c.get<int64_t>("max_bytes");
    max_tokens_ = c.get<int64_t>("max_tokens");
    perturbation_ = c.get<std::string>("perturbation");
  }

  modalkit::RawValue decode(const modalkit::FieldRef& field) const override {
    if (!field.value.is_string()) {
      throw DataError(field.origin, std::string("text field must be a ") + (from_file_ ? "path string" : "string") +
                                        ", found " + field.value.dump());
    }
    if (!from_file_) return {{}, field.value.get<std::string>(), 0};
    const std::filesystem::path path = field.base_dir / field.value.get<std::string>();
    std::error_code ec;
    const auto size = std::filesystem::file_size(path, ec);
    if (ec) throw DataError(field.origin, "cannot read text file " + path.string() + " (" + ec.message() + ")");
    if (size > uint64_t(max_bytes_)) {
      throw DataError(field.origin, path.string() + " is " + std::to_string(size) + " bytes, over max_bytes " +
                                        std::to_string(max_bytes_));
    }
    std::ifstream in(path, std::ios::binary);
    std::ostringstream text;
    text << in.rdbuf();
    return {{}, text.str(), 0};
  }

  modalkit::RawValue perturb(const modalkit::RawValue& raw, double level, std::mt19937_64& rng) const override {
    if (level <= 0) return raw;
    std::istringstream words(raw.text);
    std::string out;
    std::bernoulli_distribution hit(level);
    for (std::string w; words >> w;) {
      if (hit(rng)) {
        if (perturbation_ == "word_drop") continue;
        typo(w, rng);
      }
      out += (out.empty() ? "" : " ") + w;
    }
    return {{}, out, 0};
  }

  torch::Tensor featurize(const modalkit::RawValue& raw) const override {
    auto& sp = tokenizer();
    std::vector<int64_t> ids = sp.encode(raw.text);
    if (int64_t(ids.size()) > max_tokens_) ids.resize(size_t(max_tokens_));
    // BOS first: every text, even an empty one, has a real token to attend to and pool.
    ids.insert(ids.begin(), sp.bos() >= 0 ? sp.bos() : 0);
    return torch::tensor(ids, torch::kLong);
  }

  modalkit::ModalityInput collate(const std::vector<torch::Tensor>& features) const override {
    return modalkit::collate_padded(features, double(std::max<int64_t>(tokenizer().pad(), 0)));
  }

  std::shared_ptr<modalkit::Encoder> make_encoder() override {
    return std::make_shared<TextEncoder>(tokenizer().pieces(), max_tokens_ + 1, transformer_);
  }

 private:
  /// The tokenizer, started on first use (decode needs none, so `data validate` can check
  /// texts without one). The host has checked the artifact's type and hash.
  const modalkit::Tokenizer& tokenizer() const {
    std::lock_guard<std::mutex> lock(mutex_);
    if (!tokenizer_) {
      if (context_ == nullptr) throw modalkit::Error("text: no tokenizer (this command gives plugins no artifacts)");
      tokenizer_ = std::make_unique<modalkit::Tokenizer>(context_->artifact_path("tokenizer"));
    }
    return *tokenizer_;
  }

  /// One typo in `w`: a character deleted, doubled, swapped with the next, or replaced.
  static void typo(std::string& w, std::mt19937_64& rng) {
    if (w.empty()) return;
    std::uniform_int_distribution<size_t> at(0, w.size() - 1);
    std::uniform_int_distribution<int> kind(0, 3), letter('a', 'z');
    const size_t i = at(rng);
    switch (kind(rng)) {
      case 0: if (w.size() > 1) w.erase(i, 1); break;
      case 1: w.insert(i, 1, w[i]); break;
      case 2: if (i + 1 < w.size()) std::swap(w[i], w[i + 1]); else w.insert(i, 1, w[i]); break;
      default: w[i] = static_cast<char>(letter(rng)); break;
    }
  }

  const modalkit::Context* context_;
  bool from_file_;
  int64_t max_bytes_, max_tokens_;
  std::string perturbation_;
  modalkit::TokenTransformerOptions transformer_;
  mutable std::mutex mutex_;
  mutable std::unique_ptr<modalkit::Tokenizer> tokenizer_;
};

}  // namespace

MODALKIT_PLUGIN("text", "0.1.0", kManifest, MODALKIT_MODALITY("text", TextModality))
