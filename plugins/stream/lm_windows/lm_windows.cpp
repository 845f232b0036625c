// Language-modelling windows as a stream (the packing GPT-2 trains with): texts become
// BOS + pieces + EOS, are joined, and cut into windows of context + 1 pieces.
//
// A training epoch's window order is a pure function of (seed, split, epoch), so a resumed run
// gets the same batches and batches may be asked for in any order; epoch 0 is corpus order.
#include <algorithm>
#include <map>
#include <memory>
#include <mutex>
#include <numeric>
#include <random>

#include <ATen/ATen.h>

#include "modalkit/context.hpp"
#include "modalkit/errors.hpp"
#include "modalkit/plugin.hpp"
#include "modalkit/stream.hpp"
#include "modalkit/tokenizer.hpp"
#include "lm_windows_manifest.hpp"

namespace {

class LmWindows : public modalkit::BatchStream {
 public:
  explicit LmWindows(const modalkit::CreateArgs& args)
      : context_(args.context), seed_(args.context->seed()), window_(args.config.get<int64_t>("context")) {}

  // Nothing to learn: the vocabulary is the tokenizer's. The fitted state records which
  // tokenizer, so a resumed run with another one is refused.
  void fit(const std::vector<modalkit::FieldRef>& /*train*/) override {}
  nlohmann::json fitted_state() const override { return {{"tokenizer_sha256", tokenizer().sha256()}}; }
  void load_fitted_state(const nlohmann::json& state) override {
    const std::string was = state.value("tokenizer_sha256", "");
    if (!was.empty() && !tokenizer().sha256().empty() && was != tokenizer().sha256()) {
      throw modalkit::Error("lm_windows: the run was started with tokenizer sha256 " + was.substr(0, 16) + "…, the pipeline now names " +
                            tokenizer().model().string());
    }
  }

  void open(const std::string& split, const std::vector<modalkit::FieldRef>& values) override {
    const auto& tok = tokenizer();
    std::vector<int32_t> ids;
    for (const auto& f : values) {
      if (!f.value.is_string()) throw modalkit::DataError(f.origin, "lm_windows reads text, found " + std::string(f.value.type_name()));
      if (tok.bos() >= 0) ids.push_back(static_cast<int32_t>(tok.bos()));
      for (const int64_t id : tok.encode(f.value.get<std::string>())) ids.push_back(static_cast<int32_t>(id));
      if (tok.eos() >= 0) ids.push_back(static_cast<int32_t>(tok.eos()));
    }
    if (static_cast<int64_t>(ids.size()) < window_ + 1) {
      throw modalkit::DataError("lm_windows", "split \"" + split + "\" has " + std::to_string(ids.size()) +
                                                  " pieces, fewer than one window of context + 1 = " + std::to_string(window_ + 1) +
                                                  " (lower config context or use more text)");
    }
    std::lock_guard<std::mutex> lock(mutex_);
    splits_[split] = std::make_shared<const std::vector<int32_t>>(std::move(ids));
  }

  int64_t batches(const std::string& split, int64_t batch_size) const override {
    return (windows(*pieces(split)) + batch_size - 1) / batch_size;
  }

  modalkit::Batch batch(const std::string& split, int64_t epoch, int64_t index, int64_t batch_size) const override {
    const auto text = pieces(split);
    const int64_t n = windows(*text), first = index * batch_size, last = std::min(n, first + batch_size);
    if (index < 0 || first >= last) throw modalkit::Error("lm_windows: batch " + std::to_string(index) + " out of range");
    std::vector<int64_t> order(static_cast<size_t>(n));
    std::iota(order.begin(), order.end(), 0);
    if (epoch > 0) {
      std::mt19937_64 rng(modalkit::mix_seed(modalkit::mix_seed(seed_ ^ modalkit::stable_hash(split)) + static_cast<uint64_t>(epoch)));
      std::shuffle(order.begin(), order.end(), rng);
    }
    const int64_t b = last - first;
    auto tokens = at::empty({b, window_ + 1}, at::kLong), number = at::empty({b}, at::kLong);
    auto* t = tokens.data_ptr<int64_t>();
    for (int64_t i = 0; i < b; ++i) {
      const int64_t w = order[static_cast<size_t>(first + i)];
      number.data_ptr<int64_t>()[i] = w;
      std::copy_n(text->begin() + w * window_, window_ + 1, t + i * (window_ + 1));
    }
    modalkit::Batch out;
    out.inputs["tokens"] = modalkit::ModalityInput{tokens, {}, at::ones({b}, at::kBool)};
    out.index = number;
    return out;
  }

  nlohmann::json info() const override {
    const auto& tok = tokenizer();
    nlohmann::json counts = nlohmann::json::object();
    {
      std::lock_guard<std::mutex> lock(mutex_);
      for (const auto& [split, ids] : splits_) counts[split] = ids->size();
    }
    return {{"pieces", tok.pieces()}, {"bos", tok.bos()}, {"eos", tok.eos()}, {"context", window_},
            {"tokenizer_sha256", tok.sha256()}, {"tokenizer", tok.model().string()}, {"tokens", counts}};
  }

 private:
  int64_t windows(const std::vector<int32_t>& ids) const { return (static_cast<int64_t>(ids.size()) - 1) / window_; }

  std::shared_ptr<const std::vector<int32_t>> pieces(const std::string& split) const {
    std::lock_guard<std::mutex> lock(mutex_);
    const auto it = splits_.find(split);
    if (it == splits_.end()) throw modalkit::Error("lm_windows: split \"" + split + "\" was not opened");
    return it->second;
  }

  const modalkit::Tokenizer& tokenizer() const {
    std::lock_guard<std::mutex> lock(mutex_);
    if (!tokenizer_) tokenizer_ = std::make_unique<modalkit::Tokenizer>(context_->artifact_path("tokenizer"));
    return *tokenizer_;
  }

  modalkit::Context* context_;
  uint64_t seed_;
  int64_t window_;
  mutable std::mutex mutex_;
  mutable std::unique_ptr<modalkit::Tokenizer> tokenizer_;
  std::map<std::string, std::shared_ptr<const std::vector<int32_t>>> splits_;
};

}  // namespace

MODALKIT_PLUGIN("lm_windows", "0.1.0", kManifest, MODALKIT_STREAM("lm_windows", LmWindows))
