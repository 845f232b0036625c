// The SDK's language model: the interface, the project's causal Transformer, its artifact file,
// a TorchScript adapter, generation (greedy, beam) and continuation scoring.
#include "modalkit/language_model.hpp"

#include <algorithm>
#include <cmath>
#include <limits>
#include <typeinfo>

#include <ATen/ATen.h>
#include <torch/nn/init.h>
#include <torch/script.h>
#include <torch/serialize/archive.h>
#include <torch/utils.h>

#include "modalkit/errors.hpp"
#include "modalkit/tokenizer.hpp"

namespace modalkit {

LanguageModel::~LanguageModel() = default;
ConditionedLanguageModel::~ConditionedLanguageModel() = default;

namespace {

constexpr const char* kConfigKey = "modalkit_language_model";

at::Tensor check_tokens(const at::Tensor& t, const char* what) {
  if (!t.defined() || t.dim() != 3) throw Error(std::string("language model: ") + what + " must be [B, T, D]");
  return t;
}

/// `[B, L, D]` → `[B, H, L, D/H]`.
at::Tensor split_heads(const at::Tensor& y, int64_t heads) {
  return y.reshape({y.size(0), y.size(1), heads, y.size(2) / heads}).transpose(1, 2);
}

Error context_error(int64_t positions, int64_t context) {
  return Error("language model: a sequence of " + std::to_string(positions) + " positions is longer than its context of " +
               std::to_string(context));
}

}  // namespace

LmBlockImpl::LmBlockImpl(const CausalTransformerLMOptions& o) : heads_(o.heads()) {
  const int64_t d = o.width();
  norm1_ = register_module("norm1", torch::nn::LayerNorm(torch::nn::LayerNormOptions({d})));
  qkv_ = register_module("qkv", torch::nn::Linear(d, 3 * d));
  out_ = register_module("out", torch::nn::Linear(d, d));
  norm2_ = register_module("norm2", torch::nn::LayerNorm(torch::nn::LayerNormOptions({d})));
  fc1_ = register_module("fc1", torch::nn::Linear(d, o.mlp_ratio() * d));
  fc2_ = register_module("fc2", torch::nn::Linear(o.mlp_ratio() * d, d));
  dropout_ = register_module("dropout", torch::nn::Dropout(o.dropout()));
  // GPT-2's initialisation: N(0, 0.02) weights, zero biases, and the two projections that write
  // into the residual stream scaled by 1/sqrt(2 layers) so its variance does not grow with depth.
  const double residual_std = 0.02 / std::sqrt(2.0 * static_cast<double>(std::max<int64_t>(o.layers(), 1)));
  torch::NoGradGuard no_grad;
  for (auto* l : {&qkv_, &out_, &fc1_, &fc2_}) {
    (*l)->weight.normal_(0, (l == &out_ || l == &fc2_) ? residual_std : 0.02);
    (*l)->bias.zero_();
  }
}

at::Tensor LmBlockImpl::forward(const at::Tensor& x, const at::Tensor& allowed, const at::Tensor& extra_keys,
                                const at::Tensor& extra_values) {
  at::Tensor keys, values;
  if (extra_keys.defined()) {
    keys = split_heads(extra_keys, heads_).expand({x.size(0), -1, -1, -1});
    values = split_heads(extra_values, heads_).expand({x.size(0), -1, -1, -1});
  }
  return attend(x, allowed, keys, values);
}

at::Tensor LmBlockImpl::attend(const at::Tensor& x, const at::Tensor& allowed, at::Tensor& keys, at::Tensor& values) {
  const int64_t b = x.size(0), t = x.size(1), d = x.size(2), dh = d / heads_;
  const auto qkv = qkv_->forward(norm1_->forward(x)).chunk(3, -1);
  const at::Tensor q = split_heads(qkv[0], heads_);
  keys = keys.defined() ? at::cat({keys, split_heads(qkv[1], heads_)}, 2) : split_heads(qkv[1], heads_);
  values = values.defined() ? at::cat({values, split_heads(qkv[2], heads_)}, 2) : split_heads(qkv[2], heads_);
  at::Tensor scores = at::matmul(q, keys.transpose(-2, -1)) / std::sqrt(static_cast<double>(dh));
  scores = scores.masked_fill(allowed.logical_not(), -std::numeric_limits<float>::infinity());
  const at::Tensor attention = dropout_->forward(at::softmax(scores, -1));
  const at::Tensor y = at::matmul(attention, values).transpose(1, 2).reshape({b, t, d});
  at::Tensor h = x + dropout_->forward(out_->forward(y));
  return h + dropout_->forward(fc2_->forward(at::gelu(fc1_->forward(norm2_->forward(h)))));
}

CausalTransformerLM::CausalTransformerLM(const CausalTransformerLMOptions& o, nlohmann::json provenance)
    : options_(o), provenance_(std::move(provenance)) {
  if (o.vocab_size() < 1 || o.width() < 1 || o.layers() < 0 || o.context() < 1) {
    throw Error("language model: vocab_size, width and context must be >= 1 and layers >= 0");
  }
  if (o.heads() < 1 || o.width() % o.heads() != 0) {
    throw Error("language model: width " + std::to_string(o.width()) + " is not divisible by heads " + std::to_string(o.heads()));
  }
  tokens_ = register_module("tokens", torch::nn::Embedding(o.vocab_size(), o.width()));
  positions_ = register_module("positions", torch::nn::Embedding(o.context(), o.width()));
  blocks_ = register_module("blocks", torch::nn::ModuleList());
  for (int64_t l = 0; l < o.layers(); ++l) blocks_->push_back(LmBlock(o));
  norm_ = register_module("norm", torch::nn::LayerNorm(torch::nn::LayerNormOptions({o.width()})));
  dropout_ = register_module("dropout", torch::nn::Dropout(o.dropout()));
  torch::NoGradGuard no_grad;
  tokens_->weight.normal_(0, 0.02);
  positions_->weight.normal_(0, 0.02);
}

at::Tensor CausalTransformerLM::embed(const at::Tensor& ids) { return tokens_->forward(ids); }

at::Tensor CausalTransformerLM::forward(const at::Tensor& embeds, const at::Tensor& mask, const LmHooks& hooks) {
  check_tokens(embeds, "embeds");
  const at::Tensor real = mask.defined() ? mask.to(at::kBool) : at::ones({embeds.size(0), embeds.size(1)}, embeds.options().dtype(at::kBool));
  std::vector<at::Tensor> keys, values;
  return logits(hidden(embeds, real, hooks, keys, values));
}

at::Tensor CausalTransformerLM::logits(const at::Tensor& hidden) { return at::matmul(norm_->forward(hidden), tokens_->weight.t()); }

at::Tensor CausalTransformerLM::hidden(const at::Tensor& embeds, const at::Tensor& real, const LmHooks& hooks,
                                      std::vector<at::Tensor>& keys, std::vector<at::Tensor>& values) {
  const int64_t b = embeds.size(0), t = embeds.size(1), d = options_.width();
  if (embeds.size(2) != d) {
    throw Error("language model: embeddings are " + std::to_string(embeds.size(2)) + " wide, the model takes " + std::to_string(d));
  }
  // Positions count real tokens, so left and right padding give the same numbers.
  const at::Tensor positions = (real.to(at::kLong).cumsum(1) - 1).clamp_min(0);
  if (t > 0 && positions.max().item<int64_t>() >= options_.context()) {
    throw context_error(positions.max().item<int64_t>() + 1, options_.context());
  }
  const bool extra = !hooks.extra_keys.empty() || !hooks.extra_values.empty();
  if (extra && (static_cast<int64_t>(hooks.extra_keys.size()) != options_.layers() ||
                hooks.extra_values.size() != hooks.extra_keys.size())) {
    throw Error("language model: extra keys and values must be given for each of its " + std::to_string(options_.layers()) +
                " layers (got " + std::to_string(hooks.extra_keys.size()) + " and " + std::to_string(hooks.extra_values.size()) + ")");
  }
  if (hooks.shift && (hooks.shift_layer < 0 || hooks.shift_layer >= options_.layers())) {
    throw Error("language model: shift_layer " + std::to_string(hooks.shift_layer) + " is not one of its layers 0.." +
                std::to_string(options_.layers() - 1));
  }
  // Which keys each position sees: the real text up to itself (and always itself, so that a
  // padding position has a defined output), plus every real extra position.
  const at::Tensor causal = at::ones({t, t}, real.options()).tril();
  at::Tensor allowed = (causal.unsqueeze(0) & real.unsqueeze(1)) | at::eye(t, real.options()).unsqueeze(0);
  if (extra) {
    const at::Tensor& k0 = hooks.extra_keys.front();
    if (k0.dim() != 3 || k0.size(2) != d) throw Error("language model: extra keys must be [B, M, " + std::to_string(d) + "]");
    const int64_t m = k0.size(1);
    at::Tensor seen = hooks.extra_mask.defined() ? hooks.extra_mask.to(at::kBool).reshape({-1, 1, m}).expand({b, t, m})
                                                 : at::ones({b, t, m}, real.options());
    allowed = at::cat({seen, allowed.expand({b, t, t})}, 2);
  }
  allowed = allowed.unsqueeze(1);
  // Each block's attention starts from the extra keys and values and appends the text's.
  keys.assign(static_cast<size_t>(options_.layers()), at::Tensor());
  values.assign(keys.size(), at::Tensor());
  if (extra) {
    for (size_t i = 0; i < keys.size(); ++i) {
      keys[i] = split_heads(hooks.extra_keys[i], options_.heads()).expand({b, -1, -1, -1});
      values[i] = split_heads(hooks.extra_values[i], options_.heads()).expand({b, -1, -1, -1});
    }
  }
  at::Tensor x = dropout_->forward(embeds + positions_->forward(positions));
  for (int64_t l = 0; l < options_.layers(); ++l) {
    const auto i = static_cast<size_t>(l);
    x = blocks_->ptr<LmBlockImpl>(i)->attend(x, allowed, keys[i], values[i]);
    if (hooks.shift && l == hooks.shift_layer) x = hooks.shift(x);
  }
  return x;
}

nlohmann::json CausalTransformerLM::config() const {
  return {{"architecture", "causal_transformer"}, {"vocab_size", options_.vocab_size()}, {"width", options_.width()},
          {"layers", options_.layers()}, {"heads", options_.heads()}, {"context", options_.context()},
          {"dropout", options_.dropout()}, {"mlp_ratio", options_.mlp_ratio()}, {"provenance", provenance_}};
}

void save_language_model(CausalTransformerLM& lm, const std::filesystem::path& file) {
  torch::serialize::OutputArchive archive;
  lm.save(archive);
  archive.write(kConfigKey, c10::IValue(lm.config().dump()));
  try {
    archive.save_to(file.string());
  } catch (const c10::Error& e) {
    throw Error("language model: cannot write " + file.string() + ": " + e.what_without_backtrace());
  }
}

namespace {

/// A TorchScript language model a user brings: no hooks, so prefix tuning only.
class TorchScriptLanguageModel : public LanguageModel {
 public:
  TorchScriptLanguageModel(torch::jit::Module module, const std::filesystem::path& file) : module_(std::move(module)), file_(file) {
    for (const char* method : {"embed", "forward"}) {
      if (!module_.find_method(method)) throw Error("language model " + file.string() + ": the TorchScript module has no " + method + "() method");
    }
    auto attribute = [&](const char* name) {
      if (!module_.hasattr(name) || !module_.attr(name).isInt()) {
        throw Error("language model " + file.string() + ": the TorchScript module has no int attribute " + name);
      }
      return module_.attr(name).toInt();
    };
    vocab_ = attribute("vocab_size");
    width_ = attribute("width");
    context_ = attribute("context");
    // Registered here too, so that to(device), parameters() and freezing reach them.
    for (const auto& p : module_.named_parameters(/*recurse=*/true)) {
      std::string name = p.name;
      std::replace(name.begin(), name.end(), '.', '_');
      register_parameter(name, p.value);
    }
  }
  int64_t vocab_size() const override { return vocab_; }
  int64_t width() const override { return width_; }
  int64_t layers() const override { return 0; }
  int64_t context() const override { return context_; }
  bool supports_hooks() const override { return false; }
  at::Tensor embed(const at::Tensor& ids) override { return module_.get_method("embed")({ids}).toTensor(); }
  at::Tensor forward(const at::Tensor& embeds, const at::Tensor& mask, const LmHooks& hooks) override {
    if (!hooks.empty()) {
      throw Error("language model " + file_.string() +
                  " is a TorchScript module: it has no hooks, so it serves prefix tuning but not pseudo-self-attention or MAG");
    }
    check_tokens(embeds, "embeds");
    return module_.forward({embeds, mask.defined() ? mask.to(at::kBool) : at::ones({embeds.size(0), embeds.size(1)}, embeds.options().dtype(at::kBool))})
        .toTensor();
  }
  nlohmann::json config() const override {
    return {{"architecture", "torchscript"}, {"vocab_size", vocab_}, {"width", width_}, {"context", context_}, {"file", file_.string()}};
  }
  void train(bool on) override {
    LanguageModel::train(on);
    module_.train(on);
  }

 private:
  torch::jit::Module module_;
  std::filesystem::path file_;
  int64_t vocab_ = 0, width_ = 0, context_ = 0;
};

}  // namespace

std::shared_ptr<LanguageModel> load_language_model(const std::filesystem::path& file, const Tokenizer* tokenizer) {
  if (!std::filesystem::is_regular_file(file)) throw Error("language model: no file " + file.string());
  std::shared_ptr<LanguageModel> lm;
  try {
    torch::serialize::InputArchive archive;
    archive.load_from(file.string());
    c10::IValue config_value;
    if (archive.try_read(kConfigKey, config_value)) {
      const auto config = nlohmann::json::parse(config_value.toStringRef(), nullptr, /*allow_exceptions=*/false);
      if (!config.is_object() || config.value("architecture", "") != "causal_transformer") {
        throw Error("language model " + file.string() + ": its config is not a causal_transformer's");
      }
      auto native = std::make_shared<CausalTransformerLM>(
          CausalTransformerLMOptions(config.at("vocab_size"), config.at("width"), config.at("layers"), config.at("heads"), config.at("context"))
              .dropout(config.at("dropout"))
              .mlp_ratio(config.at("mlp_ratio")),
          config.value("provenance", nlohmann::json::object()));
      native->load(archive);
      lm = native;
    } else {
      lm = std::make_shared<TorchScriptLanguageModel>(torch::jit::load(file.string()), file);
    }
  } catch (const c10::Error& e) {
    throw Error("language model " + file.string() + " cannot be read (neither a modalkit language model nor TorchScript): " +
                e.what_without_backtrace());
  } catch (const nlohmann::json::exception& e) {
    throw Error("language model " + file.string() + ": malformed config: " + e.what());
  }
  if (tokenizer != nullptr) {
    if (lm->vocab_size() != tokenizer->pieces()) {
      throw Error("language model " + file.string() + " predicts " + std::to_string(lm->vocab_size()) + " pieces, but tokenizer " +
                  tokenizer->model().string() + " has " + std::to_string(tokenizer->pieces()));
    }
    const std::string trained_with = lm->config().value("provenance", nlohmann::json::object()).value("tokenizer_sha256", "");
    if (!trained_with.empty() && !tokenizer->sha256().empty() && trained_with != tokenizer->sha256()) {
      throw Error("language model " + file.string() + " was trained with tokenizer sha256 " + trained_with.substr(0, 16) +
                  "…, not with " + tokenizer->model().string() + " (sha256 " + tokenizer->sha256().substr(0, 16) + "…)");
    }
  }
  lm->eval();
  return lm;
}

namespace detail {

/// Decoding state over a batch of prompts: the next-piece logits of each row's last position,
/// extended one piece per row at a time.
class Decoder {
 public:
  virtual ~Decoder() = default;
  /// `[B, V]`.
  const at::Tensor& logits() const { return logits_; }
  /// Appends one real position per row, `embeds` `[B, 1, D]`, and updates logits().
  virtual void push(const at::Tensor& embeds) = 0;
  /// Keeps rows `rows` (int64 `[B']`, in that order, repeats allowed): beam search's reordering.
  /// Hooks are not re-indexed: after a select they must have batch 1.
  virtual void select(const at::Tensor& rows) = 0;

 protected:
  at::Tensor logits_;
};

}  // namespace detail

namespace {

/// Any LanguageModel: forward() over the whole sequence at every step.
class RecomputingDecoder : public detail::Decoder {
 public:
  RecomputingDecoder(LanguageModel& lm, const at::Tensor& embeds, const at::Tensor& real, const LmHooks& hooks)
      : lm_(lm), hooks_(hooks), x_(embeds), m_(real) {
    run();
  }
  void push(const at::Tensor& embeds) override {
    x_ = at::cat({x_, embeds}, 1);
    m_ = at::cat({m_, at::ones({m_.size(0), 1}, m_.options())}, 1);
    run();
  }
  void select(const at::Tensor& rows) override {
    x_ = x_.index_select(0, rows);
    m_ = m_.index_select(0, rows);
    logits_ = logits_.index_select(0, rows);
  }

 private:
  void run() { logits_ = lm_.forward(x_, m_, hooks_).select(1, -1); }
  LanguageModel& lm_;
  const LmHooks& hooks_;  // the decoder lives inside generate(), as the caller's hooks do
  at::Tensor x_, m_;
};

}  // namespace

namespace detail {

/// The project's model: each layer's keys and values (the hooks' extra ones first) are kept, so
/// a step runs the blocks over one new position per row and projects only it onto the vocabulary.
class CausalTransformerDecoder : public Decoder {
 public:
  CausalTransformerDecoder(CausalTransformerLM& lm, const at::Tensor& embeds, const at::Tensor& real, const LmHooks& hooks)
      : lm_(lm), hooks_(hooks) {
    const at::Tensor h = lm_.hidden(embeds, real, hooks_, keys_, values_);
    logits_ = lm_.logits(h.select(1, -1));
    // What a new position may attend to: the real extra positions and the real text.
    const int64_t b = embeds.size(0);
    seen_ = real;
    if (!hooks_.extra_keys.empty()) {
      const int64_t m = hooks_.extra_keys.front().size(1);
      const at::Tensor extra = hooks_.extra_mask.defined() ? hooks_.extra_mask.to(at::kBool).reshape({-1, m}).expand({b, m})
                                                           : at::ones({b, m}, real.options());
      seen_ = at::cat({extra, real}, 1);
    }
    next_ = real.to(at::kLong).sum(1, /*keepdim=*/true);  // [B, 1]: the next position of each row
  }

  void push(const at::Tensor& embeds) override {
    const int64_t b = embeds.size(0);
    if (b > 0 && next_.max().item<int64_t>() >= lm_.options_.context()) {
      throw context_error(next_.max().item<int64_t>() + 1, lm_.options_.context());
    }
    seen_ = at::cat({seen_, at::ones({b, 1}, seen_.options())}, 1);
    const at::Tensor allowed = seen_.view({b, 1, 1, seen_.size(1)});
    at::Tensor x = lm_.dropout_->forward(embeds + lm_.positions_->forward(next_));
    for (int64_t l = 0; l < lm_.options_.layers(); ++l) {
      const auto i = static_cast<size_t>(l);
      x = lm_.blocks_->ptr<LmBlockImpl>(i)->attend(x, allowed, keys_[i], values_[i]);
      if (hooks_.shift && l == hooks_.shift_layer) x = hooks_.shift(x);
    }
    logits_ = lm_.logits(x.select(1, 0));
    next_ = next_ + 1;
  }

  void select(const at::Tensor& rows) override {
    for (auto* cache : {&keys_, &values_}) {
      for (auto& t : *cache) t = t.index_select(0, rows);
    }
    seen_ = seen_.index_select(0, rows);
    next_ = next_.index_select(0, rows);
    logits_ = logits_.index_select(0, rows);
  }

 private:
  CausalTransformerLM& lm_;
  const LmHooks& hooks_;  // the decoder lives inside generate(), as the caller's hooks do
  std::vector<at::Tensor> keys_, values_;  // per layer [B, H, L, D/H]
  at::Tensor seen_;                        // [B, L] which cached positions a new one sees
  at::Tensor next_;                        // [B, 1]
};

}  // namespace detail

namespace {

std::unique_ptr<detail::Decoder> start_decoding(LanguageModel& lm, const at::Tensor& embeds, const at::Tensor& real,
                                                const LmHooks& hooks) {
  // Exactly the SDK's class: a subclass may override forward(), which the cache would bypass.
  if (typeid(lm) == typeid(CausalTransformerLM)) {
    return std::make_unique<detail::CausalTransformerDecoder>(static_cast<CausalTransformerLM&>(lm), embeds, real, hooks);
  }
  return std::make_unique<RecomputingDecoder>(lm, embeds, real, hooks);
}

}  // namespace

std::vector<std::vector<int64_t>> generate(LanguageModel& lm, const at::Tensor& embeds, const at::Tensor& mask,
                                           const GenerateOptions& options, const LmHooks& hooks) {
  check_tokens(embeds, "the prompt");
  torch::NoGradGuard no_grad;
  const int64_t b = embeds.size(0);
  const at::Tensor real = mask.defined() ? mask.to(at::kBool) : at::ones({b, embeds.size(1)}, embeds.options().dtype(at::kBool));
  if (embeds.size(1) < 1) throw Error("generate: the prompt is empty (a text-only prompt starts with the embedded BOS)");
  if (options.beams > 1 && b != 1) throw Error("generate: beam search takes one prompt at a time (got " + std::to_string(b) + ")");
  if (options.max_tokens < 1) return std::vector<std::vector<int64_t>>(static_cast<size_t>(options.beams <= 1 ? b : 1));
  const std::unique_ptr<detail::Decoder> decoder = start_decoding(lm, embeds, real, hooks);
  if (options.beams <= 1) {
    std::vector<std::vector<int64_t>> out(static_cast<size_t>(b));
    std::vector<bool> done(static_cast<size_t>(b), false);
    for (int64_t step = 0; step < options.max_tokens; ++step) {
      const at::Tensor next = decoder->logits().argmax(-1);  // [B]
      const at::Tensor ids = next.to(at::kCPU).contiguous();
      bool all_done = true;
      for (int64_t r = 0; r < b; ++r) {
        const auto i = static_cast<size_t>(r);
        if (done[i]) continue;
        const int64_t id = ids.data_ptr<int64_t>()[r];
        if (id == options.eos) {
          done[i] = true;
        } else {
          out[i].push_back(id);
        }
        all_done = all_done && done[i];
      }
      // No position past the last one needed: it would cost a step and could overrun the context.
      if (all_done || step + 1 == options.max_tokens) break;
      decoder->push(lm.embed(next.unsqueeze(1)));
    }
    return out;
  }
  struct Hypothesis {
    std::vector<int64_t> ids;
    double log_p;
  };
  auto normalised = [&](double log_p, size_t length) {
    return log_p / std::pow(static_cast<double>(std::max<size_t>(length, 1)), options.length_penalty);
  };
  std::vector<Hypothesis> alive{{{}, 0.0}};  // row r of the decoder continues alive[r]
  std::vector<std::pair<double, std::vector<int64_t>>> finished;
  for (int64_t step = 0; step < options.max_tokens && !alive.empty(); ++step) {
    std::vector<double> log_ps;
    for (const auto& h : alive) log_ps.push_back(h.log_p);
    const at::Tensor next = at::log_softmax(decoder->logits().to(at::kDouble), -1);  // [W, V]
    const int64_t v = next.size(1);
    const at::Tensor total = (next + at::tensor(log_ps, at::kDouble).to(next.device()).unsqueeze(1)).reshape({-1});
    const auto top = total.topk(std::min<int64_t>(2 * options.beams, total.numel()));
    const at::Tensor values = std::get<0>(top).to(at::kCPU), indices = std::get<1>(top).to(at::kCPU);
    // Of the 2 × beams best extensions, each EOS finishes its hypothesis (a complete, scored
    // sequence: keeping it can only find a likelier one) and the first `beams` others go on. A
    // hypothesis's length counts its pieces, EOS excluded, finished or not.
    std::vector<Hypothesis> next_alive;
    std::vector<int64_t> parents, tokens;
    for (int64_t k = 0; k < values.size(0); ++k) {
      const int64_t index = indices[k].item<int64_t>(), token = index % v;
      const Hypothesis& parent = alive[static_cast<size_t>(index / v)];
      const double log_p = values[k].item<double>();
      if (token == options.eos) {
        finished.emplace_back(normalised(log_p, parent.ids.size()), parent.ids);
      } else if (static_cast<int64_t>(next_alive.size()) < options.beams) {
        Hypothesis h{parent.ids, log_p};
        h.ids.push_back(token);
        next_alive.push_back(std::move(h));
        parents.push_back(index / v);
        tokens.push_back(token);
      }
    }
    alive = std::move(next_alive);
    // Done once `beams` have finished and no live hypothesis scores better than the beams-th of
    // them now (Hugging Face's early_stopping = false rule; exact without a length penalty,
    // where a log-probability can only fall).
    if (static_cast<int64_t>(finished.size()) >= options.beams && !alive.empty()) {
      std::vector<double> scores;
      for (const auto& f : finished) scores.push_back(f.first);
      std::sort(scores.rbegin(), scores.rend());
      const double worst = scores[static_cast<size_t>(options.beams - 1)];
      double best_alive = -std::numeric_limits<double>::infinity();
      for (const auto& h : alive) best_alive = std::max(best_alive, normalised(h.log_p, h.ids.size()));
      if (best_alive <= worst) {
        alive.clear();
        break;
      }
    }
    if (alive.empty() || step + 1 == options.max_tokens) break;
    decoder->select(at::tensor(parents, at::kLong).to(embeds.device()));
    decoder->push(lm.embed(at::tensor(tokens, at::kLong).to(embeds.device()).unsqueeze(1)));
  }
  for (const auto& h : alive) finished.emplace_back(normalised(h.log_p, h.ids.size()), h.ids);
  const auto best = std::max_element(finished.begin(), finished.end(),
                                     [](const auto& a, const auto& c) { return a.first < c.first; });
  return {best->second};
}

at::Tensor continuation_log_probs(LanguageModel& lm, const at::Tensor& embeds, const at::Tensor& mask, const at::Tensor& ids,
                                  const at::Tensor& ids_mask, const LmHooks& hooks) {
  check_tokens(embeds, "the prefix");
  const int64_t p = embeds.size(1), c = ids.size(1);
  if (p < 1) throw Error("continuation_log_probs: the prefix is empty (a text-only prompt starts with the embedded BOS)");
  if (ids.dim() != 2 || ids.size(0) != embeds.size(0) || c < 1) {
    throw Error("continuation_log_probs: ids must be [B, C ≥ 1] with the prefix's B");
  }
  const at::Tensor real_ids = ids_mask.defined() ? ids_mask.to(at::kBool) : at::ones_like(ids, ids.options().dtype(at::kBool));
  const at::Tensor real = mask.defined() ? mask.to(at::kBool) : at::ones({embeds.size(0), p}, real_ids.options());
  // The last id is only predicted, never read: the model sees P + C - 1 positions, so a window
  // of exactly its context can be scored.
  const at::Tensor inputs = ids.narrow(1, 0, c - 1);
  const at::Tensor logits =
      lm.forward(at::cat({embeds, lm.embed(inputs)}, 1), at::cat({real, real_ids.narrow(1, 0, c - 1)}, 1), hooks);
  // Position p - 1 + i predicts ids[:, i].
  const at::Tensor log_p = at::log_softmax(logits.narrow(1, p - 1, c), -1).gather(2, ids.unsqueeze(-1)).squeeze(-1);
  return log_p.masked_fill(real_ids.logical_not(), 0.0);
}

}  // namespace modalkit
