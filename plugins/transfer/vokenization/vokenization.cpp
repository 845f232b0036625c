// Vokenization (Tan & Bansal 2020) as co-learning: the secondary modality's features, from a
// pretrained encoder, are clustered into k "vokens" once, in the prepare stage; the primary
// modality's encoder is then trained to predict each training sample's voken beside the tasks.
// The paper grounds language tokens in retrieved images ("visual tokens"); here a sample of the
// primary modality is grounded in the cluster of its paired secondary sample. Only the primary
// is needed in training batches after prepare, and at test time.
//
// The secondary encoder is the pipeline's encoder for that modality, frozen; give it trained
// weights with /init_from (e.g. `{"run": "runs/avf-image", "include": ["encoders.image.*"]}`),
// or cluster raw features instead (`features: raw | pooled_raw`). The vokens' NMI against the
// labels of the first classification task is logged and written to vokens.json in the run.
#include <fstream>
#include <random>
#include <set>

#include <spdlog/spdlog.h>
#include <torch/nn/modules/linear.h>

#include "../common/colearning.hpp"
#include "modalkit/context.hpp"
#include "modalkit/plugin.hpp"
#include "modalkit/strategy.hpp"
#include "vokenization_manifest.hpp"

namespace {

namespace cl = modalkit::colearning;

class Vokenization : public modalkit::TransferStrategy {
 public:
  explicit Vokenization(const modalkit::CreateArgs& args)
      : context_(args.context),
        primary_(args.config.get<std::string>("primary")),
        secondary_(args.config.get<std::string>("secondary")),
        kind_(cl::features_from(args.config, "features")),
        k_(args.config.get<int64_t>("vokens")),
        iterations_(args.config.get<int64_t>("kmeans_iterations")),
        weight_(args.config.get<double>("weight")) {
    for (const auto& [key, m] : {std::pair<std::string, std::string>{"primary", primary_}, {"secondary", secondary_}}) {
      if (std::find(args.modalities.begin(), args.modalities.end(), m) == args.modalities.end()) {
        throw modalkit::ConfigError(args.config.pointer() + "/" + key, "\"" + m + "\" is not one of the pipeline's modalities");
      }
    }
    if (primary_ == secondary_) {
      throw modalkit::ConfigError(args.config.pointer() + "/secondary", "the secondary modality must differ from the primary");
    }
    // Row of the train split → its voken (-1: a row prepare never saw, e.g. outside the label subset).
    voken_of_row_ = register_buffer("voken_of_row", at::zeros({0}, at::kLong));
    centroids_ = register_buffer("centroids", at::zeros({0}));
    voken_head_ = register_module("voken_head", torch::nn::Linear(args.d_model, k_));
    standardizer_ = register_module("secondary_standardizer", cl::Standardizer());
  }

  void build(const modalkit::ModelParts& parts) override {
    TORCH_CHECK(!parts.heads.empty(), "vokenization trains task heads, and the pipeline has no /tasks");
    std::vector<std::string> used{primary_};
    if (kind_ == cl::Features::kEncoder) used.push_back(secondary_);
    modalkit::register_parts(*this, parts, used);
    primary_encoder_ = parts.encoders.at(primary_);
    if (kind_ == cl::Features::kEncoder) secondary_encoder_ = parts.encoders.at(secondary_);
    fusion_ = parts.fusion;
    heads_ = parts.heads;
  }

  void prepare(modalkit::BatchSource& data) override {
    cl::keep_in_eval(secondary_encoder_);
    std::vector<at::Tensor> features, rows, labels;
    std::string label_task;
    for (const auto& [task, head] : heads_) {
      if (head->spec().type == modalkit::TaskType::kMulticlass) {
        label_task = task;
        break;
      }
    }
    data.for_each("train", {secondary_}, [&](const modalkit::Batch& batch) {
      const at::Tensor keep = cl::presence(batch, secondary_);
      const at::Tensor f = cl::feature_vectors(kind_, batch, secondary_, &secondary_encoder_, "vokenization").index({keep});
      standardizer_->accumulate(f);
      features.push_back(f.cpu());
      rows.push_back(batch.index.index({keep.cpu()}).cpu());
      if (!label_task.empty()) labels.push_back(batch.targets.at(label_task).index({keep.cpu()}).cpu());
    });
    standardizer_->fit("vokenization: secondary \"" + secondary_ + "\"");
    const at::Tensor x = standardizer_->forward(at::cat(features).to(standardizer_->buffers()[0].device()), "vokenization").cpu();
    const at::Tensor row = at::cat(rows);
    std::mt19937_64 rng(context_ != nullptr ? context_->seed() ^ 0x766f6b656eULL : 1);  // "voken"
    const auto [centroids, assign] = cl::kmeans(x, k_, iterations_, rng);
    at::Tensor table = at::full({row.max().item<int64_t>() + 1}, -1, at::kLong);
    table.index_put_({row}, assign);
    {
      at::NoGradGuard no_grad;
      voken_of_row_.set_(table.to(voken_of_row_.device()));
      centroids_.set_(centroids.to(at::kFloat).to(centroids_.device()));
    }
    nlohmann::json report = {{"secondary", secondary_}, {"vokens", k_}, {"samples", row.size(0)},
                             {"sizes", [&] {
                                const at::Tensor c = at::bincount(assign, {}, k_);
                                return std::vector<int64_t>(c.data_ptr<int64_t>(), c.data_ptr<int64_t>() + k_);
                              }()}};
    if (!label_task.empty()) {
      const double nmi = cl::normalized_mutual_information(assign, at::cat(labels));
      report["nmi"] = nmi;
      report["nmi_task"] = label_task;
      if (context_ != nullptr) {
        context_->logger().info("vokenization: {} vokens of {} {} samples, NMI {:.3f} against task {}", k_,
                                row.size(0), secondary_, nmi, label_task);
      }
    }
    if (context_ != nullptr && !context_->run_dir().empty()) {
      std::ofstream(context_->run_dir() / "vokens.json") << report.dump(2) << '\n';
    }
  }

  modalkit::LossTerms loss(const modalkit::Batch& batch) override {
    if (voken_of_row_.numel() == 0) throw modalkit::Error("vokenization: no vokens (the prepare stage has not run)");
    const modalkit::Sequence seq = primary_encoder_(batch.inputs.at(primary_));
    modalkit::LossTerms terms = modalkit::task_losses(heads_, heads_of(seq), batch);
    const at::Tensor index = batch.index.to(voken_of_row_.device());
    at::Tensor vokens = at::full_like(index, -1);
    const at::Tensor known = index < voken_of_row_.size(0);
    vokens.index_put_({known}, voken_of_row_.index({index.index({known})}));
    const at::Tensor logits = voken_head_->forward(modalkit::masked_mean_pool(seq));
    // Rows without a voken (-1) are ignored; a batch with none contributes zero.
    const at::Tensor has = vokens >= 0;
    terms["voken"] = has.any().item<bool>()
                         ? weight_ * at::cross_entropy_loss(logits.index({has}), vokens.index({has}).to(logits.device()))
                         : logits.sum() * 0;
    return terms;
  }

  modalkit::Predictions predict(const modalkit::Batch& batch) override {
    if (!batch.has(primary_)) throw modalkit::Error("vokenization: the batch lacks the primary modality \"" + primary_ + "\"");
    return heads_of(primary_encoder_(batch.inputs.at(primary_)));
  }

  std::vector<modalkit::ParameterGroup> parameter_groups() override {
    if (!secondary_encoder_.module()) return TransferStrategy::parameter_groups();
    std::set<const void*> frozen;
    for (const auto& p : secondary_encoder_.module()->parameters()) frozen.insert(p.unsafeGetTensorImpl());
    modalkit::ParameterGroup trained{"all", {}, std::nullopt, false}, fixed{"secondary_encoder", {}, std::nullopt, true};
    for (const auto& p : parameters()) (frozen.count(p.unsafeGetTensorImpl()) ? fixed : trained).parameters.push_back(p);
    return {trained, fixed};
  }

  std::vector<std::string> modalities_at_train() const override { return {primary_}; }
  std::vector<std::string> modalities_at_test() const override { return {primary_}; }

 private:
  modalkit::Predictions heads_of(const modalkit::Sequence& seq) {
    const modalkit::Sequence fused = fusion_({{primary_, seq}});
    modalkit::Predictions out;
    for (const auto& [task, head] : heads_) out.emplace(task, head->forward(fused));
    return out;
  }

  modalkit::Context* context_;
  std::string primary_, secondary_;
  cl::Features kind_;
  int64_t k_, iterations_;
  double weight_;
  at::Tensor voken_of_row_, centroids_;
  torch::nn::Linear voken_head_{nullptr};
  cl::Standardizer standardizer_{nullptr};
  modalkit::EncoderRef primary_encoder_, secondary_encoder_;
  modalkit::FusionRef fusion_;
  std::map<std::string, std::shared_ptr<modalkit::TaskHead>> heads_;
};

}  // namespace

MODALKIT_PLUGIN("vokenization", "0.1.0", kManifest, MODALKIT_TRANSFER("vokenization", Vokenization))
