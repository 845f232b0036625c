// A complete modalkit fusion plugin: average the modalities that are present.
// Everything else (loading, config validation, checkpoints, errors) is the host's job.
#include <torch/nn/modules/linear.h>

#include "mean_manifest.hpp"  // generated from mean.plugin.json by modalkit-embed
#include "modalkit/fusion.hpp"
#include "modalkit/layers.hpp"
#include "modalkit/plugin.hpp"

namespace {

class MeanFusion : public modalkit::FusionOperator {
 public:
  // Every component is built from CreateArgs: the validated config (defaults filled in),
  // the pipeline's d_model and, for fusion, the widths of its inputs.
  explicit MeanFusion(const modalkit::CreateArgs& args) : width_(args.d_model) {
    if (args.config.get<bool>("project")) {
      for (const auto& [name, width] : args.input_widths) {
        projections_.emplace(name, register_module("proj_" + name, torch::nn::Linear(width, width_)));
      }
    }
  }

  // Present samples only: a modality missing for a sample has an all-false mask there, and
  // it is left out of that sample's average instead of counting as zeros.
  modalkit::Sequence forward(const std::map<std::string, modalkit::Sequence>& inputs) override {
    TORCH_CHECK(!inputs.empty(), "mean: no modality to fuse");
    torch::Tensor sum, count;
    for (const auto& [name, seq] : inputs) {
      torch::Tensor pooled = modalkit::masked_mean_pool(seq);  // [B, D]
      auto it = projections_.find(name);
      if (it != projections_.end()) pooled = it->second->forward(pooled);
      torch::Tensor present = seq.mask.any(1).unsqueeze(1).to(pooled.scalar_type());  // [B, 1]
      sum = sum.defined() ? sum + pooled * present : pooled * present;
      count = count.defined() ? count + present : present;
    }
    torch::Tensor fused = sum / count.clamp_min(1.0);
    return {fused.unsqueeze(1), count.gt(0)};  // pooled: a sequence of length 1
  }

  modalkit::FusionOutput output_kind() const override { return modalkit::FusionOutput::kPooled; }
  int64_t output_width() const override { return width_; }

 private:
  int64_t width_;
  std::map<std::string, torch::nn::Linear> projections_;
};

}  // namespace

// The one line: plugin name and version (as in the manifest), the embedded manifest, factories.
MODALKIT_PLUGIN("mean", "0.1.0", kManifest, MODALKIT_FUSION("mean", MeanFusion))
