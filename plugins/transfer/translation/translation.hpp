// Co-learning by translation: the source (primary) modality's representation is trained to
// predict the target (secondary) modality as well as the tasks, so the secondary shapes the
// primary's encoder during training and is not needed at test time.
//
// - `translation` (bimodal): source → target, loss = tasks + translation_weight · MSE.
// - `cyclic_translation` (MCTN, Pham et al. 2019): source → target → source, adding
//   cycle_weight · MSE between the back-translation and the source, so the translated target
//   must keep what identifies its source.
//
// Shape of the model: z = mean-pool(encoder_source(x_s)) is the joint representation; the task
// heads read fusion(encoder_source(x_s)); translator: z → t̂; back_translator: t̂ → ŝ. Targets and
// the cycle's source are per-feature standardised vectors (fitted on the train split), so
// predicting the mean target scores an MSE of about 1 and every term is on the same scale. A
// target is the target modality's raw features (flattened, or averaged over a padded axis) or
// the pooled output of its encoder, frozen: a trained target would collapse to a constant that
// is trivially predicted. MCTN translates sequences with a seq2seq model; here both ends are
// fixed-width vectors, which every modality plugin can provide.
#pragma once

#include <algorithm>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include <spdlog/spdlog.h>

#include "../common/colearning.hpp"
#include "modalkit/context.hpp"
#include "modalkit/strategy.hpp"

namespace modalkit::colearning {

class Translation : public TransferStrategy {
 public:
  Translation(const CreateArgs& args, bool cyclic)
      : context_(args.context),
        name_(cyclic ? "cyclic_translation" : "translation"),
        cyclic_(cyclic),
        source_(configured_modality(args, "source")),
        target_(configured_modality(args, "target")),
        target_kind_(features_from(args.config, "target_features")),
        translation_weight_(args.config.get<double>("translation_weight")) {
    if (source_ == target_) throw ConfigError(args.config.pointer() + "/target", "the target must differ from the source");
    if (cyclic_) {
      source_kind_ = features_from(args.config, "source_features");
      cycle_weight_ = args.config.get<double>("cycle_weight");
    }
    const auto hidden = args.config.get<int64_t>("hidden");
    d_model_ = args.d_model;
    target_std_ = register_module("target_standardizer", Standardizer());
    translator_ = register_module("translator", LateMlp(hidden));
    if (cyclic_) {
      source_std_ = register_module("source_standardizer", Standardizer());
      back_translator_ = register_module("back_translator", LateMlp(hidden));
    }
  }

  void build(const ModelParts& parts) override {
    TORCH_CHECK(!parts.heads.empty(), name_, " trains task heads, and the pipeline has no /tasks");
    // The target's encoder is part of the model only when it makes the targets (then frozen).
    std::vector<std::string> used{source_};
    if (target_kind_ == Features::kEncoder) used.push_back(target_);
    register_parts(*this, parts, used);
    source_encoder_ = parts.encoders.at(source_);
    if (target_kind_ == Features::kEncoder) target_encoder_ = parts.encoders.at(target_);
    fusion_ = parts.fusion;
    heads_ = parts.heads;
  }

  void prepare(BatchSource& data) override {
    keep_in_eval(target_encoder_);
    const std::string target_what = name_ + " target \"" + target_ + "\"", source_what = name_ + " source \"" + source_ + "\"";
    data.for_each("train", {source_, target_}, [&](const Batch& batch) {
      const at::Tensor keep = presence(batch, target_);
      target_std_->accumulate(feature_vectors(target_kind_, batch, target_, &target_encoder_, name_).index({keep}), target_what);
      if (cyclic_) {
        source_std_->accumulate(feature_vectors(source_kind_, batch, source_, nullptr, name_).index({presence(batch, source_)}),
                                source_what);
      }
    });
    target_std_->fit(name_ + " target \"" + target_ + "\"");
    translator_->resize(d_model_, target_std_->width());
    if (cyclic_) {
      source_std_->fit(name_ + " source \"" + source_ + "\"");
      back_translator_->resize(target_std_->width(), source_std_->width());
    }
    if (context_ != nullptr) {
      context_->logger().info("{}: {} → {} ({} features per sample){}", name_, source_, target_, target_std_->width(),
                              cyclic_ ? " → " + source_ + " (" + std::to_string(source_std_->width()) + ")" : "");
    }
  }

  LossTerms loss(const Batch& batch) override {
    keep_in_eval(target_encoder_);
    const Sequence seq = source_encoder_(source_input(batch));
    LossTerms terms = task_losses(heads_, heads_on(fusion_, heads_, source_, seq), batch);
    if (!batch.has(target_)) return terms;
    const at::Tensor z = masked_mean_pool(seq);
    const at::Tensor keep = presence(batch, target_);
    const at::Tensor t = target_std_->forward(feature_vectors(target_kind_, batch, target_, &target_encoder_, name_),
                                              name_ + " target \"" + target_ + "\"");
    const at::Tensor t_hat = translator_->forward(z);
    terms["translation"] = translation_weight_ * masked_mse(t_hat, t, keep);
    if (cyclic_) {
      const at::Tensor s = source_std_->forward(feature_vectors(source_kind_, batch, source_, nullptr, name_),
                                                name_ + " source \"" + source_ + "\"");
      terms["cycle"] = cycle_weight_ * masked_mse(back_translator_->forward(t_hat), s, presence(batch, source_));
    }
    return terms;
  }

  Predictions predict(const Batch& batch) override {
    return heads_on(fusion_, heads_, source_, source_encoder_(source_input(batch)));
  }

  std::vector<ParameterGroup> parameter_groups() override { return groups_with_frozen(*this, target_encoder_, "target_encoder"); }

  std::vector<std::string> modalities_at_train() const override { return {source_, target_}; }
  std::vector<std::string> modalities_at_test() const override { return {source_}; }

 private:
  const ModalityInput& source_input(const Batch& batch) const {
    return batch.input(source_, name_, "source");
  }

  Context* context_;
  std::string name_;
  bool cyclic_;
  std::string source_, target_;
  Features target_kind_, source_kind_ = Features::kRaw;
  double translation_weight_, cycle_weight_ = 0;
  int64_t d_model_ = 0;
  EncoderRef source_encoder_, target_encoder_;
  FusionRef fusion_;
  std::map<std::string, std::shared_ptr<TaskHead>> heads_;
  Standardizer target_std_{nullptr}, source_std_{nullptr};
  LateMlp translator_{nullptr}, back_translator_{nullptr};
};

}  // namespace modalkit::colearning
