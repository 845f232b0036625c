// Plumbing shared by the evaluation protocols that caption, question and prompt a model built on
// a language model (prefix tuning, representation tuning): finding its ConditionedLanguageModel,
// building prompts under three conditions (the input, nothing: a blind model, or the class name
// as text: a text-only ceiling), matching generated text against class names and answers, and
// the statistics every protocol reports (Wilson interval, exact binomial test).
//
// Header-only: each protocol plugin compiles it in; it adds no SDK symbol.
#pragma once

#include <algorithm>
#include <cmath>
#include <map>
#include <string>
#include <vector>

#include <ATen/ATen.h>
#include <nlohmann/json.hpp>

#include "modalkit/batch.hpp"
#include "modalkit/config.hpp"
#include "modalkit/errors.hpp"
#include "modalkit/language_model.hpp"
#include "modalkit/strategy.hpp"
#include "modalkit/tokenizer.hpp"

namespace modalkit::lm_protocols {

/// The model's language-model side; an Error naming both plugins when it has none.
inline ConditionedLanguageModel& conditioned(TransferStrategy& model, const std::string& protocol) {
  auto* c = dynamic_cast<ConditionedLanguageModel*>(&model);
  if (c == nullptr) {
    throw Error("protocol " + protocol + " evaluates a model that conditions a language model (prefix_tuning, representation_tuning); transfer plugin " +
                model.plugin_name() + " does not");
  }
  return *c;
}

/// What a prompt is conditioned on.
enum class Condition { kInput, kNone, kClassName };

inline Condition parse_condition(const std::string& s) {
  return s == "none" ? Condition::kNone : s == "class_name" ? Condition::kClassName : Condition::kInput;
}

/// The config keys every prompting protocol reads: `task`, `condition`, `class_text`.
struct PromptConfig {
  explicit PromptConfig(const Config& c)
      : task(c.get<std::string>("task")), condition(parse_condition(c.get<std::string>("condition"))),
        class_text(c.get<std::string>("class_text")) {}
  std::string task;
  Condition condition;
  std::string class_text;
};

/// Wilson's 95 % interval for k successes in n trials.
inline std::pair<double, double> wilson95(int64_t k, int64_t n) {
  if (n == 0) return {0.0, 1.0};
  const double z = 1.959963984540054, p = static_cast<double>(k) / static_cast<double>(n), nn = static_cast<double>(n);
  const double centre = (p + z * z / (2 * nn)) / (1 + z * z / nn);
  const double half = z * std::sqrt(p * (1 - p) / nn + z * z / (4 * nn * nn)) / (1 + z * z / nn);
  // Exact ends when k is 0 or n (the formula leaves rounding residue there).
  return {k == 0 ? 0.0 : std::max(0.0, centre - half), k == n ? 1.0 : std::min(1.0, centre + half)};
}

/// One-sided exact binomial test: P(X >= k) for X ~ Binomial(n, p).
inline double binomial_p_at_least(int64_t k, int64_t n, double p) {
  double total = 0;
  for (int64_t i = k; i <= n; ++i) {
    total += std::exp(std::lgamma(static_cast<double>(n) + 1) - std::lgamma(static_cast<double>(i) + 1) -
                      std::lgamma(static_cast<double>(n - i) + 1) + static_cast<double>(i) * std::log(p) +
                      static_cast<double>(n - i) * std::log1p(-p));
  }
  return std::min(1.0, total);
}

/// Accuracy figures: k of n right, with the interval.
inline nlohmann::json accuracy_figures(int64_t k, int64_t n) {
  const auto [lo, hi] = wilson95(k, n);
  return {{"accuracy", n > 0 ? static_cast<double>(k) / static_cast<double>(n) : 0.0}, {"correct", k}, {"n", n},
          {"ci95_low", lo}, {"ci95_high", hi}};
}

/// The device a batch's tensors are on.
inline c10::Device device_of(const Batch& batch) {
  if (!batch.inputs.empty()) return batch.inputs.begin()->second.data.device();
  return batch.targets.empty() ? c10::Device(c10::kCPU) : batch.targets.begin()->second.device();
}

/// Embedded pieces of `text` (with BOS first when `bos`) as `[1, T, D]`.
inline at::Tensor embed_text(ConditionedLanguageModel& model, const std::string& text, bool bos, c10::Device device) {
  std::vector<int64_t> ids;
  if (bos && model.tokenizer().bos() >= 0) ids.push_back(model.tokenizer().bos());
  for (const int64_t id : model.tokenizer().encode(text)) ids.push_back(id);
  if (ids.empty()) return at::zeros({1, 0, model.language_model().width()}, at::TensorOptions().device(device));
  return model.language_model().embed(at::tensor(ids, at::kLong).unsqueeze(0).to(device));
}

/// The prompt for each row of `batch` under `condition`: the row's conditioning prefix (kInput),
/// BOS, then `text` (with the row's class name before it under kClassName: `class_text` filled
/// with the name, e.g. "this is a sandal. "). Returns the embeddings `[B, P, D]` (rows padded
/// on the left) with their mask, and the hooks for these rows.
struct Prompts {
  at::Tensor embeds, mask;
  LmHooks hooks;
};
inline Prompts prompts(ConditionedLanguageModel& model, const Batch& batch, const PromptConfig& config, const std::string& text) {
  const std::string& task = config.task;
  const Condition condition = config.condition;
  const std::string& class_text = config.class_text;
  const int64_t b = batch.size();
  const auto device = device_of(batch);
  Prompts out;
  if (condition != Condition::kClassName) {
    at::Tensor body = embed_text(model, text, true, device).expand({b, -1, -1});
    if (condition == Condition::kInput) {
      Conditioning c = model.condition(batch);
      out.hooks = std::move(c.hooks);
      if (c.prefix.defined() && c.prefix.size(1) > 0) body = at::cat({c.prefix, body}, 1);
    }
    out.embeds = body;
    out.mask = at::ones({b, body.size(1)}, at::TensorOptions().dtype(at::kBool).device(device));
    return out;
  }
  // The class name as text: rows differ in length, so pad on the left.
  const at::Tensor y = batch.targets.at(task).to(at::kCPU);
  std::vector<at::Tensor> rows;
  int64_t longest = 0;
  for (int64_t r = 0; r < b; ++r) {
    const std::string name = model.class_names().at(static_cast<size_t>(y[r].item<int64_t>()));
    rows.push_back(embed_text(model, fill_template(class_text, name) + text, true, device).squeeze(0));
    longest = std::max(longest, rows.back().size(0));
  }
  const int64_t d = model.language_model().width();
  out.embeds = at::zeros({b, longest, d}, rows.front().options());
  out.mask = at::zeros({b, longest}, at::TensorOptions().dtype(at::kBool).device(device));
  for (int64_t r = 0; r < b; ++r) {
    const int64_t n = rows[static_cast<size_t>(r)].size(0);
    out.embeds[r].narrow(0, longest - n, n).copy_(rows[static_cast<size_t>(r)]);
    out.mask[r].narrow(0, longest - n, n).fill_(true);
  }
  return out;
}

/// Greedy (or beam) continuations of `text` for each row of `batch` under `config.condition`.
/// Rows whose prompts cannot differ share one generation: blind, all rows; with the class name
/// as text, the rows of a class. Decoding is deterministic, so this changes no result; on a
/// 10,000-image test split it turns thousands of identical generations into one (or ten).
inline std::vector<std::vector<int64_t>> generate_rows(ConditionedLanguageModel& model, const Batch& batch,
                                                       const PromptConfig& config, const std::string& text,
                                                       const GenerateOptions& options) {
  const int64_t b = batch.size();
  if (config.condition == Condition::kInput || b <= 1) {
    const Prompts p = prompts(model, batch, config, text);
    return generate(model.language_model(), p.embeds, p.mask, options, p.hooks);
  }
  at::Tensor y;
  if (config.condition == Condition::kClassName) y = batch.targets.at(config.task).to(at::kCPU);
  std::map<int64_t, size_t> slot;  // prompt key (the class, or 0 blind) → its generation
  std::vector<int64_t> representatives;
  std::vector<size_t> of_row(static_cast<size_t>(b));
  for (int64_t r = 0; r < b; ++r) {
    const int64_t key = y.defined() ? y[r].item<int64_t>() : 0;
    const auto [it, fresh] = slot.emplace(key, representatives.size());
    if (fresh) representatives.push_back(r);
    of_row[static_cast<size_t>(r)] = it->second;
  }
  const Prompts p = prompts(model, batch.select(at::tensor(representatives, at::kLong)), config, text);
  const auto once = generate(model.language_model(), p.embeds, p.mask, options, p.hooks);
  std::vector<std::vector<int64_t>> out;
  out.reserve(static_cast<size_t>(b));
  for (const size_t i : of_row) out.push_back(once[i]);
  return out;
}

}  // namespace modalkit::lm_protocols
