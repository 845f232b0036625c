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

/// How a split is loaded.
struct LoadOptions {
  LoadOptions() = default;
  /// The common case: `threads`, whether to fit, whether to skip bad samples, which rows.
  LoadOptions(int threads_, bool fit_, bool skip_bad_, std::vector<int64_t> rows_ = {})
      : threads(threads_), fit(fit_), skip_bad(skip_bad_), rows(std::move(rows_)) {}
  int threads = 1;              ///< decode/featurize threads
  bool fit = false;             ///< fit each plugin on this split first (the train split only)
  bool skip_bad = false;        ///< drop samples with bad data (DataError) instead of failing
  std::vector<int64_t> rows;    ///< restrict to these rows of the split (empty = all)
  /// When not empty, only these rows of the split keep their targets; the others are loaded
  /// without labels (class index -1, values NaN), for a strategy's auxiliary losses only.
  std::vector<int64_t> labelled;
  /// Robustness sweeps: modality name → level in [0, 1] at which its plugin's perturb() degrades
  /// each raw value before featurize (absent or 0: unperturbed).
  std::map<std::string, double> perturb;
  /// Seeds the perturbation: each value draws from its own generator, seeded by this, the
  /// modality and the value's first row, so the result does not depend on the thread count.
  uint64_t perturb_seed = 0;
};

/// A sample left out by `skip_bad`: where it is and what was wrong.
struct SkippedSample {
  int64_t row;          ///< row in the split's samples file
  std::string reason;   ///< the DataError's message
};

class SplitFeatures;

/// One split to load with SplitFeatures::build_all.
struct LoadJob {
  Dataset* dataset = nullptr;                 ///< outlives the load
  std::string split;                          ///< the data set's split name
  std::vector<ModalityBinding> modalities;    ///< what to decode, each from its field of this data set
  std::map<std::string, TaskSpec> tasks;      ///< whose targets to read
  LoadOptions options;
  int64_t task_id = 0;                        ///< the id its batches carry (multitask: the task's source)
};

/// Features and targets of one split, held in memory.
class SplitFeatures {
 public:
  /// Decodes `split` through each modality's plugin and reads the targets of `tasks`. Samples
  /// whose field values are equal (a clip paired with many images) are decoded and featurized
  /// once and share their tensors. With `options.fit`, each plugin is fitted on the raw values of
  /// the (kept) samples first. A DataError names the sample; with `options.skip_bad` the sample
  /// is dropped instead and listed in skipped() (never zero-filled).
  static SplitFeatures build(Dataset& dataset, const std::string& split,
                             const std::vector<ModalityBinding>& modalities,
                             const std::map<std::string, TaskSpec>& tasks, const LoadOptions& options);
  /// Loads each job as build() does, except that each modality plugin is fitted once, on the
  /// samples of every job with `options.fit` that holds it (the train splits of a multitask
  /// pipeline's data sets), before any job is featurized.
  static std::vector<SplitFeatures> build_all(const std::vector<LoadJob>& jobs);

  /// Number of samples.
  int64_t size() const { return size_; }
  /// Samples dropped by skip_bad, in row order.
  const std::vector<SkippedSample>& skipped() const { return skipped_; }
  /// Distinct decoded values per modality (fewer than size() when samples share a value).
  const std::map<std::string, int64_t>& distinct() const { return distinct_; }
  /// A batch of the given rows with only `modalities` present (all present where listed).
  Batch batch(const std::vector<int64_t>& rows, const std::vector<std::string>& modalities) const;
  /// Targets of `task` for all rows.
  const at::Tensor& targets(const std::string& task) const { return targets_.at(task); }
  /// The task id its batches carry.
  int64_t task_id() const { return task_id_; }
  /// The modalities it holds.
  std::vector<std::string> modalities() const {
    std::vector<std::string> out;
    for (const auto& [name, f] : features_) out.push_back(name);
    return out;
  }
  /// Those of `wanted` it holds, in their order (a multitask task's data set holds only the
  /// modalities the task maps).
  std::vector<std::string> held(const std::vector<std::string>& wanted) const {
    std::vector<std::string> out;
    for (const auto& m : wanted) {
      if (features_.count(m)) out.push_back(m);
    }
    return out;
  }

 private:
  int64_t size_ = 0;
  std::map<std::string, std::vector<at::Tensor>> features_;
  std::map<std::string, const ModalityPlugin*> plugins_;
  std::map<std::string, at::Tensor> targets_;
  std::vector<int64_t> source_rows_;
  std::vector<SkippedSample> skipped_;
  std::map<std::string, int64_t> distinct_;
  int64_t task_id_ = 0;
};

/// Reads a task's target from a sample: a label name or index for classification (checked
/// against the label set), a number for regression. Throws DataError naming the sample.
double read_target(const Sample& sample, const TaskSpec& task);
/// A multilabel task's target: an array of label names (or indices) as a 0/1 per label, in the
/// task's label order; an empty array is a sample with no label. Throws DataError naming the
/// sample for a non-array, an unknown or repeated label.
std::vector<double> read_label_set(const Sample& sample, const TaskSpec& task);

}  // namespace modalkit::host
