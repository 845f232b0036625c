// Plumbing shared by the strategies that transfer into a language model (prefix tuning,
// representation tuning): the language model and tokenizer from the pipeline's artifacts, frozen
// or fine-tuned; one encoder for the conditioning modality; class captions from a template; the
// captioning loss; predictions by ranking the class captions; parameter groups. A strategy adds
// only how it conditions the model: build_conditioner() and condition().
//
// Header-only: each strategy plugin compiles it in; it adds no SDK symbol.
#pragma once

#include <algorithm>
#include <string>
#include <vector>

#include <ATen/ATen.h>

#include "modalkit/context.hpp"
#include "modalkit/errors.hpp"
#include "modalkit/language_model.hpp"
#include "modalkit/layers.hpp"
#include "modalkit/strategy.hpp"
#include "modalkit/tokenizer.hpp"

namespace modalkit::frozen_lm {

/// The base of a strategy that trains a model to caption its modality through a language model.
/// Config keys it reads (each manifest declares them): modality, task, caption_template,
/// caption_tokens, class_names, freeze_lm, lm_lr.
class CaptioningStrategy : public TransferStrategy, public ConditionedLanguageModel {
 public:
  explicit CaptioningStrategy(const CreateArgs& args)
      : context_(args.context),
        pointer_(args.config.pointer()),
        modality_(args.config.get_or<std::string>("modality", args.modalities.empty() ? "" : args.modalities.front())),
        task_(args.config.get_or<std::string>("task", "")),
        template_(args.config.get<std::string>("caption_template")),
        caption_tokens_(args.config.get<int64_t>("caption_tokens")),
        names_(args.config.get_or<std::vector<std::string>>("class_names", {})),
        freeze_lm_(args.config.get<bool>("freeze_lm")),
        lm_lr_(args.config.get<double>("lm_lr")) {
    if (std::find(args.modalities.begin(), args.modalities.end(), modality_) == args.modalities.end()) {
      throw ConfigError(pointer_ + "/modality", "\"" + modality_ + "\" is not one of the pipeline's modalities");
    }
    if (template_.find("{}") == std::string::npos) {
      throw ConfigError(pointer_ + "/caption_template", "must contain {} where the class name goes (e.g. \"this is a {}.\")");
    }
    if (context_ != nullptr) {
      // Said now, not after the data has loaded: both artifacts are needed.
      for (const char* name : {"tokenizer", "language_model"}) {
        try {
          context_->artifact_path(name);
        } catch (const Error& e) {
          throw ConfigError(pointer_, std::string("needs the ") + name + " artifact: " + e.what());
        }
      }
    }
  }

  void build(const ModelParts& parts) override {
    // The captioned task: the configured one, else the only generation task, else the only
    // multiclass task.
    std::vector<std::string> generation, multiclass;
    for (const auto& [name, spec] : parts.tasks) {
      if (spec.type == TaskType::kGeneration) generation.push_back(name);
      if (spec.type == TaskType::kMulticlass) multiclass.push_back(name);
    }
    if (task_.empty()) {
      const auto& candidates = generation.size() == 1 ? generation : multiclass;
      if (candidates.size() != 1) {
        throw ConfigError(pointer_ + "/task", "the pipeline has " + std::to_string(generation.size()) + " generation and " +
                                                  std::to_string(multiclass.size()) +
                                                  " multiclass tasks; name the one whose classes are captioned");
      }
      task_ = candidates.front();
    } else if (!parts.tasks.count(task_) || (parts.tasks.at(task_).type != TaskType::kGeneration &&
                                             parts.tasks.at(task_).type != TaskType::kMulticlass)) {
      throw ConfigError(pointer_ + "/task", "\"" + task_ + "\" is not a generation or multiclass task of the pipeline");
    }
    const TaskSpec& spec = parts.tasks.at(task_);
    // Every task is predicted from the same captions, so it must be over the same classes.
    for (const auto& [name, other] : parts.tasks) {
      if (other.labels != spec.labels) {
        throw ConfigError(pointer_ + "/task", "task " + name + " is not over the classes of the captioned task " + task_ +
                                                  " (" + plugin_name() + " predicts every task from the class captions)");
      }
      (other.type == TaskType::kGeneration ? generated_tasks_ : ranked_tasks_).push_back(name);
    }
    if (names_.empty()) names_ = spec.labels;
    if (names_.size() != spec.labels.size()) {
      throw ConfigError(pointer_ + "/class_names", "has " + std::to_string(names_.size()) + " names for the " +
                                                       std::to_string(spec.labels.size()) + " classes of task " + task_);
    }
    // The language model, checked against the tokenizer (vocabulary size and sha256).
    tokenizer_ = std::make_unique<Tokenizer>(context_->artifact_path("tokenizer"));
    lm_ = load_language_model(context_->artifact_path("language_model"), tokenizer_.get());
    lm_->to(context_->device());
    if (freeze_lm_) {
      // Not registered: a frozen model is read from its artifact by every run, never saved in
      // checkpoints, and stays in evaluation mode (no dropout) while the conditioner trains.
      for (auto& p : lm_->parameters()) p.set_requires_grad(false);
    } else {
      register_module("lm", lm_);
    }
    // The conditioning modality's encoder, under the checkpoint names every strategy uses.
    auto encoders = register_module("encoders", std::make_shared<torch::nn::Module>("Encoders"));
    encoder_ = parts.encoders.at(modality_);
    encoders->register_module(modality_, encoder_.module());
    std::vector<std::string> captions;
    for (const auto& n : names_) captions.push_back(fill_template(template_, n));
    const TokenRows rows = encode_rows(*tokenizer_, captions);
    captions_ = rows.ids.to(context_->device());
    caption_mask_ = rows.mask.to(context_->device());
    bos_ = at::full({1, 1}, std::max<int64_t>(tokenizer_->bos(), 0), at::kLong).to(context_->device());
    build_conditioner(parts.d_model, *lm_);
  }

  /// The captioning loss: mean negative log-likelihood per caption piece (EOS included).
  LossTerms loss(const Batch& batch) override {
    const Conditioning c = condition(batch);
    const at::Tensor y = batch.targets.at(task_);
    const at::Tensor ids = captions_.index_select(0, y), mask = caption_mask_.index_select(0, y);
    const at::Tensor lp = continuation_log_probs(*lm_, prompt(c, y.size(0)), {}, ids, mask, c.hooks);
    return {{"caption", -lp.sum() / mask.sum()}};
  }

  /// Multiclass tasks: scores per class, the log-likelihood of each class's caption (ranking,
  /// as a classifier). Generation tasks: the caption generated greedily (pad_generated ids).
  Predictions predict(const Batch& batch) override {
    const Conditioning c = condition(batch);
    const int64_t b = batch.size();
    const at::Tensor prefix = prompt(c, b);
    Predictions out;
    if (!ranked_tasks_.empty()) {
      std::vector<at::Tensor> scores;
      for (int64_t k = 0; k < captions_.size(0); ++k) {
        const at::Tensor ids = captions_[k].unsqueeze(0).expand({b, -1}), mask = caption_mask_[k].unsqueeze(0).expand({b, -1});
        scores.push_back(continuation_log_probs(*lm_, prefix, {}, ids, mask, c.hooks).sum(1));
      }
      const at::Tensor ranked = at::stack(scores, 1);
      for (const auto& task : ranked_tasks_) out[task] = ranked;
    }
    if (!generated_tasks_.empty()) {
      GenerateOptions options;
      options.max_tokens = caption_tokens_;
      options.eos = tokenizer_->eos();
      const at::Tensor ids = pad_generated(generate(*lm_, prefix, {}, options, c.hooks));
      for (const auto& task : generated_tasks_) out[task] = ids;
    }
    return out;
  }

  std::vector<ParameterGroup> parameter_groups() override {
    std::vector<at::Tensor> own, lm;
    for (const auto& item : named_parameters(/*recurse=*/true)) {
      (item.key().rfind("lm.", 0) == 0 ? lm : own).push_back(item.value());
    }
    std::vector<ParameterGroup> groups{ParameterGroup{"conditioner", own, std::nullopt, false}};
    if (!lm.empty()) groups.push_back(ParameterGroup{"lm", lm, lm_lr_, false});
    return groups;
  }

  std::vector<std::string> modalities_at_train() const override { return {modality_}; }
  std::vector<std::string> modalities_at_test() const override { return {modality_}; }

  LanguageModel& language_model() override { return *lm_; }
  const Tokenizer& tokenizer() const override { return *tokenizer_; }
  const std::vector<std::string>& class_names() const override { return names_; }
  std::string caption(int64_t label) const override { return fill_template(template_, names_.at(static_cast<size_t>(label))); }

 protected:
  /// Creates the layers that turn the encoder's sequence (width `in_width`) into conditioning.
  virtual void build_conditioner(int64_t in_width, LanguageModel& lm) = 0;

  /// The conditioning modality's encoded sequence of `batch`.
  Sequence encode(const Batch& batch) const {
    return encoder_(batch.input(modality_, plugin_name(), "conditioning"));
  }

  /// The prompt before a caption: the conditioning prefix, then the embedded BOS (so the model
  /// starts its text as it did in pretraining).
  at::Tensor prompt(const Conditioning& c, int64_t rows) {
    const at::Tensor bos = lm_->embed(bos_).expand({rows, -1, -1});
    return c.prefix.defined() && c.prefix.size(1) > 0 ? at::cat({c.prefix, bos}, 1) : bos;
  }

  Context* context_;
  std::string pointer_, modality_, task_, template_;
  int64_t caption_tokens_;
  std::vector<std::string> names_, ranked_tasks_, generated_tasks_;
  bool freeze_lm_;
  double lm_lr_;
  std::unique_ptr<Tokenizer> tokenizer_;
  std::shared_ptr<LanguageModel> lm_;
  EncoderRef encoder_;
  at::Tensor captions_, caption_mask_, bos_;
};

}  // namespace modalkit::frozen_lm
