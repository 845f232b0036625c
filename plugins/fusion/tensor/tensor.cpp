// Tensor Fusion Network (TFN, Zadeh et al. 2017): each modality's real tokens are mean-pooled
// and projected to a small width k, a constant 1 is appended (z_m = [h_m, 1]), and the outer
// product z_1 ⊗ ... ⊗ z_M of all the pipeline's modalities, flattened ((k+1)^M features), goes
// through dropout and Linear → d_model with a ReLU (TFN's post-fusion layer). Because of the
// appended 1, the product holds every unimodal term, every bimodal interaction, and so on up to
// the M-way one. Modalities enter in name order (modality 1 is the most significant index).
//
// Absent modalities: a modality that a sample lacks (no real token), or that is not in the
// batch at all, gets z_m = [0, ..., 0, 1]. Every entry of the product that involves h_m is then
// 0 and only the entries that take z_m's constant 1 survive: exactly the unimodal and
// interaction terms of the other modalities, i.e. the modality's factor is dropped, not fed in
// as a zero observation (the projection's bias is not applied to it). A sample with no modality
// at all is masked out (and its output zeroed). Filler tokens are zeroed before pooling.
#include <torch/nn/modules/dropout.h>
#include <torch/nn/modules/linear.h>

#include "modalkit/fusion.hpp"
#include "modalkit/layers.hpp"
#include "modalkit/plugin.hpp"
#include "tensor_manifest.hpp"

namespace {

class TensorFusion : public modalkit::FusionOperator {
 public:
  explicit TensorFusion(const modalkit::CreateArgs& args)
      : width_(args.d_model), factor_width_(args.config.get<int64_t>("factor_width")) {
    const modalkit::Config& config = args.config;
    modalkit::require_d_model_inputs(args, "tensor fusion expects every modality at");
    // (k+1)^M, stopping as soon as it passes the cap (so it cannot overflow).
    const int64_t max_features = config.get<int64_t>("max_features");
    int64_t features = 1;
    for (size_t m = 0; m < args.input_widths.size(); ++m) {
      features *= factor_width_ + 1;
      if (features > max_features) {
        throw modalkit::ConfigError(
            config.pointer(), "the outer product of " + std::to_string(args.input_widths.size()) +
                                  " modalities at factor_width " + std::to_string(factor_width_) + " has (" +
                                  std::to_string(factor_width_) + "+1)^" + std::to_string(args.input_widths.size()) +
                                  " features, more than max_features " + std::to_string(max_features) +
                                  ": lower factor_width, raise max_features, or use the lowrank fusion");
      }
    }
    for (const auto& [name, width] : args.input_widths) {
      order_.push_back(name);
      projections_.emplace(name, register_module("proj_" + name, torch::nn::Linear(width, factor_width_)));
    }
    dropout_ = register_module("dropout", torch::nn::Dropout(config.get<double>("dropout")));
    out_ = register_module("out", torch::nn::Linear(features, width_));
  }

  modalkit::Sequence forward(const std::map<std::string, modalkit::Sequence>& inputs) override {
    TORCH_CHECK(!inputs.empty(), "tensor: no modality to fuse");
    for (const auto& [name, seq] : inputs) {
      TORCH_CHECK(projections_.count(name), "tensor: modality ", name, " is not one of the pipeline's modalities");
    }
    const modalkit::Sequence& first = inputs.begin()->second;
    const int64_t batch = first.x.size(0);
    const auto options = first.x.options();
    // z_m for an absent modality: [0, ..., 0, 1].
    const torch::Tensor absent = torch::cat({torch::zeros({batch, factor_width_}, options), torch::ones({batch, 1}, options)}, 1);

    torch::Tensor product, any_present = torch::zeros({batch}, torch::dtype(torch::kBool).device(first.x.device()));
    for (const std::string& name : order_) {
      torch::Tensor z = absent;
      auto it = inputs.find(name);
      if (it != inputs.end()) {
        const torch::Tensor real = it->second.mask.to(torch::kBool);
        const torch::Tensor present = real.any(1, /*keepdim=*/true);  // [B, 1]
        const torch::Tensor pooled =
            modalkit::masked_mean_pool({it->second.x.masked_fill(real.logical_not().unsqueeze(-1), 0.0), real});
        const torch::Tensor h = projections_.at(name)->forward(pooled).masked_fill(present.logical_not(), 0.0);
        z = torch::cat({h, torch::ones({batch, 1}, options)}, 1);  // [B, k+1]
        any_present = any_present.logical_or(present.squeeze(1));
      }
      // Flattened outer product so far ⊗ z_m: [B, F] x [B, k+1] → [B, F*(k+1)].
      product = product.defined() ? (product.unsqueeze(2) * z.unsqueeze(1)).flatten(1) : z;
    }
    torch::Tensor fused = torch::relu(out_->forward(dropout_->forward(product)));
    fused = fused.masked_fill(any_present.logical_not().unsqueeze(1), 0.0);
    return {fused.unsqueeze(1), any_present.unsqueeze(1)};  // [B, 1, d], [B, 1]
  }

  modalkit::FusionOutput output_kind() const override { return modalkit::FusionOutput::kPooled; }
  int64_t output_width() const override { return width_; }

 private:
  int64_t width_, factor_width_;
  std::vector<std::string> order_;
  std::map<std::string, torch::nn::Linear> projections_;
  torch::nn::Dropout dropout_{nullptr};
  torch::nn::Linear out_{nullptr};
};

}  // namespace

MODALKIT_PLUGIN("tensor", "0.1.0", kManifest, MODALKIT_FUSION("tensor", TensorFusion))
