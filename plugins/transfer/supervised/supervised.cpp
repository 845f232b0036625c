// Plain supervised learning, the no-transfer baseline: encode the chosen modalities, fuse them,
// and train one head per task on the sum of the task losses. With one modality it is the
// unimodal baseline; the same modalities are needed at train and at test time.
#include <algorithm>

#include "modalkit/plugin.hpp"
#include "modalkit/strategy.hpp"
#include "supervised_manifest.hpp"

namespace {

class SupervisedStrategy : public modalkit::TransferStrategy {
 public:
  explicit SupervisedStrategy(const modalkit::CreateArgs& args) {
    modalities_ = modalkit::configured_modalities(args);
    TORCH_CHECK(!modalities_.empty(), "supervised: no modality to train on");
  }

  void build(const modalkit::ModelParts& parts) override {
    modalkit::register_parts(*this, parts, modalities_);
    for (const auto& m : modalities_) refs_.emplace(m, parts.encoders.at(m));
    fusion_ = parts.fusion;
    head_refs_ = parts.heads;
    TORCH_CHECK(!parts.heads.empty(), "supervised trains task heads, and the pipeline has no /tasks");
  }

  modalkit::LossTerms loss(const modalkit::Batch& batch) override {
    return modalkit::task_losses(head_refs_, predict(batch), batch);
  }

  modalkit::Predictions predict(const modalkit::Batch& batch) override {
    std::map<std::string, modalkit::Sequence> encoded;
    for (const auto& [m, encoder] : refs_) {
      if (batch.has(m)) encoded.emplace(m, encoder(batch.inputs.at(m)));
    }
    TORCH_CHECK(!encoded.empty(), "supervised: the batch holds none of the modalities it was trained on");
    const modalkit::Sequence fused = fusion_(encoded);
    modalkit::Predictions out;
    for (const auto& [task, head] : head_refs_) out.emplace(task, head->forward(fused));
    return out;
  }

  std::vector<std::string> modalities_at_train() const override { return modalities_; }
  std::vector<std::string> modalities_at_test() const override { return modalities_; }

 private:
  std::vector<std::string> modalities_;
  std::map<std::string, modalkit::EncoderRef> refs_;
  std::map<std::string, std::shared_ptr<modalkit::TaskHead>> head_refs_;
  modalkit::FusionRef fusion_;
};

}  // namespace

MODALKIT_PLUGIN("supervised", "0.1.0", kManifest, MODALKIT_TRANSFER("supervised", SupervisedStrategy))
