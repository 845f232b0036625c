// Plumbing shared by the co-learning strategies (translation, cyclic_translation,
// vokenization): a modality's fixed-width feature vectors, their standardisation fitted in the
// prepare stage, and output layers whose width is only known once prepare has seen the data.
//
// Why widths are learned in prepare: build() sees encoders, not data, so the width of, say, an
// image's raw pixels is unknown until a batch arrives. Such tensors are registered empty in the
// constructor and given their shape in prepare with Tensor::set_, which keeps the registered
// tensor; a resumed run (no prepare) or a saved run opened for eval gets the shape from the
// checkpoint the same way, since LibTorch's loader also uses set_.
#pragma once

#include <algorithm>
#include <cmath>
#include <random>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include <ATen/ATen.h>
#include <torch/nn/module.h>
#include <torch/nn/modules/linear.h>
#include <torch/nn/pimpl.h>

#include "modalkit/config.hpp"
#include "modalkit/errors.hpp"
#include "modalkit/layers.hpp"
#include "modalkit/strategy.hpp"

namespace modalkit::colearning {

/// How a modality becomes one vector per sample.
enum class Features {
  kRaw,        ///< its collated features flattened (fixed-shape data: pixels, fixed windows)
  kPooledRaw,  ///< its features `[B, L, F]` averaged over the real positions of the padded axis
  kEncoder,    ///< its encoder's output, mean-pooled, with no gradient (a frozen encoder)
};

/// Reads `key` of `config` ("raw", "pooled_raw" or "encoder"; the manifests' enums).
inline Features features_from(const Config& config, const std::string& key) {
  const auto name = config.get<std::string>(key);
  if (name == "raw") return Features::kRaw;
  if (name == "pooled_raw") return Features::kPooledRaw;
  if (name == "encoder") return Features::kEncoder;
  throw ConfigError(config.pointer() + "/" + key, "expected \"raw\", \"pooled_raw\" or \"encoder\", found \"" + name + "\"");
}

/// `[B, F]` float features of `modality` in `batch` (`encoder` is read only for kEncoder).
/// `who` prefixes errors (the plugin's name).
inline at::Tensor feature_vectors(Features kind, const Batch& batch, const std::string& modality,
                                  const EncoderRef* encoder, const std::string& who) {
  const ModalityInput& input = batch.input(modality, who);
  const int64_t n = input.data.size(0);
  if (kind != Features::kEncoder && !at::isFloatingType(input.data.scalar_type())) {
    throw Error(who + ": modality \"" + modality + "\" has integer features (token ids?), which are not values to predict " +
                "or cluster; use \"encoder\"");
  }
  switch (kind) {
    case Features::kRaw:
      if (input.mask.defined() && !input.mask.all().item<bool>()) {
        throw Error(who + ": modality \"" + modality +
                    "\" has padded (variable-length) features, so they have no fixed raw width; use \"pooled_raw\" or \"encoder\"");
      }
      return input.data.reshape({n, -1}).to(at::kFloat);
    case Features::kPooledRaw: {
      // Only a sequence [B, L, F] has an axis to average over; anything else would average
      // across features or channels.
      if (input.data.dim() != 3) {
        throw Error(who + ": modality \"" + modality + "\" has features of shape " + c10::str(input.data.sizes()) +
                    ", not a sequence [B, L, F] to average over time; use \"raw\" or \"encoder\"");
      }
      const at::Tensor x = input.data.to(at::kFloat);
      if (!input.mask.defined()) return x.mean(1);
      const at::Tensor m = input.mask.unsqueeze(-1).to(at::kFloat);
      return (x * m).sum(1) / m.sum(1).clamp_min(1);
    }
    case Features::kEncoder: {
      if (encoder == nullptr) throw Error(who + ": no encoder for modality \"" + modality + "\"");
      at::NoGradGuard no_grad;
      return masked_mean_pool((*encoder)(input)).detach();
    }
  }
  return {};
}

/// Gives `state` (a registered buffer or parameter, possibly still empty) the value and shape
/// of `value`, on `state`'s device and dtype, keeping the registered tensor (see the top of
/// this file).
inline void assign(at::Tensor& state, const at::Tensor& value) {
  at::NoGradGuard no_grad;
  state.set_(value.detach().to(state.options()).clone());
}

/// The config's `key` names one of the pipeline's modalities; returns it, or throws a
/// ConfigError at `<config>/key`.
inline std::string configured_modality(const CreateArgs& args, const std::string& key) {
  const auto m = args.config.get<std::string>(key);
  if (std::find(args.modalities.begin(), args.modalities.end(), m) == args.modalities.end()) {
    throw ConfigError(args.config.pointer() + "/" + key, "\"" + m + "\" is not one of the pipeline's modalities");
  }
  return m;
}

/// The parameter groups of a strategy whose `frozen` encoder (when it has one) is fixed: group
/// "all" with every other parameter, and group `name`, frozen.
inline std::vector<ParameterGroup> groups_with_frozen(torch::nn::Module& strategy, const EncoderRef& frozen, const std::string& name) {
  std::set<const void*> fixed_ids;
  if (frozen.module()) {
    for (const auto& p : frozen.module()->parameters()) fixed_ids.insert(p.unsafeGetTensorImpl());
  }
  ParameterGroup trained{"all", {}, std::nullopt, false}, fixed{name, {}, std::nullopt, true};
  for (const auto& p : strategy.parameters()) (fixed_ids.count(p.unsafeGetTensorImpl()) ? fixed : trained).parameters.push_back(p);
  if (fixed.parameters.empty()) return {trained};
  return {trained, fixed};
}

/// The task heads' outputs on the sequence of one modality, through the fusion operator (as a
/// model trained on that modality alone would compute them).
inline Predictions heads_on(const FusionRef& fusion, const std::map<std::string, std::shared_ptr<TaskHead>>& heads,
                            const std::string& modality, const Sequence& seq) {
  const Sequence fused = fusion({{modality, seq}});
  Predictions out;
  for (const auto& [task, head] : heads) out.emplace(task, head->forward(fused));
  return out;
}

/// Per-feature mean and standard deviation, fitted on the train split in prepare and saved
/// with the model as buffers `mean` and `std` (empty until fitted).
class StandardizerImpl : public torch::nn::Module {
 public:
  StandardizerImpl() {
    mean_ = register_buffer("mean", at::zeros({0}));
    std_ = register_buffer("std", at::ones({0}));
  }
  /// Adds a batch `[B, F]` to the running sums (in double precision); `what` names the
  /// features in errors.
  void accumulate(const at::Tensor& x, const std::string& what) {
    const at::Tensor d = x.detach().to(at::kDouble).cpu();
    if (!sum_.defined()) {
      sum_ = at::zeros({d.size(1)}, at::kDouble);
      sumsq_ = at::zeros({d.size(1)}, at::kDouble);
    }
    if (d.size(1) != sum_.size(0)) {
      throw Error(what + ": " + std::to_string(d.size(1)) + " features per sample in one batch, " + std::to_string(sum_.size(0)) +
                  " in an earlier one (a fixed width is needed; \"pooled_raw\" or \"encoder\" give one)");
    }
    sum_ += d.sum(0);
    sumsq_ += (d * d).sum(0);
    n_ += d.size(0);
  }
  /// Turns the running sums into the buffers. Features that never vary get std 1, so they
  /// standardise to 0 instead of dividing by zero.
  void fit(const std::string& what) {
    if (n_ < 2) throw Error(what + ": fewer than 2 training samples to standardise its features with");
    const at::Tensor mean = sum_ / static_cast<double>(n_);
    const at::Tensor var = (sumsq_ / static_cast<double>(n_) - mean * mean).clamp_min(0);
    at::Tensor sd = var.sqrt();
    sd = at::where(sd > 1e-6, sd, at::ones_like(sd));
    assign(mean_, mean);
    assign(std_, sd);
    sum_ = sumsq_ = at::Tensor();
    n_ = 0;
  }
  /// The feature width; 0 before fit (or a loaded checkpoint).
  int64_t width() const { return mean_.size(0); }
  /// `x` `[B, F]` standardised. `what` names the features in errors.
  at::Tensor forward(const at::Tensor& x, const std::string& what) const {
    if (width() == 0) throw Error(what + ": not prepared (its standardisation is fitted in the prepare stage)");
    if (x.size(1) != width()) {
      throw Error(what + ": " + std::to_string(x.size(1)) + " features per sample, but the train split had " +
                  std::to_string(width()));
    }
    return (x - mean_) / std_;
  }

 private:
  at::Tensor mean_, std_;
  at::Tensor sum_, sumsq_;  // running sums while fitting (not saved)
  int64_t n_ = 0;
};
TORCH_MODULE(Standardizer);


/// A linear layer whose widths are set in prepare (see the top of this file).
class LateLinearImpl : public torch::nn::Module {
 public:
  /// No weights until resize().
  LateLinearImpl() {
    weight_ = register_parameter("weight", at::zeros({0, 0}));
    bias_ = register_parameter("bias", at::zeros({0}));
  }
  /// Gives the layer `in` inputs and `out` outputs, initialised as torch::nn::Linear's are.
  void resize(int64_t in, int64_t out) {
    torch::nn::Linear fresh(in, out);
    assign(weight_, fresh->weight.detach());
    assign(bias_, fresh->bias.detach());
  }
  /// Output width; 0 before resize() or a loaded checkpoint.
  int64_t out() const { return weight_.size(0); }
  at::Tensor forward(const at::Tensor& x) const {
    if (out() == 0) throw Error("a layer sized in the prepare stage was used before prepare ran");
    return at::linear(x, weight_, bias_);
  }

 private:
  at::Tensor weight_, bias_;
};
TORCH_MODULE(LateLinear);

/// A two-layer MLP `in → hidden → out` (GELU between) whose widths are set in prepare: the
/// translation strategies' decoders.
class LateMlpImpl : public torch::nn::Module {
 public:
  explicit LateMlpImpl(int64_t hidden)
      : hidden_width_(hidden), hidden_(register_module("hidden", LateLinear())), out_(register_module("out", LateLinear())) {}
  void resize(int64_t in, int64_t out) {
    hidden_->resize(in, hidden_width_);
    out_->resize(hidden_width_, out);
  }
  at::Tensor forward(const at::Tensor& x) { return out_->forward(at::gelu(hidden_->forward(x))); }

 private:
  int64_t hidden_width_;
  LateLinear hidden_, out_;
};
TORCH_MODULE(LateMlp);

/// Mean squared error over the rows where `keep` (`[B]` bool) holds; 0 (with a graph) when none
/// does, so a batch without paired samples adds nothing.
inline at::Tensor masked_mse(const at::Tensor& prediction, const at::Tensor& target, const at::Tensor& keep) {
  // Selects (not multiplies by 0): an absent sample's filler may be anything, NaN included.
  const at::Tensor per_row = at::where(keep, (prediction - target).pow(2).mean(1), at::zeros({}, prediction.options()));
  return per_row.sum() / keep.sum().to(per_row.scalar_type()).clamp_min(1);
}

/// `[B]` bool: the samples in which `modality` is present.
inline at::Tensor presence(const Batch& batch, const std::string& modality) {
  const ModalityInput& input = batch.inputs.at(modality);
  if (input.present.defined()) return input.present;
  return at::ones({input.data.size(0)}, at::TensorOptions().dtype(at::kBool).device(input.data.device()));
}

/// Runs `encoder` in eval mode (no dropout) whatever mode the model is in: a frozen encoder is
/// a fixed function.
inline void keep_in_eval(const EncoderRef& encoder) {
  if (encoder.module() && encoder.module()->is_training()) encoder.module()->eval();
}

/// `[B, F]` features of `modality` over the train split (its present samples), standardised by
/// `standardizer`, which is fitted on them; with `targets` of `task` when `task` is not empty.
/// What vokenization clusters and what a coordination space averages per class.
inline std::pair<at::Tensor, at::Tensor> standardized_train_features(BatchSource& data, Features kind, const std::string& modality,
                                                                      const EncoderRef* encoder, StandardizerImpl& standardizer,
                                                                      const std::string& task, const std::string& who,
                                                                      std::vector<at::Tensor>* rows = nullptr) {
  const std::string what = who + ": modality \"" + modality + "\"";
  std::vector<at::Tensor> features, targets;
  data.for_each("train", {modality}, [&](const Batch& batch) {
    const at::Tensor keep = presence(batch, modality);
    const at::Tensor f = feature_vectors(kind, batch, modality, encoder, who).index({keep});
    standardizer.accumulate(f, what);
    features.push_back(f.cpu());
    if (rows != nullptr) rows->push_back(batch.index.to(keep.device()).index({keep}).cpu());
    if (!task.empty()) targets.push_back(batch.targets.at(task).to(keep.device()).index({keep}).cpu());
  });
  if (features.empty()) throw Error(what + ": the train split has no batch to fit on");
  standardizer.fit(what);
  const at::Tensor x = standardizer.forward(at::cat(features).to(standardizer.buffers()[0].device()), what).cpu();
  return {x, task.empty() ? at::Tensor() : at::cat(targets)};
}

/// k-means (Lloyd's algorithm from a k-means++ start) on the rows of `x` `[N, F]`, drawing only
/// from `rng`. Returns the centroids `[k, F]` and each row's cluster `[N]` (int64). A cluster
/// left empty is restarted at the row farthest from its centroid. Stops when no assignment
/// changes or after `iterations` rounds.
inline std::pair<at::Tensor, at::Tensor> kmeans(const at::Tensor& x, int64_t k, int64_t iterations, std::mt19937_64& rng) {
  const int64_t n = x.size(0);
  if (k < 1 || k > n) {
    throw Error("k-means: cannot make " + std::to_string(k) + " clusters of " + std::to_string(n) + " points");
  }
  const at::Tensor data = x.to(at::kDouble).contiguous();
  std::uniform_real_distribution<double> uniform(0.0, 1.0);
  // k-means++: each next centre drawn with probability proportional to its squared distance.
  std::vector<int64_t> picked{static_cast<int64_t>(rng() % static_cast<uint64_t>(n))};
  at::Tensor d2 = (data - data[picked[0]]).pow(2).sum(1);
  while (static_cast<int64_t>(picked.size()) < k) {
    const double total = d2.sum().item<double>();
    int64_t next = static_cast<int64_t>(rng() % static_cast<uint64_t>(n));
    if (total > 0) {
      const at::Tensor cum = d2.cumsum(0);
      next = std::min(n - 1, at::searchsorted(cum, at::scalar_tensor(uniform(rng) * total, at::kDouble)).item<int64_t>());
    }
    picked.push_back(next);
    d2 = at::minimum(d2, (data - data[next]).pow(2).sum(1));
  }
  at::Tensor centroids = data.index_select(0, at::tensor(picked, at::kLong)).clone();
  at::Tensor assign = at::full({n}, -1, at::kLong);
  for (int64_t it = 0; it < iterations; ++it) {
    const at::Tensor dist = at::cdist(data, centroids);  // [N, k]
    const at::Tensor next = dist.argmin(1);
    const bool changed = !next.equal(assign);
    assign = next;
    const at::Tensor counts = at::bincount(assign, {}, k).to(at::kDouble);
    at::Tensor sums = at::zeros_like(centroids).index_add_(0, assign, data);
    at::Tensor own = dist.gather(1, assign.unsqueeze(1)).squeeze(1).clone();  // each point's distance to its centre
    for (int64_t c = 0; c < k; ++c) {
      if (counts[c].item<double>() > 0) continue;
      // Restart an empty cluster at the point farthest from its centre, moved out of its old
      // cluster; taken points are not taken again.
      const int64_t far = own.argmax().item<int64_t>();
      const int64_t old = assign[far].item<int64_t>();
      sums[old] -= data[far];
      counts[old] -= 1;
      sums[c] = data[far];
      counts[c] = 1;
      assign[far] = c;
      own[far] = -1;
      if (counts[old].item<double>() <= 1) own.masked_fill_(assign == old, -1);  // never empty a cluster to fill another
    }
    centroids = sums / counts.unsqueeze(1);
    if (!changed) break;
  }
  return {centroids.to(x.scalar_type()), assign};
}

/// Normalised mutual information of two labelings of the same items (non-negative int64 `[N]`),
/// normalised by the arithmetic mean of the entropies as scikit-learn's default: 1 when one
/// determines the other, about 0 for independent ones. 1 when both are constant.
inline double normalized_mutual_information(const at::Tensor& a, const at::Tensor& b) {
  const int64_t n = a.size(0);
  if (n == 0 || b.size(0) != n) throw Error("NMI: the two labelings must have the same, non-zero length");
  const int64_t ka = a.max().item<int64_t>() + 1, kb = b.max().item<int64_t>() + 1;
  const at::Tensor joint = at::bincount(a * kb + b, {}, ka * kb).to(at::kDouble).view({ka, kb}) / static_cast<double>(n);
  const at::Tensor pa = joint.sum(1), pb = joint.sum(0);
  auto entropy = [](const at::Tensor& p) {
    const at::Tensor q = p.masked_select(p > 0);
    return -(q * q.log()).sum().item<double>();
  };
  const double ha = entropy(pa), hb = entropy(pb);
  if (ha == 0 && hb == 0) return 1.0;
  const at::Tensor outer = pa.unsqueeze(1) * pb.unsqueeze(0);
  const at::Tensor nz = joint > 0;
  const double mi = (joint.masked_select(nz) * (joint.masked_select(nz) / outer.masked_select(nz)).log()).sum().item<double>();
  return (ha + hb) > 0 ? 2 * mi / (ha + hb) : 0.0;
}

}  // namespace modalkit::colearning
