#include "metrics.hpp"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <vector>

#include <ATen/ATen.h>

#include "modalkit/errors.hpp"
#include "schema/pipeline.hpp"

namespace modalkit::host {

namespace {

/// F1 from counts; 0 when there is no true positive (also the 0/0 case: nothing predicted or true).
double f1(double tp, double fp, double fn) { return tp == 0 ? 0.0 : 2 * tp / (2 * tp + fp + fn); }

double macro_f1(const std::vector<int64_t>& pred, const std::vector<int64_t>& truth, int64_t classes) {
  double sum = 0.0;
  for (int64_t c = 0; c < classes; ++c) {
    double tp = 0, fp = 0, fn = 0;
    for (size_t i = 0; i < pred.size(); ++i) {
      tp += (pred[i] == c && truth[i] == c);
      fp += (pred[i] == c && truth[i] != c);
      fn += (pred[i] != c && truth[i] == c);
    }
    sum += f1(tp, fp, fn);
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
  if (task.type == TaskType::kBinary || task.type == TaskType::kMultilabel) return (outputs > 0).to(at::kLong);
  return outputs.argmax(-1);
}

namespace {

/// Multilabel metrics from logits `[N,K]` and 0/1 targets `[N,K]`; a label is predicted where
/// its logit is positive (probability > 0.5). Per-label figures are averaged over the labels
/// (macro); a label whose column is all 0 or all 1 has no AUROC and is left out of that mean.
double multilabel_metric(const TaskSpec& task, const std::string& name, const at::Tensor& outputs,
                         const at::Tensor& targets) {
  const at::Tensor y = targets.to(at::kLong), pred = predicted_classes(task, outputs);
  if (name == "subset_accuracy") return pred.eq(y).all(1).to(at::kDouble).mean().item<double>();
  if (name == "micro_f1") {
    const double tp = (pred * y).sum().item<double>(), fp = (pred * (1 - y)).sum().item<double>(),
                 fn = ((1 - pred) * y).sum().item<double>();
    return f1(tp, fp, fn);
  }
  const int64_t k = outputs.size(1);
  double sum = 0, counted = 0;
  for (int64_t c = 0; c < k; ++c) {
    double v = 0;
    if (name == "macro_f1") {
      const at::Tensor p = pred.select(1, c), t = y.select(1, c);
      const double tp = (p * t).sum().item<double>(), fp = (p * (1 - t)).sum().item<double>(),
                   fn = ((1 - p) * t).sum().item<double>();
      v = f1(tp, fp, fn);
    } else if (name == "auroc" || name == "auprc") {
      const auto score = to_vector<double>(outputs.select(1, c).to(at::kDouble));
      const auto truth = to_vector<int64_t>(y.select(1, c));
      v = name == "auroc" ? auroc(score, truth) : average_precision(score, truth);
    } else {
      throw Error("task " + task.name + ": unknown multilabel metric " + name);
    }
    if (std::isnan(v)) continue;
    sum += v;
    counted += 1;
  }
  return counted == 0 ? std::nan("") : sum / counted;
}

}  // namespace

nlohmann::json compute_metrics(const TaskSpec& task, const at::Tensor& outputs_in, const at::Tensor& targets_in) {
  const at::Tensor outputs = outputs_in.detach().to(at::kCPU);
  const at::Tensor targets = targets_in.detach().to(at::kCPU);
  nlohmann::json out = nlohmann::json::object();
  for (const auto& name : task.metrics) {
    if (const std::string why = schema::metric_mismatch(name, to_string(task.type)); !why.empty()) {
      throw Error("task " + task.name + ": " + why);
    }
    if (task.type == TaskType::kMultilabel) {
      if (outputs.dim() != 2 || targets.sizes() != outputs.sizes()) {
        throw Error("task " + task.name + ": multilabel outputs " + c10::str(outputs.sizes()) + " and targets " +
                    c10::str(targets.sizes()) + " must both be [N, labels]");
      }
      out[name] = multilabel_metric(task, name, outputs, targets);
      continue;
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
