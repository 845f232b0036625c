// Low-rank Multimodal Fusion (LMF, Liu et al. 2018): TFN's fusion with its weight tensor
// factorised. Each modality's real tokens are mean-pooled (h_m), a constant 1 is appended
// (z_m = [h_m, 1]), and per rank r every modality contributes z_m · W_m[r] (W_m: [rank, d+1,
// d_model]); the contributions are multiplied across modalities and summed over rank with
// learned weights, plus a bias:  fused = Σ_r w_r Π_m (z_m · W_m[r]) + b.  That equals TFN's
// W · (z_1 ⊗ ... ⊗ z_M) for a weight tensor W of rank `rank`, without forming the product.
// Factors and rank weights start xavier-normal, the bias at zero, as in the LMF code.
//
// Absent modalities: a modality that a sample lacks (no real token), or that is not in the
// batch, gets z_m = [0, ..., 0, 1], as in the tensor fusion. Its factor then reduces to its
// last row, W_m[r][d, :], the weights TFN gives the product's "constant 1" slot of that
// modality: only the other modalities' unimodal and interaction terms remain, the same
// dropping of the modality's factor as in TFN, not a zero observation. A sample with no
// modality at all is masked out (and its output zeroed). Filler tokens are zeroed before
// pooling.
#include <torch/nn/init.h>

#include "lowrank_manifest.hpp"
#include "modalkit/fusion.hpp"
#include "modalkit/layers.hpp"
#include "modalkit/plugin.hpp"

namespace {

class LowRankFusion : public modalkit::FusionOperator {
 public:
  explicit LowRankFusion(const modalkit::CreateArgs& args) : width_(args.d_model) {
    modalkit::require_d_model_inputs(args, "lowrank fusion expects every modality at");
    const int64_t rank = args.config.get<int64_t>("rank");
    torch::NoGradGuard no_grad;
    for (const auto& [name, width] : args.input_widths) {
      order_.push_back(name);
      auto factor = register_parameter("factor_" + name, torch::empty({rank, width + 1, width_}));
      torch::nn::init::xavier_normal_(factor);
      factors_.emplace(name, factor);
    }
    fusion_weights_ = register_parameter("fusion_weights", torch::empty({1, rank}));
    torch::nn::init::xavier_normal_(fusion_weights_);
    fusion_bias_ = register_parameter("fusion_bias", torch::zeros({1, width_}));
  }

  modalkit::Sequence forward(const std::map<std::string, modalkit::Sequence>& inputs) override {
    TORCH_CHECK(!inputs.empty(), "lowrank: no modality to fuse");
    for (const auto& [name, seq] : inputs) {
      TORCH_CHECK(factors_.count(name), "lowrank: modality ", name, " is not one of the pipeline's modalities");
    }
    const modalkit::Sequence& first = inputs.begin()->second;
    const int64_t batch = first.x.size(0);
    const auto options = first.x.options();
    const torch::Tensor one = torch::ones({batch, 1}, options);

    torch::Tensor product, any_present = torch::zeros({batch}, torch::dtype(torch::kBool).device(first.x.device()));
    for (const std::string& name : order_) {
      const torch::Tensor& factor = factors_.at(name);  // [rank, d+1, d_model]
      torch::Tensor h = torch::zeros({batch, factor.size(1) - 1}, options);
      auto it = inputs.find(name);
      if (it != inputs.end()) {
        const torch::Tensor real = it->second.mask.to(torch::kBool);
        const torch::Tensor present = real.any(1, /*keepdim=*/true);  // [B, 1]
        h = modalkit::masked_mean_pool({it->second.x.masked_fill(real.logical_not().unsqueeze(-1), 0.0), real})
                .masked_fill(present.logical_not(), 0.0);
        any_present = any_present.logical_or(present.squeeze(1));
      }
      // [B, d+1] @ [rank, d+1, d_model] → [rank, B, d_model]
      const torch::Tensor contribution = torch::matmul(torch::cat({h, one}, 1), factor);
      product = product.defined() ? product * contribution : contribution;
    }
    // Σ_r w_r Π_m (...): [1, rank] @ [B, rank, d_model] → [B, 1, d_model].
    torch::Tensor fused = torch::matmul(fusion_weights_, product.permute({1, 0, 2})).squeeze(1) + fusion_bias_;
    fused = fused.masked_fill(any_present.logical_not().unsqueeze(1), 0.0);
    return {fused.unsqueeze(1), any_present.unsqueeze(1)};  // [B, 1, d], [B, 1]
  }

  modalkit::FusionOutput output_kind() const override { return modalkit::FusionOutput::kPooled; }
  int64_t output_width() const override { return width_; }

 private:
  int64_t width_;
  std::vector<std::string> order_;
  std::map<std::string, torch::Tensor> factors_;
  torch::Tensor fusion_weights_, fusion_bias_;
};

}  // namespace

MODALKIT_PLUGIN("lowrank", "0.1.0", kManifest, MODALKIT_FUSION("lowrank", LowRankFusion))
