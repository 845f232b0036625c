// One shared model for many tasks over partially observable modalities (HighMMT, Liang et al.
// 2022; Gato, Reed et al. 2022; Perceiver, Jaegle et al. 2021). Each modality plugin's encoder
// gives a standardized sequence [B, T, D]; a learned modality embedding is added to its tokens;
// the shared backbone reads whichever modalities the batch holds; one head per task reads the
// backbone's output.
//
//   perceiver   `latents` learned vectors cross-attend to all present tokens (`cross_layers`
//               blocks, the same tokens each time), then `layers` self-attention layers over the
//               latents. The cost grows linearly with the token count, and every task and
//               modality mix gets the same-sized representation: the shared bottleneck HighMMT
//               transfers.
//   transformer Gato's single sequence: all present tokens joined, `layers` Transformer layers
//               over them, mean-pooled by the heads.
//
// In a multitask pipeline each batch comes from one task's data set and holds that task's
// targets and modalities only; the loss is the heads' of the tasks whose targets the batch
// holds (the host weights and samples the tasks). Transfer to a new task is `init_from` with
// `include: ["modality_embeddings.*", "backbone.*", "encoders.<seen modality>.*"]`.
#include <torch/nn/modules/container/modulelist.h>

#include "../../common/attention.hpp"
#include "modalkit/layers.hpp"
#include "modalkit/plugin.hpp"
#include "modalkit/strategy.hpp"
#include "multitask_manifest.hpp"

namespace {

using modalkit::plugins::CrossBlock;

/// "a, b, c": a map's keys, for messages.
template <typename Map>
std::string keys_of(const Map& map) {
  std::string out;
  for (const auto& [key, value] : map) out += (out.empty() ? "" : ", ") + key;
  return out;
}

class MultitaskStrategy : public modalkit::TransferStrategy {
 public:
  explicit MultitaskStrategy(const modalkit::CreateArgs& args) : d_model_(args.d_model) {
    modalities_ = modalkit::configured_modalities(args);
    TORCH_CHECK(!modalities_.empty(), "multitask: no modality to read");
    const modalkit::Config& c = args.config;
    // Layers, heads and dropout; a ConfigError at <config>/heads when heads does not divide d_model.
    const modalkit::TokenTransformerOptions o = modalkit::token_transformer_options(c, d_model_);
    perceiver_ = c.get<std::string>("backbone") == "perceiver";
    auto embeddings = register_module("modality_embeddings", std::make_shared<torch::nn::Module>("ModalityEmbeddings"));
    for (const auto& m : modalities_) {
      // Small random vectors, not zeros: they must tell the backbone apart which tokens came from
      // where from the first step on (a Perceiver's latents see all modalities' keys at once).
      embedding_.emplace(m, embeddings->register_parameter(m, torch::randn({d_model_}) * 0.02));
    }
    auto backbone = register_module("backbone", std::make_shared<torch::nn::Module>("Backbone"));
    if (perceiver_) {
      latents_ = backbone->register_parameter("latents", torch::randn({c.get<int64_t>("latents"), d_model_}) * 0.02);
      torch::nn::ModuleList list;
      for (int64_t l = 0; l < c.get<int64_t>("cross_layers"); ++l) {
        cross_.push_back(CrossBlock(d_model_, o.heads(), o.dropout()));
        list->push_back(cross_.back());
      }
      backbone->register_module("cross", list);
    }
    self_ = backbone->register_module("self", modalkit::TokenTransformer(o));
  }

  void build(const modalkit::ModelParts& parts) override {
    TORCH_CHECK(!parts.heads.empty(), "multitask trains task heads, and the pipeline has no /tasks");
    modalkit::register_parts(*this, parts, modalities_);
    for (const auto& m : modalities_) refs_.emplace(m, parts.encoders.at(m));
    heads_ = parts.heads;
  }

  modalkit::LossTerms loss(const modalkit::Batch& batch) override {
    // Only the tasks whose targets the batch holds: a multitask batch is one task's.
    std::vector<std::string> tasks;
    for (const auto& [task, head] : heads_) {
      if (batch.targets.count(task)) tasks.push_back(task);
    }
    TORCH_CHECK(!tasks.empty(), "multitask: the batch holds the targets of none of the tasks (",
                keys_of(heads_), ")");
    return modalkit::task_losses(heads_, outputs(batch, tasks), batch);
  }

  modalkit::Predictions predict(const modalkit::Batch& batch) override {
    std::vector<std::string> tasks;
    for (const auto& [task, head] : heads_) tasks.push_back(task);
    return outputs(batch, tasks);
  }

  std::vector<std::string> modalities_at_train() const override { return modalities_; }
  std::vector<std::string> modalities_at_test() const override { return modalities_; }

 private:
  /// The backbone's output over the modalities the batch holds.
  modalkit::Sequence shared(const modalkit::Batch& batch) {
    std::vector<torch::Tensor> xs, masks;
    for (const auto& [m, encoder] : refs_) {
      if (!batch.has(m)) continue;
      const modalkit::Sequence seq = encoder(batch.inputs.at(m));
      const torch::Tensor real = seq.mask.to(torch::kBool);
      // Filler tokens (absent samples, padding) are zeroed so that nothing they hold reaches
      // the keys' LayerNorm; the mask keeps them out of attention and pooling.
      xs.push_back((seq.x + embedding_.at(m)).masked_fill(real.logical_not().unsqueeze(-1), 0.0));
      masks.push_back(real);
    }
    TORCH_CHECK(!xs.empty(), "multitask: the batch holds none of the modalities it reads (", keys_of(refs_),
                ")");
    const torch::Tensor tokens = torch::cat(xs, 1), mask = torch::cat(masks, 1);
    if (!perceiver_) return {self_->forward(tokens, mask), mask};
    torch::Tensor h = latents_.unsqueeze(0).expand({tokens.size(0), latents_.size(0), d_model_});
    for (auto& block : cross_) h = block->forward(h, tokens, mask);
    h = self_->forward(h);
    return {h, torch::ones({h.size(0), h.size(1)}, torch::TensorOptions().dtype(torch::kBool).device(h.device()))};
  }

  modalkit::Predictions outputs(const modalkit::Batch& batch, const std::vector<std::string>& tasks) {
    const modalkit::Sequence h = shared(batch);
    modalkit::Predictions out;
    for (const auto& task : tasks) out.emplace(task, heads_.at(task)->forward(h));
    return out;
  }

  int64_t d_model_;
  bool perceiver_ = true;
  std::vector<std::string> modalities_;
  std::map<std::string, torch::Tensor> embedding_;
  torch::Tensor latents_;
  std::vector<CrossBlock> cross_;
  modalkit::TokenTransformer self_{nullptr};
  std::map<std::string, modalkit::EncoderRef> refs_;
  std::map<std::string, std::shared_ptr<modalkit::TaskHead>> heads_;
};

}  // namespace

MODALKIT_PLUGIN("multitask", "0.1.0", kManifest, MODALKIT_TRANSFER("multitask", MultitaskStrategy))
