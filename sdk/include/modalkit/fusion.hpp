/// \file
/// The fusion operator interface.
#pragma once

#include <cstdint>
#include <map>
#include <string>

#include <torch/nn/module.h>

#include "modalkit/batch.hpp"
#include "modalkit/component.hpp"
#include "modalkit/errors.hpp"

namespace modalkit {

/// What a fusion operator produces, as its manifest's `output.kind` states.
enum class FusionOutput {
  kSequence,  ///< a sequence `[B, T, width]`
  kPooled,    ///< one vector per sample, as a sequence with T = 1
};

/// Fuses the standardized sequences of the modalities present in a batch into one sequence or
/// one pooled vector. A sample missing a modality has that modality's mask all false: its
/// tokens must not count as real (no silent zeros).
class FusionOperator : public Component, public torch::nn::Module {
 public:
  ~FusionOperator() override;
  /// Fuses `inputs` (modality name → sequence); only the modalities in the batch appear.
  virtual Sequence forward(const std::map<std::string, Sequence>& inputs) = 0;
  /// Whether the output is a sequence or pooled.
  virtual FusionOutput output_kind() const = 0;
  /// Width of the output's last dimension.
  virtual int64_t output_width() const = 0;
};

/// Checks that every input of a fusion operator has the pipeline's width d_model; a ConfigError
/// at the component's config pointer otherwise, reading "<what> d_model D, but modality M has
/// width W". Inline: no new SDK symbol.
inline void require_d_model_inputs(const CreateArgs& args, const std::string& what) {
  for (const auto& [name, width] : args.input_widths) {
    if (width != args.d_model) {
      throw ConfigError(args.config.pointer(), what + " d_model " + std::to_string(args.d_model) + ", but modality " +
                                                   name + " has width " + std::to_string(width));
    }
  }
}

}  // namespace modalkit
