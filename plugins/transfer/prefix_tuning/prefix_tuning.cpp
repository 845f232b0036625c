// Prefix tuning with a frozen language model (Frozen: Tsimpoukelli, Menick, Cabi, Eslami,
// Vinyals & Hill 2021, "Multimodal few-shot learning with frozen language models"). The
// conditioning modality's encoder is trained so that a linear map of its pooled output, read as
// k embeddings placed before the text, makes the frozen model continue with the caption; the
// gradient reaches the encoder through the frozen model. Everything but the prefix map lives in
// frozen_lm.hpp.
#include <torch/nn/modules/linear.h>

#include "../common/frozen_lm.hpp"
#include "modalkit/plugin.hpp"
#include "prefix_tuning_manifest.hpp"

namespace {

class PrefixTuning : public modalkit::frozen_lm::CaptioningStrategy {
 public:
  explicit PrefixTuning(const modalkit::CreateArgs& args)
      : CaptioningStrategy(args), length_(args.config.get<int64_t>("prefix_length")) {}

  modalkit::Conditioning condition(const modalkit::Batch& batch) override {
    const at::Tensor pooled = modalkit::masked_mean_pool(encode(batch));  // [B, d_model]
    return {map_->forward(pooled).view({pooled.size(0), length_, width_}), {}};
  }
  bool interleavable() const override { return true; }

 protected:
  void build_conditioner(int64_t in_width, modalkit::LanguageModel& lm) override {
    width_ = lm.width();
    map_ = register_module("prefix", torch::nn::Linear(in_width, length_ * width_));
  }

 private:
  int64_t length_, width_ = 0;
  torch::nn::Linear map_{nullptr};
};

}  // namespace

MODALKIT_PLUGIN("prefix_tuning", "0.1.0", kManifest, MODALKIT_TRANSFER("prefix_tuning", PrefixTuning))
