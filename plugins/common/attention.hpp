// The pre-norm cross-attention block that plugins share (header-only: plugins cannot link each
// other, and an SDK class would be an ABI addition for two users). Used by the cross_attention
// fusion (MulT: one modality's tokens attend to the others') and by the multitask strategy's
// Perceiver backbone (latents attend to every present token).
//   x ← x + Dropout(Attention(LN(x), LN(src), LN(src)))
//   x ← x + Dropout(FeedForward(LN(x)))          (feed-forward d → 4d → d, ReLU)
#pragma once

#include <torch/nn/module.h>
#include <torch/nn/modules/activation.h>
#include <torch/nn/modules/dropout.h>
#include <torch/nn/modules/linear.h>
#include <torch/nn/modules/normalization.h>
#include <torch/nn/pimpl.h>

namespace modalkit::plugins {

/// One pre-norm cross-attention block: queries from `x`, keys and values from `src`.
class CrossBlockImpl : public torch::nn::Module {
 public:
  CrossBlockImpl(int64_t width, int64_t heads, double dropout) {
    attn_ = register_module("attn", torch::nn::MultiheadAttention(
                                        torch::nn::MultiheadAttentionOptions(width, heads).dropout(dropout)));
    norm_q_ = register_module("norm_q", torch::nn::LayerNorm(torch::nn::LayerNormOptions({width})));
    norm_kv_ = register_module("norm_kv", torch::nn::LayerNorm(torch::nn::LayerNormOptions({width})));
    norm_ff_ = register_module("norm_ff", torch::nn::LayerNorm(torch::nn::LayerNormOptions({width})));
    fc1_ = register_module("fc1", torch::nn::Linear(width, 4 * width));
    fc2_ = register_module("fc2", torch::nn::Linear(4 * width, width));
    dropout_ = register_module("dropout", torch::nn::Dropout(dropout));
  }

  /// `x` `[B, T, D]` query tokens; `src` `[B, S, D]` key/value tokens with `src_mask` `[B, S]`
  /// (true = real), or undefined when there is no source. Filler tokens of `src` must not hold
  /// NaN (zero them first): masked keys still pass through the LayerNorm.
  torch::Tensor forward(torch::Tensor x, const torch::Tensor& src, const torch::Tensor& src_mask) {
    if (src.defined() && src.size(1) > 0) {
      const torch::Tensor has_key = src_mask.any(1);  // [B]
      // A sample with no real key would take a softmax over nothing but -inf: NaN, in the output
      // and in every gradient. Unmask its first key (zeroed filler) so the softmax is defined,
      // then drop its attention output: the block reduces to its residual path + feed-forward.
      torch::Tensor padding = src_mask.logical_not();
      torch::Tensor first = torch::zeros_like(padding);
      first.select(1, 0).fill_(true);
      padding = padding.logical_and(first.logical_and(has_key.logical_not().unsqueeze(1)).logical_not());
      const torch::Tensor kv = norm_kv_->forward(src).transpose(0, 1);  // [S, B, D]
      torch::Tensor attended = std::get<0>(attn_->forward(norm_q_->forward(x).transpose(0, 1), kv, kv, padding,
                                                          /*need_weights=*/false));
      attended = attended.transpose(0, 1).masked_fill(has_key.logical_not().view({-1, 1, 1}), 0.0);
      x = x + dropout_->forward(attended);
    }
    return x + dropout_->forward(fc2_->forward(dropout_->forward(torch::relu(fc1_->forward(norm_ff_->forward(x))))));
  }

 private:
  torch::nn::MultiheadAttention attn_{nullptr};
  torch::nn::LayerNorm norm_q_{nullptr}, norm_kv_{nullptr}, norm_ff_{nullptr};
  torch::nn::Linear fc1_{nullptr}, fc2_{nullptr};
  torch::nn::Dropout dropout_{nullptr};
};
TORCH_MODULE(CrossBlock);

}  // namespace modalkit::plugins
