/// \file
/// Tasks and task heads: from a fused representation to a task's outputs and loss.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include <torch/nn/module.h>

#include "modalkit/batch.hpp"

namespace modalkit {

/// The kinds of task a pipeline can declare (`/tasks/<name>/type`).
enum class TaskType { kMulticlass, kBinary, kMultilabel, kRegression, kGeneration };

/// Parses a task type name ("multiclass", ...); throws modalkit::Error on an unknown one.
TaskType parse_task_type(const std::string& name);
/// The pipeline spelling of `type`.
const char* to_string(TaskType type);

/// A task as declared in the pipeline and resolved against its data set.
struct TaskSpec {
  /// The task's name in the pipeline.
  std::string name;
  /// Its kind.
  TaskType type = TaskType::kMulticlass;
  /// The data set field holding the targets.
  std::string target;
  /// Label names (classification), in class-index order.
  std::vector<std::string> labels;
  /// Outputs of the head: classes (multiclass, multilabel), 1 (binary, regression).
  int64_t num_outputs = 0;
  /// Metric names to report ("accuracy", "macro_f1", ...).
  std::vector<std::string> metrics;
};

/// A task head: pooled representation → task outputs, plus the task's loss.
class TaskHead : public torch::nn::Module {
 public:
  ~TaskHead() override;
  /// Outputs (logits for classification, values for regression) from a fused sequence; a
  /// sequence is mean-pooled over its real tokens first.
  virtual at::Tensor forward(const Sequence& fused) = 0;
  /// The task's loss for `outputs` (from forward) against `targets` (from the batch).
  virtual at::Tensor loss(const at::Tensor& outputs, const at::Tensor& targets) const = 0;
  /// The task this head serves.
  virtual const TaskSpec& spec() const = 0;
};

/// The SDK's standard head for `spec`: a linear layer from `in_width` (softmax cross-entropy,
/// sigmoid BCE or MSE as the type implies). Generation tasks need a language model, not this.
std::shared_ptr<TaskHead> make_task_head(const TaskSpec& spec, int64_t in_width);

}  // namespace modalkit
