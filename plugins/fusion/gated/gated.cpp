// Gated fusion: the gated multimodal unit (GMU, Arevalo et al. 2017) generalised from two to M
// modalities with a softmax gate. Each modality's real tokens are mean-pooled (h_m) and turned
// into a candidate v_m = tanh(W_m h_m + b_m) and a gate score s_m = G_m h_m + c_m, of width
// d_model (`gate: feature`, element-wise gates as GMU's z) or 1 (`gate: modality`, one weight per
// modality). Per sample (and feature), the scores go through a softmax over the modalities the
// sample has, and fused = Σ_m softmax(s)_m ⊙ v_m. With two
// modalities this is GMU's z ⊙ v_1 + (1 - z) ⊙ v_2 with z = σ(s_1 - s_2), except that each score
// is computed from its own modality, so it stays defined when the other is missing.
//
// Absent modalities: a modality that a sample lacks (no real token), or that is not in the
// batch, has its score set to -inf before the softmax, so its weight is exactly 0 and the gate
// renormalises over the modalities present (a sample with one modality gets that modality's
// candidate as is). A sample with no modality at all gets zero output and a false mask. Filler
// tokens are zeroed before pooling.
#include <limits>

#include <torch/nn/modules/linear.h>

#include "gated_manifest.hpp"
#include "modalkit/fusion.hpp"
#include "modalkit/layers.hpp"
#include "modalkit/plugin.hpp"

namespace {

class GatedFusion : public modalkit::FusionOperator {
 public:
  explicit GatedFusion(const modalkit::CreateArgs& args) : width_(args.d_model) {
    modalkit::require_d_model_inputs(args, "gated fusion expects every modality at");
    const int64_t gate_width = args.config.get<std::string>("gate") == "feature" ? width_ : 1;
    for (const auto& [name, width] : args.input_widths) {
      values_.emplace(name, register_module("value_" + name, torch::nn::Linear(width, width_)));
      gates_.emplace(name, register_module("gate_" + name, torch::nn::Linear(width, gate_width)));
    }
  }

  modalkit::Sequence forward(const std::map<std::string, modalkit::Sequence>& inputs) override {
    TORCH_CHECK(!inputs.empty(), "gated: no modality to fuse");
    std::vector<torch::Tensor> values, scores, presence;
    for (const auto& [name, seq] : inputs) {
      TORCH_CHECK(values_.count(name), "gated: modality ", name, " is not one of the pipeline's modalities");
      const torch::Tensor real = seq.mask.to(torch::kBool);
      const torch::Tensor h = modalkit::masked_mean_pool({seq.x.masked_fill(real.logical_not().unsqueeze(-1), 0.0), real});
      values.push_back(torch::tanh(values_.at(name)->forward(h)));
      scores.push_back(gates_.at(name)->forward(h));
      presence.push_back(real.any(1));
    }
    const torch::Tensor value = torch::stack(values, 1);                     // [B, M, d]
    const torch::Tensor present = torch::stack(presence, 1).unsqueeze(-1);   // [B, M, 1]
    const torch::Tensor any_present = present.any(1);                        // [B, 1]
    // -inf for absent modalities; a sample with none would softmax over all -inf (NaN), so its
    // scores are left finite there and its weights zeroed below.
    torch::Tensor score = torch::stack(scores, 1)                            // [B, M, d or 1]
                              .masked_fill(present.logical_not().logical_and(any_present.unsqueeze(1)),
                                           -std::numeric_limits<double>::infinity());
    const torch::Tensor weight = torch::softmax(score, 1).masked_fill(present.logical_not(), 0.0);
    const torch::Tensor fused = (weight * value).sum(1);                     // [B, d]
    return {fused.unsqueeze(1), any_present};                                // [B, 1, d], [B, 1]
  }

  modalkit::FusionOutput output_kind() const override { return modalkit::FusionOutput::kPooled; }
  int64_t output_width() const override { return width_; }

 private:
  int64_t width_;
  std::map<std::string, torch::nn::Linear> values_, gates_;
};

}  // namespace

MODALKIT_PLUGIN("gated", "0.1.0", kManifest, MODALKIT_FUSION("gated", GatedFusion))
