/// \file
/// What flows between the loader, the encoders, the fusion operator and the strategy.
#pragma once

#include <cstdint>
#include <map>
#include <string>

#include <ATen/core/Tensor.h>
#include <c10/core/Device.h>

namespace modalkit {

/// One modality's part of a batch, as collated by its plugin.
struct ModalityInput {
  /// Features, batch first: `[B, ...]` (pixels `[B,C,H,W]`, frames `[B,L,F]`, token ids `[B,L]`).
  at::Tensor data;
  /// `[B, L]` bool, true at valid positions of a padded axis; undefined when nothing is padded.
  at::Tensor mask;
  /// `[B]` bool: false where the sample lacks this modality (its `data` row is filler, never
  /// to be read as real zeros).
  at::Tensor present;

  /// A copy on `device` (non-blocking where the backend allows it).
  ModalityInput to(const c10::Device& device) const;
};

/// A standardized sequence, the common currency of encoders and fusion (HighMMT's
/// "standardized input sequence"): `x` is `[B, T, D]`, `mask` `[B, T]` bool (true = a real
/// token). A pooled vector is a sequence with T = 1.
struct Sequence {
  /// `[B, T, D]` tokens.
  at::Tensor x;
  /// `[B, T]` bool, true where a token is real (present sample, unpadded position).
  at::Tensor mask;
};

/// A batch of samples: per-modality inputs, per-task targets, and the task it belongs to.
struct Batch {
  /// Modality name (as in the pipeline) → its collated input.
  std::map<std::string, ModalityInput> inputs;
  /// Task name → targets: class indices `[B]` (int64; -1: no label), or values `[B]`/`[B,K]` (float; NaN: no label).
  std::map<std::string, at::Tensor> targets;
  /// Which task/data set the batch comes from (multitask pipelines); 0 for single-task ones.
  int64_t task_id = 0;
  /// `[B]` int64 indices of the samples in their split, for predictions and reports.
  at::Tensor index;

  /// Number of samples.
  int64_t size() const;
  /// A copy with every tensor on `device`.
  Batch to(const c10::Device& device) const;
  /// Whether modality `name` is in the batch at all.
  bool has(const std::string& name) const { return inputs.count(name) != 0; }
  /// Modality `name`'s input; an Error when the batch lacks it, saying that `who` (a plugin's
  /// name) needs it as `role` (e.g. "primary") and which modalities the batch has. Since ABI 1.3.
  const ModalityInput& input(const std::string& name, const std::string& who, const std::string& role = "") const;
  /// The rows `rows` (`[N]` integer indices) of every input, target and index, the task id kept.
  /// Since ABI 1.3.
  Batch select(const at::Tensor& rows) const;
};

}  // namespace modalkit
