// Task metrics computed from a split's outputs and targets.
#pragma once

#include <string>

#include <ATen/core/Tensor.h>
#include <nlohmann/json.hpp>

#include "modalkit/task.hpp"

namespace modalkit::host {

/// The metrics `task.metrics` names, from head outputs (logits or values, `[N]` or `[N,K]`)
/// and targets `[N]`. Throws modalkit::Error for a metric that does not apply to the task type.
nlohmann::json compute_metrics(const TaskSpec& task, const at::Tensor& outputs, const at::Tensor& targets);

/// Class predictions from outputs: argmax for multiclass, logit > 0 for binary and (per label)
/// multilabel.
at::Tensor predicted_classes(const TaskSpec& task, const at::Tensor& outputs);

}  // namespace modalkit::host
