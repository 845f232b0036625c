// An encoder brought as TorchScript (torch::jit::load): a model pretrained elsewhere, in Python
// or C++, used in place of a modality plugin's own encoder.
#pragma once

#include <filesystem>
#include <memory>

#include "modalkit/modality.hpp"

namespace modalkit::host {

/// Loads the TorchScript module at `path` as the encoder of a modality whose plugin collates the
/// features it gets. Contract: `forward(x: Tensor) -> Tensor` on the collated features (`data`,
/// e.g. images `[B, C, H, W]`), returning `[B, T, W]` (a sequence; the plugin's mask is used
/// when it has T positions, otherwise every token is real) or `[B, W]` (one token), W being the
/// `width` the pipeline declares (checked on every batch). A learned projection maps W to
/// `d_model` when they differ. The module's parameters are registered as
/// this encoder's (`script_<name with dots as __>`), so they train (as buffers, frozen, when
/// `trainable` is false), are checkpointed and exported like any other; so are its buffers. Throws modalkit::Error naming the file when it
/// cannot be loaded.
std::shared_ptr<Encoder> load_torchscript_encoder(const std::filesystem::path& path, int64_t width, int64_t d_model,
                                                  bool trainable);

}  // namespace modalkit::host
