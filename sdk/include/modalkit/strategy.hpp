/// \file
/// The transfer strategy interface: how encoders, fusion and heads become a trainable model.
#pragma once

#include <algorithm>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <torch/nn/module.h>

#include "modalkit/batch.hpp"
#include "modalkit/component.hpp"
#include "modalkit/config.hpp"
#include "modalkit/errors.hpp"
#include "modalkit/fusion.hpp"
#include "modalkit/modality.hpp"
#include "modalkit/task.hpp"

namespace modalkit {

/// A plugin-made encoder with its plugin's name: calling it runs the encoder under
/// modalkit::guard (errors read `plugin image: ...`) and clears the mask of absent samples.
class EncoderRef {
 public:
  EncoderRef() = default;
  /// Wraps `module`, made by `plugin`.
  EncoderRef(std::shared_ptr<Encoder> module, std::string plugin);
  /// Encodes `input` → sequence whose mask is false for absent samples.
  Sequence operator()(const ModalityInput& input) const;
  /// The module, for registering it under the strategy.
  const std::shared_ptr<Encoder>& module() const noexcept { return module_; }
  /// The plugin that made it.
  const std::string& plugin() const noexcept { return plugin_; }

 private:
  std::shared_ptr<Encoder> module_;
  std::string plugin_;
};

/// A plugin-made fusion operator with its plugin's name (calls are guarded like EncoderRef's).
class FusionRef {
 public:
  FusionRef() = default;
  /// Wraps `module`, made by `plugin`.
  FusionRef(std::shared_ptr<FusionOperator> module, std::string plugin);
  /// Fuses the sequences.
  Sequence operator()(const std::map<std::string, Sequence>& inputs) const;
  /// The module, for registering it under the strategy.
  const std::shared_ptr<FusionOperator>& module() const noexcept { return module_; }

 private:
  std::shared_ptr<FusionOperator> module_;
  std::string plugin_;
};

/// What the host built from the pipeline and hands to the strategy.
struct ModelParts {
  /// Modality name → its encoder.
  std::map<std::string, EncoderRef> encoders;
  /// The fusion operator (none for a strategy whose manifest says `uses_fusion: false`).
  FusionRef fusion;
  /// Task name → its head (input width = the fusion's output width, or d_model without fusion).
  std::map<std::string, std::shared_ptr<TaskHead>> heads;
  /// The pipeline's d_model.
  int64_t d_model = 64;
  /// Task name → its spec: every task of the pipeline, including generation tasks, which have
  /// no head (their text comes from a language model). Since ABI 1.3.
  std::map<std::string, TaskSpec> tasks;
};

/// Registers `parts` under `owner` with stable checkpoint names: `encoders.<modality>.*` (only
/// those in `modalities`; all when empty), `fusion.*` (when there is a fusion operator) and
/// `heads.<task>.*`. Every strategy
/// calls this from build() so that checkpoints and `init_from` patterns read the same.
void register_parts(torch::nn::Module& owner, const ModelParts& parts,
                    const std::vector<std::string>& modalities = {});

/// Named loss terms ("task/label", "translation", "cycle", ...). The host minimises their sum
/// and logs each one.
using LossTerms = std::map<std::string, at::Tensor>;
/// Task name → outputs of its head (logits or values).
using Predictions = std::map<std::string, at::Tensor>;

/// A set of parameters trained together.
struct ParameterGroup {
  /// Name shown in logs ("encoders", "lm", ...).
  std::string name;
  /// The parameters.
  std::vector<at::Tensor> parameters;
  /// Learning rate; the pipeline's `train.optimizer.lr` when unset.
  std::optional<double> lr;
  /// Frozen groups get no gradient and no optimiser state.
  bool frozen = false;
};

/// Batches of one split, for the prepare and finalize stages and evaluation protocols.
class BatchSource {
 public:
  virtual ~BatchSource();
  /// Calls `fn` on every batch of `split` ("train", "val", "test"), in a fixed order, with only
  /// `modalities` present (empty = all the pipeline's modalities).
  virtual void for_each(const std::string& split, const std::vector<std::string>& modalities,
                        const std::function<void(const Batch&)>& fn) = 0;
  /// Whether `split` can be iterated (a run loads only the splits it uses). The default, for
  /// sources that do not say, is true: for_each then names a missing split. Since ABI 1.3.
  virtual bool has_split(const std::string& split) const;
};

/// The strategy config's `modalities` (default: all of the pipeline's), each checked to be one
/// of the pipeline's; a ConfigError at `<config>/modalities` otherwise. Inline: no new SDK symbol.
inline std::vector<std::string> configured_modalities(const CreateArgs& args) {
  auto out = args.config.get_or<std::vector<std::string>>("modalities", args.modalities);
  for (const auto& m : out) {
    if (std::find(args.modalities.begin(), args.modalities.end(), m) == args.modalities.end()) {
      throw ConfigError(args.config.pointer() + "/modalities", "\"" + m + "\" is not one of the pipeline's modalities");
    }
  }
  return out;
}

/// One loss term per task, `task/<name>`: each head's loss on its outputs in `predictions`
/// against the batch's targets. Inline: no new SDK symbol.
inline LossTerms task_losses(const std::map<std::string, std::shared_ptr<TaskHead>>& heads,
                             const Predictions& predictions, const Batch& batch) {
  LossTerms terms;
  for (const auto& [task, outputs] : predictions) {
    terms["task/" + task] = heads.at(task)->loss(outputs, batch.targets.at(task));
  }
  return terms;
}

/// A transfer strategy: owns the maths of a method (its losses and predictions); the host owns
/// the loop. Register everything trainable as submodules (names become checkpoint keys) and
/// keep stage state (prepare/finalize) in registered buffers, so it is saved with the model.
class TransferStrategy : public Component, public torch::nn::Module {
 public:
  ~TransferStrategy() override;
  /// Assembles the model from the parts the host built. Called once, before anything else.
  virtual void build(const ModelParts& parts) = 0;
  /// The named loss terms on a training batch.
  virtual LossTerms loss(const Batch& batch) = 0;
  /// Outputs per task on a batch that holds modalities_at_test().
  virtual Predictions predict(const Batch& batch) = 0;
  /// Parameter groups; the default is one trainable group "all" with every parameter.
  virtual std::vector<ParameterGroup> parameter_groups();
  /// Modalities the strategy needs in training batches.
  virtual std::vector<std::string> modalities_at_train() const = 0;
  /// Modalities it needs at test time (the primary only, for co-learning methods).
  virtual std::vector<std::string> modalities_at_test() const = 0;
  /// Runs before training (load word vectors, fit k-means, freeze an LM). Default: nothing.
  virtual void prepare(BatchSource& data);
  /// Runs after training (fit thresholds on validation data). Default: nothing.
  virtual void finalize(BatchSource& data);
};

}  // namespace modalkit
