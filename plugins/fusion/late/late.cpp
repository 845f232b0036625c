// Late fusion (LF in MultiBench, Liang et al. 2021): every modality is summarised on its own —
// its real tokens mean-pooled, then its own small MLP (Linear d→hidden, ReLU, dropout,
// Linear hidden→d) — and the modalities meet only at the head. The output is a sequence with one
// token per modality in the batch (in name order), so the head's masked mean pool averages the
// per-modality vectors of the modalities a sample has.
//
// Absent modalities: token m of sample b is real (mask[b, m]) only when the sample has at least
// one real token of modality m. A modality absent for a sample, or from the whole batch, is left
// out of that sample's average, not averaged in as zeros. Filler tokens are zeroed before
// pooling, so whatever they hold (even NaN) reaches neither the output nor the gradients.
#include <torch/nn/modules/dropout.h>
#include <torch/nn/modules/linear.h>

#include "late_manifest.hpp"
#include "modalkit/fusion.hpp"
#include "modalkit/layers.hpp"
#include "modalkit/plugin.hpp"

namespace {

/// One modality's summariser: Linear d→hidden, ReLU, dropout, Linear hidden→d.
class ModalityMlpImpl : public torch::nn::Module {
 public:
  ModalityMlpImpl(int64_t width, int64_t hidden, double dropout) {
    fc1_ = register_module("fc1", torch::nn::Linear(width, hidden));
    fc2_ = register_module("fc2", torch::nn::Linear(hidden, width));
    dropout_ = register_module("dropout", torch::nn::Dropout(dropout));
  }
  torch::Tensor forward(const torch::Tensor& h) { return fc2_->forward(dropout_->forward(torch::relu(fc1_->forward(h)))); }

 private:
  torch::nn::Linear fc1_{nullptr}, fc2_{nullptr};
  torch::nn::Dropout dropout_{nullptr};
};
TORCH_MODULE(ModalityMlp);

class LateFusion : public modalkit::FusionOperator {
 public:
  explicit LateFusion(const modalkit::CreateArgs& args) : width_(args.d_model) {
    modalkit::require_d_model_inputs(args, "late fusion maps every modality back to");
    const int64_t hidden = args.config.get<int64_t>("hidden");
    const double dropout = args.config.get<double>("dropout");
    for (const auto& [name, width] : args.input_widths) {
      mlps_.emplace(name, register_module("mlp_" + name, ModalityMlp(width, hidden > 0 ? hidden : width, dropout)));
    }
  }

  modalkit::Sequence forward(const std::map<std::string, modalkit::Sequence>& inputs) override {
    TORCH_CHECK(!inputs.empty(), "late: no modality to fuse");
    std::vector<torch::Tensor> tokens, masks;
    for (const auto& [name, seq] : inputs) {
      auto it = mlps_.find(name);
      TORCH_CHECK(it != mlps_.end(), "late: modality ", name, " is not one of the pipeline's modalities");
      const torch::Tensor real = seq.mask.to(torch::kBool);
      const torch::Tensor pooled =
          modalkit::masked_mean_pool({seq.x.masked_fill(real.logical_not().unsqueeze(-1), 0.0), real});
      const torch::Tensor present = real.any(1, /*keepdim=*/true);  // [B, 1]
      // An absent modality's token is masked out; its values are zeroed too, so nothing that
      // ignores the mask could read the MLP's response to "no input" as if it were real.
      tokens.push_back(it->second->forward(pooled).masked_fill(present.logical_not(), 0.0));
      masks.push_back(present);
    }
    return {torch::stack(tokens, 1), torch::cat(masks, 1)};  // [B, M, d], [B, M]
  }

  modalkit::FusionOutput output_kind() const override { return modalkit::FusionOutput::kSequence; }
  int64_t output_width() const override { return width_; }

 private:
  int64_t width_;
  std::map<std::string, ModalityMlp> mlps_;
};

}  // namespace

MODALKIT_PLUGIN("late", "0.1.0", kManifest, MODALKIT_FUSION("late", LateFusion))
