// Building a model from a resolved pipeline, and the train / eval loops of the slice.
#pragma once

#include <filesystem>
#include <iosfwd>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "dataset.hpp"
#include "loader.hpp"
#include "modalkit/context.hpp"
#include "modalkit/evaluation.hpp"
#include "modalkit/fusion.hpp"
#include "modalkit/strategy.hpp"
#include "modalkit/stream.hpp"
#include "pipeline.hpp"
#include "registry.hpp"

namespace torch::optim {
class Optimizer;
}

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
/// `/tasks/<task>/class_groups` as class indices: task → group name → its classes' indices.
using ClassGroups = std::map<std::string, std::map<std::string, std::vector<int64_t>>>;

struct BuiltModel {
  std::vector<ModalityBinding> modalities;          ///< in pipeline order
  std::shared_ptr<FusionOperator> fusion;           ///< the fusion operator (none in a stream pipeline)
  std::shared_ptr<BatchStream> stream;              ///< `/data/stream`, when the pipeline has one
  std::shared_ptr<TransferStrategy> strategy;       ///< the model
  std::map<std::string, TaskSpec> tasks;            ///< by task name
  ClassGroups class_groups;                         ///< groups of classes reported on their own
  std::vector<std::string> train_modalities;        ///< strategy->modalities_at_train()
  std::vector<std::string> test_modalities;         ///< strategy->modalities_at_test()
  /// `/evaluate/protocols`: instance name → protocol plugin, in pipeline order.
  std::vector<std::pair<std::string, std::shared_ptr<EvaluationProtocol>>> protocols;
};

/// The data sets of the pipeline's sources, opened, in source order.
std::vector<Dataset> open_datasets(const ResolvedPipeline& pipeline);

/// What identifies a run's data: the data set's sha256, or for a multitask pipeline the sha256
/// of its tasks' data sets' (one line per task), so changing any of them changes it.
std::string data_sha256(const ResolvedPipeline& pipeline, const std::vector<Dataset>& datasets);
/// The same from each source's data set sha256, in source order.
std::string data_sha256(const ResolvedPipeline& pipeline, const std::vector<std::string>& shas);

/// Checks what only the data sets can tell, every error at once: each task's target exists in
/// its data set and has a type its task needs (a label field with 2 labels for binary); each
/// modality's field exists and has a type its plugin reads (manifest `field_types`); each
/// source's splits exist. Throws schema::ValidationFailed naming the pipeline file, with JSON
/// pointers into the pipeline. `datasets`: open_datasets(pipeline).
void check_against_dataset(const ResolvedPipeline& pipeline, const std::vector<Dataset>& datasets,
                           const PluginRegistry& registry);

/// Checks each artifact the pipeline names against the type the plugins using it declare in
/// their manifests, and its sha256 against its sidecar (artifacts.hpp); throws naming the first
/// that fails.
void check_pipeline_artifacts(const ResolvedPipeline& pipeline, const PluginRegistry& registry);

/// Task specs from the pipeline, each resolved against its data set's fields (label names). Call
/// check_against_dataset first.
std::map<std::string, TaskSpec> resolve_tasks(const ResolvedPipeline& pipeline, const std::vector<Dataset>& datasets);
/// The specs of tasks `names` of the pipeline document, resolved against `dataset`.
std::map<std::string, TaskSpec> resolve_tasks(const nlohmann::json& pipeline, const Dataset& dataset,
                                              const std::vector<std::string>& names);

/// The results.json name of class group `group`'s accuracy: `<group>_accuracy`.
std::string group_accuracy_metric(const std::string& group);
/// The class group whose accuracy metric `metric` is; empty when it is no group's.
std::string group_of_metric(const std::string& metric);

/// `/tasks/*/class_groups` resolved against `tasks`' label names (checked by
/// check_against_dataset).
ClassGroups resolve_class_groups(const nlohmann::json& pipeline, const std::map<std::string, TaskSpec>& tasks);

/// First half of building `pipeline`'s model: checks it against the data set, resolves the tasks
/// and creates the modality plugins (no networks yet: fit or load_fitted_state comes next).
BuiltModel create_modalities(const ResolvedPipeline& pipeline, PluginRegistry& registry,
                             const std::vector<Dataset>& datasets, HostContext& context);

/// Second half, once the modalities are fitted: encoders, fusion, task heads and the transfer
/// strategy, moved to the context's device.
void build_networks(const ResolvedPipeline& pipeline, PluginRegistry& registry, HostContext& context,
                    BuiltModel& model);

/// Each sample's value of `field` in `split`, referring into `dataset` (which must outlive
/// them); a sample without the field is a DataError naming its line.
std::vector<FieldRef> stream_values(Dataset& dataset, const std::string& field, const std::string& split);

/// Opens `split` of `dataset` in the stream (each sample's value of `field`); a sample without
/// the field is a DataError naming its line.
void open_stream_split(BatchStream& stream, Dataset& dataset, const std::string& field, const std::string& split);

/// The stream's batches of a split in their fixed evaluation order (epoch 0), for validation
/// loss, the prepare and finalize stages and evaluation.
class StreamSource : public BatchSource {
 public:
  /// Batches of `batch_size` from `stream` (its splits opened), moved to `device`.
  StreamSource(const BatchStream& stream, std::set<std::string> opened, int64_t batch_size, c10::Device device)
      : stream_(stream), opened_(std::move(opened)), batch_size_(batch_size), device_(device) {}
  void for_each(const std::string& split, const std::vector<std::string>& modalities,
                const std::function<void(const Batch&)>& fn) override;
  bool has_split(const std::string& split) const override { return opened_.count(split) != 0; }

 private:
  const BatchStream& stream_;
  std::set<std::string> opened_;
  int64_t batch_size_;
  c10::Device device_;
};

/// The model's mean loss per example on `split` (each term and their sum), in eval mode without
/// gradients: `{"split", "samples", "loss", "loss_terms"}`. What task-less runs select and report on.
nlohmann::json loss_on(TransferStrategy& model, BatchSource& data, const std::string& split,
                       const std::vector<std::string>& modalities);

/// Batches of the splits a run holds in memory, in a fixed order (for prepare/finalize stages
/// and evaluation).
class SplitSource : public BatchSource {
 public:
  /// Batches of `batch_size` from `splits` (by name), moved to `device`; `all_modalities` is
  /// what an empty modality list means.
  SplitSource(std::map<std::string, const SplitFeatures*> splits, int64_t batch_size,
              std::vector<std::string> all_modalities, c10::Device device);
  /// A multitask run's: each split name → every task's features of it, iterated in turn; a
  /// batch holds only the asked-for modalities its data set has.
  SplitSource(std::map<std::string, std::vector<const SplitFeatures*>> splits, int64_t batch_size,
              std::vector<std::string> all_modalities, c10::Device device);
  void for_each(const std::string& split, const std::vector<std::string>& modalities,
                const std::function<void(const Batch&)>& fn) override;
  bool has_split(const std::string& split) const override { return splits_.count(split) != 0; }

 private:
  std::map<std::string, std::vector<const SplitFeatures*>> splits_;
  int64_t batch_size_;
  std::vector<std::string> all_;
  c10::Device device_;
};

/// What a run reports on a held-out split: the tasks' metrics (HeldOutProtocol), or, for a
/// task-less run, its loss (loss_on) with `tasks: {}`; then each of the pipeline's evaluation
/// protocols under `protocols.<name>`. `modalities`: those present.
nlohmann::json held_out_figures(const BuiltModel& model, BatchSource& data, const std::string& split,
                                const std::vector<std::string>& modalities);

/// A generation task's output as text, a string per row: `ids` are the piece ids predict() gave
/// (`[N, T]`, -1 after each row's end), decoded with the tokenizer of the strategy's language
/// model (a PluginError when it has none or the shape is wrong).
std::vector<std::string> generated_texts(TransferStrategy& model, const std::string& task, const at::Tensor& ids);

/// A generation task's texts on a split, scored as they are generated: `accuracy` (the text names
/// the sample's class, as the captioning protocol scores) and `exact_match` (its words are the
/// reference caption's: the strategy's caption of the class).
struct GeneratedText {
  int64_t right = 0, exact_matches = 0, n = 0;
  nlohmann::json examples = nlohmann::json::array();  ///< the first 10 texts with their class
  /// Scores the batch's texts (`ids` from predict, `y` the class indices).
  void add(TransferStrategy& model, const std::string& task, const at::Tensor& ids, const at::Tensor& y);
  /// The task's metrics.
  nlohmann::json metrics(const TaskSpec& spec) const;
};

/// The built-in protocol: predictions on every sample of a held-out split, then the task's
/// metrics. Other protocols (zero-shot, captioning, few-shot) come as plugins.
class HeldOutProtocol : public EvaluationProtocol {
 public:
  /// `groups`: classes whose accuracy is also reported on its own, as `<group>_accuracy` (the
  /// share of the group's samples classified correctly, among all classes).
  explicit HeldOutProtocol(std::map<std::string, TaskSpec> tasks, ClassGroups groups = {})
      : tasks_(std::move(tasks)), groups_(std::move(groups)) {}
  nlohmann::json evaluate(TransferStrategy& model, BatchSource& data, const std::string& split,
                          const std::vector<std::string>& modalities) override;

 private:
  std::map<std::string, TaskSpec> tasks_;
  ClassGroups groups_;
};

// Pieces shared by train, eval and the commands built on them.

/// Writes `text` to a temporary file beside `path`, then renames it over `path`.
void write_text_atomically(const std::filesystem::path& path, const std::string& text);
/// Flushes a file's data to disk.
void fsync_file(const std::filesystem::path& path);
/// Saves `model`'s parameters and buffers atomically (temporary file, fsync, rename).
void save_weights(torch::nn::Module& model, const std::filesystem::path& path);
/// Loads weights saved by save_weights; an Error names the file when they do not fit.
void load_weights(torch::nn::Module& model, const std::filesystem::path& path);
/// Whether a larger value of `metric` is better.
bool higher_is_better(const std::string& metric);
/// The rows of a training split of `n` samples whose labels a run with `fraction` uses.
std::vector<int64_t> label_subset(int64_t n, double fraction, uint64_t seed);
/// The optimiser of `/train/optimizer` over the trainable groups.
std::unique_ptr<torch::optim::Optimizer> make_optimizer(const nlohmann::json& opt,
                                                        const std::vector<ParameterGroup>& groups);
/// The device of `/train/device`; an Error when it cannot be used.
c10::Device device_of(const nlohmann::json& doc);
/// Seeds LibTorch, fixes its thread count and, in deterministic mode, asks for deterministic kernels.
void configure_runtime(const nlohmann::json& doc);
/// Plugin name → version, library sha256 and ABI, for every plugin `doc` uses.
nlohmann::json plugin_versions(const PluginRegistry& registry, const nlohmann::json& doc);
/// Modalities a training run loads: the strategy's train and test sets and `/evaluate/modalities`.
std::vector<std::string> needed_modalities(const BuiltModel& model, const nlohmann::json& doc);
/// The model's bindings of `names`, in pipeline order.
std::vector<ModalityBinding> bindings_for(const BuiltModel& model, const std::vector<std::string>& names);
/// Those of `names` that `source` holds, each reading its field in the source's data set.
std::vector<ModalityBinding> source_bindings(const BuiltModel& model, const DataSource& source,
                                             const std::vector<std::string>& names);
/// The specs of the tasks whose targets `source` holds.
std::map<std::string, TaskSpec> source_tasks(const BuiltModel& model, const DataSource& source);
/// Logs what --skip-bad left out of a split; returns the count.
int64_t report_skipped(const std::string& split, const SplitFeatures& f);

class ProcessGroup;

/// Options of `modalkit train`.
struct TrainOptions {
  std::filesystem::path out;  ///< the run directory
  bool skip_bad = false;      ///< drop samples with bad data, count them in results.json
  bool resume = false;        ///< continue the run in `out` from its checkpoint (same pipeline and plugins)
  /// A data-parallel run's process group (distributed.hpp), or null for one process. Every rank
  /// trains on its shard of each global batch of `/train/batch_size`; rank 0 alone validates,
  /// writes `out` and evaluates.
  ProcessGroup* group = nullptr;
};

/// Trains (or, with `resume`, continues from `out/checkpoint.pt`), keeps the best or last epoch
/// as `/train/select` says, evaluates on the evaluation split and writes the run directory. Returns the results JSON (also in results.json).
nlohmann::json train(const ResolvedPipeline& pipeline, PluginRegistry& registry, const TrainOptions& options);

/// Options of `modalkit eval`.
struct EvalOptions {
  std::filesystem::path run;               ///< a run directory written by train
  std::vector<std::string> modalities;     ///< modalities present (empty = the strategy's test set)
  std::string split;                       ///< split to evaluate (empty = pipeline's evaluate.split)
  bool skip_bad = false;                   ///< drop samples with bad data, count them in the result
  bool robustness = false;                 ///< sweep perturbation levels and missing modalities
  std::filesystem::path reference;         ///< robustness: a run whose robustness.json is the reference curve
};

/// Rebuilds the model of a finished run, loads its weights and fitted state, and evaluates;
/// with `robustness`, also sweeps each modality's perturbation over `/evaluate/robustness/levels`
/// levels and each modality missing, and reports MultiBench's relative and effective robustness
/// (written to RUN/robustness.json as well).
nlohmann::json evaluate(const ResolvedPipeline& pipeline, PluginRegistry& registry, const EvalOptions& options);

/// A finished run opened for use: the model rebuilt from `pipeline`, its fitted state and weights
/// loaded (plugin versions checked against the run's).
struct OpenedRun {
  nlohmann::json run;                       ///< run.json
  std::vector<Dataset> datasets;            ///< the pipeline's data sets, one per source
  std::unique_ptr<HostContext> context;     ///< outlives the plugins that point to it
  BuiltModel model;                         ///< with weights loaded
  c10::Device device{c10::kCPU};
  bool same_pipeline = true;                ///< the pipeline's hash equals the run's
};

/// Restores what fit learned in the run in `run_dir` (its fitted_state.json) into the model's
/// modality plugins and stream; errors name the file.
void restore_fitted_state(const BuiltModel& model, const std::filesystem::path& run_dir);

/// Opens the run in `run_dir` under `pipeline`.
OpenedRun open_run(const ResolvedPipeline& pipeline, PluginRegistry& registry, const std::filesystem::path& run_dir);

/// The robustness sweep of an opened run on `split` with `modalities` present (see evaluate).
nlohmann::json robustness_sweep(const ResolvedPipeline& pipeline, OpenedRun& run, const std::string& split,
                                const std::vector<std::string>& modalities, const EvalOptions& options);

/// Predictions of the run for the samples in `input` (JSONL with the fields of the modalities
/// the model tests with; relative paths resolve against its directory): one JSON line per
/// sample on `out` (label and class probabilities, or a value). Returns the sample count.
int64_t predict(const ResolvedPipeline& pipeline, PluginRegistry& registry, const std::filesystem::path& run_dir,
                const std::filesystem::path& input, std::ostream& out);

/// Writes the run's weights (parameters and buffers, named as registered) to `out` as
/// safetensors; returns a summary (file, tensor and value counts).
nlohmann::json export_weights(const ResolvedPipeline& pipeline, PluginRegistry& registry,
                              const std::filesystem::path& run_dir, const std::filesystem::path& out);

}  // namespace modalkit::host
