#include "loader.hpp"

#include <algorithm>
#include <atomic>
#include <exception>
#include <mutex>
#include <random>
#include <set>
#include <system_error>
#include <thread>
#include <unordered_map>

#include <ATen/ATen.h>

#include "modalkit/errors.hpp"

namespace modalkit::host {

void parallel_for(size_t n, int threads, const std::function<void(size_t)>& fn) {
  std::atomic<size_t> next{0};
  std::mutex mutex;
  size_t failed_at = n;
  std::exception_ptr failure;
  auto work = [&] {
    for (size_t i = next++; i < n; i = next++) {
      try {
        fn(i);
      } catch (...) {
        std::lock_guard<std::mutex> lock(mutex);
        if (i < failed_at) {
          failed_at = i;
          failure = std::current_exception();
        }
      }
    }
  };
  const int workers = std::max(1, std::min<int>(threads, static_cast<int>(n)));
  std::vector<std::thread> pool;
  try {
    for (int t = 1; t < workers; ++t) pool.emplace_back(work);
  } catch (const std::system_error&) {
    // No more threads to be had: the ones started and this one share the work, and every
    // started thread is joined below (an unjoined std::thread would terminate the process).
  }
  work();
  for (auto& t : pool) t.join();
  if (failure) std::rethrow_exception(failure);
}

namespace {

/// The sample's value of `task`'s target field; a DataError naming the sample when it has none.
const nlohmann::json& target_value(const Sample& sample, const TaskSpec& task) {
  auto it = sample.fields.find(task.target);
  if (it == sample.fields.end()) {
    throw DataError(sample.origin, "missing target field \"" + task.target + "\" of task " + task.name);
  }
  return *it;
}

/// The index in `task`'s label set of `v`, a label name or index; -1 when `v` is neither. A
/// DataError naming the sample for an unknown name or an index outside the set.
int64_t label_index(const nlohmann::json& v, const Sample& sample, const TaskSpec& task) {
  if (v.is_string()) {
    auto pos = std::find(task.labels.begin(), task.labels.end(), v.get<std::string>());
    if (pos == task.labels.end()) {
      throw DataError(sample.origin, "label " + v.dump() + " of field \"" + task.target + "\" is not in the data set's label set");
    }
    return pos - task.labels.begin();
  }
  if (v.is_number_integer()) {
    const int64_t k = v.get<int64_t>();
    if (k < 0 || k >= static_cast<int64_t>(task.labels.size())) {
      throw DataError(sample.origin, "label index " + std::to_string(k) + " of field \"" + task.target + "\" is outside the label set");
    }
    return k;
  }
  return -1;
}

}  // namespace

std::vector<double> read_label_set(const Sample& sample, const TaskSpec& task) {
  const nlohmann::json& v = target_value(sample, task);
  if (!v.is_array()) {
    throw DataError(sample.origin, "label_set field \"" + task.target +
                                       "\" must be an array of label names or indices (empty for none), found " + v.dump());
  }
  std::vector<double> hot(task.labels.size(), 0.0);
  for (const auto& e : v) {
    const int64_t k = label_index(e, sample, task);
    if (k < 0) throw DataError(sample.origin, "target \"" + task.target + "\" holds " + e.dump() + ", expected a label name or index");
    if (hot[static_cast<size_t>(k)] != 0) {
      throw DataError(sample.origin, "label \"" + task.labels[static_cast<size_t>(k)] + "\" appears twice in field \"" +
                                         task.target + "\"");
    }
    hot[static_cast<size_t>(k)] = 1.0;
  }
  return hot;
}

double read_target(const Sample& sample, const TaskSpec& task) {
  if (task.type == TaskType::kMultilabel) {
    throw Error("task " + task.name + ": a multilabel target is a label set (read_label_set), not one number");
  }
  const nlohmann::json& v = target_value(sample, task);
  if (task.type == TaskType::kMulticlass || task.type == TaskType::kBinary || task.type == TaskType::kGeneration) {
    const int64_t k = label_index(v, sample, task);
    if (k < 0) throw DataError(sample.origin, "target \"" + task.target + "\" must be a label name or index, found " + v.dump());
    return static_cast<double>(k);
  }
  if (!v.is_number()) {
    throw DataError(sample.origin, "target \"" + task.target + "\" must be a number, found " + v.dump());
  }
  const double x = v.get<double>();
  if (!std::isfinite(x)) throw DataError(sample.origin, "target \"" + task.target + "\" is not finite");
  return x;
}

namespace {

constexpr size_t kNone = static_cast<size_t>(-1);

/// A modality's distinct field values of one split, decoded.
struct Decoded {
  std::vector<size_t> slot_of;     // sample → distinct value (kNone: the field is missing)
  std::vector<size_t> first;       // distinct value → first sample holding it
  std::vector<RawValue> raw;       // distinct value → decoded
  std::vector<std::string> error;  // distinct value → what is wrong with it
  std::vector<std::exception_ptr> failure;  // distinct value → the error naming the plugin
  std::vector<char> is_fault;      // distinct value → the plugin failed (not the data)
};

/// A split read and decoded, not yet fitted on nor featurized.
struct Pending {
  std::vector<int64_t> rows;    // rows of the split's file
  std::vector<size_t> keep;     // positions in `rows` of the good samples
  std::vector<std::string> bad; // why each sample is bad; empty = good
  std::map<std::string, std::vector<std::vector<double>>> target_values;
  std::vector<Decoded> decoded;  // per job modality
};

/// Reads the targets and decodes every distinct field value of the job's split once (a data set
/// that pairs by class, av-fashion, points thousands of samples at the same clip, and decoding is
/// the expensive stage). Every bad sample is found before anything is reported, so the error
/// (without skip_bad) is the first bad sample in file order whatever stage or thread found it. A
/// plugin's own fault (anything but a DataError) is never skipped.
Pending read_and_decode(const LoadJob& job) {
  Dataset& dataset = *job.dataset;
  const LoadOptions& options = job.options;
  const std::vector<Sample>& all = dataset.samples(job.split);
  if (all.empty()) {
    // Fitting on nothing would give NaN statistics and an empty evaluation a metric of 0/0.
    throw DataError(dataset.file().string(), "split \"" + job.split + "\" holds no samples");
  }
  Pending p;
  p.rows = options.rows;
  if (p.rows.empty()) {
    for (size_t i = 0; i < all.size(); ++i) p.rows.push_back(static_cast<int64_t>(i));
  }
  const size_t n = p.rows.size();
  auto sample = [&](size_t i) -> const Sample& { return all.at(static_cast<size_t>(p.rows[i])); };
  p.bad.assign(n, "");
  std::vector<std::exception_ptr> failure(n);  // the error to raise for it without skip_bad
  std::vector<std::exception_ptr> fault(n);    // a plugin fault met at sample i
  auto mark = [&](size_t i, const std::string& why, std::exception_ptr error) {
    if (p.bad[i].empty()) {
      p.bad[i] = why;
      failure[i] = std::move(error);
    }
  };

  // Each sample's target values: one for scalar tasks, a 0/1 per label for multilabel ones. A
  // row outside `labelled` is not read at all: a label withheld from the run cannot fail it.
  const std::set<int64_t> labelled(options.labelled.begin(), options.labelled.end());
  for (const auto& [name, task] : job.tasks) {
    auto& values = p.target_values[name];
    values.resize(n);
    const size_t width = task.type == TaskType::kMultilabel ? task.labels.size() : 1;
    for (size_t i = 0; i < n; ++i) {
      if (!labelled.empty() && !labelled.count(p.rows[i])) {
        values[i].assign(width, std::nan(""));
        continue;
      }
      try {
        values[i] = task.type == TaskType::kMultilabel ? read_label_set(sample(i), task)
                                                       : std::vector<double>{read_target(sample(i), task)};
      } catch (const DataError& e) {
        mark(i, e.what(), std::current_exception());
      }
    }
  }

  p.decoded.resize(job.modalities.size());
  for (size_t k = 0; k < job.modalities.size(); ++k) {
    const ModalityBinding& m = job.modalities[k];
    dataset.field(m.field);  // a missing field is an error about the data set, said once
    Decoded& d = p.decoded[k];
    d.slot_of.assign(n, kNone);
    std::unordered_map<std::string, size_t> slots;
    for (size_t i = 0; i < n; ++i) {
      const Sample& s = sample(i);
      auto it = s.fields.find(m.field);
      if (it == s.fields.end()) {
        DataError e(s.origin, "sample has no field \"" + m.field + "\"");
        mark(i, e.what(), std::make_exception_ptr(e));
        continue;
      }
      auto [pos, inserted] = slots.emplace(it->dump(), d.first.size());
      if (inserted) d.first.push_back(i);
      d.slot_of[i] = pos->second;
    }
    d.raw.resize(d.first.size());
    d.error.resize(d.first.size());
    d.failure.resize(d.first.size());
    d.is_fault.assign(d.first.size(), 0);
    parallel_for(d.first.size(), options.threads, [&](size_t u) {
      const Sample& s = sample(d.first[u]);
      try {
        d.raw[u] = m.plugin->decode(FieldRef{s.fields.at(m.field), dataset.base_dir(), s.origin});
      } catch (const DataError& e) {
        d.error[u] = e.what();
        d.failure[u] = std::make_exception_ptr(PluginError(m.plugin->plugin_name(), e.what()));
      } catch (...) {
        try {
          guard(m.plugin->plugin_name(), [] { throw; });  // as a PluginError naming the plugin
        } catch (const std::exception& e) {
          d.error[u] = e.what();
          d.failure[u] = std::current_exception();
          d.is_fault[u] = 1;
        }
      }
    });
    for (size_t i = 0; i < n; ++i) {
      const size_t u = d.slot_of[i];
      if (u == kNone || !d.failure[u]) continue;
      if (d.is_fault[u] && !fault[i]) fault[i] = d.failure[u];
      // Samples sharing the value share its error; each names its own line and the first's.
      mark(i, i == d.first[u] ? d.error[u]
                              : sample(i).origin + ": same \"" + m.field + "\" value as " +
                                    sample(d.first[u]).origin + ", which failed: " + d.error[u],
           d.failure[u]);
    }
  }
  for (size_t i = 0; i < n; ++i) {
    if (fault[i]) std::rethrow_exception(fault[i]);
    if (failure[i] && !options.skip_bad) std::rethrow_exception(failure[i]);
  }
  for (size_t i = 0; i < n; ++i) {
    if (p.bad[i].empty()) p.keep.push_back(i);
  }
  if (p.keep.empty()) {
    throw DataError(dataset.file().string(), "every one of the " + std::to_string(n) + " samples of split \"" + job.split +
                                                 "\" is bad (--skip-bad left none); the first: " + p.bad[0]);
  }
  return p;
}

}  // namespace

SplitFeatures SplitFeatures::build(Dataset& dataset, const std::string& split,
                                   const std::vector<ModalityBinding>& modalities,
                                   const std::map<std::string, TaskSpec>& tasks, const LoadOptions& options) {
  std::vector<LoadJob> jobs{LoadJob{&dataset, split, modalities, tasks, options, 0}};
  return std::move(build_all(jobs).front());
}

std::vector<SplitFeatures> SplitFeatures::build_all(const std::vector<LoadJob>& jobs) {
  std::vector<Pending> pending;
  pending.reserve(jobs.size());
  for (const auto& job : jobs) pending.push_back(read_and_decode(job));

  // Fit each plugin once, on the kept samples of every fitting job that holds its modality (a
  // multitask pipeline's image modality sees every image data set's train split), one raw value
  // per sample: shared values weigh as often as they occur.
  std::map<const ModalityPlugin*, std::vector<RawValue>> fit_values;
  std::vector<const ModalityPlugin*> fit_order;
  for (size_t j = 0; j < jobs.size(); ++j) {
    if (!jobs[j].options.fit) continue;
    for (size_t k = 0; k < jobs[j].modalities.size(); ++k) {
      const ModalityPlugin* plugin = jobs[j].modalities[k].plugin.get();
      if (!fit_values.count(plugin)) fit_order.push_back(plugin);
      auto& values = fit_values[plugin];
      const Decoded& d = pending[j].decoded[k];
      for (size_t i : pending[j].keep) values.push_back(d.raw[d.slot_of[i]]);
    }
  }
  for (const ModalityPlugin* plugin : fit_order) {
    auto* mutable_plugin = const_cast<ModalityPlugin*>(plugin);  // the bindings own it; fit is its one mutation
    guard(plugin->plugin_name(), [&] { mutable_plugin->fit(fit_values.at(plugin)); });
    fit_values.erase(plugin);  // raw values are large (waveforms)
  }

  std::vector<SplitFeatures> out(jobs.size());
  for (size_t j = 0; j < jobs.size(); ++j) {
    const LoadJob& job = jobs[j];
    Pending& p = pending[j];
    SplitFeatures& f = out[j];
    const std::vector<Sample>& all = job.dataset->samples(job.split);
    auto sample = [&](size_t i) -> const Sample& { return all.at(static_cast<size_t>(p.rows[i])); };
    f.task_id_ = job.task_id;
    for (size_t i = 0; i < p.rows.size(); ++i) {
      if (p.bad[i].empty()) {
        f.source_rows_.push_back(p.rows[i]);
      } else {
        f.skipped_.push_back({p.rows[i], p.bad[i]});
      }
    }
    f.size_ = static_cast<int64_t>(p.keep.size());
    for (size_t k = 0; k < job.modalities.size(); ++k) {
      const ModalityBinding& m = job.modalities[k];
      Decoded& d = p.decoded[k];
      const auto lv = job.options.perturb.find(m.name);
      const double level = lv == job.options.perturb.end() ? 0.0 : lv->second;
      uint64_t name_hash = 1469598103934665603ULL;  // FNV-1a of the modality's name: the same noise in any modality order
      for (char c : m.name) name_hash = (name_hash ^ static_cast<unsigned char>(c)) * 1099511628211ULL;
      std::vector<char> used(d.first.size(), 0);
      for (size_t i : p.keep) used[d.slot_of[i]] = 1;
      std::vector<at::Tensor> distinct(d.first.size());
      parallel_for(d.first.size(), job.options.threads, [&](size_t u) {
        if (!used[u]) return;
        distinct[u] = guard(m.plugin->plugin_name(), [&] {
          if (level <= 0) return m.plugin->featurize(d.raw[u]);
          // A value shared by several samples (one clip, many images) is perturbed once.
          std::mt19937_64 rng(job.options.perturb_seed ^ (0x9e3779b97f4a7c15ULL * name_hash) ^
                              (0xbf58476d1ce4e5b9ULL * (static_cast<uint64_t>(p.rows[d.first[u]]) + 1)));
          return m.plugin->featurize(m.plugin->perturb(d.raw[u], level, rng));
        });
        if (distinct[u].is_floating_point() && !distinct[u].isfinite().all().item<bool>()) {
          throw PluginError(m.plugin->plugin_name(), sample(d.first[u]).origin + ": featurize produced NaN or Inf");
        }
      });
      d.raw.clear();  // raw values are large (waveforms); only features stay
      std::vector<at::Tensor> features;
      features.reserve(p.keep.size());
      for (size_t i : p.keep) features.push_back(distinct[d.slot_of[i]]);
      f.features_[m.name] = std::move(features);
      f.plugins_[m.name] = m.plugin.get();
      f.distinct_[m.name] = std::count(used.begin(), used.end(), 1);
    }
    for (const auto& [name, task] : job.tasks) {
      const int64_t width = task.type == TaskType::kMultilabel ? static_cast<int64_t>(task.labels.size()) : 1;
      std::vector<double> values;
      values.reserve(p.keep.size() * static_cast<size_t>(width));
      for (size_t i : p.keep) values.insert(values.end(), p.target_values[name][i].begin(), p.target_values[name][i].end());
      at::Tensor t = at::tensor(values, at::kDouble);
      if (task.type == TaskType::kMultilabel) t = t.view({static_cast<int64_t>(p.keep.size()), width});
      // Class indices: multiclass, and generation (the reference is the class's caption). An
      // unlabelled row (NaN, see `labelled`) becomes index -1.
      const bool index = task.type == TaskType::kMulticlass || task.type == TaskType::kGeneration;
      if (index && !job.options.labelled.empty()) t = at::nan_to_num(t, -1.0);
      f.targets_[name] = index ? t.to(at::kLong) : t.to(at::kFloat);
    }
  }
  return out;
}

Batch SplitFeatures::batch(const std::vector<int64_t>& rows, const std::vector<std::string>& modalities) const {
  Batch b;
  const at::Tensor local = at::tensor(rows, at::kLong);
  // The batch names its samples by their row in the split's file, not by their position in
  // this (possibly label-subset) cache, so predictions and reports point at real samples.
  std::vector<int64_t> source;
  source.reserve(rows.size());
  for (int64_t r : rows) source.push_back(source_rows_.at(static_cast<size_t>(r)));
  b.index = at::tensor(source, at::kLong);
  b.task_id = task_id_;
  for (const auto& name : modalities) {
    const auto& feats = features_.at(name);
    std::vector<at::Tensor> picked;
    picked.reserve(rows.size());
    for (int64_t r : rows) picked.push_back(feats.at(static_cast<size_t>(r)));
    const ModalityPlugin* plugin = plugins_.at(name);
    ModalityInput input = guard(plugin->plugin_name(), [&] { return plugin->collate(picked); });
    input.present = at::ones({static_cast<int64_t>(rows.size())}, at::kBool);
    b.inputs.emplace(name, std::move(input));
  }
  for (const auto& [task, t] : targets_) b.targets.emplace(task, t.index_select(0, local));
  return b;
}

}  // namespace modalkit::host
