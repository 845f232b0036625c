// Early fusion: the modalities' standardized sequences joined along time. A learned embedding
// per modality tells the head (and later layers) which tokens came from where; a sample missing
// a modality keeps that modality's mask all false, so its filler tokens are never read.
#include <torch/nn/modules/container/parameterdict.h>

#include "concat_manifest.hpp"
#include "modalkit/fusion.hpp"
#include "modalkit/plugin.hpp"

namespace {

class ConcatFusion : public modalkit::FusionOperator {
 public:
  explicit ConcatFusion(const modalkit::CreateArgs& args) : width_(args.d_model) {
    modalkit::require_d_model_inputs(args, "concat joins sequences of one width,");
    if (args.config.get<bool>("modality_embeddings")) {
      for (const auto& [name, width] : args.input_widths) {
        embeddings_.emplace(name, register_parameter("embedding_" + name, torch::zeros({width})));
      }
    }
  }

  modalkit::Sequence forward(const std::map<std::string, modalkit::Sequence>& inputs) override {
    TORCH_CHECK(!inputs.empty(), "concat: no modality to fuse");
    std::vector<torch::Tensor> xs, masks;
    for (const auto& [name, seq] : inputs) {
      auto it = embeddings_.find(name);
      xs.push_back(it == embeddings_.end() ? seq.x : seq.x + it->second);
      masks.push_back(seq.mask);
    }
    return {torch::cat(xs, 1), torch::cat(masks, 1)};
  }

  modalkit::FusionOutput output_kind() const override { return modalkit::FusionOutput::kSequence; }
  int64_t output_width() const override { return width_; }

 private:
  int64_t width_;
  std::map<std::string, torch::Tensor> embeddings_;
};

}  // namespace

MODALKIT_PLUGIN("concat", "0.1.0", kManifest, MODALKIT_FUSION("concat", ConcatFusion))
