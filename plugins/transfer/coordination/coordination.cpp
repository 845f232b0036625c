// Coordination into a semantic space for zero-shot classes (Socher, Ganjoo, Manning & Ng 2013,
// "Zero-shot learning through cross-modal transfer"). Each class has a vector in a space built
// from another modality: the mean of its words' vectors (`space: words`, the project's own
// word2vec artifact), or the mean of a secondary modality's features over the class's samples
// (`space: <modality>`, e.g. spoken class names). The primary modality's representation is
// mapped into that space on the seen classes only; an image of a class never seen in training
// is classified by the nearest unseen class vector.
//
// As in the paper, a novelty detector decides seen vs unseen first: an isotropic Gaussian
// around each seen class vector, its variance the mean squared distance of that class's mapped
// validation images; an image whose scaled squared distance to every seen class exceeds a
// threshold is novel. The threshold is the `novelty_quantile` quantile of the seen classes'
// validation scores (finalize stage: seen-class validation data only, never an unseen image).
// Seen images are classified by the task head (softmax over the seen classes, trained on them).
//
// Training sees no sample of an unseen class: such samples are dropped from every loss term.
#include <algorithm>
#include <cctype>
#include <sstream>

#include <spdlog/spdlog.h>

#include "../common/colearning.hpp"
#include "coordination_manifest.hpp"
#include "modalkit/context.hpp"
#include "modalkit/plugin.hpp"
#include "modalkit/strategy.hpp"
#include "modalkit/word_vectors.hpp"

namespace {

namespace cl = modalkit::colearning;

/// A label's own words, the default class words: "T-shirt/top" → t, shirt, top; "Ankle boot"
/// → ankle, boot.
std::vector<std::string> words_of(const std::string& label) {
  std::vector<std::string> out;
  std::string word;
  for (char ch : label + " ") {
    if (std::isalnum(static_cast<unsigned char>(ch)) != 0) {
      word += static_cast<char>(std::tolower(static_cast<unsigned char>(ch)));
    } else if (!word.empty()) {
      out.push_back(word);
      word.clear();
    }
  }
  return out;
}

class Coordination : public modalkit::TransferStrategy {
 public:
  explicit Coordination(const modalkit::CreateArgs& args)
      : context_(args.context),
        pointer_(args.config.pointer()),
        primary_(cl::configured_modality(args, "primary")),
        space_(args.config.get<std::string>("space")),
        task_(args.config.get_or<std::string>("task", "")),
        unseen_labels_(args.config.get<std::vector<std::string>>("unseen")),
        squared_(args.config.get<std::string>("objective") == "squared"),
        margin_(args.config.get<double>("margin")),
        weight_(args.config.get<double>("weight")),
        quantile_(args.config.get<double>("novelty_quantile")),
        d_model_(args.d_model),
        class_words_(args.config.json().value("class_words", nlohmann::json::object())) {
    const bool is_modality = std::find(args.modalities.begin(), args.modalities.end(), space_) != args.modalities.end();
    if (space_ != "words" && (!is_modality || space_ == primary_)) {
      throw modalkit::ConfigError(pointer_ + "/space", "expected \"words\" or a secondary modality of the pipeline, found \"" + space_ + "\"");
    }
    if (space_ == "words" && context_ != nullptr) {
      // Said now, not after the data has loaded: the word space needs the artifact.
      try {
        context_->artifact_path("word_vectors");
      } catch (const modalkit::Error& e) {
        throw modalkit::ConfigError(pointer_ + "/space", std::string("\"words\" needs word vectors: ") + e.what() +
                                                            " (name a word_vectors artifact, e.g. the word-vectors pipeline's word_vectors.txt)");
      }
    }
    if (space_ != "words") space_kind_ = cl::features_from(args.config, "space_features");
    mapping_ = register_module("mapping", cl::LateMlp(args.config.get<int64_t>("hidden")));
    space_std_ = register_module("space_standardizer", cl::Standardizer());
    class_vectors_ = register_buffer("class_vectors", at::zeros({0, 0}));
    sigma2_ = register_buffer("sigma2", at::zeros({0}));
    threshold_ = register_buffer("threshold", at::zeros({0}));
  }

  void build(const modalkit::ModelParts& parts) override {
    // One multiclass task: its classes are the ones mapped, seen and unseen.
    if (parts.heads.size() != 1 || parts.heads.begin()->second->spec().type != modalkit::TaskType::kMulticlass) {
      throw modalkit::ConfigError("/tasks", "coordination trains exactly one multiclass task; the pipeline has " +
                                                std::to_string(parts.heads.size()) + " task(s)");
    }
    if (!task_.empty() && task_ != parts.heads.begin()->first) {
      throw modalkit::ConfigError(pointer_ + "/task", "\"" + task_ + "\" is not the pipeline's task (" + parts.heads.begin()->first + ")");
    }
    task_ = parts.heads.begin()->first;
    labels_ = parts.heads.at(task_)->spec().labels;
    std::vector<bool> unseen(labels_.size(), false);
    for (size_t i = 0; i < unseen_labels_.size(); ++i) {
      const auto it = std::find(labels_.begin(), labels_.end(), unseen_labels_[i]);
      if (it == labels_.end()) {
        throw modalkit::ConfigError(pointer_ + "/unseen/" + std::to_string(i),
                                    "\"" + unseen_labels_[i] + "\" is not a label of task " + task_ + " (labels: " + nlohmann::json(labels_).dump() + ")");
      }
      unseen[static_cast<size_t>(it - labels_.begin())] = true;
    }
    if (std::count(unseen.begin(), unseen.end(), false) < 2) {
      throw modalkit::ConfigError(pointer_ + "/unseen", "leaves fewer than 2 seen classes to train on");
    }
    unseen_ = at::tensor(std::vector<uint8_t>(unseen.begin(), unseen.end())).to(at::kBool);
    for (const auto& [label, words] : class_words_.items()) {
      if (std::find(labels_.begin(), labels_.end(), label) == labels_.end()) {
        throw modalkit::ConfigError(pointer_ + "/class_words/" + label, "is not a label of task " + task_ + " (labels: " +
                                                                            nlohmann::json(labels_).dump() + ")");
      }
    }
    std::vector<std::string> used{primary_};
    if (space_ != "words" && space_kind_ == cl::Features::kEncoder) used.push_back(space_);
    modalkit::register_parts(*this, parts, used);
    encoder_ = parts.encoders.at(primary_);
    if (used.size() > 1) space_encoder_ = parts.encoders.at(space_);
    fusion_ = parts.fusion;
    heads_ = parts.heads;
  }

  void prepare(modalkit::BatchSource& data) override {
    const at::Tensor vectors = space_ == "words" ? word_space() : modality_space(data);
    cl::assign(class_vectors_, vectors);
    mapping_->resize(d_model_, vectors.size(1));
  }

  modalkit::LossTerms loss(const modalkit::Batch& batch) override {
    // Unseen classes' samples are dropped before the encoder: training never sees them.
    const at::Tensor y = batch.targets.at(task_);
    const at::Tensor seen_rows = unseen_.to(y.device()).index({y}).logical_not();
    if (!seen_rows.any().item<bool>()) {
      // Nothing to learn from, but the host still steps: a zero that keeps a (zero) gradient.
      at::Tensor zero = at::zeros({}, at::TensorOptions().device(y.device()));
      for (const auto& p : parameters()) {
        if (p.requires_grad()) {
          zero = p.sum() * 0;
          break;
        }
      }
      return {{"task/" + task_, zero}, {"coordination", zero}};
    }
    const Forward f = forward(batch.select(seen_rows.nonzero().squeeze(1)));
    const at::Tensor ys = y.index({seen_rows});
    const at::Tensor logits = seen_only(f.logits);
    modalkit::LossTerms terms{{"task/" + task_, at::cross_entropy_loss(logits, ys)}};
    const at::Tensor& m = f.mapped;
    if (squared_) {
      // Socher et al.'s objective: the squared distance to the class's vector.
      terms["coordination"] = weight_ * (m - class_vectors_.index({ys})).pow(2).sum(1).mean();
    } else {
      // DeViSE's hinge (Frome et al. 2013) over the seen classes, on dot products.
      const at::Tensor scores = m.matmul(class_vectors_.t());                     // [B, C]
      const at::Tensor right = scores.gather(1, ys.unsqueeze(1));                  // [B, 1]
      at::Tensor hinge = (margin_ - right + scores).clamp_min(0);
      const at::Tensor other = unseen_.to(y.device()).logical_not().unsqueeze(0).expand_as(hinge).clone();
      other.scatter_(1, ys.unsqueeze(1), false);
      terms["coordination"] = weight_ * (hinge * other.to(hinge.scalar_type())).sum(1).mean();
    }
    return terms;
  }

  modalkit::Predictions predict(const modalkit::Batch& batch) override {
    const Forward f = forward(batch);
    // Log-probabilities among the seen classes (the head) and among the unseen (nearest class
    // vector: equal isotropic Gaussians), each -1e4 outside its set so scores stay finite.
    const at::Tensor seen = at::log_softmax(seen_only(f.logits), 1).clamp_min(-1e4);
    if (threshold_.numel() == 0) return {{task_, seen}};  // before finalize: every image judged seen
    const at::Tensor d2 = squared_distances(f.mapped);
    const at::Tensor unseen_mask = unseen_.to(d2.device()).unsqueeze(0);
    const at::Tensor unseen = at::log_softmax((-d2).masked_fill(unseen_mask.logical_not(), -INFINITY), 1).clamp_min(-1e4);
    const at::Tensor novel = novelty(d2) > threshold_;
    return {{task_, at::where(novel.unsqueeze(1), unseen, seen)}};
  }

  void finalize(modalkit::BatchSource& data) override {
    if (!unseen_.any().item<bool>()) return;  // nothing is novel: no detector to fit
    const bool was_training = is_training();
    eval();
    at::NoGradGuard no_grad;
    std::vector<at::Tensor> d2s, ys;
    data.for_each("val", {primary_}, [&](const modalkit::Batch& batch) {
      const at::Tensor y = batch.targets.at(task_);
      const at::Tensor seen_rows = unseen_.to(y.device()).index({y}).logical_not();
      d2s.push_back(squared_distances(forward(batch).mapped).index({seen_rows}).cpu());
      ys.push_back(y.index({seen_rows}).cpu());
    });
    train(was_training);
    const at::Tensor y = ys.empty() ? at::zeros({0}, at::kLong) : at::cat(ys);
    if (y.numel() < 2) throw modalkit::Error("coordination: fewer than 2 seen-class samples in the val split to fit the novelty threshold on");
    const at::Tensor d2 = at::cat(d2s);
    // Each seen class's variance: the mean squared distance of its own mapped images (all
    // classes' mean where a class has no validation image).
    const at::Tensor own = d2.gather(1, y.unsqueeze(1)).squeeze(1);
    const int64_t c = static_cast<int64_t>(labels_.size());
    const at::Tensor counts = at::bincount(y, {}, c).to(at::kFloat);
    const at::Tensor sums = at::zeros({c}).index_add_(0, y, own);
    const at::Tensor sigma2 = at::where(counts > 0, sums / counts.clamp_min(1), own.mean()).clamp_min(1e-8);
    cl::assign(sigma2_, sigma2);
    const at::Tensor scores = novelty(d2.to(sigma2_.device())).cpu();
    const double t = at::quantile(scores.to(at::kDouble), quantile_).item<double>();
    cl::assign(threshold_, at::full({1}, t));
    if (context_ != nullptr) {
      context_->logger().info("coordination: novelty threshold {:.3f} (quantile {} of {} seen-class val images' scores)", t,
                              quantile_, scores.numel());
    }
  }

  std::vector<modalkit::ParameterGroup> parameter_groups() override {
    return cl::groups_with_frozen(*this, space_encoder_, "space_encoder");
  }

  std::vector<std::string> modalities_at_train() const override { return {primary_}; }
  std::vector<std::string> modalities_at_test() const override { return {primary_}; }

 private:
  struct Forward {
    at::Tensor logits;  // the task head's, [B, C]
    at::Tensor mapped;  // the representation mapped into the space, [B, Ds]
  };

  Forward forward(const modalkit::Batch& batch) {
    const modalkit::ModalityInput& input = batch.input(primary_, "coordination", "primary");
    if (class_vectors_.numel() == 0) throw modalkit::Error("coordination: no class vectors (the prepare stage has not run)");
    const modalkit::Sequence seq = encoder_(input);
    const modalkit::Sequence fused = fusion_({{primary_, seq}});
    return {heads_.at(task_)->forward(fused), mapping_->forward(modalkit::masked_mean_pool(seq))};
  }

  /// Logits with the unseen classes' set to -inf.
  at::Tensor seen_only(const at::Tensor& logits) const {
    return logits.masked_fill(unseen_.to(logits.device()).unsqueeze(0), -INFINITY);
  }

  /// `[B, C]` squared distances of the mapped samples to the class vectors, in the geometry the
  /// objective trained: Euclidean for `squared`; for `max_margin`, whose hinge scores dot
  /// products (the mapped point's length is free), between directions (2 - 2 cos).
  at::Tensor squared_distances(const at::Tensor& mapped) const {
    const at::Tensor m = squared_ ? mapped : mapped / mapped.norm(2, 1, true).clamp_min(1e-12);
    return (m.unsqueeze(1) - class_vectors_.unsqueeze(0)).pow(2).sum(2);
  }

  /// Per sample: the smallest squared distance to a seen class vector, scaled by that class's
  /// variance. High = an outlier for every seen class.
  at::Tensor novelty(const at::Tensor& d2) const {
    return (d2 / sigma2_.unsqueeze(0)).masked_fill(unseen_.to(d2.device()).unsqueeze(0), INFINITY).amin(1);
  }

  /// Class vectors from the word_vectors artifact: the mean of each class's words' unit vectors.
  at::Tensor word_space() const {
    const modalkit::WordVectors wv = modalkit::read_word_vectors(context_->artifact_path("word_vectors"));
    std::vector<at::Tensor> rows;
    std::ostringstream missing;
    for (const auto& label : labels_) {
      const auto words = class_words_.contains(label) ? class_words_.at(label).get<std::vector<std::string>>() : words_of(label);
      std::vector<at::Tensor> vs;
      for (const auto& w : words) {
        const int64_t i = wv.find(w);
        if (i < 0) {
          missing << (missing.tellp() > 0 ? "; " : "") << "class \"" << label << "\": \"" << w << "\"";
          continue;
        }
        const at::Tensor v = wv.vectors[i];
        vs.push_back(v / v.norm().clamp_min(1e-12));
      }
      if (words.empty()) {
        throw modalkit::ConfigError(pointer_ + "/class_words", "class \"" + label + "\" has no words of its own name to embed; list some");
      }
      if (!vs.empty()) rows.push_back(at::stack(vs).mean(0));
    }
    if (missing.tellp() > 0) {
      throw modalkit::ConfigError(pointer_ + "/class_words", "words not in the word vectors " + wv.file.string() + ": " +
                                                                  missing.str() + " (list other words for these classes)");
    }
    at::Tensor v = at::stack(rows);
    if (context_ != nullptr) {
      context_->logger().info("coordination: {} class vectors of width {} from {}", v.size(0), v.size(1), wv.file.string());
    }
    return v / v.norm(2, 1, true).clamp_min(1e-12);
  }

  /// Class vectors from the secondary modality: the mean of each class's standardised features
  /// over the train split (every class, seen or not: the space is side information, as the
  /// word vectors are).
  at::Tensor modality_space(modalkit::BatchSource& data) {
    cl::keep_in_eval(space_encoder_);
    const auto [x, y] = cl::standardized_train_features(data, space_kind_, space_, &space_encoder_, *space_std_, task_, "coordination");
    const int64_t c = static_cast<int64_t>(labels_.size());
    const at::Tensor counts = at::bincount(y, {}, c);
    for (int64_t k = 0; k < c; ++k) {
      if (counts[k].item<int64_t>() == 0) {
        throw modalkit::Error("coordination: no train sample of class \"" + labels_[static_cast<size_t>(k)] + "\" has modality \"" +
                              space_ + "\", so the class has no vector in its space");
      }
    }
    at::Tensor v = at::zeros({c, x.size(1)}).index_add_(0, y, x) / counts.unsqueeze(1).to(at::kFloat);
    return v / v.norm(2, 1, true).clamp_min(1e-12);
  }

  modalkit::Context* context_;
  std::string pointer_, primary_, space_, task_;
  std::vector<std::string> unseen_labels_, labels_;
  bool squared_;
  double margin_, weight_, quantile_;
  int64_t d_model_;
  nlohmann::json class_words_;
  cl::Features space_kind_ = cl::Features::kEncoder;
  at::Tensor unseen_;  // [C] bool, from the config (not state)
  at::Tensor class_vectors_, sigma2_, threshold_;
  cl::LateMlp mapping_{nullptr};
  cl::Standardizer space_std_{nullptr};
  modalkit::EncoderRef encoder_, space_encoder_;
  modalkit::FusionRef fusion_;
  std::map<std::string, std::shared_ptr<modalkit::TaskHead>> heads_;
};

}  // namespace

MODALKIT_PLUGIN("coordination", "0.1.0", kManifest, MODALKIT_TRANSFER("coordination", Coordination))
