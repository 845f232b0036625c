#include "metrics.hpp"

#include <algorithm>
#include <numeric>
#include <vector>

#include <ATen/ATen.h>

#include "modalkit/errors.hpp"

namespace modalkit::host {

namespace {

bool is_classification(const TaskSpec& t) {
  return t.type == TaskType::kMulticlass || t.type == TaskType::kBinary;
}

double macro_f1(const std::vector<int64_t>& pred, const std::vector<int64_t>& truth, int64_t classes) {
  double sum = 0.0;
  for (int64_t c = 0; c < classes; ++c) {
    double tp = 0, fp = 0, fn = 0;
    for (size_t i = 0; i < pred.size(); ++i) {
      tp += (pred[i] == c && truth[i] == c);
      fp += (pred[i] == c && truth[i] != c);
      fn += (pred[i] != c && truth[i] == c);
    }
    sum += (tp == 0) ? 0.0 : 2 * tp / (2 * tp + fp + fn);
  }
  return sum / static_cast<double>(classes);
}

/// Binary ranking metrics from scores and 0/1 labels.
double auroc(const std::vector<double>& score, const std::vector<int64_t>& y) {
  std::vector<size_t> order(score.size());
  std::iota(order.begin(), order.end(), 0);
  std::sort(order.begin(), order.end(), [&](size_t a, size_t b) { return score[a] < score[b]; });
  // Mann-Whitney U with mid-ranks for ties.
  double rank_sum = 0, positives = 0;
  for (size_t i = 0; i < order.size();) {
    size_t j = i;
    while (j < order.size() && score[order[j]] == score[order[i]]) ++j;
    const double mid = (static_cast<double>(i + j - 1)) / 2.0 + 1.0;
    for (size_t k = i; k < j; ++k) {
      if (y[order[k]] == 1) {
        rank_sum += mid;
        positives += 1;
      }
    }
    i = j;
  }
  const double negatives = static_cast<double>(y.size()) - positives;
  if (positives == 0 || negatives == 0) return std::nan("");
  return (rank_sum - positives * (positives + 1) / 2.0) / (positives * negatives);
}

double average_precision(const std::vector<double>& score, const std::vector<int64_t>& y) {
  std::vector<size_t> order(score.size());
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) { return score[a] > score[b]; });
  double tp = 0, ap = 0, positives = static_cast<double>(std::count(y.begin(), y.end(), 1));
  if (positives == 0) return std::nan("");
  for (size_t k = 0; k < order.size(); ++k) {
    if (y[order[k]] == 1) {
      tp += 1;
      ap += tp / static_cast<double>(k + 1);
    }
  }
  return ap / positives;
}

template <class T>
std::vector<T> to_vector(const at::Tensor& t) {
  at::Tensor c = t.contiguous();
  return std::vector<T>(c.data_ptr<T>(), c.data_ptr<T>() + c.numel());
}

}  // namespace

at::Tensor predicted_classes(const TaskSpec& task, const at::Tensor& outputs) {
  if (task.type == TaskType::kBinary) return (outputs > 0).to(at::kLong);
  return outputs.argmax(-1);
}

nlohmann::json compute_metrics(const TaskSpec& task, const at::Tensor& outputs_in, const at::Tensor& targets_in) {
  const at::Tensor outputs = outputs_in.detach().to(at::kCPU);
  const at::Tensor targets = targets_in.detach().to(at::kCPU);
  nlohmann::json out = nlohmann::json::object();
  for (const auto& name : task.metrics) {
    const bool cls = is_classification(task);
    if ((name == "accuracy" || name == "macro_f1" || name == "auroc" || name == "auprc") && !cls) {
      throw Error("task " + task.name + ": metric " + name + " needs a classification task, not " + to_string(task.type));
    }
    if ((name == "auroc" || name == "auprc") && task.type != TaskType::kBinary) {
      throw Error("task " + task.name + ": metric " + name + " is defined here for binary tasks only");
    }
    if ((name == "mae" || name == "pearson_r") && task.type != TaskType::kRegression) {
      throw Error("task " + task.name + ": metric " + name + " needs a regression task");
    }
    if (name == "accuracy") {
      out[name] = predicted_classes(task, outputs).eq(targets.to(at::kLong)).to(at::kDouble).mean().item<double>();
    } else if (name == "macro_f1") {
      const int64_t classes = task.type == TaskType::kBinary ? 2 : task.num_outputs;
      out[name] = macro_f1(to_vector<int64_t>(predicted_classes(task, outputs)),
                           to_vector<int64_t>(targets.to(at::kLong)), classes);
    } else if (name == "auroc" || name == "auprc") {
      auto score = to_vector<double>(outputs.to(at::kDouble));
      auto y = to_vector<int64_t>(targets.to(at::kLong));
      out[name] = name == "auroc" ? auroc(score, y) : average_precision(score, y);
    } else if (name == "mae") {
      out[name] = (outputs.to(at::kDouble) - targets.to(at::kDouble)).abs().mean().item<double>();
    } else if (name == "pearson_r") {
      at::Tensor a = outputs.to(at::kDouble).flatten(), b = targets.to(at::kDouble).flatten();
      a = a - a.mean();
      b = b - b.mean();
      out[name] = ((a * b).sum() / (a.norm() * b.norm()).clamp_min(1e-300)).item<double>();
    } else {
      throw Error("task " + task.name + ": unknown metric " + name);
    }
  }
  return out;
}

}  // namespace modalkit::host
