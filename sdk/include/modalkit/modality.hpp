/// \file
/// The modality plugin interface: fit → decode → perturb → featurize → encode.
#pragma once

#include <cstdint>
#include <filesystem>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>
#include <torch/nn/module.h>

#include "modalkit/batch.hpp"
#include "modalkit/component.hpp"

namespace modalkit {

/// A field's value as decoded from its source: a tensor (pixels as uint8 `[C,H,W]`, a waveform,
/// numbers) or text. Always on the CPU, never part of an autograd graph.
struct RawValue {
  /// Decoded numeric data; undefined for text.
  at::Tensor tensor;
  /// Decoded text; empty for numeric data.
  std::string text;
  /// Samples per second for waveforms; 0 otherwise.
  int64_t sample_rate = 0;
};

/// A field value in a data set and where it came from.
struct FieldRef {
  /// The value from the samples file: a path (relative to `base_dir`), a number, a string, ...
  const nlohmann::json& value;
  /// The directory of the data set's `dataset.json`; relative paths resolve against it.
  const std::filesystem::path& base_dir;
  /// `samples-file:line`, for error messages.
  const std::string& origin;
};

/// An encoder: a LibTorch module from a modality's collated features to a standardized
/// sequence `[B, T, D]` with its mask. The host ANDs the mask with the samples' presence flags,
/// so encoders need not look at `present`.
class Encoder : public torch::nn::Module {
 public:
  ~Encoder() override;
  /// Encodes a batch of this modality's features.
  virtual Sequence forward(const ModalityInput& input) = 0;
};

/// A modality: how one kind of field is read, perturbed, turned into features and encoded.
/// decode, perturb and featurize run concurrently on loader threads: they must not mutate the
/// object (fit is the only stage that may).
class ModalityPlugin : public Component {
 public:
  ~ModalityPlugin() override;

  /// Learns statistics from the decoded train split (normalisation, vocabularies). Runs once,
  /// before training, on the train split only. The default learns nothing.
  virtual void fit(const std::vector<RawValue>& train);
  /// The state fit() learned, saved with the run. The default is `null`.
  virtual nlohmann::json fitted_state() const;
  /// Restores what fitted_state() returned (for eval and predict on a saved run).
  virtual void load_fitted_state(const nlohmann::json& state);

  /// Reads one sample's field. Throws DataError naming `field.origin` (and the file) on bad input.
  virtual RawValue decode(const FieldRef& field) const = 0;
  /// Degrades a raw value at `level` in [0, 1] (0 = unchanged), drawing only from `rng`, so a
  /// robustness sweep is repeatable. The default returns `raw` unchanged.
  virtual RawValue perturb(const RawValue& raw, double level, std::mt19937_64& rng) const;
  /// Raw value → the features one sample contributes to a batch (CPU tensor).
  virtual at::Tensor featurize(const RawValue& raw) const = 0;
  /// Stacks per-sample features into this modality's batch input. The default stacks
  /// equal-shaped features and leaves `mask` undefined; variable-length modalities pad and mask.
  /// `present` is filled by the host.
  virtual ModalityInput collate(const std::vector<at::Tensor>& features) const;

  /// Makes a fresh encoder for this modality (width CreateArgs::d_model).
  virtual std::shared_ptr<Encoder> make_encoder() = 0;
};

/// Collates variable-length features `[L_i, ...]` (equal trailing shapes) into `data`
/// `[B, max L, ...]` padded with `pad_value` and `mask` `[B, max L]` (true = real position):
/// what a variable-length modality's collate() returns. Since SDK ABI 1.1.
ModalityInput collate_padded(const std::vector<at::Tensor>& features, double pad_value = 0.0);

}  // namespace modalkit
