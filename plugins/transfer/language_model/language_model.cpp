// Language-model pretraining: next-piece prediction with the SDK's CausalTransformerLM on
// windows of pieces (the lm_windows stream), then the model as an artifact for the methods
// that transfer from a frozen language model.
#include <cmath>
#include <fstream>

#include <ATen/ATen.h>
#include <spdlog/spdlog.h>

#include "modalkit/context.hpp"
#include "modalkit/language_model.hpp"
#include "modalkit/plugin.hpp"
#include "modalkit/strategy.hpp"
#include "modalkit/stream.hpp"
#include "modalkit/tokenizer.hpp"
#include "language_model_manifest.hpp"

namespace {

class LanguageModelPretraining : public modalkit::TransferStrategy {
 public:
  explicit LanguageModelPretraining(const modalkit::CreateArgs& args)
      : context_(args.context),
        width_(args.config.get<int64_t>("width")),
        layers_(args.config.get<int64_t>("layers")),
        heads_(args.config.get<int64_t>("heads")),
        positions_(args.config.get<int64_t>("context")),
        dropout_(args.config.get<double>("dropout")),
        probes_(args.config.get<std::vector<std::string>>("probe_prompts")),
        probe_tokens_(args.config.get<int64_t>("probe_tokens")) {
    if (width_ % heads_ != 0) {
      throw modalkit::ConfigError(args.config.pointer() + "/heads",
                                  "width " + std::to_string(width_) + " is not divisible by heads " + std::to_string(heads_));
    }
  }

  void build(const modalkit::ModelParts& /*parts*/) override {
    auto stream = std::dynamic_pointer_cast<modalkit::BatchStream>(context_->find_component("stream"));
    if (!stream) throw modalkit::Error("language_model trains on a /data/stream of token windows (e.g. plugin lm_windows); the pipeline has none");
    const nlohmann::json info = stream->info();
    for (const char* key : {"pieces", "context"}) {
      if (!info.contains(key)) throw modalkit::Error("language_model: stream " + stream->plugin_name() + " reports no " + key + " in info()");
    }
    const int64_t window = info.at("context");
    if (positions_ != 0 && positions_ < window) {
      throw modalkit::ConfigError("/transfer/config/context", "context " + std::to_string(positions_) +
                                                                  " is shorter than the stream's windows of " + std::to_string(window));
    }
    eos_ = info.value("eos", int64_t{-1});
    lm_ = register_module("lm", std::make_shared<modalkit::CausalTransformerLM>(
                                    modalkit::CausalTransformerLMOptions(info.at("pieces"), width_, layers_, heads_,
                                                                         positions_ != 0 ? positions_ : window)
                                        .dropout(dropout_),
                                    nlohmann::json{{"tokenizer_sha256", info.value("tokenizer_sha256", "")},
                                                   {"trained_by", context_->run_dir().string()}}));
  }

  modalkit::LossTerms loss(const modalkit::Batch& batch) override {
    const auto [logits, targets] = next_piece(batch);
    return {{"lm", at::cross_entropy_loss(logits, targets)}};
  }

  modalkit::Predictions predict(const modalkit::Batch& /*batch*/) override { return {}; }
  std::vector<std::string> modalities_at_train() const override { return {}; }
  std::vector<std::string> modalities_at_test() const override { return {}; }

  void finalize(modalkit::BatchSource& data) override {
    const auto dir = context_->run_dir();
    modalkit::save_language_model(*lm_, dir / "language_model.pt");
    int64_t parameters = 0;
    for (const auto& p : lm_->parameters()) parameters += p.numel();
    nlohmann::json report = {{"parameters", parameters}, {"config", lm_->config()}};
    for (const std::string split : {"val", "test"}) {
      const double nll = mean_nll(data, split);
      if (std::isnan(nll)) continue;  // the pipeline's splits do not include it
      report[split] = {{"nll_per_piece", nll}, {"perplexity", std::exp(nll)}};
      context_->logger().info("language_model: {} perplexity {:.2f} ({} parameters)", split, std::exp(nll), parameters);
    }
    std::ofstream(dir / "perplexity.json") << report.dump(2) << '\n';
    if (!probes_.empty()) write_samples(dir);
  }

 private:
  /// A window batch's next-piece logits `[B C, V]` and the pieces they predict `[B C]`: each of
  /// the first C pieces of a window `[B, C + 1]` predicts the one after it.
  std::pair<at::Tensor, at::Tensor> next_piece(const modalkit::Batch& batch) {
    const at::Tensor& tokens = batch.input("tokens", "language_model", "stream").data;
    const int64_t c = tokens.size(1) - 1;
    const at::Tensor logits = lm_->forward(lm_->embed(tokens.narrow(1, 0, c)), {}, {});
    return {logits.reshape({-1, logits.size(-1)}), tokens.narrow(1, 1, c).reshape({-1})};
  }

  /// Mean negative log-likelihood per predicted piece on `split`; NaN when the run did not load
  /// it or it has no batches.
  double mean_nll(modalkit::BatchSource& data, const std::string& split) {
    if (!data.has_split(split)) return std::nan("");
    torch::NoGradGuard no_grad;
    const bool was_training = is_training();
    eval();
    double sum = 0;
    int64_t count = 0;
    data.for_each(split, {}, [&](const modalkit::Batch& batch) {
      const auto [logits, targets] = next_piece(batch);
      sum += at::cross_entropy_loss(logits, targets, /*weight=*/{}, at::Reduction::Sum).item<double>();
      count += targets.numel();
    });
    train(was_training);
    return count > 0 ? sum / static_cast<double>(count) : std::nan("");
  }

  void write_samples(const std::filesystem::path& dir) {
    const modalkit::Tokenizer tokenizer(context_->artifact_path("tokenizer"));
    lm_->eval();
    nlohmann::json samples = nlohmann::json::array();
    for (const auto& prompt : probes_) {
      std::vector<int64_t> ids{tokenizer.bos()};
      for (const int64_t id : tokenizer.encode(prompt)) ids.push_back(id);
      const at::Tensor embeds = lm_->embed(at::tensor(ids, at::kLong).unsqueeze(0).to(context_->device()));
      modalkit::GenerateOptions options;
      options.max_tokens = probe_tokens_;
      options.eos = eos_;
      const auto out = modalkit::generate(*lm_, embeds, {}, options);
      const std::string text = tokenizer.decode(out.front());
      samples.push_back({{"prompt", prompt}, {"continuation", text}});
      context_->logger().info("language_model: {} → {}", prompt, text);
    }
    std::ofstream(dir / "samples.json") << samples.dump(2) << '\n';
  }

  modalkit::Context* context_;
  int64_t width_, layers_, heads_, positions_;
  double dropout_;
  std::vector<std::string> probes_;
  int64_t probe_tokens_;
  int64_t eos_ = -1;
  std::shared_ptr<modalkit::CausalTransformerLM> lm_;
};

}  // namespace

MODALKIT_PLUGIN("language_model", "0.1.0", kManifest, MODALKIT_TRANSFER("language_model", LanguageModelPretraining))
