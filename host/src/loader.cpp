#include "loader.hpp"

#include <atomic>
#include <mutex>
#include <system_error>
#include <thread>

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

double read_target(const Sample& sample, const TaskSpec& task) {
  auto it = sample.fields.find(task.target);
  if (it == sample.fields.end()) {
    throw DataError(sample.origin, "missing target field \"" + task.target + "\" of task " + task.name);
  }
  const nlohmann::json& v = *it;
  if (task.type == TaskType::kMulticlass || task.type == TaskType::kBinary) {
    if (v.is_string()) {
      const auto& labels = task.labels;
      auto pos = std::find(labels.begin(), labels.end(), v.get<std::string>());
      if (pos == labels.end()) {
        throw DataError(sample.origin, "label " + v.dump() + " of field \"" + task.target +
                                           "\" is not in the data set's label set");
      }
      return static_cast<double>(pos - labels.begin());
    }
    if (v.is_number_integer()) {
      const int64_t k = v.get<int64_t>();
      if (k < 0 || k >= task.num_outputs + (task.type == TaskType::kBinary ? 1 : 0)) {
        throw DataError(sample.origin, "label index " + std::to_string(k) + " of field \"" + task.target +
                                           "\" is outside the label set");
      }
      return static_cast<double>(k);
    }
    throw DataError(sample.origin, "target \"" + task.target + "\" must be a label name or index, found " + v.dump());
  }
  if (!v.is_number()) {
    throw DataError(sample.origin, "target \"" + task.target + "\" must be a number, found " + v.dump());
  }
  const double x = v.get<double>();
  if (!std::isfinite(x)) throw DataError(sample.origin, "target \"" + task.target + "\" is not finite");
  return x;
}

SplitFeatures SplitFeatures::build(Dataset& dataset, const std::string& split,
                                   const std::vector<ModalityBinding>& modalities,
                                   const std::map<std::string, TaskSpec>& tasks, int threads, bool fit,
                                   const std::vector<int64_t>& rows) {
  const std::vector<Sample>& all = dataset.samples(split);
  if (all.empty()) {
    // Fitting on nothing would give NaN statistics and an empty evaluation a metric of 0/0.
    throw DataError(dataset.file().string(), "split \"" + split + "\" holds no samples");
  }
  SplitFeatures out;
  if (rows.empty()) {
    for (size_t i = 0; i < all.size(); ++i) out.source_rows_.push_back(static_cast<int64_t>(i));
  } else {
    out.source_rows_ = rows;
  }
  out.size_ = static_cast<int64_t>(out.source_rows_.size());
  const size_t n = out.source_rows_.size();
  auto sample = [&](size_t i) -> const Sample& { return all.at(static_cast<size_t>(out.source_rows_[i])); };

  for (const auto& m : modalities) {
    dataset.field(m.field);  // a missing field is an error about the data set, said once
    std::vector<RawValue> raw(n);
    auto decode = [&](size_t i) {
      const Sample& s = sample(i);
      auto it = s.fields.find(m.field);
      if (it == s.fields.end()) throw DataError(s.origin, "sample has no field \"" + m.field + "\"");
      raw[i] = guard(m.plugin->plugin_name(), [&] {
        return m.plugin->decode(FieldRef{*it, dataset.base_dir(), s.origin});
      });
    };
    parallel_for(n, threads, decode);
    if (fit) guard(m.plugin->plugin_name(), [&] { m.plugin->fit(raw); });
    std::vector<at::Tensor> features(n);
    parallel_for(n, threads, [&](size_t i) {
      features[i] = guard(m.plugin->plugin_name(), [&] { return m.plugin->featurize(raw[i]); });
      if (features[i].is_floating_point() && !features[i].isfinite().all().item<bool>()) {
        throw PluginError(m.plugin->plugin_name(), sample(i).origin + ": featurize produced NaN or Inf");
      }
    });
    out.features_[m.name] = std::move(features);
    out.plugins_[m.name] = m.plugin.get();
  }
  for (const auto& [name, task] : tasks) {
    std::vector<double> values(n);
    for (size_t i = 0; i < n; ++i) values[i] = read_target(sample(i), task);
    at::Tensor t = at::tensor(values, at::kDouble);
    out.targets_[name] = (task.type == TaskType::kMulticlass) ? t.to(at::kLong) : t.to(at::kFloat);
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
