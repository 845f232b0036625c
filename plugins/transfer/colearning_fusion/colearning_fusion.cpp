// Co-learning by fusion (Zadeh, Liang & Morency 2020, "Foundations of multimodal co-learning"):
// the model is trained on every modality and tested on the primary one alone, so the secondary
// modalities shape the shared encoder, fusion and head without being needed at test time.
//
// At test time the secondary modalities are missing, and a fusion operator must be told what
// stands in for them. This strategy asks explicitly: one "fill" token per missing modality, made
// of zeros (`fill: zeros`) or a learned vector per modality (`fill: learned`, an "absent"
// embedding), marked real so the fusion reads it. Training hides each secondary modality per
// sample with probability `secondary_dropout` (modality dropout) so the fill is not first met
// at test time; with 0 the model trains on all modalities only.
#include <algorithm>

#include <ATen/ops/bernoulli.h>
#include <ATen/ops/cat.h>
#include <ATen/ops/full.h>
#include <ATen/ops/ones.h>
#include <ATen/ops/ones_like.h>
#include <ATen/ops/zeros.h>

#include "colearning_fusion_manifest.hpp"
#include "modalkit/plugin.hpp"
#include "modalkit/strategy.hpp"

namespace {

class CoLearningFusion : public modalkit::TransferStrategy {
 public:
  explicit CoLearningFusion(const modalkit::CreateArgs& args)
      : primary_(args.config.get<std::string>("primary")),
        learned_(args.config.get<std::string>("fill") == "learned"),
        dropout_(args.config.get<double>("secondary_dropout")) {
    modalities_ = modalkit::configured_modalities(args);
    if (std::find(modalities_.begin(), modalities_.end(), primary_) == modalities_.end()) {
      throw modalkit::ConfigError(args.config.pointer() + "/primary",
                                  "\"" + primary_ + "\" is not among the modalities trained on");
    }
    if (modalities_.size() < 2) {
      throw modalkit::ConfigError(args.config.pointer() + "/modalities",
                                  "co-learning needs a secondary modality besides \"" + primary_ + "\"");
    }
    for (const auto& m : modalities_) {
      if (m != primary_ && learned_) absent_.emplace(m, register_parameter("absent_" + m, torch::zeros({args.d_model})));
    }
    d_model_ = args.d_model;
  }

  void build(const modalkit::ModelParts& parts) override {
    modalkit::register_parts(*this, parts, modalities_);
    for (const auto& m : modalities_) encoders_.emplace(m, parts.encoders.at(m));
    fusion_ = parts.fusion;
    heads_ = parts.heads;
    TORCH_CHECK(!parts.heads.empty(), "colearning_fusion trains task heads, and the pipeline has no /tasks");
  }

  modalkit::LossTerms loss(const modalkit::Batch& batch) override {
    return modalkit::task_losses(heads_, forward(batch), batch);
  }

  modalkit::Predictions predict(const modalkit::Batch& batch) override { return forward(batch); }

  std::vector<std::string> modalities_at_train() const override { return modalities_; }
  std::vector<std::string> modalities_at_test() const override { return {primary_}; }

 private:
  modalkit::Predictions forward(const modalkit::Batch& batch) {
    const auto device = batch.input(primary_, "colearning_fusion", "primary").data.device();
    const int64_t n = batch.size();
    std::map<std::string, modalkit::Sequence> encoded;
    for (const auto& [m, encoder] : encoders_) {
      const bool secondary = m != primary_;
      at::Tensor missing = at::ones({n}, at::TensorOptions().dtype(at::kBool).device(device));
      if (batch.has(m)) {
        const auto& input = batch.inputs.at(m);
        modalkit::Sequence seq = encoder(input);  // absent samples' masks already cleared
        at::Tensor shown = input.present.defined() ? input.present : at::ones_like(missing);
        if (secondary && is_training() && dropout_ > 0) {
          shown = shown & at::bernoulli(at::full({n}, 1 - dropout_, at::TensorOptions().device(device))).to(at::kBool);
          seq.mask = seq.mask & shown.unsqueeze(1);
        }
        missing = shown.logical_not();
        if (!secondary || !missing.any().item<bool>()) {
          encoded.emplace(m, seq);
          continue;
        }
        // The fill token joins the modality's own tokens and is real only where they are not.
        const modalkit::Sequence fill = fill_token(m, missing);
        encoded.emplace(m, modalkit::Sequence{at::cat({seq.x, fill.x}, 1), at::cat({seq.mask, fill.mask}, 1)});
      } else if (secondary) {
        encoded.emplace(m, fill_token(m, missing));
      }
    }
    const modalkit::Sequence fused = fusion_(encoded);
    modalkit::Predictions out;
    for (const auto& [task, head] : heads_) out.emplace(task, head->forward(fused));
    return out;
  }

  /// One token per sample standing in for modality `m`, real where `missing`.
  modalkit::Sequence fill_token(const std::string& m, const at::Tensor& missing) const {
    const int64_t n = missing.size(0);
    at::Tensor x = learned_ ? absent_.at(m).view({1, 1, d_model_}).expand({n, 1, d_model_})
                            : at::zeros({n, 1, d_model_}, at::TensorOptions().device(missing.device()));
    return {x, missing.unsqueeze(1)};
  }

  std::string primary_;
  bool learned_;
  double dropout_;
  int64_t d_model_ = 0;
  std::vector<std::string> modalities_;
  std::map<std::string, at::Tensor> absent_;
  std::map<std::string, modalkit::EncoderRef> encoders_;
  std::map<std::string, std::shared_ptr<modalkit::TaskHead>> heads_;
  modalkit::FusionRef fusion_;
};

}  // namespace

MODALKIT_PLUGIN("colearning_fusion", "0.1.0", kManifest,
                MODALKIT_TRANSFER("colearning_fusion", CoLearningFusion))
