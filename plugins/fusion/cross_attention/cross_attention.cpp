// Crossmodal attention (MulT, Tsai et al. 2019): every modality's tokens are enhanced by
// attending to the other modalities. For each target modality t, `layers` pre-norm blocks
//   x ← x + Dropout(Attention(LN(x), LN(src), LN(src)))
//   x ← x + Dropout(FeedForward(LN(x)))          (feed-forward d → 4d → d, ReLU)
// with queries from t and keys/values the tokens of all other modalities in the batch joined
// along time (the same low-level source tokens at every layer, as in MulT), then a final
// LayerNorm. MulT runs one crossmodal transformer per ordered pair of modalities and joins their
// outputs along features; here one stack per target attends to all sources at once, so the width
// stays d_model and the parameters grow with M, not M². The output joins the enhanced sequences
// of the modalities in the batch along time (name order), their masks likewise.
//
// Absent modalities: sources are attended with a key padding mask (~mask), so a sample's keys
// are only its real tokens of the other modalities. Filler tokens (targets and sources) are
// zeroed on entry, so whatever they hold (even NaN) reaches neither outputs nor gradients; the
// target's own filler tokens stay masked in the output. A sample with no real key at all (the
// other modalities absent for it, or only one modality in the batch) gets no attention term: its
// block is the residual path and the feed-forward only.
#include <torch/nn/modules/container/modulelist.h>
#include <torch/nn/modules/normalization.h>

#include "../../common/attention.hpp"
#include "cross_attention_manifest.hpp"
#include "modalkit/fusion.hpp"
#include "modalkit/layers.hpp"
#include "modalkit/plugin.hpp"

namespace {

using modalkit::plugins::CrossBlock;

class CrossAttentionFusion : public modalkit::FusionOperator {
 public:
  explicit CrossAttentionFusion(const modalkit::CreateArgs& args) : width_(args.d_model) {
    modalkit::require_d_model_inputs(args, "cross_attention expects every modality at");
    // Reads layers, heads and dropout; a ConfigError at <pointer>/heads when heads does not divide d_model.
    const modalkit::TokenTransformerOptions o = modalkit::token_transformer_options(args.config, width_);
    for (const auto& [name, width] : args.input_widths) {
      torch::nn::ModuleList list;
      std::vector<CrossBlock>& blocks = blocks_[name];
      for (int64_t l = 0; l < o.layers(); ++l) {
        blocks.push_back(CrossBlock(width, o.heads(), o.dropout()));
        list->push_back(blocks.back());
      }
      register_module("to_" + name, list);
      norms_.emplace(name, register_module("norm_" + name, torch::nn::LayerNorm(torch::nn::LayerNormOptions({width}))));
    }
  }

  modalkit::Sequence forward(const std::map<std::string, modalkit::Sequence>& inputs) override {
    TORCH_CHECK(!inputs.empty(), "cross_attention: no modality to fuse");
    std::map<std::string, modalkit::Sequence> clean;
    for (const auto& [name, seq] : inputs) {
      TORCH_CHECK(blocks_.count(name), "cross_attention: modality ", name, " is not one of the pipeline's modalities");
      const torch::Tensor real = seq.mask.to(torch::kBool);
      clean[name] = {seq.x.masked_fill(real.logical_not().unsqueeze(-1), 0.0), real};
    }
    std::vector<torch::Tensor> outs, masks;
    for (const auto& [target, seq] : clean) {
      std::vector<torch::Tensor> src, src_mask;
      for (const auto& [name, other] : clean) {
        if (name != target) src.push_back(other.x), src_mask.push_back(other.mask);
      }
      const torch::Tensor source = src.empty() ? torch::Tensor() : torch::cat(src, 1);
      const torch::Tensor source_mask = src.empty() ? torch::Tensor() : torch::cat(src_mask, 1);
      torch::Tensor h = seq.x;
      for (auto& block : blocks_.at(target)) h = block->forward(h, source, source_mask);
      outs.push_back(norms_.at(target)->forward(h));
      masks.push_back(seq.mask);
    }
    return {torch::cat(outs, 1), torch::cat(masks, 1)};
  }

  modalkit::FusionOutput output_kind() const override { return modalkit::FusionOutput::kSequence; }
  int64_t output_width() const override { return width_; }

 private:
  int64_t width_;
  std::map<std::string, std::vector<CrossBlock>> blocks_;
  std::map<std::string, torch::nn::LayerNorm> norms_;
};

}  // namespace

MODALKIT_PLUGIN("cross_attention", "0.1.0", kManifest, MODALKIT_FUSION("cross_attention", CrossAttentionFusion))
