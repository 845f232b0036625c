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
#include <utility>
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

/// The prompt for each row of `batch` under `config.condition`: the row's conditioning prefix
/// (kInput), BOS, then the row's text `texts[r]` (after the row's class name under kClassName:
/// `class_text` filled with the name, e.g. "this is a sandal. "). Returns the embeddings
/// `[B, P, D]` (short rows padded on the left, so every row ends at its last real position) with
/// their mask, and the hooks for these rows.
struct Prompts {
  at::Tensor embeds, mask;
  LmHooks hooks;
};
inline Prompts prompts(ConditionedLanguageModel& model, const Batch& batch, const PromptConfig& config,
                       const std::vector<std::string>& texts) {
  const int64_t b = batch.size();
  if (static_cast<int64_t>(texts.size()) != b) {
    throw Error("lm_protocols::prompts: " + std::to_string(texts.size()) + " texts for a batch of " + std::to_string(b));
  }
  const auto device = device_of(batch);
  Prompts out;
  at::Tensor prefix;  // [B, K, D] or undefined
  if (config.condition == Condition::kInput) {
    Conditioning c = model.condition(batch);
    out.hooks = std::move(c.hooks);
    if (c.prefix.defined() && c.prefix.size(1) > 0) prefix = c.prefix;
  }
  at::Tensor y;
  if (config.condition == Condition::kClassName) y = batch.targets.at(config.task).to(at::kCPU);
  // Each distinct text is embedded once (a batch repeats a handful).
  std::map<std::string, at::Tensor> embedded;
  std::vector<at::Tensor> bodies;
  int64_t longest = 0, shortest = -1;
  for (int64_t r = 0; r < b; ++r) {
    std::string text = texts[static_cast<size_t>(r)];
    if (y.defined()) text = fill_template(config.class_text, model.class_names().at(static_cast<size_t>(y[r].item<int64_t>()))) + text;
    auto it = embedded.find(text);
    if (it == embedded.end()) it = embedded.emplace(text, embed_text(model, text, true, device).squeeze(0)).first;
    bodies.push_back(it->second);
    longest = std::max(longest, it->second.size(0));
    shortest = shortest < 0 ? it->second.size(0) : std::min(shortest, it->second.size(0));
  }
  const int64_t k = prefix.defined() ? prefix.size(1) : 0;
  if (b == 0 || shortest == longest) {  // one length: no padding
    at::Tensor body = b == 0 ? at::zeros({0, 0, model.language_model().width()}, at::TensorOptions().device(device)) : at::stack(bodies);
    out.embeds = k > 0 ? at::cat({prefix, body}, 1) : body;
    out.mask = at::ones({b, out.embeds.size(1)}, at::TensorOptions().dtype(at::kBool).device(device));
    return out;
  }
  out.embeds = at::zeros({b, k + longest, model.language_model().width()}, bodies.front().options());
  out.mask = at::zeros({b, k + longest}, at::TensorOptions().dtype(at::kBool).device(device));
  for (int64_t r = 0; r < b; ++r) {
    const at::Tensor& body = bodies[static_cast<size_t>(r)];
    const int64_t n = body.size(0), start = longest - n;
    if (k > 0) out.embeds[r].narrow(0, start, k).copy_(prefix[r]);
    out.embeds[r].narrow(0, start + k, n).copy_(body);
    out.mask[r].narrow(0, start, k + n).fill_(true);
  }
  return out;
}

/// The same, every row with the same text.
inline Prompts prompts(ConditionedLanguageModel& model, const Batch& batch, const PromptConfig& config, const std::string& text) {
  return prompts(model, batch, config, std::vector<std::string>(static_cast<size_t>(batch.size()), text));
}

/// Greedy (or beam) continuations of each row's prompt (`texts[r]`, under `config.condition`),
/// all rows in one call. Rows whose prompts cannot differ share one generation: blind, the rows
/// with the same text; with the class name as text, the rows of a class with the same text.
/// Decoding is deterministic, so this changes no result; on a 10,000-image test split it turns
/// thousands of identical generations into a few.
inline std::vector<std::vector<int64_t>> generate_rows(ConditionedLanguageModel& model, const Batch& batch,
                                                       const PromptConfig& config, const std::vector<std::string>& texts,
                                                       const GenerateOptions& options) {
  const int64_t b = batch.size();
  if (config.condition == Condition::kInput || b <= 1) {
    const Prompts p = prompts(model, batch, config, texts);
    return generate(model.language_model(), p.embeds, p.mask, options, p.hooks);
  }
  at::Tensor y;
  if (config.condition == Condition::kClassName) y = batch.targets.at(config.task).to(at::kCPU);
  std::map<std::pair<int64_t, std::string>, size_t> slot;  // prompt key (class or 0 blind, text) → its generation
  std::vector<int64_t> representatives;
  std::vector<std::string> their_texts;
  std::vector<size_t> of_row(static_cast<size_t>(b));
  for (int64_t r = 0; r < b; ++r) {
    const std::string& text = texts.at(static_cast<size_t>(r));
    const auto [it, fresh] = slot.emplace(std::make_pair(y.defined() ? y[r].item<int64_t>() : 0, text), representatives.size());
    if (fresh) {
      representatives.push_back(r);
      their_texts.push_back(text);
    }
    of_row[static_cast<size_t>(r)] = it->second;
  }
  const Prompts p = prompts(model, batch.select(at::tensor(representatives, at::kLong)), config, their_texts);
  const auto once = generate(model.language_model(), p.embeds, p.mask, options, p.hooks);
  std::vector<std::vector<int64_t>> out;
  out.reserve(static_cast<size_t>(b));
  for (const size_t i : of_row) out.push_back(once[i]);
  return out;
}

/// The same, every row with the same text.
inline std::vector<std::vector<int64_t>> generate_rows(ConditionedLanguageModel& model, const Batch& batch,
                                                       const PromptConfig& config, const std::string& text,
                                                       const GenerateOptions& options) {
  return generate_rows(model, batch, config, std::vector<std::string>(static_cast<size_t>(batch.size()), text), options);
}

}  // namespace modalkit::lm_protocols
