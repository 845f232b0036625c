// The loader: decodes and featurizes a split once on worker threads (the decoded-feature
// cache), then cuts batches in any order without decoding again.
#pragma once

#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "dataset.hpp"
#include "modalkit/batch.hpp"
#include "modalkit/modality.hpp"
#include "modalkit/task.hpp"

namespace modalkit::host {

/// A pipeline modality bound to its plugin and data set field.
struct ModalityBinding {
  std::string name;                               ///< modality name in the pipeline
  std::string field;                              ///< data set field it reads
  std::shared_ptr<ModalityPlugin> plugin;         ///< the plugin instance
};

/// Runs fn(i) for i in [0, n) on `threads` threads; rethrows the error of the lowest failing i,
/// so the reported error does not depend on scheduling.
void parallel_for(size_t n, int threads, const std::function<void(size_t)>& fn);

/// Features and targets of one split, held in memory.
class SplitFeatures {
 public:
  /// Decodes `split` (restricted to `rows` when not empty) through each modality's plugin and
  /// reads the targets of `tasks`. With `fit`, each plugin is fitted on these raw values first
  /// (call it with the train split only).
  static SplitFeatures build(Dataset& dataset, const std::string& split,
                             const std::vector<ModalityBinding>& modalities,
                             const std::map<std::string, TaskSpec>& tasks, int threads, bool fit,
                             const std::vector<int64_t>& rows = {});

  /// Number of samples.
  int64_t size() const { return size_; }
  /// A batch of the given rows with only `modalities` present (all present where listed).
  Batch batch(const std::vector<int64_t>& rows, const std::vector<std::string>& modalities) const;
  /// Targets of `task` for all rows.
  const at::Tensor& targets(const std::string& task) const { return targets_.at(task); }

 private:
  int64_t size_ = 0;
  std::map<std::string, std::vector<at::Tensor>> features_;
  std::map<std::string, const ModalityPlugin*> plugins_;
  std::map<std::string, at::Tensor> targets_;
  std::vector<int64_t> source_rows_;
};

/// Reads a task's target from a sample: a label name or index for classification (checked
/// against the label set), a number for regression. Throws DataError naming the sample.
double read_target(const Sample& sample, const TaskSpec& task);

}  // namespace modalkit::host
