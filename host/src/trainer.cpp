// `modalkit train`: the loop the host owns for every strategy — batches, optimiser and schedule,
// validation and selection, early stopping, resumable checkpoints, interruption — and the final
// evaluation. Strategies own only the maths (loss, predict, prepare, finalize).
#include <unistd.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <numeric>
#include <random>
#include <set>
#include <sstream>
#include <algorithm>

#include <ATen/CPUGeneratorImpl.h>
#include <ATen/Context.h>
#include <spdlog/spdlog.h>
#include <torch/types.h>
#include <torch/nn/utils/clip_grad.h>
#include <torch/optim/optimizer.h>
#include <torch/serialize/input-archive.h>
#include <torch/serialize/output-archive.h>

#include "artifacts.hpp"
#include "distributed.hpp"
#include "engine.hpp"
#include "interrupt.hpp"
#include "system_info.hpp"
#include "modalkit/errors.hpp"

namespace modalkit::host {

namespace fs = std::filesystem;

namespace {

constexpr int kCheckpointFormat = 2;  // 2: identity holds the data set and --skip-bad

/// Where a run is, beyond its tensors: enough to continue it bit for bit.
struct RunState {
  int epoch = 1;                       ///< the epoch in progress, 1-based
  int64_t step_in_epoch = 0;           ///< its steps already taken
  int64_t global_step = 0;             ///< optimiser steps since the start
  std::string epoch_rng;               ///< the shuffling generator as it was when `epoch` began
  double loss_sum = 0;                 ///< this epoch's summed loss so far
  std::map<std::string, double> term_sums;
  std::map<std::string, int64_t> term_steps;  ///< steps that had each term (a multitask batch has its task's)
  double seconds = 0;                  ///< time spent in this epoch before the last checkpoint
  double best = 0;                     ///< best selection value so far
  int best_epoch = -1;
  int bad_epochs = 0;                  ///< epochs since the last improvement
  bool stopped = false;                ///< training ended (all epochs, the step budget, or early stop)
  // Multitask runs: each task's loss and steps this epoch, and its own early stopping.
  std::map<std::string, double> task_loss_sums;
  std::map<std::string, int64_t> task_steps;
  std::map<std::string, double> task_best;       ///< best value of the task's first metric
  std::map<std::string, int> task_bad_epochs;
  std::map<std::string, int> task_stopped_at;    ///< task → the epoch after which it was no longer trained

  nlohmann::json to_json() const {
    return {{"epoch", epoch},         {"step_in_epoch", step_in_epoch}, {"global_step", global_step},
            {"epoch_rng", epoch_rng}, {"loss_sum", loss_sum},           {"term_sums", term_sums}, {"term_steps", term_steps},
            {"seconds", seconds},     {"best", best},                   {"best_epoch", best_epoch},
            {"bad_epochs", bad_epochs}, {"stopped", stopped},           {"task_loss_sums", task_loss_sums},
            {"task_steps", task_steps}, {"task_best", task_best},       {"task_bad_epochs", task_bad_epochs},
            {"task_stopped_at", task_stopped_at}};
  }
  static RunState from_json(const nlohmann::json& j) {
    RunState s;
    s.epoch = j.at("epoch");
    s.step_in_epoch = j.at("step_in_epoch");
    s.global_step = j.at("global_step");
    s.epoch_rng = j.at("epoch_rng");
    s.loss_sum = j.at("loss_sum");
    s.term_sums = j.at("term_sums").get<std::map<std::string, double>>();
    s.seconds = j.at("seconds");
    s.best = j.at("best").is_null() ? NAN : j.at("best").get<double>();  // NaN is stored as null
    s.best_epoch = j.at("best_epoch");
    s.bad_epochs = j.at("bad_epochs");
    s.stopped = j.at("stopped");
    // Absent from checkpoints of single-data-set runs written before multitask runs existed.
    const nlohmann::json none = nlohmann::json::object();
    s.term_steps = j.value("term_steps", none).get<std::map<std::string, int64_t>>();
    if (!j.contains("term_steps")) {  // an older checkpoint: every term was in every step
      for (const auto& [name, sum] : s.term_sums) s.term_steps[name] = s.step_in_epoch;
    }
    s.task_loss_sums = j.value("task_loss_sums", none).get<std::map<std::string, double>>();
    s.task_steps = j.value("task_steps", none).get<std::map<std::string, int64_t>>();
    for (const auto& [task, v] : j.value("task_best", none).items()) s.task_best[task] = v.is_null() ? NAN : v.get<double>();
    s.task_bad_epochs = j.value("task_bad_epochs", none).get<std::map<std::string, int>>();
    s.task_stopped_at = j.value("task_stopped_at", none).get<std::map<std::string, int>>();
    return s;
  }
};

std::string rng_to_string(const std::mt19937_64& rng) {
  std::ostringstream out;
  out << rng;
  return out.str();
}

std::mt19937_64 rng_from_string(const std::string& text) {
  std::mt19937_64 rng;
  std::istringstream in(text);
  in >> rng;
  if (!in) throw Error("checkpoint: the shuffling generator's state is unreadable");
  return rng;
}

/// The identity a checkpoint must share with the run resuming it: the pipeline, the plugin
/// builds, the data (a data set rebuilt at the same path changes its sha256) and --skip-bad
/// (which changes the training samples).
nlohmann::json run_identity(const ResolvedPipeline& pipeline, const nlohmann::json& plugins,
                            const std::string& dataset_sha256, bool skip_bad) {
  return {{"pipeline_hash", pipeline.hash}, {"plugins", plugins}, {"dataset_sha256", dataset_sha256}, {"skip_bad", skip_bad}};
}

/// The resumable checkpoint: model, optimiser, LibTorch's RNG (dropout), the run state and the
/// identity, in one archive written atomically — a crash leaves the previous checkpoint whole.
void save_checkpoint(const fs::path& path, torch::nn::Module& model, torch::optim::Optimizer& optimizer,
                     const RunState& state, const nlohmann::json& identity, const c10::Device& device) {
  torch::serialize::OutputArchive archive, model_archive, optimizer_archive;
  model.save(model_archive);
  optimizer.save(optimizer_archive);
  archive.write("model", model_archive);
  archive.write("optimizer", optimizer_archive);
  at::Tensor rng;
  {
    auto gen = at::detail::getDefaultCPUGenerator();
    std::lock_guard<std::mutex> lock(gen.mutex());
    rng = gen.get_state();
  }
  archive.write("torch_rng", rng, /*is_buffer=*/true);
  if (device.is_cuda()) {  // dropout on a GPU draws from that device's generator
    auto cuda = at::globalContext().defaultGenerator(device);
    std::lock_guard<std::mutex> lock(cuda.mutex());
    archive.write("cuda_rng", cuda.get_state(), /*is_buffer=*/true);
  }
  nlohmann::json meta = {{"format", kCheckpointFormat}, {"identity", identity}, {"state", state.to_json()}};
  archive.write("meta", c10::IValue(meta.dump()));
  const fs::path tmp = path.string() + ".tmp";
  archive.save_to(tmp.string());
  fsync_file(tmp);
  fs::rename(tmp, path);
}

/// A checkpoint's metadata, read without loading its tensors into a model.
nlohmann::json read_checkpoint_meta(const fs::path& path) {
  try {
    torch::serialize::InputArchive archive;
    archive.load_from(path.string());
    c10::IValue meta;
    archive.read("meta", meta);
    return nlohmann::json::parse(meta.toStringRef());
  } catch (const c10::Error& e) {
    throw Error(path.string() + ": not a readable modalkit checkpoint: " + e.what_without_backtrace());
  } catch (const nlohmann::json::exception& e) {
    throw Error(path.string() + ": checkpoint metadata is not valid JSON: " + e.what());
  }
}

/// Refuses to resume from a checkpoint of another pipeline or other plugin builds, naming the
/// first difference.
void check_resumable(const fs::path& path, const nlohmann::json& meta, const nlohmann::json& identity) {
  const std::string how = "; --resume continues the same run only (start a new --out, or use init_from to "
                          "start from its weights)";
  if (meta.value("format", 0) != kCheckpointFormat) {
    throw Error(path.string() + ": checkpoint format " + std::to_string(meta.value("format", 0)) +
                ", this modalkit reads format " + std::to_string(kCheckpointFormat));
  }
  const auto& was = meta.at("identity");
  if (was.at("pipeline_hash") != identity.at("pipeline_hash")) {
    throw Error(path.string() + ": written by another pipeline (hash " +
                was.at("pipeline_hash").get<std::string>().substr(0, 12) + ", this one " +
                identity.at("pipeline_hash").get<std::string>().substr(0, 12) + ")" + how);
  }
  if (was.at("dataset_sha256") != identity.at("dataset_sha256")) {
    throw Error(path.string() + ": the data set changed since the run began (sha256 " +
                was.at("dataset_sha256").get<std::string>().substr(0, 12) + ", now " +
                identity.at("dataset_sha256").get<std::string>().substr(0, 12) + ")" + how);
  }
  if (was.at("skip_bad") != identity.at("skip_bad")) {
    throw Error(path.string() + std::string(": the run was started ") + (was.at("skip_bad").get<bool>() ? "with" : "without") +
                " --skip-bad; resume it the same way");
  }
  for (const auto& [name, info] : was.at("plugins").items()) {
    const auto& now = identity.at("plugins");
    if (!now.contains(name)) throw Error(path.string() + ": the run used plugin " + name + ", this pipeline does not" + how);
    for (const char* key : {"version", "sha256", "abi"}) {
      if (now[name][key] != info[key]) {
        throw Error(path.string() + ": the run was trained with plugin " + name + " " + key + " " +
                    info[key].get<std::string>().substr(0, 16) + ", found " +
                    now[name][key].get<std::string>().substr(0, 16) + how);
      }
    }
  }
}

void load_checkpoint(const fs::path& path, torch::nn::Module& model, torch::optim::Optimizer& optimizer,
                     const c10::Device& device) {
  try {
    torch::serialize::InputArchive archive, model_archive, optimizer_archive;
    archive.load_from(path.string());
    archive.read("model", model_archive);
    model.load(model_archive);
    archive.read("optimizer", optimizer_archive);
    optimizer.load(optimizer_archive);
    at::Tensor rng;
    archive.read("torch_rng", rng, /*is_buffer=*/true);
    {
      auto gen = at::detail::getDefaultCPUGenerator();
      std::lock_guard<std::mutex> lock(gen.mutex());
      gen.set_state(rng);
    }
    if (device.is_cuda()) {
      at::Tensor cuda_rng;
      archive.read("cuda_rng", cuda_rng, /*is_buffer=*/true);
      auto cuda = at::globalContext().defaultGenerator(device);
      std::lock_guard<std::mutex> lock(cuda.mutex());
      cuda.set_state(cuda_rng);
    }
  } catch (const c10::Error& e) {
    throw Error(path.string() + ": checkpoint does not fit this pipeline's model: " + e.what_without_backtrace());
  }
}

/// The learning-rate factor of `/train/schedule` at `step` (0-based) of `total` steps.
double lr_factor(const nlohmann::json& schedule, int64_t step, int64_t total, int64_t steps_per_epoch) {
  const int64_t warmup = schedule.at("warmup_steps");
  if (step < warmup) return static_cast<double>(step + 1) / static_cast<double>(warmup);
  const std::string name = schedule.at("name");
  if (name == "cosine") {
    const double span = static_cast<double>(std::max<int64_t>(1, total - warmup));
    const double t = std::min(1.0, static_cast<double>(step - warmup) / span);
    const double floor = schedule.at("min_lr_ratio");
    return floor + (1 - floor) * 0.5 * (1 + std::cos(M_PI * t));
  }
  if (name == "step") {
    const int64_t epoch0 = step / std::max<int64_t>(1, steps_per_epoch);
    return std::pow(schedule.at("gamma").get<double>(), static_cast<double>(epoch0 / schedule.at("step_epochs").get<int64_t>()));
  }
  return 1.0;
}

/// On a terminal, one line redrawn each step. In a log (`lines`, or `auto` off a terminal), a line
/// a minute within an epoch, beside the epoch lines: an epoch of a pretraining corpus takes an
/// hour here, and a log that says nothing for that long cannot be told from a hung run.
class ProgressBar {
 public:
  explicit ProgressBar(const std::string& mode)
      : on_(mode == "bar" || (mode == "auto" && ::isatty(STDERR_FILENO) != 0)),
        lines_(mode == "lines" || (mode == "auto" && ::isatty(STDERR_FILENO) == 0)),
        last_line_(std::chrono::steady_clock::now()) {}
  void update(int epoch, int epochs, int64_t step, int64_t steps, double loss, double samples_per_s, double eta_s) {
    const auto now = std::chrono::steady_clock::now();
    if (lines_ && step != steps && now - last_line_ >= std::chrono::seconds(60)) {
      last_line_ = now;
      spdlog::info("epoch {}/{} step {}/{}  loss {:.4f}  {:.0f} samples/s  ETA {}", epoch, epochs, step, steps, loss,
                   samples_per_s, format_eta(eta_s));
    }
    if (!on_) return;
    if (step != steps && now - last_ < std::chrono::milliseconds(100)) return;  // redraw at most 10x a second
    last_ = now;
    const int width = 24;
    const int filled = static_cast<int>(width * step / std::max<int64_t>(1, steps));
    std::fprintf(stderr, "\r\033[Kepoch %d/%d [%s%s] %lld/%lld  loss %.4f  %.0f samples/s  ETA %s", epoch, epochs,
                 std::string(static_cast<size_t>(filled), '#').c_str(),
                 std::string(static_cast<size_t>(width - filled), '.').c_str(), static_cast<long long>(step),
                 static_cast<long long>(steps), loss, samples_per_s, format_eta(eta_s).c_str());
    std::fflush(stderr);
    drawn_ = true;
  }
  /// Clears the line so that log output starts on a clean one.
  void clear() {
    if (!drawn_) return;
    std::fprintf(stderr, "\r\033[K");
    std::fflush(stderr);
    drawn_ = false;
  }

 private:
  static std::string format_eta(double s) {
    if (!std::isfinite(s) || s < 0) return "?";
    const long t = std::lround(s);
    char buf[32];
    if (t >= 3600) {
      std::snprintf(buf, sizeof buf, "%ld:%02ld:%02ld", t / 3600, t / 60 % 60, t % 60);
    } else {
      std::snprintf(buf, sizeof buf, "%ld:%02ld", t / 60, t % 60);
    }
    return buf;
  }
  bool on_;
  bool lines_;
  bool drawn_ = false;
  std::chrono::steady_clock::time_point last_{}, last_line_;
};

/// Keeps metrics.jsonl to the epochs a resumed checkpoint had finished (a crash after an epoch
/// line but before the next checkpoint would otherwise leave a line the rerun writes again).
void truncate_metrics(const fs::path& path, int finished_epochs) {
  std::vector<std::string> keep;
  {
    std::ifstream in(path);
    for (std::string line; std::getline(in, line) && static_cast<int>(keep.size()) < finished_epochs;) {
      if (!line.empty()) keep.push_back(line);
    }
  }
  std::string text;
  for (const auto& l : keep) text += l + "\n";
  write_text_atomically(path, text);
}

/// `/train/select/metric` as (task, metric), defaulting to the first task's first metric (in a
/// multitask pipeline: ("", "mean"), the mean of every task's first metric); the validation loss
/// is ("", "loss"), the default without tasks.
std::pair<std::string, std::string> selection_metric(const nlohmann::json& tr, const std::map<std::string, TaskSpec>& tasks,
                                                     bool multitask) {
  const auto& sel = tr.at("select");
  if (sel.value("metric", "") == "mean" || (!sel.contains("metric") && multitask)) {
    if (tasks.empty()) throw ConfigError("/train/select/metric", "mean: the pipeline has no tasks to average over");
    for (const auto& [task, spec] : tasks) {
      if (!higher_is_better(spec.metrics.at(0))) {
        throw ConfigError("/train/select/metric", "mean: task \"" + task + "\"'s first metric, " + spec.metrics.at(0) +
                                                      ", is lower-better and cannot be averaged with the others; choose "
                                                      "TASK/METRIC, or put a higher-better metric first");
      }
    }
    return {"", "mean"};
  }
  if (!sel.contains("metric") || sel.at("metric") == "loss") {
    if (tasks.empty() || sel.contains("metric")) return {"", "loss"};
    return {tasks.begin()->first, tasks.begin()->second.metrics.at(0)};
  }
  const std::string s = sel.at("metric");
  const auto slash = s.find('/');
  const std::string task = s.substr(0, slash), metric = s.substr(slash + 1);
  auto it = tasks.find(task);
  if (it == tasks.end()) throw ConfigError("/train/select/metric", "no task \"" + task + "\" in /tasks");
  const auto& ms = it->second.metrics;
  if (std::find(ms.begin(), ms.end(), metric) == ms.end()) {
    throw ConfigError("/train/select/metric", "task \"" + task + "\" does not compute \"" + metric +
                                                  "\" (add it to /tasks/" + task + "/metrics)");
  }
  return {task, metric};
}

/// Whether `name` matches `pattern`, where `*` matches any run of characters (dots included).
bool glob_match(const std::string& pattern, const std::string& name) {
  size_t p = 0, n = 0, star = std::string::npos, mark = 0;
  while (n < name.size()) {
    if (p < pattern.size() && pattern[p] == name[n] && pattern[p] != '*') {
      ++p;
      ++n;
    } else if (p < pattern.size() && pattern[p] == '*') {
      star = p++;
      mark = n;
    } else if (star != std::string::npos) {
      p = star + 1;
      n = ++mark;
    } else {
      return false;
    }
  }
  while (p < pattern.size() && pattern[p] == '*') ++p;
  return p == pattern.size();
}

bool matches_any(const nlohmann::json& patterns, const std::string& name) {
  for (const auto& pat : patterns) {
    if (glob_match(pat.get<std::string>(), name)) return true;
  }
  return false;
}

/// Every tensor of a saved module archive by its dotted name (modules nest as sub-archives).
void collect_archive(torch::serialize::InputArchive& archive, const std::string& prefix,
                     std::map<std::string, at::Tensor>& out) {
  for (const auto& key : archive.keys()) {
    at::Tensor t;
    if (archive.try_read(key, t)) {
      out[prefix + key] = t;
      continue;
    }
    torch::serialize::InputArchive sub;
    if (archive.try_read(key, sub)) collect_archive(sub, prefix + key + ".", out);
  }
}

/// The model's parameter counts: `{total, trainable}` (frozen parameters and buffers are not
/// trainable; buffers are not counted).
nlohmann::json parameter_counts(torch::nn::Module& model) {
  int64_t total = 0, trainable = 0;
  for (const auto& p : model.parameters(/*recurse=*/true)) {
    total += p.numel();
    trainable += p.requires_grad() ? p.numel() : 0;
  }
  return {{"total", total}, {"trainable", trainable}};
}

/// `/init_from`: copies the matching tensors of another run's model.pt into `model`, each checked
/// by shape; an error names the tensor and both shapes, or says that nothing matched.
void init_from(const ResolvedPipeline& pipeline, torch::nn::Module& model) {
  const nlohmann::json& spec = pipeline.doc.at("init_from");
  fs::path run = spec.at("run").get<std::string>();
  if (run.is_relative()) run = pipeline.base_dir / run;
  const fs::path file = run / "model.pt";
  if (!fs::exists(file)) throw Error("/init_from/run: " + file.string() + " does not exist (is " + run.string() + " a finished run?)");
  std::map<std::string, at::Tensor> source;
  try {
    torch::serialize::InputArchive archive;
    archive.load_from(file.string());
    collect_archive(archive, "", source);
  } catch (const c10::Error& e) {
    throw Error(file.string() + ": not readable weights: " + e.what_without_backtrace());
  }
  torch::NoGradGuard no_grad;
  int64_t tensors = 0, values = 0;
  auto copy = [&](const std::string& name, at::Tensor& target) {
    if (!matches_any(spec.at("include"), name) || matches_any(spec.at("exclude"), name)) return;
    auto it = source.find(name);
    if (it == source.end()) return;  // a tensor the other model lacks keeps its initialisation
    if (it->second.sizes() != target.sizes()) {
      std::ostringstream msg;
      msg << "/init_from: tensor " << name << " has shape " << it->second.sizes() << " in " << file.string()
          << " but " << target.sizes() << " in this pipeline's model (exclude it, or match the architectures)";
      throw Error(msg.str());
    }
    target.copy_(it->second);
    ++tensors;
    values += target.numel();
  };
  for (auto& item : model.named_parameters(/*recurse=*/true)) copy(item.key(), item.value());
  for (auto& item : model.named_buffers(/*recurse=*/true)) copy(item.key(), item.value());
  if (tensors == 0) {
    throw Error("/init_from: no tensor of " + file.string() + " matches /init_from/include " +
                spec.at("include").dump() + " and this model's names (e.g. encoders.image.*, fusion.*, heads.<task>.*)");
  }
  spdlog::info("init_from: {} tensors ({} values) from {}", tensors, values, file.string());
}

/// `/train/parameter_groups`: parameters matching an entry (first match wins) leave the
/// strategy's groups for the entry's own group (its learning rate, or frozen).
std::vector<ParameterGroup> apply_parameter_groups(const nlohmann::json& entries, std::vector<ParameterGroup> groups,
                                                   torch::nn::Module& model) {
  if (entries.empty()) return groups;
  std::map<const void*, std::string> name_of;
  for (const auto& item : model.named_parameters(/*recurse=*/true)) name_of[item.value().unsafeGetTensorImpl()] = item.key();
  std::vector<ParameterGroup> extra(entries.size());
  std::vector<int64_t> matched(entries.size(), 0);
  for (size_t e = 0; e < entries.size(); ++e) {
    extra[e].name = entries[e].value("name", "group " + std::to_string(e));
    if (entries[e].contains("lr")) extra[e].lr = entries[e].at("lr").get<double>();
    extra[e].frozen = entries[e].at("frozen");
  }
  for (auto& g : groups) {
    std::vector<at::Tensor> keep;
    for (auto& p : g.parameters) {
      const auto it = name_of.find(p.unsafeGetTensorImpl());
      size_t e = 0;
      while (it != name_of.end() && e < entries.size() && !matches_any(entries[e].at("match"), it->second)) ++e;
      if (it != name_of.end() && e < entries.size()) {
        extra[e].parameters.push_back(p);
        ++matched[e];
      } else {
        keep.push_back(p);
      }
    }
    g.parameters = std::move(keep);
  }
  for (size_t e = 0; e < entries.size(); ++e) {
    if (matched[e] == 0) {
      throw ConfigError("/train/parameter_groups/" + std::to_string(e) + "/match",
                        "matches no parameter of the model (names look like encoders.image.*, fusion.*, heads.<task>.*)");
    }
    spdlog::info("parameter group {}: {} tensors, {}", extra[e].name, matched[e],
                 extra[e].frozen ? "frozen" : "lr " + (extra[e].lr ? std::to_string(*extra[e].lr) : std::string("default")));
  }
  groups.erase(std::remove_if(groups.begin(), groups.end(), [](const ParameterGroup& g) { return g.parameters.empty(); }),
               groups.end());
  for (auto& g : extra) groups.push_back(std::move(g));
  return groups;
}

/// What the loop trains on, batch by batch. An epoch's batches are a pure function of the epoch
/// and of the shuffling generator as the epoch began, so a resumed epoch replays them exactly.
class TrainFeed {
 public:
  virtual ~TrainFeed() = default;
  /// Batches per epoch.
  virtual int64_t steps_per_epoch() const = 0;
  /// Training examples per epoch.
  virtual int64_t examples() const = 0;
  /// Starts `epoch` (1-based), drawing its order from `rng`.
  virtual void start_epoch(int epoch, std::mt19937_64& rng) = 0;
  /// The epoch's batch `step` (0-based), on the CPU.
  virtual Batch batch(int64_t step) const = 0;
};

/// The in-memory train split, its rows shuffled each epoch.
class SplitFeed : public TrainFeed {
 public:
  SplitFeed(const SplitFeatures& f, int64_t batch_size, std::vector<std::string> modalities)
      : f_(f), batch_size_(batch_size), modalities_(std::move(modalities)) {}
  int64_t steps_per_epoch() const override { return (f_.size() + batch_size_ - 1) / batch_size_; }
  int64_t examples() const override { return f_.size(); }
  void start_epoch(int /*epoch*/, std::mt19937_64& rng) override {
    order_.resize(static_cast<size_t>(f_.size()));
    std::iota(order_.begin(), order_.end(), 0);
    std::shuffle(order_.begin(), order_.end(), rng);
  }
  Batch batch(int64_t step) const override {
    const auto start = static_cast<size_t>(step * batch_size_);
    const std::vector<int64_t> rows(order_.begin() + static_cast<long>(start),
                                    order_.begin() + static_cast<long>(std::min(order_.size(), start + batch_size_)));
    return f_.batch(rows, modalities_);
  }

 private:
  const SplitFeatures& f_;
  int64_t batch_size_;
  std::vector<std::string> modalities_;
  std::vector<int64_t> order_;
};

/// The train splits of a multitask pipeline's data sets: every batch comes from one task's split
/// (and holds that task's modalities and targets only), in the order `/train/task_sampling` says.
/// An epoch has as many batches as the tasks still training have together.
class TaskFeed : public TrainFeed {
 public:
  /// `splits[t]`: task t's train split; `names[t]`: its task.
  TaskFeed(std::vector<const SplitFeatures*> splits, std::vector<std::string> names, int64_t batch_size,
           std::vector<std::string> modalities, std::string sampling)
      : splits_(std::move(splits)), names_(std::move(names)), batch_size_(batch_size), modalities_(std::move(modalities)),
        round_robin_(sampling == "round_robin"), active_(splits_.size(), true) {}
  int64_t steps_per_epoch() const override {
    int64_t n = 0;
    for (size_t t = 0; t < splits_.size(); ++t) n += active_[t] ? batches(t) : 0;
    return n;
  }
  int64_t examples() const override {
    int64_t n = 0;
    for (size_t t = 0; t < splits_.size(); ++t) n += active_[t] ? splits_[t]->size() : 0;
    return n;
  }
  /// Stops drawing batches of `task` from the next epoch on (its own early stopping).
  void stop(const std::string& task) {
    for (size_t t = 0; t < names_.size(); ++t) active_[t] = active_[t] && names_[t] != task;
  }
  /// The whole epoch is planned here from `rng`, so batch(step) is a pure lookup and a resumed
  /// epoch replays the same batches.
  void start_epoch(int /*epoch*/, std::mt19937_64& rng) override {
    plan_.clear();
    std::vector<std::vector<int64_t>> order(splits_.size());
    auto shuffled = [&](size_t t) {
      std::vector<int64_t> rows(static_cast<size_t>(splits_[t]->size()));
      std::iota(rows.begin(), rows.end(), 0);
      std::shuffle(rows.begin(), rows.end(), rng);
      return rows;
    };
    std::vector<size_t> live;
    for (size_t t = 0; t < splits_.size(); ++t) {
      if (!active_[t]) continue;
      live.push_back(t);
      order[t] = shuffled(t);
    }
    auto cut = [&](size_t t, int64_t k) {  // task t's batch k of its current order
      const auto start = static_cast<size_t>(k * batch_size_);
      const auto end = std::min(order[t].size(), start + static_cast<size_t>(batch_size_));
      plan_.push_back({t, std::vector<int64_t>(order[t].begin() + static_cast<long>(start), order[t].begin() + static_cast<long>(end))});
    };
    const int64_t total = steps_per_epoch();
    if (round_robin_) {
      std::vector<int64_t> next(splits_.size(), 0);
      for (int64_t step = 0; step < total; ++step) {
        const size_t t = live[static_cast<size_t>(step) % live.size()];
        if (next[t] == batches(t)) {  // ran out: its data again, in a new order
          order[t] = shuffled(t);
          next[t] = 0;
        }
        cut(t, next[t]++);
      }
    } else {
      std::vector<size_t> draws;  // each task once per batch it has, in a random interleaving
      for (size_t t : live) draws.insert(draws.end(), static_cast<size_t>(batches(t)), t);
      std::shuffle(draws.begin(), draws.end(), rng);
      std::vector<int64_t> next(splits_.size(), 0);
      for (size_t t : draws) cut(t, next[t]++);
    }
  }
  Batch batch(int64_t step) const override {
    const auto& [t, rows] = plan_.at(static_cast<size_t>(step));
    return splits_[t]->batch(rows, splits_[t]->held(modalities_));
  }

 private:
  int64_t batches(size_t t) const { return (splits_[t]->size() + batch_size_ - 1) / batch_size_; }
  std::vector<const SplitFeatures*> splits_;
  std::vector<std::string> names_;
  int64_t batch_size_;
  std::vector<std::string> modalities_;
  bool round_robin_;
  std::vector<bool> active_;
  std::vector<std::pair<size_t, std::vector<int64_t>>> plan_;
};

/// A stream's train split: the stream orders each epoch itself, from the seed and the epoch.
class StreamFeed : public TrainFeed {
 public:
  StreamFeed(const BatchStream& stream, std::string split, int64_t batch_size)
      : stream_(stream), split_(std::move(split)), batch_size_(batch_size),
        steps_(guard(stream.plugin_name(), [&] { return stream.batches(split_, batch_size); })) {}
  int64_t steps_per_epoch() const override { return steps_; }
  int64_t examples() const override {  // every batch is full but perhaps the last
    if (steps_ == 0) return 0;
    // The epoch last trained is still made; the last batch's size is the same in every epoch.
    const Batch last = guard(stream_.plugin_name(), [&] { return stream_.batch(split_, epoch_, steps_ - 1, batch_size_); });
    return (steps_ - 1) * batch_size_ + last.size();
  }
  void start_epoch(int epoch, std::mt19937_64& /*rng*/) override { epoch_ = epoch; }
  Batch batch(int64_t step) const override {
    return guard(stream_.plugin_name(), [&] { return stream_.batch(split_, epoch_, step, batch_size_); });
  }

 private:
  const BatchStream& stream_;
  std::string split_;
  int64_t batch_size_;
  int64_t steps_;
  int epoch_ = 1;
};

/// Writes the sidecar (type, sha256) of each artifact the run's plugins declare in `produces`;
/// returns them by name. A declared file the plugin did not write is an error naming both.
nlohmann::json publish_artifacts(const ResolvedPipeline& pipeline, const PluginRegistry& registry, const fs::path& run_dir) {
  nlohmann::json out = nlohmann::json::object();
  const std::string by = "pipeline " + pipeline.doc.at("name").get<std::string>() + " (hash " + pipeline.hash.substr(0, 12) +
                         "), run " + fs::absolute(run_dir).lexically_normal().string();
  const nlohmann::json plugins = plugin_versions(registry, pipeline.doc);
  for (const auto& [name, info] : plugins.items()) {
    const schema::Manifest* manifest = registry.find(name);
    if (manifest == nullptr) continue;
    for (const auto& a : manifest->produces) {
      const fs::path file = run_dir / a.at("file").get<std::string>();
      if (!fs::exists(file)) {
        throw PluginError(name, "its manifest says it produces " + a.at("name").get<std::string>() + " (" +
                                    file.string() + "), but it did not write that file");
      }
      const nlohmann::json sidecar = write_artifact_sidecar(file, a.at("type"), by);  // hashes the file once
      out[a.at("name").get<std::string>()] = {{"file", file.string()}, {"type", a.at("type")}, {"sha256", sidecar.at("sha256")}};
    }
  }
  return out;
}

/// The first thing in which two ranks' run identities differ, or "" when they agree.
std::string identity_difference(const nlohmann::json& mine, const nlohmann::json& leader) {
  for (const char* key : {"pipeline_hash", "dataset_sha256", "skip_bad", "resume"}) {
    if (mine.value(key, nlohmann::json()) != leader.value(key, nlohmann::json())) {
      return std::string(key) + " is " + mine.value(key, nlohmann::json()).dump() + " here, " +
             leader.value(key, nlohmann::json()).dump() + " on rank 0";
    }
  }
  for (const auto& [name, info] : leader.at("plugins").items()) {
    if (!mine.at("plugins").contains(name)) return "plugin " + name + " is missing here";
    if (mine.at("plugins").at(name) != info) {
      return "plugin " + name + " is " + mine.at("plugins").at(name).dump() + " here, " + info.dump() + " on rank 0";
    }
  }
  return "";
}

/// A directory of this rank's own (ranks but 0 write nothing into --out), removed at the end.
struct RankDir {
  fs::path path;
  ~RankDir() {
    std::error_code ec;
    if (!path.empty()) fs::remove_all(path, ec);
  }
};

}  // namespace

nlohmann::json train(const ResolvedPipeline& pipeline, PluginRegistry& registry, const TrainOptions& options) {
  const nlohmann::json& doc = pipeline.doc;
  const nlohmann::json& tr = doc.at("train");
  const uint64_t seed = doc.at("seed");
  const int loader_threads = tr.at("loader_threads");
  const int64_t batch_size = tr.at("batch_size");
  const c10::Device device = device_of(doc);
  auto log = spdlog::default_logger();
  ProcessGroup* const pg = options.group;  // null: one process
  const bool leader = pg == nullptr || pg->leader();
  const int rank = pg != nullptr ? pg->rank() : 0, world = pg != nullptr ? pg->size() : 1;
  // Rank 0 owns --out; the others read rank 0's state from a directory of their own.
  RankDir rank_dir;
  if (!leader) {
    rank_dir.path = fs::temp_directory_path() / ("modalkit-rank-" + std::to_string(rank) + "-" + std::to_string(::getpid()));
    fs::create_directories(rank_dir.path);
  }
  const fs::path own_dir = leader ? options.out : rank_dir.path;
  const fs::path ckpt_path = options.out / "checkpoint.pt";

  // Who may write into --out: a fresh directory, or the same run with --resume. Checked before
  // any work so a typo never overwrites a finished run.
  std::vector<Dataset> datasets = open_datasets(pipeline);
  Dataset& dataset = datasets.at(0);  // the only one but in a multitask pipeline
  const std::string data_sha = data_sha256(pipeline, datasets);
  const nlohmann::json identity = run_identity(pipeline, plugin_versions(registry, doc), data_sha, options.skip_bad);
  nlohmann::json resume_meta;
  std::string refused;  // rank 0's reason not to start, which every rank then reports
  if (leader) {
    try {
      if (options.resume) {
        if (!fs::exists(ckpt_path)) {
          throw Error(options.out.string() + ": nothing to resume (no checkpoint.pt); train without --resume to start");
        }
        if (fs::exists(options.out / "results.json")) {
          throw Error(options.out.string() + ": the run is finished (results.json exists); nothing to resume");
        }
        resume_meta = read_checkpoint_meta(ckpt_path);
        check_resumable(ckpt_path, resume_meta, identity);
      } else if (fs::exists(ckpt_path) || fs::exists(options.out / "results.json")) {
        throw Error(options.out.string() + " already holds a run; pass --resume to continue it, or choose another --out");
      }
    } catch (const Error& e) {
      if (pg == nullptr) throw;
      refused = e.what();
    }
  }
  if (pg != nullptr) {
    // Every rank must train the same thing: rank 0 sends its verdict on --out, its identity and,
    // when resuming, its checkpoint and fitted state (a rank on another machine has no --out).
    nlohmann::json mine = identity;
    mine["resume"] = options.resume;
    nlohmann::json sent = {{"refused", refused}, {"identity", mine}};
    const nlohmann::json got = nlohmann::json::parse(pg->broadcast_text(sent.dump(), "starting the run"));
    if (!got.at("refused").get<std::string>().empty()) {
      throw Error(leader ? refused : "rank 0 refused the run: " + got.at("refused").get<std::string>());
    }
    if (const std::string diff = identity_difference(mine, got.at("identity")); !diff.empty()) {
      throw Error("distributed (rank " + std::to_string(rank) + "): not the run rank 0 trains: " + diff +
                  " (every rank needs the same pipeline, --set values, plugin builds, data and flags)");
    }
    if (options.resume) {
      auto read = [](const fs::path& p) {
        std::ifstream in(p, std::ios::binary);
        return std::string(std::istreambuf_iterator<char>(in), {});
      };
      for (const char* name : {"checkpoint.pt", "fitted_state.json"}) {
        const std::string bytes = pg->broadcast_text(leader ? read(options.out / name) : "", std::string("sending rank 0's ") + name);
        if (!leader) std::ofstream(own_dir / name, std::ios::binary) << bytes;
      }
      resume_meta = nlohmann::json::parse(pg->broadcast_text(resume_meta.dump(), "sending the checkpoint's state"));
    }
  }

  configure_runtime(doc);
  if (leader) fs::create_directories(options.out);
  HostContext context(log, seed, device, own_dir, pipeline_artifacts(pipeline));
  BuiltModel model = create_modalities(pipeline, registry, datasets, context);

  const auto& splits = doc.at("data").at("splits");
  const std::string train_split = splits.at("train"), val_split = splits.at("val");
  const std::string eval_split = splits.at(doc.at("evaluate").at("split").get<std::string>());

  // fit comes first: an encoder's shape may depend on what it learned (a tabular plugin's
  // columns and vocabularies), so networks are built after it. Every declared modality is
  // fitted; a resumed run reads back what the first sitting fitted.
  const auto t0 = std::chrono::steady_clock::now();
  if (options.resume) restore_fitted_state(model, own_dir);
  // The data: a stream cuts its own batches; otherwise the splits are decoded into memory.
  std::optional<SplitFeatures> train_f, val_f, eval_f;
  int64_t labelled_samples = 0;  // of the train split, under data.unlabelled
  std::vector<SplitFeatures> task_train, task_val, task_eval;  // a multitask run's, one per task
  std::unique_ptr<TrainFeed> feed;
  TaskFeed* task_feed = nullptr;  // feed, when it is a multitask run's
  std::unique_ptr<BatchSource> source;
  nlohmann::json skipped = nlohmann::json::object();
  if (model.stream) {
    BatchStream& stream = *model.stream;
    const std::string field = doc.at("data").at("stream").at("field");
    if (!options.resume) {  // a resumed run restored the fitted state above
      const std::vector<FieldRef> values = stream_values(dataset, field, train_split);
      guard(stream.plugin_name(), [&] { stream.fit(values); });
    }
    const std::set<std::string> opened{train_split, val_split, eval_split};
    for (const auto& split : opened) open_stream_split(stream, dataset, field, split);
    build_networks(pipeline, registry, context, model);
    feed = std::make_unique<StreamFeed>(stream, train_split, batch_size);
    source = std::make_unique<StreamSource>(stream, opened, batch_size, device);
    log->info("stream {}: {} batches of {} per epoch ({:.1f} s to open)", stream.plugin_name(), feed->steps_per_epoch(),
              batch_size, std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
  } else if (pipeline.multitask) {
    // Each task's data set with the modalities it maps; every modality plugin is fitted once, on
    // the train splits of all the tasks that see it.
    const std::vector<std::string> all = [&] {
      std::vector<std::string> names;
      for (const auto& m : model.modalities) names.push_back(m.name);
      return names;
    }();
    std::vector<LoadJob> jobs;
    std::vector<std::string> task_names;
    for (size_t i = 0; i < pipeline.sources.size(); ++i) {
      const DataSource& src = pipeline.sources[i];
      const auto rows = label_subset(static_cast<int64_t>(datasets[i].samples(src.splits.at("train")).size()),
                                     src.label_fraction, seed);
      jobs.push_back(LoadJob{&datasets[i], src.splits.at("train"), source_bindings(model, src, all), source_tasks(model, src),
                             LoadOptions(loader_threads, !options.resume, options.skip_bad, rows), static_cast<int64_t>(i)});
      task_names.push_back(src.tasks.at(0));
    }
    task_train = SplitFeatures::build_all(jobs);
    build_networks(pipeline, registry, context, model);
    const std::vector<std::string> needed = needed_modalities(model, doc);
    auto held_out = [&](const std::string& role) {
      std::vector<LoadJob> js;
      for (size_t i = 0; i < pipeline.sources.size(); ++i) {
        const DataSource& src = pipeline.sources[i];
        js.push_back(LoadJob{&datasets[i], src.splits.at(role), source_bindings(model, src, needed), source_tasks(model, src),
                             LoadOptions(loader_threads, false, options.skip_bad), static_cast<int64_t>(i)});
      }
      return SplitFeatures::build_all(js);
    };
    task_val = held_out("val");
    const std::string eval_role = doc.at("evaluate").at("split");
    if (eval_role != "val") task_eval = held_out(eval_role);
    std::map<std::string, std::vector<const SplitFeatures*>> splits_of;
    for (auto* group : {&task_train, &task_val, &task_eval}) {
      const std::string name = group == &task_train ? train_split : group == &task_val ? val_split : eval_split;
      for (size_t i = 0; i < group->size(); ++i) {
        skipped[task_names[i] + "/" + name] = report_skipped(task_names[i] + "/" + name, (*group)[i]);
        splits_of[name].push_back(&(*group)[i]);
      }
    }
    for (size_t i = 0; i < task_train.size(); ++i) {
      log->info("task {}: {} train / {} {} samples of {}", task_names[i], task_train[i].size(), task_val[i].size(),
                val_split, pipeline.sources[i].file.string());
    }
    std::vector<const SplitFeatures*> train_splits;
    for (const auto& f : task_train) train_splits.push_back(&f);
    auto multi = std::make_unique<TaskFeed>(train_splits, task_names, batch_size, model.train_modalities,
                                            tr.value("task_sampling", "proportional"));
    task_feed = multi.get();
    feed = std::move(multi);
    source = std::make_unique<SplitSource>(splits_of, batch_size, needed, device);
    log->info("loaded {} tasks in {:.1f} s", task_train.size(),
              std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
  } else {
    const int64_t n_train = static_cast<int64_t>(dataset.samples(train_split).size());
    const auto train_rows = label_subset(n_train, doc.at("data").at("label_fraction"), seed);
    labelled_samples = static_cast<int64_t>(train_rows.size());
    LoadOptions train_load{loader_threads, /*fit=*/!options.resume, options.skip_bad, train_rows};
    if (keeps_unlabelled(doc) && static_cast<int64_t>(train_rows.size()) < n_train) {
      // Every row is loaded; those outside the label subset carry no targets (-1 / NaN), so only
      // the strategy's auxiliary terms learn from them.
      train_load.rows.clear();
      train_load.labelled = train_rows;
      log->info("data.unlabelled = auxiliary: labels on {} of {} training samples, the other {} kept without labels",
                train_rows.size(), n_train, n_train - static_cast<int64_t>(train_rows.size()));
    }
    train_f = SplitFeatures::build(dataset, train_split, model.modalities, model.tasks, train_load);
    build_networks(pipeline, registry, context, model);
    const std::vector<std::string> needed = needed_modalities(model, doc);
    const auto bindings = bindings_for(model, needed);
    const LoadOptions held_out{loader_threads, false, options.skip_bad, {}};
    val_f = SplitFeatures::build(dataset, val_split, bindings, model.tasks, held_out);
    if (eval_split == val_split) {
      eval_f = val_f;
    } else {
      eval_f = SplitFeatures::build(dataset, eval_split, bindings, model.tasks, held_out);
    }
    for (const auto& [name, f] : {std::pair<std::string, const SplitFeatures*>{train_split, &*train_f},
                                  {val_split, &*val_f}, {eval_split, &*eval_f}}) {
      skipped[name] = report_skipped(name, *f);
    }
    log->info("loaded {} train / {} {} / {} {} samples in {:.1f} s", train_f->size(), val_f->size(), val_split,
              eval_f->size(), eval_split,
              std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
    feed = std::make_unique<SplitFeed>(*train_f, batch_size, model.train_modalities);
    source = std::make_unique<SplitSource>(
        std::map<std::string, const SplitFeatures*>{{train_split, &*train_f}, {val_split, &*val_f}, {eval_split, &*eval_f}},
        batch_size, needed, device);
  }
  if (feed->steps_per_epoch() == 0) throw Error("split \"" + train_split + "\" has no samples to train on");
  TransferStrategy& strategy = *model.strategy;
  const std::string sp = strategy.plugin_name();

  // Another run's weights come first (a prepare stage may use them: vokenization clusters a
  // pretrained encoder's features); then prepare, whose results live in the strategy's buffers,
  // which the checkpoint restores.
  // In a distributed run rank 0 alone does these (another run's weights may exist only on its
  // machine), and sends every rank its parameters and buffers below.
  if (leader && !options.resume && doc.contains("init_from")) init_from(pipeline, strategy);
  if (leader && !options.resume) guard(sp, [&] { strategy.prepare(*source); });

  // What fit learned (every rank fitted on the whole train split; rank 0's is written).
  nlohmann::json fitted = nlohmann::json::object();
  for (const auto& m : model.modalities) {
    fitted[m.name] = guard(m.plugin->plugin_name(), [&] { return m.plugin->fitted_state(); });
  }
  if (model.stream) fitted["stream"] = guard(model.stream->plugin_name(), [&] { return model.stream->fitted_state(); });

  if (pg != nullptr) {
    // fit ran on every rank over the same data; a rank that learned something else (another
    // data set at the same path, another plugin build) would train another model.
    const std::string leader_fitted = pg->broadcast_text(fitted.dump(), "comparing fitted state with rank 0's");
    if (leader_fitted != fitted.dump()) {
      const nlohmann::json theirs = nlohmann::json::parse(leader_fitted);
      std::string which;
      for (const auto& [name, v] : fitted.items()) {
        if (!theirs.contains(name) || theirs.at(name) != v) which += (which.empty() ? "" : ", ") + name;
      }
      throw Error("distributed (rank " + std::to_string(rank) + "): what fit learned differs from rank 0's for " + which +
                  " (is every rank's data set the same?)");
    }
    // Rank 0's initial (or prepared) parameters and buffers on every rank, before the optimiser
    // and the gradient buckets see them (prepare may have sized some). A resumed run then loads
    // the same checkpoint everywhere.
    GradientReducer::broadcast_module(*pg, strategy);
  }

  auto groups = apply_parameter_groups(tr.at("parameter_groups"), guard(sp, [&] { return strategy.parameter_groups(); }),
                                       strategy);
  for (auto& g : groups) {
    for (auto& p : g.parameters) p.set_requires_grad(!g.frozen);
  }
  auto optimizer = make_optimizer(tr.at("optimizer"), groups);
  std::unique_ptr<GradientReducer> reducer;
  if (pg != nullptr) {
    std::vector<at::Tensor> trainable;
    for (const auto& g : groups) {
      if (!g.frozen) trainable.insert(trainable.end(), g.parameters.begin(), g.parameters.end());
    }
    reducer = std::make_unique<GradientReducer>(*pg, trainable);
  }
  std::vector<double> base_lr;
  for (auto& g : optimizer->param_groups()) base_lr.push_back(g.options().get_lr());
  const double clip = tr.at("grad_clip");
  const auto [select_task, select_metric] = selection_metric(tr, model.tasks, pipeline.multitask);
  // Multitask: each task's loss weight, by the task id its batches carry.
  std::vector<double> task_weight;
  for (const auto& src : pipeline.sources) task_weight.push_back(src.weight);
  const bool keep_best = tr.at("select").at("checkpoint") == "best";
  const int patience = tr.at("early_stopping").at("patience");
  const double min_delta = tr.at("early_stopping").at("min_delta");
  const int64_t checkpoint_every = tr.at("checkpoint_every");
  const int epochs = tr.at("epochs");
  const int64_t steps_per_epoch = feed->steps_per_epoch();
  const int64_t max_steps = tr.at("max_steps");
  const int64_t total_steps = max_steps > 0 ? std::min<int64_t>(max_steps, epochs * steps_per_epoch) : epochs * steps_per_epoch;

  RunState state;
  int64_t rows_this_sitting = 0;  // the rows this rank trained on (its shards), for results.json
  if (options.resume) {
    load_checkpoint(own_dir / "checkpoint.pt", strategy, *optimizer, device);
    state = RunState::from_json(resume_meta.at("state"));
    if (!leader) {  // rank 0's own term sums so far; this rank's start again (they are summed at the epoch's end)
      state.term_sums.clear();
      state.term_steps.clear();
    }
    for (const auto& [task, after] : state.task_stopped_at) task_feed->stop(task);
    if (leader) truncate_metrics(options.out / "metrics.jsonl", state.epoch - 1);
    log->info("resuming {} at epoch {}, step {} ({} steps done)", options.out.string(), state.epoch,
              state.step_in_epoch, state.global_step);
  } else if (!leader) {
    state.epoch_rng = rng_to_string(std::mt19937_64(seed));
  } else {
    state.epoch_rng = rng_to_string(std::mt19937_64(seed));
    // Write what identifies the run before training, so a crashed run still says what it was.
    write_text_atomically(options.out / "pipeline.json", doc.dump(2) + "\n");
    nlohmann::json run = {{"pipeline", doc.at("name")},
                          {"pipeline_hash", pipeline.hash},
                          {"dataset", fs::absolute(pipeline.dataset).lexically_normal().string()},
                          {"pipeline_dir", fs::absolute(pipeline.base_dir).lexically_normal().string()},
                          {"dataset_sha256", data_sha},
                          {"plugins", identity.at("plugins")},
                          {"sdk_version", MODALKIT_SDK_VERSION},
                          {"commit", source_commit(fs::absolute(pipeline.base_dir).string())},
                          {"seed", seed}};
    if (pipeline.multitask) {  // dataset_sha256 is then over these
      for (size_t i = 0; i < pipeline.sources.size(); ++i) {
        run["datasets"][pipeline.sources[i].tasks.at(0)] = {
            {"dataset", fs::absolute(pipeline.sources[i].file).lexically_normal().string()}, {"sha256", datasets[i].sha256()}};
      }
    }
    write_text_atomically(options.out / "run.json", run.dump(2) + "\n");
    write_text_atomically(options.out / "fitted_state.json", fitted.dump(2) + "\n");
    write_text_atomically(options.out / "metrics.jsonl", "");
  }

  HeldOutProtocol protocol(model.tasks, model.class_groups);
  std::ofstream metrics;
  if (leader) metrics.open(options.out / "metrics.jsonl", std::ios::app);
  ProgressBar bar(leader ? tr.at("progress").get<std::string>() : "off");
  auto checkpoint = [&] {
    if (leader) save_checkpoint(ckpt_path, strategy, *optimizer, state, identity, device);
  };

  while (!state.stopped && state.epoch <= epochs) {
    const int epoch = state.epoch;
    auto e0 = std::chrono::steady_clock::now();
    const double seconds_before = state.seconds;
    strategy.train();
    // The epoch's order comes from the generator as it was when the epoch began, so a resumed
    // epoch replays the same order and skips the steps already taken.
    std::mt19937_64 shuffle_rng = rng_from_string(state.epoch_rng);
    feed->start_epoch(epoch, shuffle_rng);
    // A multitask epoch shrinks as tasks stop early; the schedule keeps the planned length.
    const int64_t epoch_steps = feed->steps_per_epoch();
    // Already spent when a checkpoint was written on the budget's last step (SIGINT there).
    bool budget_spent = max_steps > 0 && state.global_step >= max_steps;
    double loader_wait = 0;  // seconds this sitting spent cutting batches (bench: loader wait / step time)
    while (!budget_spent && state.step_in_epoch < epoch_steps) {
      // Loader wait: cutting the batch only; the copy to a GPU would also wait for its kernels.
      const auto b0 = std::chrono::steady_clock::now();
      Batch cpu_batch = feed->batch(state.step_in_epoch);
      if (pg != nullptr) cpu_batch = shard_batch(cpu_batch, rank, world);  // this rank's rows of the global batch
      loader_wait += std::chrono::duration<double>(std::chrono::steady_clock::now() - b0).count();
      Batch batch = cpu_batch.to(device);
      const int64_t rows = batch.size();
      rows_this_sitting += rows;
      const double factor = lr_factor(tr.at("schedule"), state.global_step, total_steps, steps_per_epoch);
      for (size_t g = 0; g < base_lr.size(); ++g) optimizer->param_groups()[g].options().set_lr(base_lr[g] * factor);
      optimizer->zero_grad();
      // A multitask batch is one task's (on every rank: the shards share the global batch's task).
      const size_t task_id = static_cast<size_t>(batch.task_id);
      const double weight = pipeline.multitask ? task_weight.at(task_id) : 1.0;
      LossTerms terms;
      double total_value = 0;  // unweighted; this rank's until reduced
      if (rows > 0) {  // a rank's shard is empty only when the global batch has fewer rows than ranks
        terms = guard(sp, [&] { return strategy.loss(batch); });
        if (terms.empty()) throw PluginError(sp, "loss() returned no terms");
        at::Tensor total;
        for (const auto& [name, t] : terms) {
          if (t.numel() != 1) throw PluginError(sp, "loss term " + name + " is not a scalar");
          total = total.defined() ? total + t : t;
        }
        total_value = total.item<double>();
        if (weight != 1.0) total = total * weight;
        total.backward();
      }
      bool interrupted = interrupt_requested();
      if (reducer) {
        // One loss for the global batch (each rank's weighted by its rows), and an interrupt on
        // any rank stops every rank at this step.
        const auto sums = reducer->reduce(rows, {total_value * static_cast<double>(rows), static_cast<double>(rows),
                                                 interrupted ? 1.0 : 0.0});
        total_value = sums[1] > 0 ? sums[0] / sums[1] : 0.0;
        interrupted = sums[2] > 0;
      }
      if (pipeline.multitask) {  // the batch's task's share of the epoch's loss, unweighted
        const std::string& task = pipeline.sources.at(task_id).tasks.at(0);
        state.task_loss_sums[task] += total_value;
        ++state.task_steps[task];
      }
      total_value *= weight;
      if (!std::isfinite(total_value)) {
        bar.clear();
        throw PluginError(sp, "loss became " + std::to_string(total_value) + " at epoch " + std::to_string(epoch) +
                                  ", step " + std::to_string(state.step_in_epoch + 1) +
                                  " (lower train.optimizer.lr or set train.grad_clip)");
      }
      if (clip > 0) torch::nn::utils::clip_grad_norm_(strategy.parameters(), clip);
      optimizer->step();
      for (const auto& [name, t] : terms) {
        state.term_sums[name] += t.item<double>();
        ++state.term_steps[name];
      }
      state.loss_sum += total_value;
      ++state.step_in_epoch;
      ++state.global_step;

      const double elapsed = std::chrono::duration<double>(std::chrono::steady_clock::now() - e0).count();
      const double rate = static_cast<double>(state.step_in_epoch * batch_size) / std::max(1e-9, seconds_before + elapsed);
      bar.update(epoch, epochs, state.step_in_epoch, epoch_steps, state.loss_sum / static_cast<double>(state.step_in_epoch),
                 rate, static_cast<double>(total_steps - state.global_step) * batch_size / std::max(rate, 1e-9));
      budget_spent = max_steps > 0 && state.global_step >= max_steps;
      const bool epoch_done = state.step_in_epoch >= epoch_steps;
      if (interrupted) {
        bar.clear();
        state.seconds = seconds_before + elapsed;
        checkpoint();
        throw Interrupted("interrupted in epoch " + std::to_string(epoch) + " after step " +
                          std::to_string(state.step_in_epoch) + "; checkpoint written to " + ckpt_path.string() +
                          " (continue with --resume)");
      }
      if (budget_spent) break;
      if (!epoch_done && checkpoint_every > 0 && state.global_step % checkpoint_every == 0) {
        state.seconds = seconds_before + elapsed;
        checkpoint();
        log->debug("checkpoint: epoch {} step {} (global step {})", epoch, state.step_in_epoch, state.global_step);
      }
    }
    bar.clear();
    const double seconds =
        seconds_before + std::chrono::duration<double>(std::chrono::steady_clock::now() - e0).count();
    if (pg != nullptr) {
      // Each loss term over every rank's steps (rank 0 names the terms; a rank without one adds 0).
      nlohmann::json names = nlohmann::json::array();
      for (const auto& [name, sum] : state.term_sums) names.push_back(name);
      names = nlohmann::json::parse(pg->broadcast_text(names.dump(), "naming the loss terms"));
      if (!names.empty()) {
        at::Tensor sums = torch::zeros({2 * static_cast<int64_t>(names.size())}, torch::kDouble);
        for (size_t i = 0; i < names.size(); ++i) {
          const std::string name = names[i];
          sums[static_cast<int64_t>(2 * i)] = state.term_sums.count(name) ? state.term_sums.at(name) : 0.0;
          sums[static_cast<int64_t>(2 * i + 1)] = static_cast<double>(state.term_steps.count(name) ? state.term_steps.at(name) : 0);
        }
        pg->allreduce_sum(sums, "summing the loss terms");
        state.term_sums.clear();
        state.term_steps.clear();
        for (size_t i = 0; i < names.size(); ++i) {
          state.term_sums[names[i]] = sums[static_cast<int64_t>(2 * i)].item<double>();
          state.term_steps[names[i]] = static_cast<int64_t>(sums[static_cast<int64_t>(2 * i + 1)].item<double>());
        }
      }
    }
    // Validation, selection and the epoch's line: rank 0's alone (every rank has its weights);
    // the others wait for its decision below.
    if (leader) {
      nlohmann::json val = {{"tasks", nlohmann::json::object()}};
      if (!model.tasks.empty()) val = protocol.evaluate(strategy, *source, val_split, model.test_modalities);
      nlohmann::json val_loss;
      if (select_metric == "loss") val_loss = loss_on(strategy, *source, val_split, model.train_modalities);
      double score = 0;
      if (select_metric == "loss") {
        score = val_loss.at("loss").get<double>();
      } else if (select_metric == "mean") {  // each task's first metric on its own validation split
        for (const auto& [task, spec] : model.tasks) score += val["tasks"][task][spec.metrics.at(0)].get<double>();
        score /= static_cast<double>(model.tasks.size());
      } else {
        score = val["tasks"][select_task][select_metric].get<double>();
      }
      // A metric that is undefined on this validation split (AUROC without both classes) never
      // counts as an improvement, and never blocks one.
      const double gain = higher_is_better(select_metric) ? score - state.best : state.best - score;
      const bool improved = state.best_epoch < 0 || (std::isfinite(score) && (!std::isfinite(state.best) || gain > min_delta));
      if (improved) {
        state.best = score;
        state.best_epoch = epoch;
        state.bad_epochs = 0;
      } else {
        ++state.bad_epochs;
      }
      if (improved || !keep_best) save_weights(strategy, options.out / "model.pt");
      const int64_t steps = std::max<int64_t>(state.step_in_epoch, 1);
      nlohmann::json line = {{"epoch", epoch}, {"steps", state.step_in_epoch}, {"global_step", state.global_step},
                             {"lr", base_lr[0] * lr_factor(tr.at("schedule"), std::max<int64_t>(0, state.global_step - 1), total_steps, steps_per_epoch)},
                             {"train_loss", state.loss_sum / static_cast<double>(steps)},
                             {"loss_terms", nlohmann::json::object()}, {"val", val["tasks"]},
                             {"seconds", seconds}, {"samples_per_s", static_cast<double>(state.step_in_epoch * batch_size) / seconds},
                             {"loader_wait_fraction", loader_wait / std::max(1e-9, seconds - seconds_before)}};
      for (const auto& [name, sum] : state.term_sums) {
        // Over the steps that had the term: a multitask run's task/<t> only over that task's batches.
        const auto it = state.term_steps.find(name);
        const int64_t n = it == state.term_steps.end() ? steps : std::max<int64_t>(it->second, 1);
        line["loss_terms"][name] = sum / static_cast<double>(n);
      }
      if (!val_loss.is_null()) line["val_loss"] = val_loss.at("loss");
      if (pipeline.multitask) {  // each task's mean (unweighted) loss and its share of the epoch's steps
        for (const auto& [task, n] : state.task_steps) {
          line["task_loss"][task] = state.task_loss_sums[task] / static_cast<double>(std::max<int64_t>(n, 1));
          line["task_steps"][task] = n;
        }
      }
      metrics << line.dump() << "\n" << std::flush;
      log->info("epoch {}/{}  loss {:.4f}  val {} {:.4f}{}  {:.1f} s", epoch, epochs, line["train_loss"].get<double>(),
                select_metric, score, improved ? " *" : "", seconds);
      if (patience > 0 && pipeline.multitask) {
        // Each task on its own: one that has stopped improving is no longer trained, so that it
        // does not overfit while the others still learn; the run ends with the last.
        for (const auto& [task, spec] : model.tasks) {
          if (state.task_stopped_at.count(task)) continue;
          const std::string& metric = spec.metrics.at(0);
          const double v = val["tasks"][task][metric].is_number() ? val["tasks"][task][metric].get<double>() : NAN;
          const auto best = state.task_best.find(task);
          const bool better = best == state.task_best.end() ||
                              (std::isfinite(v) && (!std::isfinite(best->second) ||
                                                    (higher_is_better(metric) ? v - best->second : best->second - v) > min_delta));
          if (better) {
            state.task_best[task] = v;
            state.task_bad_epochs[task] = 0;
          } else if (++state.task_bad_epochs[task] >= patience) {
            state.task_stopped_at[task] = epoch;
            task_feed->stop(task);
            log->info("early stop of task {}: val {} has not improved for {} epochs (best {:.4f})", task, metric, patience,
                      state.task_best[task]);
          }
        }
        if (state.task_stopped_at.size() == model.tasks.size()) state.stopped = true;
      } else if (patience > 0 && state.bad_epochs >= patience) {
        log->info("early stop: val {} has not improved for {} epochs (best {:.4f} at epoch {})", select_metric,
                  patience, state.best, state.best_epoch);
        state.stopped = true;
      }
    }  // leader
    if (pg != nullptr) {  // rank 0's early stopping, on every rank
      const nlohmann::json decision = nlohmann::json::parse(pg->broadcast_text(
          nlohmann::json{{"stopped", state.stopped}, {"task_stopped_at", state.task_stopped_at}}.dump(),
          "receiving rank 0's decision after epoch " + std::to_string(epoch) + " (it validates meanwhile)"));
      state.stopped = decision.at("stopped");
      for (const auto& [task, after] : decision.at("task_stopped_at").items()) {
        if (!state.task_stopped_at.count(task)) {
          state.task_stopped_at[task] = after;
          task_feed->stop(task);
        }
      }
    }
    if (budget_spent) {
      log->info("step budget spent: {} steps (train.max_steps)", state.global_step);
      state.stopped = true;
    }
    // The next epoch starts from the generator as this one left it.
    state.epoch_rng = rng_to_string(shuffle_rng);
    ++state.epoch;
    state.step_in_epoch = 0;
    state.loss_sum = 0;
    state.term_sums.clear();
    state.term_steps.clear();
    state.task_loss_sums.clear();
    state.task_steps.clear();
    state.seconds = 0;
    checkpoint();
  }

  nlohmann::json distributed;
  if (pg != nullptr) {  // how the rows were shared: each rank's count, summed into rank 0's results
    at::Tensor rows = torch::zeros({world}, torch::kDouble);
    rows[rank] = static_cast<double>(rows_this_sitting);
    pg->allreduce_sum(rows, "counting each rank's rows");
    distributed = {{"world_size", world}, {"rows_this_sitting", nlohmann::json::array()}};
    for (int r = 0; r < world; ++r) distributed["rows_this_sitting"].push_back(static_cast<int64_t>(rows[r].item<double>()));
  }
  if (!leader) return {{"rank", rank}, {"steps", state.global_step}};  // rank 0 finalizes, evaluates and writes
  load_weights(strategy, options.out / "model.pt");
  guard(sp, [&] { strategy.finalize(*source); });
  save_weights(strategy, options.out / "model.pt");  // finalize state (buffers) goes with the weights
  std::vector<std::string> eval_modalities = model.test_modalities;
  if (doc.at("evaluate").contains("modalities")) {
    eval_modalities = doc.at("evaluate").at("modalities").get<std::vector<std::string>>();
  }
  // A task-less run's figure is its loss, on what the strategy trains with.
  nlohmann::json result;
  try {
    result = held_out_figures(model, *source, eval_split, model.tasks.empty() ? model.train_modalities : eval_modalities);
  } catch (const Interrupted& e) {
    // Training is complete and its last checkpoint says so: a resume goes straight to evaluating.
    throw Interrupted(std::string(e.what()) + "; training is complete (" + ckpt_path.string() +
                      "), continue with --resume to evaluate again");
  }
  result["best_epoch"] = state.best_epoch;
  result["kept"] = keep_best ? "best" : "last";
  result["selected_on"] = {{"split", val_split}, {"task", select_task}, {"metric", select_metric}, {"value", state.best}};
  result["steps"] = state.global_step;
  result["label_fraction"] = doc.at("data").at("label_fraction");
  result["train_samples"] = feed->examples();
  if (doc.at("data").contains("unlabelled")) {
    result["unlabelled"] = doc.at("data").at("unlabelled");
    result["labelled_samples"] = labelled_samples;
  }
  result["parameters"] = parameter_counts(strategy);
  if (pipeline.multitask) {  // what each task trained on, and when it stopped
    int64_t all = 0;
    for (size_t i = 0; i < pipeline.sources.size(); ++i) {
      const DataSource& src = pipeline.sources[i];
      const std::string& task = src.tasks.at(0);
      result["task_data"][task] = {{"dataset", fs::absolute(src.file).lexically_normal().string()},
                                   {"dataset_sha256", datasets[i].sha256()},
                                   {"train_samples", task_train[i].size()},
                                   {"label_fraction", src.label_fraction},
                                   {"weight", src.weight},
                                   {"stopped_after_epoch", state.task_stopped_at.count(task) ? nlohmann::json(state.task_stopped_at.at(task))
                                                                                             : nlohmann::json()}};
      all += task_train[i].size();
    }
    result["train_samples"] = all;
  }
  if (!distributed.is_null()) result["distributed"] = distributed;
  result["skipped"] = skipped;
  result["artifacts"] = publish_artifacts(pipeline, registry, options.out);
  write_text_atomically(options.out / "results.json", result.dump(2) + "\n");
  return result;
}

}  // namespace modalkit::host
