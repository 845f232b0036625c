/// \file
/// Small layers and functions every plugin would otherwise write again.
#pragma once

#include <cstdint>

#include <torch/nn/module.h>
#include <torch/nn/modules/conv.h>
#include <torch/nn/modules/linear.h>
#include <torch/nn/modules/normalization.h>
#include <torch/nn/modules/transformercoder.h>
#include <torch/nn/pimpl.h>

#include "modalkit/batch.hpp"
#include "modalkit/config.hpp"
#include "modalkit/errors.hpp"

namespace modalkit {

/// Mean over the real tokens of `seq` → `[B, D]`. A sample with no real token (all modalities
/// absent) gets zeros; this is the one place where zeros stand for "nothing", and the mask
/// says so.
at::Tensor masked_mean_pool(const Sequence& seq);

/// `mask` `[B, T]` with the rows of absent samples (`present[b] == false`) cleared. An
/// undefined `present` means all present.
at::Tensor apply_presence(const at::Tensor& mask, const at::Tensor& present);

/// The mask after a strided layer over a padded axis (kernel k, padding k/2, so the output has
/// ceil(L / stride) positions): output position i is real when input position i * stride is.
/// Since SDK ABI 1.1.
at::Tensor strided_mask(const at::Tensor& mask, int64_t stride);

/// Options of Projection.
struct ProjectionOptions {
  /// Creates options projecting from `in` features to `out` features.
  ProjectionOptions(int64_t in, int64_t out) : in_(in), out_(out) {}
  TORCH_ARG(int64_t, in);   ///< input width
  TORCH_ARG(int64_t, out);  ///< output width (usually the pipeline's d_model)
};

/// Projects an encoder's native width to the pipeline's d_model: a Linear layer, or the
/// identity when the widths already agree (so no parameters are wasted).
class ProjectionImpl : public torch::nn::Module {
 public:
  /// Builds the projection.
  explicit ProjectionImpl(const ProjectionOptions& options);
  /// `[..., in]` → `[..., out]`.
  at::Tensor forward(const at::Tensor& x);

 private:
  torch::nn::Linear linear_{nullptr};
};
TORCH_MODULE(Projection);

/// Options of TemporalConv.
struct TemporalConvOptions {
  /// A convolution from `in` to `out` channels with a `kernel`-wide window over time.
  TemporalConvOptions(int64_t in, int64_t out, int64_t kernel) : in_(in), out_(out), kernel_(kernel) {}
  TORCH_ARG(int64_t, in);       ///< input channels
  TORCH_ARG(int64_t, out);      ///< output channels
  TORCH_ARG(int64_t, kernel);   ///< window, in steps
  TORCH_ARG(int64_t, stride) = 1;
  TORCH_ARG(int64_t, padding) = 0;  ///< zeros added at both ends
};

/// A 1-D convolution over time, `[B, in, L]` → `[B, out, L']`, computed as a 2-D convolution with
/// a 1 x kernel window. Use it instead of torch::nn::Conv1d: the Conv1d of LibTorch 1.13 as
/// Debian builds it gives run-to-run different gradients on CPU (and occasionally NaN at batch
/// sizes under 16), while the equivalent Conv2d is repeatable (test: TemporalConv.* in
/// tests/sdk). Since SDK ABI 1.1.
class TemporalConvImpl : public torch::nn::Module {
 public:
  /// Builds the convolution (LibTorch's default initialisation).
  explicit TemporalConvImpl(const TemporalConvOptions& options);
  /// `[B, in, L]` → `[B, out, (L + 2 padding - kernel) / stride + 1]`.
  at::Tensor forward(const at::Tensor& x);

 private:
  torch::nn::Conv2d conv_{nullptr};
};
TORCH_MODULE(TemporalConv);

/// Options of TokenTransformer.
struct TokenTransformerOptions {
  /// `layers` Transformer encoder layers of width `d_model` with `heads` attention heads.
  TokenTransformerOptions(int64_t d_model, int64_t layers, int64_t heads)
      : d_model_(d_model), layers_(layers), heads_(heads) {}
  TORCH_ARG(int64_t, d_model);
  TORCH_ARG(int64_t, layers);   ///< 0: only the final LayerNorm
  TORCH_ARG(int64_t, heads);    ///< must divide d_model
  TORCH_ARG(double, dropout) = 0.1;
};

/// The Transformer stack encoders put over their tokens: `layers` encoder layers (feed-forward
/// 2 x d_model, GELU) that attend over real tokens only, then a LayerNorm. Takes and returns
/// batch-first `[B, T, D]` (LibTorch's layers want `[T, B, D]`). Since SDK ABI 1.1.
class TokenTransformerImpl : public torch::nn::Module {
 public:
  /// Builds the stack.
  explicit TokenTransformerImpl(const TokenTransformerOptions& options);
  /// `x` `[B, T, D]`; `mask` `[B, T]` bool, true at real tokens (undefined: all real).
  at::Tensor forward(const at::Tensor& x, const at::Tensor& mask = {});

 private:
  torch::nn::TransformerEncoder blocks_{nullptr};
  torch::nn::LayerNorm norm_{nullptr};
};
TORCH_MODULE(TokenTransformer);

/// TokenTransformer options from a plugin config's `layers`, `heads` and `dropout` at width
/// `d_model`; a ConfigError at `<pointer>/heads` when heads does not divide d_model, so the
/// mistake is reported when the plugin is created, not when the encoder is built. Inline: no
/// new SDK symbol.
inline TokenTransformerOptions token_transformer_options(const Config& config, int64_t d_model) {
  const int64_t heads = config.get<int64_t>("heads");
  if (heads <= 0 || d_model % heads != 0) {
    throw ConfigError(config.pointer() + "/heads",
                      "d_model " + std::to_string(d_model) + " is not divisible by heads " + std::to_string(heads));
  }
  return TokenTransformerOptions(d_model, config.get<int64_t>("layers"), heads).dropout(config.get<double>("dropout"));
}

}  // namespace modalkit
