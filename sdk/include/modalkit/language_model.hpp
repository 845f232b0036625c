/// \file
/// Language models that other plugins reach inside: prefix tuning feeds them embeddings,
/// pseudo-self-attention adds keys and values to each layer, the multimodal adaptation gate
/// shifts the hidden states at one layer. The interface lives in the SDK, not in the text plugin,
/// because a plugin cannot link another plugin: the pretraining strategy, the transfer strategies
/// and the text modality all build the same model from the same artifact. Since SDK ABI 1.3.
#pragma once

#include <algorithm>
#include <cctype>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include <ATen/ATen.h>
#include <nlohmann/json.hpp>

#include "modalkit/batch.hpp"
#include "modalkit/tokenizer.hpp"
#include <torch/nn/module.h>
#include <torch/nn/modules/dropout.h>
#include <torch/nn/modules/embedding.h>
#include <torch/nn/modules/container/modulelist.h>
#include <torch/nn/modules/linear.h>
#include <torch/nn/modules/normalization.h>
#include <torch/nn/pimpl.h>

namespace modalkit {

namespace detail {
class CausalTransformerDecoder;  // generate()'s key-value cache (language_model.cpp)
}

/// What a method adds inside a language model's forward pass. Tensors whose batch size is 1
/// broadcast over the batch (generate() with beams relies on it).
struct LmHooks {
  /// Pseudo-self-attention (Ziegler et al. 2019): per layer, keys and values `[B, M, D]` that
  /// every text position attends to besides the text before it. Empty, or one per layer.
  std::vector<at::Tensor> extra_keys, extra_values;
  /// `[B, M]` bool, true where an extra position is real; undefined = all real.
  at::Tensor extra_mask;
  /// The multimodal adaptation gate (Rahman et al. 2020): after block `shift_layer` (0-based)
  /// the hidden states `[B, T, D]` are replaced by `shift(hidden)`. -1 = no shift. It must act
  /// on each position alone and take any T: generate() calls it on one new position at a time.
  int64_t shift_layer = -1;
  std::function<at::Tensor(const at::Tensor& hidden)> shift;

  /// True when nothing is added.
  bool empty() const { return extra_keys.empty() && extra_values.empty() && !shift; }
};

/// A causal language model over a tokenizer's pieces.
class LanguageModel : public torch::nn::Module {
 public:
  ~LanguageModel() override;
  /// Pieces it predicts (the tokenizer's).
  virtual int64_t vocab_size() const = 0;
  /// Width of its embeddings (what a prefix encoder must emit).
  virtual int64_t width() const = 0;
  /// Transformer blocks (what per-layer hooks count); 0 when not known (TorchScript).
  virtual int64_t layers() const = 0;
  /// Longest sequence it takes (positions).
  virtual int64_t context() const = 0;
  /// Whether forward() honours LmHooks. A model without hooks serves prefix tuning only.
  virtual bool supports_hooks() const = 0;
  /// Token ids `[B, T]` (int64) → embeddings `[B, T, D]`.
  virtual at::Tensor embed(const at::Tensor& ids) = 0;
  /// Embeddings `[B, T, D]` with `mask` `[B, T]` (true at real positions; padding may be on
  /// either side: positions count real tokens only) → next-piece logits `[B, T, V]`; position t
  /// sees positions ≤ t. Throws Error when `hooks` are given to a model without hook support.
  virtual at::Tensor forward(const at::Tensor& embeds, const at::Tensor& mask, const LmHooks& hooks) = 0;
  /// Its architecture and provenance, as stored in its artifact.
  virtual nlohmann::json config() const = 0;
};

/// `tmpl` with its first "{}" replaced by `value` (caption and prompt templates). Inline.
inline std::string fill_template(const std::string& tmpl, const std::string& value) {
  const auto at = tmpl.find("{}");
  return at == std::string::npos ? tmpl : tmpl.substr(0, at) + value + tmpl.substr(at + 2);
}

/// Piece ids of `texts` (each followed by EOS when the tokenizer has one), right-padded with 0:
/// `ids` `[N, C]` and `mask` `[N, C]`.
struct TokenRows {
  at::Tensor ids, mask;
};
inline TokenRows encode_rows(const Tokenizer& tokenizer, const std::vector<std::string>& texts, bool eos = true) {
  std::vector<std::vector<int64_t>> rows;
  size_t width = 1;
  for (const auto& t : texts) {
    rows.push_back(tokenizer.encode(t));
    if (eos && tokenizer.eos() >= 0) rows.back().push_back(tokenizer.eos());
    width = std::max(width, rows.back().size());
  }
  TokenRows out{at::zeros({static_cast<int64_t>(rows.size()), static_cast<int64_t>(width)}, at::kLong),
                at::zeros({static_cast<int64_t>(rows.size()), static_cast<int64_t>(width)}, at::kBool)};
  for (size_t r = 0; r < rows.size(); ++r) {
    for (size_t c = 0; c < rows[r].size(); ++c) {
      out.ids[static_cast<int64_t>(r)][static_cast<int64_t>(c)] = rows[r][c];
      out.mask[static_cast<int64_t>(r)][static_cast<int64_t>(c)] = true;
    }
  }
  return out;
}

/// How a model conditions a language model on a batch: embeddings placed before the text
/// (prefix tuning) and hooks inside the model (representation tuning); either may be empty.
struct Conditioning {
  /// `[B, K, D]` prefix embeddings (K = 0: none).
  at::Tensor prefix;
  /// Hooks for every forward pass over these rows.
  LmHooks hooks;
};

/// Lower-cased words of `text` (runs of letters, digits, '-' and '/'): what captions are compared by.
inline std::vector<std::string> caption_words(const std::string& text) {
  std::vector<std::string> out;
  std::string w;
  for (const char ch : text + " ") {
    const auto c = static_cast<unsigned char>(ch);
    if (std::isalnum(c) != 0 || c == '-' || c == '/') {
      w += static_cast<char>(std::tolower(c));
    } else if (!w.empty()) {
      out.push_back(w);
      w.clear();
    }
  }
  return out;
}

/// The class whose name `text` mentions as whole words; the longest name wins ("ankle boot"
/// over "boot"); -1 when none is mentioned. A generated caption is right when this is its
/// sample's class (Frozen's 0-shot captioning, scored by the class it names).
inline int64_t mentioned_class(const std::string& text, const std::vector<std::string>& names) {
  const auto words = caption_words(text);
  int64_t best = -1;
  size_t best_len = 0;
  for (size_t k = 0; k < names.size(); ++k) {
    const auto name = caption_words(names[k]);
    if (name.empty() || name.size() > words.size()) continue;
    for (size_t i = 0; i + name.size() <= words.size(); ++i) {
      if (std::equal(name.begin(), name.end(), words.begin() + static_cast<std::ptrdiff_t>(i)) && name.size() > best_len) {
        best = static_cast<int64_t>(k);
        best_len = name.size();
      }
    }
  }
  return best;
}

/// Generated ids as the output of a generation task: `[N, T]` int64, each row's ids then -1
/// (T = the longest row, at least 1). What TransferStrategy::predict returns for such a task.
inline at::Tensor pad_generated(const std::vector<std::vector<int64_t>>& rows) {
  size_t longest = 1;
  for (const auto& r : rows) longest = std::max(longest, r.size());
  at::Tensor out = at::full({static_cast<int64_t>(rows.size()), static_cast<int64_t>(longest)}, -1, at::kLong);
  auto a = out.accessor<int64_t, 2>();
  for (size_t i = 0; i < rows.size(); ++i) {
    for (size_t j = 0; j < rows[i].size(); ++j) a[static_cast<int64_t>(i)][static_cast<int64_t>(j)] = rows[i][j];
  }
  return out;
}

/// The ids of row `row` of a generation task's output (pad_generated's inverse for that row).
inline std::vector<int64_t> generated_row(const at::Tensor& ids, int64_t row) {
  const at::Tensor r = ids[row].to(at::kCPU).to(at::kLong).contiguous();
  std::vector<int64_t> out;
  for (int64_t j = 0; j < r.size(0) && r.data_ptr<int64_t>()[j] >= 0; ++j) out.push_back(r.data_ptr<int64_t>()[j]);
  return out;
}

/// A transfer strategy that conditions a language model on another modality (prefix tuning,
/// pseudo-self-attention, the adaptation gate): what evaluation protocols caption, question and
/// prompt it through. Strategies implement it beside TransferStrategy; protocols find it with
/// dynamic_cast.
class ConditionedLanguageModel {
 public:
  virtual ~ConditionedLanguageModel();
  /// The language model (frozen or fine-tuned).
  virtual LanguageModel& language_model() = 0;
  /// The tokenizer its vocabulary belongs to.
  virtual const Tokenizer& tokenizer() const = 0;
  /// The conditioning of each row of `batch` (its conditioning modality must be present).
  virtual Conditioning condition(const Batch& batch) = 0;
  /// Whether several conditionings can be interleaved with text in one sequence (prefixes can;
  /// hooks condition the whole sequence on one input, so few-shot episodes are not defined).
  virtual bool interleavable() const = 0;
  /// The name captions use for each class, in label order.
  virtual const std::vector<std::string>& class_names() const = 0;
  /// The caption of class `label` it was trained to produce ("this is a sandal.").
  virtual std::string caption(int64_t label) const = 0;
};

/// Options of CausalTransformerLM.
struct CausalTransformerLMOptions {
  /// `layers` blocks of width `width` with `heads` heads over `vocab_size` pieces and
  /// `context` positions.
  CausalTransformerLMOptions(int64_t vocab_size, int64_t width, int64_t layers, int64_t heads, int64_t context)
      : vocab_size_(vocab_size), width_(width), layers_(layers), heads_(heads), context_(context) {}
  TORCH_ARG(int64_t, vocab_size);
  TORCH_ARG(int64_t, width);
  TORCH_ARG(int64_t, layers);
  TORCH_ARG(int64_t, heads);    ///< must divide width
  TORCH_ARG(int64_t, context);
  TORCH_ARG(double, dropout) = 0.1;
  TORCH_ARG(int64_t, mlp_ratio) = 4;
};

/// One pre-LayerNorm block: causal self-attention (which may take extra keys and values), then
/// a GELU MLP, each in a residual branch.
class LmBlockImpl : public torch::nn::Module {
 public:
  /// Builds the block.
  explicit LmBlockImpl(const CausalTransformerLMOptions& options);
  /// `x` `[B, T, D]`; `allowed` `[B, 1, T, M + T]` bool (which keys each position sees);
  /// `extra_keys`/`extra_values` `[B or 1, M, D]` or undefined.
  at::Tensor forward(const at::Tensor& x, const at::Tensor& allowed, const at::Tensor& extra_keys,
                     const at::Tensor& extra_values);

 private:
  friend class CausalTransformerLM;
  friend class detail::CausalTransformerDecoder;
  /// forward() with the keys and values before `x` given per head, `keys`/`values`
  /// `[B, H, L, D/H]` (extra ones, then earlier positions; undefined = none), with `allowed`
  /// `[B, 1, T, L + T]`; on return they also hold x's, which is generate()'s cache.
  at::Tensor attend(const at::Tensor& x, const at::Tensor& allowed, at::Tensor& keys, at::Tensor& values);

  int64_t heads_;
  torch::nn::LayerNorm norm1_{nullptr}, norm2_{nullptr};
  torch::nn::Linear qkv_{nullptr}, out_{nullptr}, fc1_{nullptr}, fc2_{nullptr};
  torch::nn::Dropout dropout_{nullptr};
};
TORCH_MODULE(LmBlock);

/// The project's language model: a GPT-2-style decoder (learned positions, pre-LayerNorm
/// blocks, output layer tied to the piece embeddings). Supports every hook.
class CausalTransformerLM : public LanguageModel {
 public:
  /// Builds a freshly initialised model (GPT-2's N(0, 0.02) embeddings).
  explicit CausalTransformerLM(const CausalTransformerLMOptions& options, nlohmann::json provenance = nlohmann::json::object());
  int64_t vocab_size() const override { return options_.vocab_size(); }
  int64_t width() const override { return options_.width(); }
  int64_t layers() const override { return options_.layers(); }
  int64_t context() const override { return options_.context(); }
  bool supports_hooks() const override { return true; }
  at::Tensor embed(const at::Tensor& ids) override;
  at::Tensor forward(const at::Tensor& embeds, const at::Tensor& mask, const LmHooks& hooks) override;
  nlohmann::json config() const override;
  /// The options it was built with.
  const CausalTransformerLMOptions& options() const { return options_; }

 private:
  // generate()'s incremental decoder (in language_model.cpp) runs the blocks one position at a time.
  friend class detail::CausalTransformerDecoder;
  /// forward() up to the last block's hidden states `[B, T, D]`; `keys`/`values` (empty on
  /// entry) receive each layer's keys and values per head, the extra ones first.
  at::Tensor hidden(const at::Tensor& embeds, const at::Tensor& real, const LmHooks& hooks, std::vector<at::Tensor>& keys,
                    std::vector<at::Tensor>& values);
  /// Next-piece logits of hidden states `[..., D]` (final LayerNorm, tied output layer).
  at::Tensor logits(const at::Tensor& hidden);

  CausalTransformerLMOptions options_;
  nlohmann::json provenance_;
  torch::nn::Embedding tokens_{nullptr}, positions_{nullptr};
  torch::nn::ModuleList blocks_{nullptr};
  torch::nn::LayerNorm norm_{nullptr};
  torch::nn::Dropout dropout_{nullptr};
};

/// Writes `lm` as a `language_model` artifact file: its weights and config() (architecture,
/// `provenance`: the tokenizer's sha256, the corpus, the run) in one LibTorch archive.
void save_language_model(CausalTransformerLM& lm, const std::filesystem::path& file);

/// Loads a language model artifact: one written by save_language_model, or a TorchScript module
/// a user brings, with methods `embed(ids) -> Tensor` and `forward(embeds, mask) -> Tensor`
/// (logits) and int attributes `vocab_size`, `width` and `context`; such a model has no hooks.
/// When `tokenizer` is given, the model's vocabulary must have its size and, when both record
/// one, the model must have been trained on the same tokenizer (sha256). Throws Error naming the
/// file and what differs. The model is returned in evaluation mode.
std::shared_ptr<LanguageModel> load_language_model(const std::filesystem::path& file, const Tokenizer* tokenizer = nullptr);

/// Options of generate().
struct GenerateOptions {
  int64_t max_tokens = 16;     ///< pieces generated at most per row
  int64_t beams = 1;           ///< 1 = greedy; more = beam search (then one row at a time)
  int64_t eos = -1;            ///< a row ends when it emits this id (not returned); -1 = never
  double length_penalty = 1.0; ///< beam scores are log p / length^length_penalty
};

/// Continues each row of `embeds` `[B, P, D]` (`mask` `[B, P]`: short rows padded on the left, so
/// every row ends at the last position) with up to max_tokens pieces, without gradients. Greedy
/// decoding runs the batch at once; beam search needs B == 1 (hooks then have batch 1 and
/// broadcast over the beams). Returns the ids per row, EOS excluded. For a CausalTransformerLM
/// each layer's keys and values are kept, so a step runs one new position per row; any other
/// LanguageModel (TorchScript) runs forward() over the whole sequence at every step.
std::vector<std::vector<int64_t>> generate(LanguageModel& lm, const at::Tensor& embeds, const at::Tensor& mask,
                                           const GenerateOptions& options, const LmHooks& hooks = {});

/// log p(ids[b, c] | everything before it) `[B, C]` for a continuation `ids` `[B, C]` after the
/// prefix `embeds` `[B, P, D]` (P ≥ 1; a text-only prompt is at least the embedded BOS); 0 where
/// `ids_mask` is false (right padding). Differentiable: the negative mean over real ids is the
/// language-modelling loss, the sum per row ranks candidate continuations.
at::Tensor continuation_log_probs(LanguageModel& lm, const at::Tensor& embeds, const at::Tensor& mask,
                                  const at::Tensor& ids, const at::Tensor& ids_mask, const LmHooks& hooks = {});

}  // namespace modalkit
