// Representation tuning inside a language model, two ways on the SDK's hooks:
//  - pseudo-self-attention (Ziegler, Melas-Kyriazi, Gehrmann & Rush 2019, "Encoder-agnostic
//    adaptation for conditional language generation"): each self-attention layer also attends to
//    the encoder's tokens, projected by new per-layer key and value maps;
//  - the multimodal adaptation gate (Rahman, Hasan, Lee, Zadeh, Mao, Morency & Hoque 2020,
//    "Integrating multimodal information in large pretrained transformers"): after one block the
//    hidden states move by a gated, norm-bounded displacement computed from the pooled encoding.
// The model is frozen by default (the transference setting); captions, loss and ranking live in
// frozen_lm.hpp.
#include <torch/nn/modules/container/modulelist.h>
#include <torch/nn/modules/linear.h>

#include "../common/frozen_lm.hpp"
#include "modalkit/plugin.hpp"
#include "representation_tuning_manifest.hpp"

namespace {

class RepresentationTuning : public modalkit::frozen_lm::CaptioningStrategy {
 public:
  explicit RepresentationTuning(const modalkit::CreateArgs& args)
      : CaptioningStrategy(args),
        gate_(args.config.get<std::string>("variant") == "adaptation_gate"),
        layer_(args.config.get<int64_t>("layer")),
        beta_(args.config.get<double>("beta")) {}

  modalkit::Conditioning condition(const modalkit::Batch& batch) override {
    const modalkit::Sequence seq = encode(batch);
    modalkit::Conditioning c;
    if (!gate_) {
      for (size_t l = 0; l < keys_->size(); ++l) {
        c.hooks.extra_keys.push_back(keys_->ptr<torch::nn::LinearImpl>(l)->forward(seq.x));
        c.hooks.extra_values.push_back(values_->ptr<torch::nn::LinearImpl>(l)->forward(seq.x));
      }
      c.hooks.extra_mask = seq.mask;
      return c;
    }
    const at::Tensor a = modalkit::masked_mean_pool(seq);  // [B, d_model]
    c.hooks.shift_layer = layer_;
    c.hooks.shift = [this, a](const at::Tensor& h) {
      // `a` has the batch of h, or 1 when generate() runs beams of one input.
      const at::Tensor av = a.unsqueeze(1).expand({h.size(0), h.size(1), -1});
      const at::Tensor shift = at::relu(gate_w_->forward(at::cat({h, av}, -1))) * shift_w_->forward(av);
      const at::Tensor alpha = (h.norm(2, -1, true) / shift.norm(2, -1, true).clamp_min(1e-6) * beta_).clamp_max(1.0);
      return h + alpha * shift;
    };
    return c;
  }
  bool interleavable() const override { return false; }

 protected:
  void build_conditioner(int64_t in_width, modalkit::LanguageModel& lm) override {
    if (!lm.supports_hooks()) {
      throw modalkit::ConfigError(pointer_ + "/variant", "the language model (" + lm.config().dump() +
                                                             ") has no hooks: a TorchScript model serves prefix_tuning only");
    }
    const int64_t d = lm.width();
    if (!gate_) {
      keys_ = register_module("keys", torch::nn::ModuleList());
      values_ = register_module("values", torch::nn::ModuleList());
      for (int64_t l = 0; l < lm.layers(); ++l) {
        keys_->push_back(torch::nn::Linear(in_width, d));
        values_->push_back(torch::nn::Linear(in_width, d));
      }
      return;
    }
    if (layer_ >= lm.layers()) {
      throw modalkit::ConfigError(pointer_ + "/layer", "the language model has " + std::to_string(lm.layers()) +
                                                           " blocks (0.." + std::to_string(lm.layers() - 1) + ")");
    }
    gate_w_ = register_module("gate", torch::nn::Linear(d + in_width, d));
    shift_w_ = register_module("shift", torch::nn::Linear(in_width, d));
  }

 private:
  bool gate_;
  int64_t layer_;
  double beta_;
  torch::nn::ModuleList keys_{nullptr}, values_{nullptr};
  torch::nn::Linear gate_w_{nullptr}, shift_w_{nullptr};
};

}  // namespace

MODALKIT_PLUGIN("representation_tuning", "0.1.0", kManifest, MODALKIT_TRANSFER("representation_tuning", RepresentationTuning))
