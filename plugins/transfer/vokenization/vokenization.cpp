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
        pointer_(args.config.pointer()),
        primary_(cl::configured_modality(args, "primary")),
        secondary_(cl::configured_modality(args, "secondary")),
        kind_(cl::features_from(args.config, "features")),
        k_(args.config.get<int64_t>("vokens")),
        iterations_(args.config.get<int64_t>("kmeans_iterations")),
        weight_(args.config.get<double>("weight")) {
    if (primary_ == secondary_) {
      throw modalkit::ConfigError(args.config.pointer() + "/secondary", "the secondary modality must differ from the primary");
    }
    // Row of the train split → its voken (-1: a row prepare never saw, e.g. outside the label
    // subset). The centroids are kept with the model for inspection (export), not read here.
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
    // The NMI is taken against the first classification task in name order.
    std::string label_task;
    for (const auto& [task, head] : heads_) {
      const auto type = head->spec().type;
      if (type == modalkit::TaskType::kMulticlass || type == modalkit::TaskType::kBinary) {
        label_task = task;
        break;
      }
    }
    std::vector<at::Tensor> rows;
    const auto [x, labels] = cl::standardized_train_features(data, kind_, secondary_, &secondary_encoder_, *standardizer_,
                                                             label_task, "vokenization", &rows);
    const at::Tensor row = at::cat(rows);
    if (k_ > row.size(0)) {
      throw modalkit::ConfigError(pointer_ + "/vokens", std::to_string(k_) + " vokens, but the train split has " +
                                                            std::to_string(row.size(0)) + " samples of \"" + secondary_ + "\" to cluster");
    }
    std::mt19937_64 rng(context_ != nullptr ? context_->seed() ^ 0x766f6b656eULL : 1);  // "voken"
    const auto [centroids, assign] = cl::kmeans(x, k_, iterations_, rng);
    at::Tensor table = at::full({row.max().item<int64_t>() + 1}, -1, at::kLong);
    table.index_put_({row}, assign);
    cl::assign(voken_of_row_, table);
    cl::assign(centroids_, centroids);
    nlohmann::json report = {{"secondary", secondary_}, {"vokens", k_}, {"samples", row.size(0)},
                             {"sizes", [&] {
                                const at::Tensor c = at::bincount(assign, {}, k_);
                                return std::vector<int64_t>(c.data_ptr<int64_t>(), c.data_ptr<int64_t>() + k_);
                              }()}};
    if (!label_task.empty()) {
      // Only the labelled rows have a label to compare with (an unlabelled class index is -1, an
      // unlabelled binary target NaN, which must be caught before a cast to integers).
      const at::Tensor flat = labels.reshape({-1});
      const at::Tensor labelled = flat.is_floating_point() ? flat.isnan().logical_not() : flat >= 0;
      const at::Tensor label = at::where(labelled, flat, at::zeros_like(flat)).to(at::kLong);
      if (labelled.any().item<bool>()) {
        const double nmi = cl::normalized_mutual_information(assign.index({labelled}), label.index({labelled}));
        report["nmi"] = nmi;
        report["nmi_task"] = label_task;
        if (context_ != nullptr) {
          context_->logger().info("vokenization: {} vokens of {} {} samples, NMI {:.3f} against task {} ({} labelled)", k_,
                                  row.size(0), secondary_, nmi, label_task, labelled.sum().item<int64_t>());
        }
      }
    }
    if (context_ != nullptr && !context_->run_dir().empty()) {
      std::ofstream(context_->run_dir() / "vokens.json") << report.dump(2) << '\n';
    }
  }

  modalkit::LossTerms loss(const modalkit::Batch& batch) override {
    if (voken_of_row_.numel() == 0) throw modalkit::Error("vokenization: no vokens (the prepare stage has not run)");
    const modalkit::Sequence seq = primary_encoder_(primary_input(batch));
    modalkit::LossTerms terms = modalkit::task_losses(heads_, cl::heads_on(fusion_, heads_, primary_, seq), batch);
    // Vokens exist for train rows only: a validation batch's row numbers are another split's,
    // so outside training (the host's validation loss) the voken term is not defined.
    if (!is_training()) return terms;
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
    return cl::heads_on(fusion_, heads_, primary_, primary_encoder_(primary_input(batch)));
  }

  std::vector<modalkit::ParameterGroup> parameter_groups() override {
    return cl::groups_with_frozen(*this, secondary_encoder_, "secondary_encoder");
  }

  std::vector<std::string> modalities_at_train() const override { return {primary_}; }
  std::vector<std::string> modalities_at_test() const override { return {primary_}; }

 private:
  const modalkit::ModalityInput& primary_input(const modalkit::Batch& batch) const {
    return batch.input(primary_, "vokenization", "primary");
  }

  modalkit::Context* context_;
  std::string pointer_, primary_, secondary_;
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
