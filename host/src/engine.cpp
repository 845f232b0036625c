#include "engine.hpp"

#include "artifacts.hpp"
#include "safetensors.hpp"
#include "torchscript_encoder.hpp"

#include <fcntl.h>
#include <unistd.h>

#include <chrono>
#include <fstream>
#include <numeric>
#include <optional>
#include <random>
#include <set>

#include <ATen/Context.h>
#include <spdlog/spdlog.h>
#include <torch/optim/adam.h>
#include <torch/optim/adamw.h>
#include <torch/optim/sgd.h>
#include <torch/serialize/input-archive.h>
#include <torch/serialize/output-archive.h>
#include <torch/cuda.h>
#include <torch/nn/utils/clip_grad.h>
#include <torch/utils.h>

#include "hashing.hpp"
#include "interrupt.hpp"
#include "metrics.hpp"
#include "schema/json_schema.hpp"
#include "schema/pipeline.hpp"
#include "modalkit/errors.hpp"
#include "modalkit/evaluation.hpp"
#include "modalkit/language_model.hpp"

namespace modalkit::host {

namespace fs = std::filesystem;

HostContext::HostContext(std::shared_ptr<spdlog::logger> logger, uint64_t seed, c10::Device device,
                         fs::path run_dir, std::map<std::string, fs::path> artifacts)
    : logger_(std::move(logger)),
      seed_(seed),
      device_(device),
      run_dir_(std::move(run_dir)),
      artifacts_(std::move(artifacts)) {}

spdlog::logger& HostContext::logger() const { return *logger_; }

fs::path HostContext::artifact_path(const std::string& name) const {
  auto it = artifacts_.find(name);
  if (it != artifacts_.end()) return it->second;
  std::vector<std::string> declared;
  for (const auto& [n, p] : artifacts_) declared.push_back(n);
  throw Error("artifact \"" + name + "\" is not declared in the pipeline's /artifacts (declared: " +
              schema::join_names(declared) + ")");
}

std::map<std::string, fs::path> pipeline_artifacts(const ResolvedPipeline& pipeline) {
  std::map<std::string, fs::path> out;
  for (const auto& [name, path] : pipeline.doc.at("artifacts").items()) {
    fs::path p = path.get<std::string>();
    out.emplace(name, p.is_absolute() ? p : pipeline.base_dir / p);
  }
  return out;
}

std::shared_ptr<Component> HostContext::find_component(const std::string& name) const {
  auto it = components_.find(name);
  return it == components_.end() ? nullptr : it->second;
}

void HostContext::add_component(const std::string& name, std::shared_ptr<Component> component) {
  components_[name] = std::move(component);
}

namespace {

std::optional<std::string> pin_of(const nlohmann::json& component) {
  if (component.contains("sha256")) return component.at("sha256").get<std::string>();
  return std::nullopt;
}

}  // namespace

SplitSource::SplitSource(std::map<std::string, const SplitFeatures*> splits, int64_t batch_size,
                         std::vector<std::string> all_modalities, c10::Device device)
    : batch_size_(batch_size), all_(std::move(all_modalities)), device_(device) {
  for (const auto& [name, f] : splits) splits_[name].push_back(f);
}

SplitSource::SplitSource(std::map<std::string, std::vector<const SplitFeatures*>> splits, int64_t batch_size,
                         std::vector<std::string> all_modalities, c10::Device device)
    : splits_(std::move(splits)), batch_size_(batch_size), all_(std::move(all_modalities)), device_(device) {}

void SplitSource::for_each(const std::string& split, const std::vector<std::string>& modalities,
                           const std::function<void(const Batch&)>& fn) {
  auto it = splits_.find(split);
  if (it == splits_.end()) throw Error("split \"" + split + "\" is not loaded in this run");
  const auto& wanted = modalities.empty() ? all_ : modalities;
  for (const SplitFeatures* f : it->second) {  // a multitask run: each task's data set in turn
    const std::vector<std::string> mods = f->held(wanted);
    for (int64_t start = 0; start < f->size(); start += batch_size_) {
      std::vector<int64_t> rows;
      for (int64_t r = start; r < std::min(f->size(), start + batch_size_); ++r) rows.push_back(r);
      fn(f->batch(rows, mods).to(device_));
    }
  }
}

std::vector<FieldRef> stream_values(Dataset& dataset, const std::string& field, const std::string& split) {
  const auto& samples = dataset.samples(split);
  std::vector<FieldRef> values;
  values.reserve(samples.size());
  for (const auto& s : samples) {
    const auto it = s.fields.find(field);
    if (it == s.fields.end()) throw DataError(s.origin, "no field \"" + field + "\" (read by the stream, /data/stream/field)");
    values.push_back(FieldRef{*it, dataset.base_dir(), s.origin});
  }
  return values;
}

void open_stream_split(BatchStream& stream, Dataset& dataset, const std::string& field, const std::string& split) {
  const std::vector<FieldRef> values = stream_values(dataset, field, split);
  guard(stream.plugin_name(), [&] { stream.open(split, values); });
}

void StreamSource::for_each(const std::string& split, const std::vector<std::string>& /*modalities*/,
                            const std::function<void(const Batch&)>& fn) {
  const int64_t n = guard(stream_.plugin_name(), [&] { return stream_.batches(split, batch_size_); });
  for (int64_t i = 0; i < n; ++i) {
    fn(guard(stream_.plugin_name(), [&] { return stream_.batch(split, /*epoch=*/0, i, batch_size_); }).to(device_));
  }
}

nlohmann::json loss_on(TransferStrategy& model, BatchSource& data, const std::string& split,
                       const std::vector<std::string>& modalities) {
  torch::NoGradGuard no_grad;
  const bool was_training = model.is_training();
  model.eval();
  std::map<std::string, double> sums;
  double total = 0;
  int64_t count = 0;
  data.for_each(split, modalities, [&](const Batch& batch) {
    const LossTerms terms = guard(model.plugin_name(), [&] { return model.loss(batch); });
    const auto n = static_cast<double>(batch.size());
    for (const auto& [name, t] : terms) {
      const double v = t.item<double>();
      sums[name] += v * n;  // terms are means over the batch; weight by its size
      total += v * n;
    }
    count += batch.size();
  });
  model.train(was_training);
  if (count == 0) throw Error("split \"" + split + "\" has no batches to compute a loss on");
  nlohmann::json terms = nlohmann::json::object();
  for (const auto& [name, sum] : sums) terms[name] = sum / static_cast<double>(count);
  return {{"split", split}, {"samples", count}, {"loss", total / static_cast<double>(count)}, {"loss_terms", terms}};
}

namespace {

/// The strategy's language-model side, which a generation task's output is read through.
ConditionedLanguageModel& text_model(TransferStrategy& model, const std::string& task) {
  auto* c = dynamic_cast<ConditionedLanguageModel*>(&model);
  if (c == nullptr) {
    throw PluginError(model.plugin_name(), "task " + task + " is a generation task, but the strategy does not condition a "
                                           "language model, so its output cannot be read as text");
  }
  return *c;
}

}  // namespace

std::vector<std::string> generated_texts(TransferStrategy& model, const std::string& task, const at::Tensor& ids) {
  if (ids.dim() != 2 || ids.scalar_type() != at::kLong) {
    throw PluginError(model.plugin_name(), "predict() for generation task " + task + " gave " + c10::str(ids.sizes()) + " " +
                                               std::string(c10::toString(ids.scalar_type())) +
                                               ", expected int64 piece ids [N, T] padded with -1");
  }
  const Tokenizer& tokenizer = text_model(model, task).tokenizer();
  const at::Tensor rows = ids.to(at::kCPU).contiguous();  // once per batch, not per row
  std::vector<std::string> out;
  for (int64_t r = 0; r < rows.size(0); ++r) out.push_back(tokenizer.decode(generated_row(rows, r)));
  return out;
}

void GeneratedText::add(TransferStrategy& model, const std::string& task, const at::Tensor& ids, const at::Tensor& y) {
  const ConditionedLanguageModel& c = text_model(model, task);
  const std::vector<std::string> texts = generated_texts(model, task, ids);
  const at::Tensor truth = y.to(at::kCPU).to(at::kLong);
  for (int64_t r = 0; r < truth.size(0); ++r) {
    const int64_t label = truth[r].item<int64_t>();
    const std::string& text = texts.at(static_cast<size_t>(r));
    const bool named = mentioned_class(text, c.class_names()) == label;
    const bool exact = caption_words(text) == caption_words(c.caption(label));
    right += named ? 1 : 0;
    exact_matches += exact ? 1 : 0;
    ++n;
    if (examples.size() < 10) examples.push_back({{"class", c.class_names().at(static_cast<size_t>(label))}, {"text", text}, {"right", named}});
  }
}

nlohmann::json GeneratedText::metrics(const TaskSpec& spec) const {
  nlohmann::json out = nlohmann::json::object();
  const double total = static_cast<double>(std::max<int64_t>(n, 1));
  for (const auto& name : spec.metrics) {
    if (name == "accuracy") out[name] = static_cast<double>(right) / total;
    else if (name == "exact_match") out[name] = static_cast<double>(exact_matches) / total;
    else throw Error("task " + spec.name + ": " + schema::metric_mismatch(name, "generation"));
  }
  return out;
}

nlohmann::json HeldOutProtocol::evaluate(TransferStrategy& model, BatchSource& data, const std::string& split,
                                         const std::vector<std::string>& modalities) {
  torch::NoGradGuard no_grad;
  const bool was_training = model.is_training();
  model.eval();
  std::map<std::string, std::vector<at::Tensor>> outputs, targets;
  std::map<std::string, GeneratedText> generated;
  std::map<std::string, int64_t> task_samples;  // rows, counted per batch below
  int64_t count = 0;
  data.for_each(split, modalities, [&](const Batch& batch) {
    Predictions p = guard(model.plugin_name(), [&] { return model.predict(batch); });
    for (const auto& [task, spec] : tasks_) {
      if (!batch.targets.count(task)) continue;  // a multitask run: another task's data set
      if (!p.count(task)) throw PluginError(model.plugin_name(), "predict() gave no output for task " + task);
      task_samples[task] += batch.size();
      if (spec.type == TaskType::kGeneration) {
        generated[task].add(model, task, p.at(task), batch.targets.at(task));
        continue;
      }
      outputs[task].push_back(p.at(task).to(at::kCPU));
      targets[task].push_back(batch.targets.at(task).to(at::kCPU));
    }
    count += batch.size();
  });
  model.train(was_training);
  nlohmann::json out = {{"split", split}, {"samples", count}, {"modalities", modalities}, {"tasks", nlohmann::json::object()}};
  bool partial = false;  // some batches held only some tasks (a multitask run): say how many each had
  for (const auto& [task, spec] : tasks_) {
    if (task_samples[task] == 0) throw Error("task " + task + " has no samples in split \"" + split + "\"");
    partial = partial || task_samples[task] != count;
  }
  if (partial) out["task_samples"] = task_samples;
  for (const auto& [task, spec] : tasks_) {
    if (spec.type == TaskType::kGeneration) {
      out["tasks"][task] = generated[task].metrics(spec);
      out["examples"][task] = generated[task].examples;
      continue;
    }
    const at::Tensor o = at::cat(outputs[task]), y = at::cat(targets[task]);
    const int64_t k = static_cast<int64_t>(spec.labels.size());
    if ((spec.type == TaskType::kMulticlass || spec.type == TaskType::kMultilabel) && (o.dim() != 2 || o.size(1) != k)) {
      throw PluginError(model.plugin_name(), "predict() for task " + task + " gave outputs " + c10::str(o.sizes()) +
                                                 ", expected [N, " + std::to_string(k) + "] (one logit per label)");
    }
    if ((spec.type == TaskType::kBinary || spec.type == TaskType::kRegression) && o.dim() != 1) {
      // [N, 1] against targets [N] would broadcast to [N, N] in the metrics: a wrong number, silently.
      throw PluginError(model.plugin_name(), "predict() for task " + task + " gave outputs " + c10::str(o.sizes()) +
                                                 ", expected [N] (one value per sample)");
    }
    out["tasks"][task] = compute_metrics(spec, o, y);
    if (spec.type == TaskType::kMulticlass || spec.type == TaskType::kBinary) {
      // Rows: true class; columns: predicted class (for reports).
      std::vector<std::vector<int64_t>> m(static_cast<size_t>(k), std::vector<int64_t>(static_cast<size_t>(k), 0));
      const at::Tensor pred = predicted_classes(spec, o).to(at::kLong).contiguous(), truth = y.to(at::kLong).contiguous();
      const int64_t* p = pred.data_ptr<int64_t>();
      const int64_t* t = truth.data_ptr<int64_t>();
      for (int64_t i = 0; i < truth.size(0); ++i) ++m.at(static_cast<size_t>(t[i])).at(static_cast<size_t>(p[i]));
      out["confusion"][task] = {{"labels", spec.labels}, {"matrix", m}};
      const auto g = groups_.find(task);
      for (const auto& [group, classes] : g == groups_.end() ? std::map<std::string, std::vector<int64_t>>{} : g->second) {
        int64_t right = 0, all = 0;
        for (int64_t c : classes) {
          right += m.at(static_cast<size_t>(c)).at(static_cast<size_t>(c));
          for (int64_t n : m.at(static_cast<size_t>(c))) all += n;
        }
        // No sample of the group in this split: no figure (null), not a made-up 0.
        out["tasks"][task][group_accuracy_metric(group)] = all > 0 ? nlohmann::json(static_cast<double>(right) / static_cast<double>(all)) : nlohmann::json();
      }
    }
  }
  return out;
}

void write_text_atomically(const fs::path& path, const std::string& text) {
  const fs::path tmp = path.string() + ".tmp";
  {
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    if (!out) throw Error(tmp.string() + ": cannot write");
    out << text;
    if (!out.flush()) throw Error(tmp.string() + ": write failed");
  }
  fs::rename(tmp, path);
}

void fsync_file(const fs::path& path) {
  const int fd = ::open(path.c_str(), O_RDONLY);
  if (fd >= 0) {
    ::fsync(fd);
    ::close(fd);
  }
}

/// Temporary file, fsync, rename: a crash leaves either the old checkpoint or the new one.
void save_weights(torch::nn::Module& model, const fs::path& path) {
  const fs::path tmp = path.string() + ".tmp";
  torch::serialize::OutputArchive archive;
  model.save(archive);
  archive.save_to(tmp.string());
  fsync_file(tmp);
  fs::rename(tmp, path);
}

void load_weights(torch::nn::Module& model, const fs::path& path) {
  if (!fs::exists(path)) throw Error(path.string() + ": no weights (was the run trained to the end?)");
  try {
    torch::serialize::InputArchive archive;
    archive.load_from(path.string());
    model.load(archive);
  } catch (const c10::Error& e) {
    throw Error(path.string() + ": weights do not fit this pipeline's model: " + e.what_without_backtrace());
  }
}

bool higher_is_better(const std::string& metric) { return metric != "mae" && metric != "loss"; }

std::vector<int64_t> label_subset(int64_t n, double fraction, uint64_t seed) {
  std::vector<int64_t> rows(static_cast<size_t>(n));
  std::iota(rows.begin(), rows.end(), 0);
  if (fraction >= 1.0) return rows;
  std::mt19937_64 rng(seed ^ 0x6c6162656cULL);  // "label": its own stream, independent of shuffling
  std::shuffle(rows.begin(), rows.end(), rng);
  rows.resize(static_cast<size_t>(std::max<int64_t>(1, std::llround(fraction * static_cast<double>(n)))));
  std::sort(rows.begin(), rows.end());
  return rows;
}

std::unique_ptr<torch::optim::Optimizer> make_optimizer(const nlohmann::json& opt,
                                                        const std::vector<ParameterGroup>& groups) {
  const std::string name = opt.at("name");
  const double lr = opt.at("lr"), wd = opt.at("weight_decay"), momentum = opt.at("momentum");
  std::vector<torch::optim::OptimizerParamGroup> params;
  for (const auto& g : groups) {
    if (g.frozen) continue;
    const double group_lr = g.lr.value_or(lr);
    if (name == "adam") {
      params.emplace_back(g.parameters, std::make_unique<torch::optim::AdamOptions>(
                                            torch::optim::AdamOptions(group_lr).weight_decay(wd)));
    } else if (name == "adamw") {
      params.emplace_back(g.parameters, std::make_unique<torch::optim::AdamWOptions>(
                                            torch::optim::AdamWOptions(group_lr).weight_decay(wd)));
    } else {
      params.emplace_back(g.parameters, std::make_unique<torch::optim::SGDOptions>(
                                            torch::optim::SGDOptions(group_lr).weight_decay(wd).momentum(momentum)));
    }
  }
  if (params.empty()) throw Error("every parameter group is frozen: nothing to train");
  if (name == "adam") return std::make_unique<torch::optim::Adam>(params, torch::optim::AdamOptions(lr));
  if (name == "adamw") return std::make_unique<torch::optim::AdamW>(params, torch::optim::AdamWOptions(lr));
  return std::make_unique<torch::optim::SGD>(params, torch::optim::SGDOptions(lr));
}

c10::Device device_of(const nlohmann::json& doc) {
  const std::string d = doc.at("train").at("device");
  c10::Device device(d);
  if (device.is_cuda() && !torch::cuda::is_available()) {
    throw Error("/train/device: \"" + d + "\" requested, but this LibTorch build has no usable CUDA device");
  }
  return device;
}

/// Seeds LibTorch, fixes its thread count and, in deterministic mode, asks it for
/// deterministic kernels (warning where an operation has none) so reruns give the same bits.
void configure_runtime(const nlohmann::json& doc) {
  torch::manual_seed(doc.at("seed").get<uint64_t>());
  at::set_num_threads(doc.at("train").at("threads").get<int>());
  at::globalContext().setDeterministicAlgorithms(doc.at("train").at("deterministic").get<bool>(),
                                                 /*warn_only=*/true);
}

nlohmann::json plugin_versions(const PluginRegistry& registry, const nlohmann::json& doc) {
  nlohmann::json out = nlohmann::json::object();
  auto add = [&](const std::string& name) {
    const LoadedPlugin& lp = const_cast<PluginRegistry&>(registry).load(name);
    out[name] = {{"version", lp.manifest.version}, {"sha256", lp.sha256},
                 {"abi", std::to_string(lp.descriptor->abi_major) + "." + std::to_string(lp.descriptor->abi_minor)}};
  };
  for (const auto& [m, spec] : doc.at("modalities").items()) add(spec.at("plugin"));
  if (doc.contains("fusion")) add(doc.at("fusion").at("plugin"));
  if (doc.at("data").contains("stream")) add(doc.at("data").at("stream").at("plugin"));
  add(doc.at("transfer").at("plugin"));
  for (const auto& [name, spec] : evaluation_protocols(doc).items()) add(spec.at("plugin"));
  return out;
}

/// Modalities a training run loads: those the strategy trains and tests with, and those the
/// pipeline's final evaluation asks for.
std::vector<std::string> needed_modalities(const BuiltModel& model, const nlohmann::json& doc) {
  std::set<std::string> s(model.train_modalities.begin(), model.train_modalities.end());
  s.insert(model.test_modalities.begin(), model.test_modalities.end());
  if (doc.at("evaluate").contains("modalities")) {
    for (const auto& m : doc.at("evaluate").at("modalities")) s.insert(m.get<std::string>());
  }
  std::vector<std::string> out;
  for (const auto& m : model.modalities) {
    if (s.count(m.name)) out.push_back(m.name);
  }
  return out;
}

std::vector<ModalityBinding> bindings_for(const BuiltModel& model, const std::vector<std::string>& names) {
  std::vector<ModalityBinding> out;
  for (const auto& m : model.modalities) {
    if (std::find(names.begin(), names.end(), m.name) != names.end()) out.push_back(m);
  }
  return out;
}

std::vector<ModalityBinding> source_bindings(const BuiltModel& model, const DataSource& source,
                                             const std::vector<std::string>& names) {
  std::vector<ModalityBinding> out;
  for (ModalityBinding b : bindings_for(model, names)) {
    const auto it = source.fields.find(b.name);
    if (it == source.fields.end()) continue;  // this task does not see the modality
    b.field = it->second;
    out.push_back(std::move(b));
  }
  return out;
}

std::map<std::string, TaskSpec> source_tasks(const BuiltModel& model, const DataSource& source) {
  std::map<std::string, TaskSpec> out;
  for (const auto& t : source.tasks) out.emplace(t, model.tasks.at(t));
  return out;
}


namespace {

/// check_against_dataset for one data source: its tasks' targets, its modalities' fields, its
/// splits; errors are appended, pointing where the pipeline names each.
void check_source(const ResolvedPipeline& pipeline, const DataSource& source, const Dataset& dataset,
                  const PluginRegistry& registry, std::vector<schema::SchemaError>& errors) {
  const nlohmann::json& doc = pipeline.doc;
  const nlohmann::json& fields = dataset.doc().at("fields");
  const std::string where = " of " + dataset.file().string();
  for (const auto& name : source.tasks) {
    const nlohmann::json& t = doc.at("tasks").at(name);
    const std::string at = schema::append_pointer("/tasks", name);
    const std::string type = t.at("type");
    const std::string target = t.at("target");
    if (!fields.contains(target)) {
      errors.push_back({at + "/target", "no field \"" + target + "\"" + where + " (fields: " + schema::join_keys(fields) + ")"});
      continue;
    }
    const std::string field_type = fields.at(target).at("type");
    const bool classification = type == "multiclass" || type == "binary";
    if (type == "generation" && field_type != "label") {
      errors.push_back({at + "/target", "field \"" + target + "\"" + where + " is of type " + field_type +
                                            ", a generation task needs a label field (the reference text is the "
                                            "transfer strategy's caption of the sample's class)"});
    } else if (classification && field_type != "label") {
      errors.push_back({at + "/target", "field \"" + target + "\"" + where + " is of type " + field_type + ", a " +
                                            type + " task needs a label field"});
    } else if (type == "multilabel" && field_type != "label_set") {
      errors.push_back({at + "/target", "field \"" + target + "\"" + where + " is of type " + field_type +
                                            ", a multilabel task needs a label_set field"});
    } else if (type == "regression" && field_type != "number") {
      errors.push_back({at + "/target", "field \"" + target + "\"" + where + " is of type " + field_type +
                                            ", a regression task needs a number field"});
    } else if (type == "binary" && fields.at(target).at("labels").size() != 2) {
      errors.push_back({at + "/type", "binary needs exactly 2 labels, field \"" + target + "\"" + where + " has " +
                                          std::to_string(fields.at(target).at("labels").size())});
    }
    if (t.contains("class_groups") && !classification) {
      errors.push_back({at + "/class_groups", "class groups are for multiclass and binary tasks, not " + type});
    } else if (t.contains("class_groups") && field_type == "label" && fields.at(target).contains("labels")) {
      const auto& labels = fields.at(target).at("labels");
      for (const auto& [group, members] : t.at("class_groups").items()) {
        for (size_t i = 0; i < members.size(); ++i) {
          if (std::find(labels.begin(), labels.end(), members[i]) == labels.end()) {
            errors.push_back({at + "/class_groups/" + group + "/" + std::to_string(i),
                              members[i].dump() + " is not a label of field \"" + target + "\"" + where + " (labels: " +
                                  labels.dump() + ")"});
          }
        }
      }
    }
  }
  // A modality or the stream, named at `at`, reads `field` with `plugin`: the field must exist
  // and have a type the plugin's manifest says it reads.
  auto check_field = [&](const std::string& at, const std::string& field, const std::string& plugin) {
    if (!fields.contains(field)) {
      errors.push_back({at, "no field \"" + field + "\"" + where + " (fields: " + schema::join_keys(fields) + ")"});
      return;
    }
    const std::string field_type = fields.at(field).at("type");
    const schema::Manifest* manifest = registry.find(plugin);
    if (manifest != nullptr && !manifest->field_types.empty() &&
        std::find(manifest->field_types.begin(), manifest->field_types.end(), field_type) ==
            manifest->field_types.end()) {
      errors.push_back({at, "field \"" + field + "\"" + where + " is of type " + field_type + ", plugin \"" +
                                manifest->name + "\" reads " + schema::join_names(manifest->field_types)});
    }
  };
  for (const auto& [m, field] : source.fields) {
    check_field(source.pointers.at(m), field, doc.at("modalities").at(m).at("plugin"));
  }
  if (doc.at("data").contains("stream")) {
    const nlohmann::json& stream = doc.at("data").at("stream");
    check_field("/data/stream/field", stream.at("field"), stream.at("plugin"));
  }
  for (const auto& [role, split] : source.splits) {
    if (!dataset.has_split(split)) {
      errors.push_back({source.split_pointers.at(role), "no split \"" + split + "\"" + where + " (splits: " +
                                                            schema::join_keys(dataset.doc().at("splits")) + ")"});
    }
  }
}

}  // namespace

std::vector<Dataset> open_datasets(const ResolvedPipeline& pipeline) {
  std::vector<Dataset> out;
  for (const auto& source : pipeline.sources) out.push_back(Dataset::open(source.file));
  return out;
}

std::string data_sha256(const ResolvedPipeline& pipeline, const std::vector<std::string>& shas) {
  if (!pipeline.multitask) return shas.at(0);
  std::string lines;  // one line per task: a task's data set changing changes the run's data
  for (size_t i = 0; i < shas.size(); ++i) lines += pipeline.sources.at(i).tasks.at(0) + " " + shas[i] + "\n";
  return sha256_text(lines);
}

std::string data_sha256(const ResolvedPipeline& pipeline, const std::vector<Dataset>& datasets) {
  std::vector<std::string> shas;
  for (const auto& d : datasets) shas.push_back(d.sha256());
  return data_sha256(pipeline, shas);
}

void check_against_dataset(const ResolvedPipeline& pipeline, const std::vector<Dataset>& datasets,
                           const PluginRegistry& registry) {
  std::vector<schema::SchemaError> errors;
  for (size_t i = 0; i < pipeline.sources.size(); ++i) check_source(pipeline, pipeline.sources[i], datasets.at(i), registry, errors);
  if (!errors.empty()) throw schema::ValidationFailed(pipeline.file.string(), std::move(errors));
}

std::map<std::string, TaskSpec> resolve_tasks(const ResolvedPipeline& pipeline, const std::vector<Dataset>& datasets) {
  std::map<std::string, TaskSpec> tasks;
  for (size_t i = 0; i < pipeline.sources.size(); ++i) {
    for (const auto& [name, spec] : resolve_tasks(pipeline.doc, datasets.at(i), pipeline.sources[i].tasks)) tasks.emplace(name, spec);
  }
  return tasks;
}

std::map<std::string, TaskSpec> resolve_tasks(const nlohmann::json& pipeline, const Dataset& dataset,
                                              const std::vector<std::string>& names) {
  std::map<std::string, TaskSpec> tasks;
  for (const auto& name : names) {
    const nlohmann::json& t = pipeline.at("tasks").at(name);
    TaskSpec spec;
    spec.name = name;
    spec.type = parse_task_type(t.at("type"));
    spec.target = t.at("target");
    spec.metrics = t.at("metrics").get<std::vector<std::string>>();
    if (spec.type == TaskType::kGeneration) {
      spec.labels = dataset.labels(spec.target);
      spec.num_outputs = 0;  // text, from the strategy's language model: no head
    } else if (spec.type == TaskType::kMulticlass || spec.type == TaskType::kBinary || spec.type == TaskType::kMultilabel) {
      spec.labels = dataset.labels(spec.target);
      spec.num_outputs = spec.type == TaskType::kBinary ? 1 : static_cast<int64_t>(spec.labels.size());
    } else {
      spec.num_outputs = 1;
    }
    tasks.emplace(name, std::move(spec));
  }
  return tasks;
}

std::string group_accuracy_metric(const std::string& group) { return group + "_accuracy"; }

std::string group_of_metric(const std::string& metric) {
  const std::string suffix = group_accuracy_metric("");
  const bool ends = metric.size() > suffix.size() && metric.compare(metric.size() - suffix.size(), suffix.size(), suffix) == 0;
  return ends ? metric.substr(0, metric.size() - suffix.size()) : "";
}

ClassGroups resolve_class_groups(const nlohmann::json& pipeline, const std::map<std::string, TaskSpec>& tasks) {
  ClassGroups out;
  for (const auto& [name, t] : pipeline.at("tasks").items()) {
    if (!t.contains("class_groups")) continue;
    const auto& labels = tasks.at(name).labels;
    for (const auto& [group, members] : t.at("class_groups").items()) {
      auto& classes = out[name][group];
      for (const auto& label : members) {
        classes.push_back(std::find(labels.begin(), labels.end(), label.get<std::string>()) - labels.begin());
      }
    }
  }
  return out;
}

namespace {

/// What the host gives a component of `doc` at `pointer` (instance name `instance`).
CreateArgs create_args(const nlohmann::json& doc, HostContext& context, const std::string& pointer,
                       const nlohmann::json& component, const std::string& instance) {
  CreateArgs args;
  args.config = Config(component.at("config"), pointer + "/config");
  args.context = &context;
  args.instance = instance;
  args.d_model = doc.at("d_model");
  for (const auto& [m, spec] : doc.at("modalities").items()) args.modalities.push_back(m);
  return args;
}

}  // namespace

void check_pipeline_artifacts(const ResolvedPipeline& pipeline, const PluginRegistry& registry) {
  const nlohmann::json& doc = pipeline.doc;
  const auto paths = pipeline_artifacts(pipeline);
  std::vector<const nlohmann::json*> components{&doc.at("transfer")};
  if (doc.contains("fusion")) components.push_back(&doc.at("fusion"));
  if (doc.at("data").contains("stream")) components.push_back(&doc.at("data").at("stream"));
  for (const auto& [m, spec] : doc.at("modalities").items()) components.push_back(&spec);
  for (const auto& [name, spec] : evaluation_protocols(doc).items()) components.push_back(&spec);
  for (const auto* spec : components) {
    const auto* manifest = registry.find(spec->at("plugin").get<std::string>());
    if (manifest == nullptr) continue;  // create() reports unknown plugins
    for (const auto& a : manifest->artifacts) {
      const std::string name = a.at("name");
      if (const auto it = paths.find(name); it != paths.end()) check_artifact(name, it->second, a.at("type"));
    }
  }
}

BuiltModel create_modalities(const ResolvedPipeline& pipeline, PluginRegistry& registry, const std::vector<Dataset>& datasets,
                             HostContext& context) {
  const nlohmann::json& doc = pipeline.doc;
  BuiltModel model;
  check_against_dataset(pipeline, datasets, registry);
  check_pipeline_artifacts(pipeline, registry);
  model.tasks = resolve_tasks(pipeline, datasets);
  model.class_groups = resolve_class_groups(doc, model.tasks);
  for (const auto& [m, spec] : doc.at("modalities").items()) {
    auto made = registry.create<ModalityPlugin>(spec.at("plugin"), MODALKIT_KIND_MODALITY,
                                                create_args(doc, context, "/modalities/" + m, spec, m), pin_of(spec));
    context.add_component(m, made);
    // A multitask pipeline's modality reads another field in each task's data set (source_bindings).
    model.modalities.push_back(ModalityBinding{m, spec.value("field", ""), made});
  }
  if (doc.at("data").contains("stream")) {
    const nlohmann::json& spec = doc.at("data").at("stream");
    model.stream = registry.create<BatchStream>(spec.at("plugin"), MODALKIT_KIND_STREAM,
                                                create_args(doc, context, "/data/stream", spec, "stream"), pin_of(spec));
    context.add_component("stream", model.stream);
  }
  return model;
}

void build_networks(const ResolvedPipeline& pipeline, PluginRegistry& registry, HostContext& context,
                    BuiltModel& model) {
  const nlohmann::json& doc = pipeline.doc;
  const int64_t d_model = doc.at("d_model");
  ModelParts parts;
  parts.d_model = d_model;
  std::map<std::string, int64_t> widths;
  std::vector<std::string> names;
  for (const auto& m : model.modalities) {
    const std::string plugin = m.plugin->plugin_name();
    const nlohmann::json& mspec = doc.at("modalities").at(m.name);
    std::shared_ptr<Encoder> encoder;
    if (mspec.contains("torchscript")) {
      const nlohmann::json& ts = mspec.at("torchscript");
      fs::path path = ts.at("path").get<std::string>();
      if (path.is_relative()) path = pipeline.base_dir / path;
      encoder = load_torchscript_encoder(path, ts.at("width"), d_model, ts.at("trainable"));
    } else {
      encoder = guard(plugin, [&] { return m.plugin->make_encoder(); });
    }
    if (!encoder) throw PluginError(plugin, "make_encoder() returned nothing");
    parts.encoders.emplace(m.name, EncoderRef(encoder, plugin));
    widths[m.name] = d_model;
    names.push_back(m.name);
  }
  if (doc.contains("fusion")) {  // validate requires it with modalities; a stream pipeline has none
    const auto& fusion_spec = doc.at("fusion");
    CreateArgs fusion_args = create_args(doc, context, "/fusion", fusion_spec, "fusion");
    fusion_args.input_widths = widths;
    model.fusion = registry.create<FusionOperator>(fusion_spec.at("plugin"), MODALKIT_KIND_FUSION, fusion_args,
                                                   pin_of(fusion_spec));
    context.add_component("fusion", model.fusion);
    parts.fusion = FusionRef(model.fusion, fusion_spec.at("plugin"));
  }
  // Heads read the fused width, or d_model under a strategy with its own backbone (no fusion).
  if (!names.empty()) {
    const int64_t head_width =
        model.fusion ? guard(model.fusion->plugin_name(), [&] { return model.fusion->output_width(); }) : d_model;
    for (const auto& [name, spec] : model.tasks) {
      if (spec.type != TaskType::kGeneration) parts.heads.emplace(name, make_task_head(spec, head_width));
    }
  }
  parts.tasks = model.tasks;

  const auto& transfer = doc.at("transfer");
  model.strategy = registry.create<TransferStrategy>(transfer.at("plugin"), MODALKIT_KIND_TRANSFER,
                                                     create_args(doc, context, "/transfer", transfer, "transfer"),
                                                     pin_of(transfer));
  context.add_component("transfer", model.strategy);
  const std::string sp = model.strategy->plugin_name();
  guard(sp, [&] { model.strategy->build(parts); });
  model.train_modalities = guard(sp, [&] { return model.strategy->modalities_at_train(); });
  model.test_modalities = guard(sp, [&] { return model.strategy->modalities_at_test(); });
  for (const auto* list : {&model.train_modalities, &model.test_modalities}) {
    for (const auto& m : *list) {
      if (std::find(names.begin(), names.end(), m) == names.end()) {
        throw PluginError(sp, "needs modality \"" + m + "\", which the pipeline does not declare");
      }
    }
  }
  model.strategy->to(context.device());
  for (const auto& [name, spec] : evaluation_protocols(doc).items()) {
    const std::string pointer = "/evaluate/protocols/" + name;
    auto protocol = registry.create<EvaluationProtocol>(spec.at("plugin"), MODALKIT_KIND_EVALUATION,
                                                        create_args(doc, context, pointer, spec, name), pin_of(spec));
    model.protocols.emplace_back(name, protocol);
  }
}

/// Logs what --skip-bad left out of a split (the count and the first few reasons); returns the count.
int64_t report_skipped(const std::string& split, const SplitFeatures& f) {
  const auto& skipped = f.skipped();
  if (skipped.empty()) return 0;
  spdlog::warn("--skip-bad: skipped {} of {} samples of split \"{}\"", skipped.size(), skipped.size() + f.size(), split);
  for (size_t i = 0; i < skipped.size() && i < 5; ++i) spdlog::warn("  skipped: {}", skipped[i].reason);
  if (skipped.size() > 5) spdlog::warn("  ... and {} more", skipped.size() - 5);
  return static_cast<int64_t>(skipped.size());
}


void restore_fitted_state(const BuiltModel& model, const fs::path& run_dir) {
  const fs::path file = run_dir / "fitted_state.json";
  std::ifstream fin(file);
  const nlohmann::json fitted = nlohmann::json::parse(fin, nullptr, false);
  if (fitted.is_discarded()) throw Error(file.string() + ": missing or not JSON");
  for (const auto& m : model.modalities) {
    if (fitted.contains(m.name)) guard(m.plugin->plugin_name(), [&] { m.plugin->load_fitted_state(fitted.at(m.name)); });
  }
  if (model.stream) {
    if (!fitted.contains("stream")) throw Error(file.string() + ": holds no \"stream\" state");
    guard(model.stream->plugin_name(), [&] { model.stream->load_fitted_state(fitted.at("stream")); });
  }
}

nlohmann::json held_out_figures(const BuiltModel& model, BatchSource& data, const std::string& split,
                                const std::vector<std::string>& modalities) {
  TransferStrategy& strategy = *model.strategy;
  nlohmann::json result;
  if (!model.tasks.empty()) {
    result = HeldOutProtocol(model.tasks, model.class_groups).evaluate(strategy, data, split, modalities);
  } else {
    result = loss_on(strategy, data, split, modalities);
    result["tasks"] = nlohmann::json::object();
  }
  for (const auto& [name, protocol] : model.protocols) {
    // A protocol can take minutes; Ctrl-C is honoured between them, not only between steps.
    if (interrupt_requested()) {
      throw Interrupted("interrupted during the evaluation on split \"" + split + "\", before protocol " + name);
    }
    const auto t0 = std::chrono::steady_clock::now();
    nlohmann::json figures = guard(protocol->plugin_name(), [&] { return protocol->evaluate(strategy, data, split, modalities); });
    if (!figures.is_object()) throw PluginError(protocol->plugin_name(), "evaluate() must return a JSON object of metrics");
    spdlog::info("protocol {} ({}): {} in {:.1f} s", name, protocol->plugin_name(), figures.dump().substr(0, 200),
                 std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
    result["protocols"][name] = std::move(figures);
  }
  return result;
}

OpenedRun open_run(const ResolvedPipeline& pipeline, PluginRegistry& registry, const fs::path& run_dir) {
  const nlohmann::json& doc = pipeline.doc;
  const fs::path run_file = run_dir / "run.json";
  if (!fs::exists(run_file)) throw Error(run_dir.string() + ": not a run directory (no run.json)");
  OpenedRun out;
  {
    std::ifstream in(run_file);
    out.run = nlohmann::json::parse(in, nullptr, false);
    if (out.run.is_discarded()) throw Error(run_file.string() + ": not valid JSON");
  }
  const nlohmann::json now = plugin_versions(registry, doc);
  for (const auto& [name, info] : out.run.at("plugins").items()) {
    if (!now.contains(name)) throw Error(run_file.string() + ": the run used plugin " + name + ", this pipeline does not");
    if (now[name]["version"] != info["version"]) {
      throw Error(run_file.string() + ": the run was trained with plugin " + name + " " +
                  info["version"].get<std::string>() + ", found " + now[name]["version"].get<std::string>());
    }
  }
  configure_runtime(doc);
  out.device = device_of(doc);
  out.datasets = open_datasets(pipeline);
  out.context = std::make_unique<HostContext>(spdlog::default_logger(), doc.at("seed").get<uint64_t>(), out.device,
                                              run_dir, pipeline_artifacts(pipeline));
  out.model = create_modalities(pipeline, registry, out.datasets, *out.context);
  restore_fitted_state(out.model, run_dir);
  build_networks(pipeline, registry, *out.context, out.model);
  load_weights(*out.model.strategy, run_dir / "model.pt");
  out.same_pipeline = out.run.value("pipeline_hash", "") == pipeline.hash;
  return out;
}

namespace {

/// MultiBench's robustness figures (Liang et al. 2021) for one modality: the area under the
/// metric-vs-level curve over [0, 1] (relative robustness), and the summed gap between the
/// curve and a reference curve shifted to start at this one's clean value (effective
/// robustness; MultiBench's reference is a late-fusion model, here `--reference RUN`, and
/// without one a flat curve, so it is then the summed drop from the clean value).
nlohmann::json robustness_of(const std::vector<double>& levels, const std::vector<double>& curve,
                             const std::vector<double>* reference) {
  double area = 0, effective = 0;
  for (size_t i = 0; i + 1 < curve.size(); ++i) area += (curve[i] + curve[i + 1]) / 2 * (levels[i + 1] - levels[i]);
  for (size_t i = 0; i < curve.size(); ++i) {
    const double ref = reference ? (*reference)[i] - (*reference)[0] : 0.0;
    effective += curve[i] - (curve[0] + ref);
  }
  return {{"levels", levels}, {"curve", curve}, {"relative_robustness", area}, {"effective_robustness", effective},
          {"reference", reference ? "run" : "flat"}};
}

}  // namespace

nlohmann::json robustness_sweep(const ResolvedPipeline& pipeline, OpenedRun& r, const std::string& split,
                                const std::vector<std::string>& modalities, const EvalOptions& options) {
  const nlohmann::json& doc = pipeline.doc;
  const auto& [task, spec] = *r.model.tasks.begin();
  const std::string metric = spec.metrics.at(0);
  const int n = doc.at("evaluate").at("robustness").at("levels");
  std::vector<double> levels;
  for (int i = 0; i < n; ++i) levels.push_back(static_cast<double>(i) / (n - 1));
  nlohmann::json reference;
  if (!options.reference.empty()) {
    const fs::path ref_file = options.reference / "robustness.json";
    std::ifstream in(ref_file);
    reference = nlohmann::json::parse(in, nullptr, false);
    if (reference.is_discarded() || !reference.contains("perturbation")) {
      throw UsageError("--reference: " + ref_file.string() + " is missing or not a robustness result (run eval --robustness there first)");
    }
    if (reference.at("levels").get<std::vector<double>>() != levels || reference.at("metric") != task + "/" + metric ||
        reference.at("split") != split) {
      throw UsageError("--reference: " + ref_file.string() + " was swept over other levels, another metric or split (" +
                       reference.at("metric").get<std::string>() + ", " + std::to_string(reference.at("levels").size()) +
                       " levels, " + reference.at("split").get<std::string>() + " split); sweep both runs the same way");
    }
  }
  const int threads = doc.at("train").at("loader_threads");
  const int64_t batch = doc.at("train").at("batch_size");
  HeldOutProtocol protocol(r.model.tasks);
  auto score = [&](const std::vector<std::string>& present, const std::map<std::string, double>& perturb) {
    LoadOptions lo{threads, false, options.skip_bad, {}};
    lo.perturb = perturb;
    lo.perturb_seed = doc.at("seed").get<uint64_t>();
    SplitFeatures f = SplitFeatures::build(r.datasets.at(0), split, bindings_for(r.model, present), r.model.tasks, lo);
    SplitSource source({{split, &f}}, batch, present, r.device);
    return protocol.evaluate(*r.model.strategy, source, split, present)["tasks"][task][metric].get<double>();
  };
  nlohmann::json out = {{"metric", task + "/" + metric}, {"split", split}, {"levels", levels},
                        {"modalities", modalities}, {"perturbation", nlohmann::json::object()},
                        {"missing", nlohmann::json::object()}};
  const double clean = score(modalities, {});
  out["clean"] = clean;
  for (const auto& m : modalities) {
    std::vector<double> curve{clean};
    for (size_t i = 1; i < levels.size(); ++i) curve.push_back(score(modalities, {{m, levels[i]}}));
    std::vector<double> ref;
    if (!reference.is_null()) {
      if (!reference["perturbation"].contains(m)) {
        throw UsageError("--reference: " + options.reference.string() + " has no curve for modality " + m);
      }
      for (const auto& v : reference["perturbation"][m]["curve"]) ref.push_back(v.is_number() ? v.get<double>() : NAN);
    }
    out["perturbation"][m] = robustness_of(levels, curve, reference.is_null() ? nullptr : &ref);
    spdlog::info("robustness {}: relative {:.4f}, effective {:.4f} ({} levels)", m,
                 out["perturbation"][m]["relative_robustness"].get<double>(),
                 out["perturbation"][m]["effective_robustness"].get<double>(), levels.size());
  }
  if (modalities.size() > 1) {
    for (const auto& m : modalities) {
      std::vector<std::string> rest;
      for (const auto& o : modalities) {
        if (o != m) rest.push_back(o);
      }
      out["missing"][m] = score(rest, {});
    }
  }
  return out;
}

nlohmann::json evaluate(const ResolvedPipeline& pipeline, PluginRegistry& registry, const EvalOptions& options) {
  const nlohmann::json& doc = pipeline.doc;
  OpenedRun r = open_run(pipeline, registry, options.run);
  if (options.robustness && r.model.tasks.empty()) {
    throw UsageError("--robustness scores a task; " + pipeline.file.string() + " has none");
  }
  if (options.robustness && pipeline.multitask) {
    throw UsageError("--robustness sweeps one data set's modalities; " + pipeline.file.string() +
                     " is a multitask pipeline (evaluate a run trained on one task's data set instead)");
  }
  std::vector<std::string> modalities = options.modalities.empty() ? r.model.test_modalities : options.modalities;
  for (const auto& m : modalities) {
    bool known = false;
    for (const auto& b : r.model.modalities) known = known || b.name == m;
    if (!known) throw UsageError("--modalities: \"" + m + "\" is not a modality of " + pipeline.file.string());
  }
  const auto& splits = doc.at("data").at("splits");
  const std::string role = options.split.empty() ? doc.at("evaluate").at("split").get<std::string>() : options.split;
  const std::string split = splits.at(role);
  // A task-less run's figure is its loss, computed as training did: on what the strategy trains with.
  if (r.model.tasks.empty() && options.modalities.empty()) modalities = r.model.train_modalities;
  // The batches: the stream's (a pretraining run), or the split decoded into memory.
  std::vector<SplitFeatures> features;  // one per data source
  std::unique_ptr<BatchSource> source;
  nlohmann::json skipped = nlohmann::json::object();
  if (r.model.stream) {
    open_stream_split(*r.model.stream, r.datasets.at(0), doc.at("data").at("stream").at("field"), split);
    source = std::make_unique<StreamSource>(*r.model.stream, std::set<std::string>{split}, doc.at("train").at("batch_size"), r.device);
  } else {
    std::vector<LoadJob> jobs;
    for (size_t i = 0; i < pipeline.sources.size(); ++i) {
      const DataSource& s = pipeline.sources[i];
      jobs.push_back(LoadJob{&r.datasets[i], s.splits.at(role), source_bindings(r.model, s, modalities), source_tasks(r.model, s),
                             LoadOptions(doc.at("train").at("loader_threads"), false, options.skip_bad), static_cast<int64_t>(i)});
    }
    features = SplitFeatures::build_all(jobs);
    std::vector<const SplitFeatures*> held;
    int64_t dropped = 0;
    for (size_t i = 0; i < features.size(); ++i) {
      dropped += report_skipped(jobs[i].split, features[i]);
      held.push_back(&features[i]);
    }
    skipped[split] = dropped;
    source = std::make_unique<SplitSource>(std::map<std::string, std::vector<const SplitFeatures*>>{{split, held}},
                                           doc.at("train").at("batch_size"), modalities, r.device);
  }
  nlohmann::json result = held_out_figures(r.model, *source, split, modalities);
  if (!r.model.stream) result["skipped"] = skipped;
  if (!r.same_pipeline) result["warning"] = "the pipeline differs from the one the run was trained with";
  if (options.robustness) {
    result["robustness"] = robustness_sweep(pipeline, r, split, modalities, options);
    write_text_atomically(options.run / "robustness.json", result["robustness"].dump(2) + "\n");
  }
  return result;
}

int64_t predict(const ResolvedPipeline& pipeline, PluginRegistry& registry, const fs::path& run_dir,
                const fs::path& input, std::ostream& out) {
  const nlohmann::json& doc = pipeline.doc;
  if (doc.at("tasks").empty()) {
    throw UsageError(pipeline.file.string() + " has no tasks, so its runs predict nothing (a pretraining run's "
                     "output is its artifacts and weights)");
  }
  if (pipeline.multitask) {
    throw UsageError("predict reads one data set's fields, and " + pipeline.file.string() + " is a multitask pipeline "
                     "whose tasks read different data sets; `eval` scores each task on its own, and a run fine-tuned on "
                     "one task (init_from) predicts");
  }
  OpenedRun r = open_run(pipeline, registry, run_dir);
  const std::vector<std::string>& modalities = r.model.test_modalities;
  Dataset samples = r.datasets.at(0).for_samples(input, "input");
  // No targets are read: the input needs only the fields of the modalities the model tests with.
  SplitFeatures f = SplitFeatures::build(samples, "input", bindings_for(r.model, modalities), {},
                                         LoadOptions(doc.at("train").at("loader_threads"), false, false));
  SplitSource source({{"input", &f}}, doc.at("train").at("batch_size"), modalities, r.device);
  TransferStrategy& model = *r.model.strategy;
  torch::NoGradGuard no_grad;
  model.eval();
  int64_t row = 0;
  const auto& lines = samples.samples("input");
  source.for_each("input", modalities, [&](const Batch& batch) {
    Predictions p = guard(model.plugin_name(), [&] { return model.predict(batch); });
    std::map<std::string, std::vector<std::string>> texts;  // generation tasks, decoded once per batch
    for (const auto& [task, spec] : r.model.tasks) {
      if (!p.count(task)) throw PluginError(model.plugin_name(), "predict() gave no output for task " + task);
      if (spec.type == TaskType::kGeneration) texts[task] = generated_texts(model, task, p.at(task));
    }
    for (int64_t b = 0; b < batch.size(); ++b, ++row) {
      nlohmann::json line = {{"sample", lines[static_cast<size_t>(row)].origin}};
      for (const auto& [task, spec] : r.model.tasks) {
        if (spec.type == TaskType::kGeneration) {
          // The text, and the label of the class it names (as the accuracy metric reads it).
          const std::string& text = texts.at(task).at(static_cast<size_t>(b));
          const int64_t named = mentioned_class(text, text_model(model, task).class_names());
          line[task] = {{"text", text}, {"label", named >= 0 ? nlohmann::json(spec.labels.at(static_cast<size_t>(named))) : nlohmann::json()}};
          continue;
        }
        const at::Tensor o = p.at(task)[b].to(at::kCPU).to(at::kDouble);
        if (spec.type == TaskType::kMulticlass) {
          const at::Tensor prob = o.softmax(0);
          nlohmann::json probs = nlohmann::json::object();
          for (size_t c = 0; c < spec.labels.size(); ++c) probs[spec.labels[c]] = prob[static_cast<int64_t>(c)].item<double>();
          line[task] = {{"label", spec.labels.at(static_cast<size_t>(prob.argmax().item<int64_t>()))}, {"probabilities", probs}};
        } else if (spec.type == TaskType::kMultilabel) {
          // The set is what the metrics score: predicted_classes, not a second threshold here.
          const at::Tensor prob = o.sigmoid(), chosen = predicted_classes(spec, o);
          nlohmann::json probs = nlohmann::json::object(), set = nlohmann::json::array();
          for (size_t c = 0; c < spec.labels.size(); ++c) {
            probs[spec.labels[c]] = prob[static_cast<int64_t>(c)].item<double>();
            if (chosen[static_cast<int64_t>(c)].item<int64_t>() != 0) set.push_back(spec.labels[c]);
          }
          line[task] = {{"labels", set}, {"probabilities", probs}};
        } else if (spec.type == TaskType::kBinary) {
          const double p1 = 1.0 / (1.0 + std::exp(-o.reshape({-1})[0].item<double>()));
          const int64_t chosen = predicted_classes(spec, o.reshape({-1})[0]).item<int64_t>();
          line[task] = {{"label", spec.labels.at(static_cast<size_t>(chosen))}, {"probability", {{spec.labels.at(1), p1}}}};
        } else {
          line[task] = {{"value", o.reshape({-1})[0].item<double>()}};
        }
      }
      out << line.dump() << "\n";
    }
  });
  return row;
}

nlohmann::json export_weights(const ResolvedPipeline& pipeline, PluginRegistry& registry, const fs::path& run_dir,
                              const fs::path& out) {
  OpenedRun r = open_run(pipeline, registry, run_dir);
  std::vector<std::pair<std::string, at::Tensor>> tensors;
  for (const auto& item : r.model.strategy->named_parameters(/*recurse=*/true)) tensors.emplace_back(item.key(), item.value());
  for (const auto& item : r.model.strategy->named_buffers(/*recurse=*/true)) tensors.emplace_back(item.key(), item.value());
  const std::map<std::string, std::string> metadata = {
      {"format", "pt"},
      {"modalkit.pipeline", pipeline.doc.at("name").get<std::string>()},
      {"modalkit.pipeline_hash", r.run.value("pipeline_hash", "")},
      {"modalkit.sdk_version", MODALKIT_SDK_VERSION}};
  write_safetensors(out, tensors, metadata);
  int64_t count = 0;
  for (const auto& [name, t] : tensors) count += t.numel();
  return {{"file", out.string()}, {"tensors", tensors.size()}, {"values", count}};
}

}  // namespace modalkit::host
