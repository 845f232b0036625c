// Building a model from a resolved pipeline, and the train / eval loops of the slice.
#pragma once

#include <filesystem>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "dataset.hpp"
#include "loader.hpp"
#include "modalkit/context.hpp"
#include "modalkit/fusion.hpp"
#include "modalkit/strategy.hpp"
#include "pipeline.hpp"
#include "registry.hpp"

namespace spdlog {
class logger;
}

namespace modalkit::host {

/// The host's Context for plugins.
class HostContext : public Context {
 public:
  /// A context for a run of `pipeline` writing to `run_dir` (may be empty).
  HostContext(std::shared_ptr<spdlog::logger> logger, uint64_t seed, c10::Device device,
              std::filesystem::path run_dir, std::map<std::string, std::filesystem::path> artifacts = {});
  spdlog::logger& logger() const override;
  uint64_t seed() const override { return seed_; }
  c10::Device device() const override { return device_; }
  std::filesystem::path run_dir() const override { return run_dir_; }
  std::filesystem::path artifact_path(const std::string& name) const override;
  std::shared_ptr<Component> find_component(const std::string& name) const override;
  /// Registers a component under its instance name for find_component.
  void add_component(const std::string& name, std::shared_ptr<Component> component);

 private:
  std::shared_ptr<spdlog::logger> logger_;
  uint64_t seed_;
  c10::Device device_;
  std::filesystem::path run_dir_;
  std::map<std::string, std::filesystem::path> artifacts_;
  std::map<std::string, std::shared_ptr<Component>> components_;
};

/// The pipeline's `artifacts` (name → path), resolved against the pipeline file's directory.
std::map<std::string, std::filesystem::path> pipeline_artifacts(const ResolvedPipeline& pipeline);

/// Everything built from a pipeline: plugins, the strategy (the whole trainable model), tasks.
struct BuiltModel {
  std::vector<ModalityBinding> modalities;          ///< in pipeline order
  std::shared_ptr<FusionOperator> fusion;           ///< the fusion operator
  std::shared_ptr<TransferStrategy> strategy;       ///< the model
  std::map<std::string, TaskSpec> tasks;            ///< by task name
  std::vector<std::string> train_modalities;        ///< strategy->modalities_at_train()
  std::vector<std::string> test_modalities;         ///< strategy->modalities_at_test()
};

/// Checks what only the data set can tell, every error at once: each task's target exists and
/// has a type its task needs (a label field with 2 labels for binary), its task type is one this
/// host trains; each modality's field exists and has a type its plugin reads (manifest
/// `field_types`); the splits of `/data/splits` exist. Throws schema::ValidationFailed naming the
/// pipeline file, with JSON pointers into the pipeline.
void check_against_dataset(const ResolvedPipeline& pipeline, const Dataset& dataset, const PluginRegistry& registry);

/// Checks each artifact the pipeline names against the type the plugins using it declare in
/// their manifests, and its sha256 against its sidecar (artifacts.hpp); throws naming the first
/// that fails.
void check_pipeline_artifacts(const ResolvedPipeline& pipeline, const PluginRegistry& registry);

/// Task specs from the pipeline, resolved against the data set's fields (label names). Call
/// check_against_dataset first.
std::map<std::string, TaskSpec> resolve_tasks(const nlohmann::json& pipeline, const Dataset& dataset);

/// First half of building `pipeline`'s model: checks it against the data set, resolves the tasks
/// and creates the modality plugins (no networks yet: fit or load_fitted_state comes next).
BuiltModel create_modalities(const ResolvedPipeline& pipeline, PluginRegistry& registry, const Dataset& dataset,
                             HostContext& context);

/// Second half, once the modalities are fitted: encoders, fusion, task heads and the transfer
/// strategy, moved to the context's device.
void build_networks(const ResolvedPipeline& pipeline, PluginRegistry& registry, HostContext& context,
                    BuiltModel& model);

/// Options of `modalkit train`.
struct TrainOptions {
  std::filesystem::path out;  ///< the run directory
  bool skip_bad = false;      ///< drop samples with bad data, count them in results.json
};

/// Trains, keeps the best epoch on validation, evaluates on the evaluation split and writes
/// the run directory. Returns the results JSON (also in results.json).
nlohmann::json train(const ResolvedPipeline& pipeline, PluginRegistry& registry, const TrainOptions& options);

/// Options of `modalkit eval`.
struct EvalOptions {
  std::filesystem::path run;               ///< a run directory written by train
  std::vector<std::string> modalities;     ///< modalities present (empty = the strategy's test set)
  std::string split;                       ///< split to evaluate (empty = pipeline's evaluate.split)
  bool skip_bad = false;                   ///< drop samples with bad data, count them in the result
};

/// Rebuilds the model of a finished run, loads its weights and fitted state, and evaluates.
nlohmann::json evaluate(const ResolvedPipeline& pipeline, PluginRegistry& registry, const EvalOptions& options);

}  // namespace modalkit::host
