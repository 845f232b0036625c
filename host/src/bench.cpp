#include "bench.hpp"

#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <fstream>
#include <functional>
#include <random>
#include <sstream>

#include <ATen/Parallel.h>
#include <spdlog/spdlog.h>

#include "dataset.hpp"
#include "engine.hpp"
#include "loader.hpp"
#include "modalkit/errors.hpp"
#include "modalkit/language_model.hpp"
#include "paths.hpp"
#include "pipeline.hpp"
#include "recipes.hpp"
#include "system_info.hpp"

namespace fs = std::filesystem;

namespace modalkit::host {

namespace {

using Clock = std::chrono::steady_clock;

double seconds_since(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

/// A scratch directory: emptied when made (a crashed earlier bench with the same pid may have
/// left runs there) and removed however the bench ends.
struct ScratchDir {
  fs::path path;
  explicit ScratchDir(fs::path p) : path(std::move(p)) { fs::remove_all(path); }
  ~ScratchDir() {
    std::error_code ec;
    fs::remove_all(path, ec);
  }
  ScratchDir(const ScratchDir&) = delete;
  ScratchDir& operator=(const ScratchDir&) = delete;
};

/// Runs `fn` until `min_seconds` have passed (at least twice); returns the mean seconds per run.
template <class F>
double time_per_run(double min_seconds, F&& fn) {
  int runs = 0;
  const auto t0 = Clock::now();
  do {
    fn();
    ++runs;
  } while (runs < 2 || seconds_since(t0) < min_seconds);
  return seconds_since(t0) / runs;
}

/// One epoch's batches over `f` in a shuffled order, as the trainer cuts them.
void batch_epoch(const SplitFeatures& f, int64_t batch_size, const std::vector<std::string>& modalities,
                 std::mt19937_64& rng) {
  std::vector<int64_t> order(static_cast<size_t>(f.size()));
  for (size_t i = 0; i < order.size(); ++i) order[i] = static_cast<int64_t>(i);
  std::shuffle(order.begin(), order.end(), rng);
  for (size_t at = 0; at < order.size(); at += static_cast<size_t>(batch_size)) {
    const size_t end = std::min(order.size(), at + static_cast<size_t>(batch_size));
    Batch b = f.batch(std::vector<int64_t>(order.begin() + long(at), order.begin() + long(end)), modalities);
    (void)b;
  }
}

}  // namespace

std::vector<fs::path> default_bench_pipelines() {
  std::vector<fs::path> out;
  for (const char* name : {"fashion-mnist-image", "spoken-words-audio", "wine-tabular", "sensor-network-temperature",
                           "spam-text"}) {
    const fs::path p = fs::path("examples/pipelines") / (std::string(name) + ".json");
    if (fs::exists(p)) out.push_back(p);
  }
  return out;
}

namespace {

/// Wall time of running this executable with `args` (stdout and stderr discarded), best of `n`.
double process_seconds(const std::string& args, int n) {
  const std::string self = std::filesystem::read_symlink("/proc/self/exe").string();
  double best = 1e300;
  for (int i = 0; i < n; ++i) {
    const auto t0 = std::chrono::steady_clock::now();
    const int rc = std::system(("'" + self + "' " + args + " >/dev/null 2>&1").c_str());
    if (rc != 0) throw Error("bench: `modalkit " + args + "` failed");
    best = std::min(best, std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
  }
  return best;
}

/// The smallest seconds per step over the epochs after the first (caches warm) of a metrics.jsonl
/// or of modalkit-bench-bare's output (both one JSON object per epoch line).
double best_seconds_per_step(const std::string& lines, const std::string& what) {
  std::istringstream in(lines);
  double best = 1e300;
  for (std::string line; std::getline(in, line);) {
    if (line.empty()) continue;
    const nlohmann::json j = nlohmann::json::parse(line, nullptr, false);
    if (j.is_discarded() || !j.contains("epoch") || !j.contains("seconds") || !j.contains("steps")) {
      throw Error("bench: " + what + ": not an epoch line: " + line);
    }
    if (j.at("epoch").get<int>() < 2) continue;
    best = std::min(best, j.at("seconds").get<double>() / j.at("steps").get<double>());
  }
  if (best == 1e300) throw Error("bench: " + what + ": no epoch after the first was timed");
  return best;
}

/// (1) The host's train step against a bare LibTorch loop over the same graph: the TorchScript
/// encoder modalkit-bench-bare writes, trained by the host as `modalities.image.torchscript`
/// (concat without modality embeddings, the standard linear head, supervised, Adam) on
/// fashion-mnist-image's train split, and by modalkit-bench-bare on as many random images held in
/// memory. Rounds alternate bare and host processes, as many of each; the best epoch after the
/// first of each side counts.
using recipes::run_tool;

/// The pipeline the train-step (1) and distributed (5) figures train; its absence makes the
/// part `skipped` (runtime_bench catches).
fs::path runtime_pipeline(const BenchOptions& options) {
  for (const auto& p : options.pipelines) {
    if (p.filename() == "fashion-mnist-image.json") return p;
  }
  throw Error("needs examples/pipelines/fashion-mnist-image.json among the pipelines (run from the source tree)");
}

nlohmann::json train_step_bench(PluginRegistry& registry, const BenchOptions& options, const fs::path& scratch) {
  const fs::path bare = bench_tool("modalkit-bench-bare");
  if (bare.empty()) return {{"skipped", "modalkit-bench-bare not found (set MODALKIT_BENCH_DIR)"}};
  const fs::path pipeline_file = runtime_pipeline(options);
  fs::create_directories(scratch);
  const fs::path module = scratch / "bench-encoder.pt";
  run_tool({bare.string(), "write-module", module.string()}, {}, "");
  const int epochs = 4;
  const std::vector<std::string> sets = {
      "modalities.image.torchscript=" + nlohmann::json{{"path", module.string()}, {"width", 64}, {"trainable", true}}.dump(),
      "d_model=64", "fusion.config={\"modality_embeddings\":false}", "train.epochs=" + std::to_string(epochs),
      "train.max_steps=0", "train.early_stopping.patience=0", "train.grad_clip=0", "train.progress=\"lines\"",
      // The bare loop runs LibTorch's default (nondeterministic-allowed) kernels; so does the host here.
      "train.deterministic=false"};
  const ResolvedPipeline p = load_pipeline(pipeline_file, sets, registry);  // validates before anything runs
  Dataset dataset = Dataset::open(p.dataset);
  const auto samples = dataset.samples(p.doc.at("data").at("splits").at("train")).size();
  const int64_t batch = p.doc.at("train").at("batch_size");
  const double lr = p.doc.at("train").at("optimizer").at("lr");
  const int threads = p.doc.at("train").at("threads");
  const auto classes = dataset.labels(p.doc.at("tasks").at("label").at("target")).size();
  const std::vector<std::string> bare_args = {bare.string(), "run", module.string(), "--samples", std::to_string(samples),
                                              "--batch", std::to_string(batch), "--classes", std::to_string(classes),
                                              "--lr", nlohmann::json(lr).dump(), "--epochs", std::to_string(epochs),
                                              "--threads", std::to_string(threads)};
  // The host side is `modalkit train` in its own process, as users run it, so neither side
  // inherits this process's state (thread pools, allocator, the JIT's caches).
  std::vector<std::string> host_args = {executable_path().string()};
  for (const auto& d : registry.search_path()) host_args.insert(host_args.end(), {"--plugin-path", d.string()});
  host_args.insert(host_args.end(), {"train", pipeline_file.string(), "--out", ""});
  for (const auto& set : sets) host_args.insert(host_args.end(), {"--set", set});
  const size_t out_at = host_args.size() - 2 * sets.size() - 1;
  // Alternating processes (bare, host, bare, host, ...): a burst of other load on a shared
  // machine then spoils one round of one side, not the ratio. The best epoch of each side counts:
  // on this project's 2-core VM a process lands in a fast or a slow regime (±30 %, whichever
  // program it is), so a single pair of processes would measure the regimes, not the host.
  const int rounds = options.min_seconds >= 1 ? 5 : 1;
  double bare_s = 1e300, host_s = 1e300;
  for (int round = 0; round < rounds; ++round) {
    bare_s = std::min(bare_s, best_seconds_per_step(run_tool(bare_args, {}, ""), "modalkit-bench-bare's output"));
    const fs::path run_dir = scratch / ("train-step-run-" + std::to_string(round));
    host_args[out_at] = run_dir.string();
    run_tool(host_args, {}, "");
    std::ifstream in(run_dir / "metrics.jsonl");
    host_s = std::min(host_s, best_seconds_per_step(std::string(std::istreambuf_iterator<char>(in), {}),
                                                    (run_dir / "metrics.jsonl").string()));
  }
  return {{"pipeline", p.doc.at("name")}, {"encoder", "TorchScript conv (modalkit-bench-bare write-module)"},
          {"samples", samples}, {"batch", batch}, {"threads", threads}, {"rounds", rounds}, {"epochs", epochs},
          {"host_seconds_per_step", host_s}, {"bare_seconds_per_step", bare_s}, {"ratio", host_s / bare_s}};
}

/// (2) A plugin loaded dynamically against the same code linked statically (modalkit-bench-link,
/// which links the image plugin's object files and loads the image plugin's library), on
/// `threads` LibTorch threads.
nlohmann::json link_bench(PluginRegistry& registry, const BenchOptions& options, int threads) {
  const fs::path tool = bench_tool("modalkit-bench-link");
  if (tool.empty()) return {{"skipped", "modalkit-bench-link not found (set MODALKIT_BENCH_DIR)"}};
  const schema::Manifest* image = registry.find("image");
  if (image == nullptr) return {{"skipped", "no image plugin on the plugin path"}};
  // One process's ratio moves by several per cent with where its allocations land; the median
  // over three processes is the figure.
  const int processes = options.min_seconds >= 1 ? 3 : 1;
  std::vector<nlohmann::json> runs;
  for (int i = 0; i < processes; ++i) {
    runs.push_back(nlohmann::json::parse(run_tool({tool.string(), image->library_path().string(), "--threads",
                                                   std::to_string(threads), "--rounds",
                                                   options.min_seconds >= 1 ? "5" : "2"}, {}, "")));
  }
  std::sort(runs.begin(), runs.end(), [](const nlohmann::json& a, const nlohmann::json& b) {
    return a.at("ratio").get<double>() < b.at("ratio").get<double>();
  });
  nlohmann::json out = runs[runs.size() / 2];
  out["process_ratios"] = nlohmann::json::array();
  for (const auto& r : runs) out["process_ratios"].push_back(r.at("ratio"));
  return out;
}

/// (5) Data-parallel training: `modalkit launch -n 2` (two local ranks, each on one LibTorch
/// thread, each computing half of every global batch) against one `modalkit train` process on
/// two threads, the same pipeline, global batch and cores; samples/s of the best epoch after
/// the first, best of alternating rounds as in (1). One process on one thread is measured too:
/// twice its rate is what two ranks would reach if splitting a batch and all-reducing its
/// gradients cost nothing, so `scaling_efficiency` says what the communication and the smaller
/// per-rank batches take.
nlohmann::json distributed_bench(PluginRegistry& registry, const BenchOptions& options, const fs::path& scratch) {
  const fs::path pipeline_file = runtime_pipeline(options);
  fs::create_directories(scratch);
  const int epochs = 3;
  const std::vector<std::string> sets = {"train.epochs=" + std::to_string(epochs), "train.max_steps=0",
                                         "train.early_stopping.patience=0", "train.progress=\"lines\""};
  const ResolvedPipeline p = load_pipeline(pipeline_file, sets, registry);  // validates before anything runs
  const int threads = p.doc.at("train").at("threads");
  std::vector<std::string> base = {executable_path().string()};
  for (const auto& d : registry.search_path()) base.insert(base.end(), {"--plugin-path", d.string()});
  auto run = [&](const std::vector<std::string>& head, int run_threads, const fs::path& dir) {
    std::vector<std::string> args = base;
    args.insert(args.end(), head.begin(), head.end());
    args.insert(args.end(), {"train", pipeline_file.string(), "--out", dir.string()});
    for (const auto& set : sets) args.insert(args.end(), {"--set", set});
    args.insert(args.end(), {"--set", "train.threads=" + std::to_string(run_threads)});
    run_tool(args, {}, "");
    std::ifstream in(dir / "metrics.jsonl");
    return best_seconds_per_step(std::string(std::istreambuf_iterator<char>(in), {}), (dir / "metrics.jsonl").string());
  };
  const int rounds = options.min_seconds >= 1 ? 3 : 1;
  const int per_rank = std::max(1, threads / 2);
  double one_s = 1e300, two_s = 1e300, single_s = 1e300;
  for (int round = 0; round < rounds; ++round) {
    one_s = std::min(one_s, run({}, threads, scratch / ("one-" + std::to_string(round))));
    single_s = std::min(single_s, run({}, per_rank, scratch / ("single-" + std::to_string(round))));
    two_s = std::min(two_s, run({"launch", "-n", "2", "--timeout", "600", "--"}, per_rank, scratch / ("two-" + std::to_string(round))));
  }
  const int64_t batch = p.doc.at("train").at("batch_size");
  return {{"pipeline", p.doc.at("name")}, {"batch", batch}, {"rounds", rounds}, {"epochs", epochs},
          {"one_rank_threads", threads}, {"threads_per_rank", per_rank},
          {"one_rank_samples_per_s", static_cast<double>(batch) / one_s},
          {"two_ranks_samples_per_s", static_cast<double>(batch) / two_s}, {"ratio", one_s / two_s},
          {"one_rank_per_rank_threads_samples_per_s", static_cast<double>(batch) / single_s},
          {"scaling_efficiency", single_s / (2.0 * two_s)}};
}

/// The same model behind the LanguageModel interface only, so that generate() cannot use its
/// key-value cache: what a model other than the SDK's own (a TorchScript one) gets, and what
/// generate() did for every model before the cache.
class RecomputedLM : public LanguageModel {
 public:
  explicit RecomputedLM(std::shared_ptr<CausalTransformerLM> lm) : lm_(std::move(lm)) {}
  int64_t vocab_size() const override { return lm_->vocab_size(); }
  int64_t width() const override { return lm_->width(); }
  int64_t layers() const override { return lm_->layers(); }
  int64_t context() const override { return lm_->context(); }
  bool supports_hooks() const override { return true; }
  at::Tensor embed(const at::Tensor& ids) override { return lm_->embed(ids); }
  at::Tensor forward(const at::Tensor& embeds, const at::Tensor& mask, const LmHooks& hooks) override {
    return lm_->forward(embeds, mask, hooks);
  }
  nlohmann::json config() const override { return lm_->config(); }

 private:
  std::shared_ptr<CausalTransformerLM> lm_;
};

/// (6) Greedy generation with the SDK's key-value cache against recomputing every position at
/// every step, on `threads` LibTorch threads: pretrain-lm's architecture (4 blocks of width 256,
/// 4 heads, 8,000 pieces, context 128) with random weights, 16 prompts of 16 random pieces (the
/// length of an image prefix, BOS and a knowledge question), 12 pieces generated per row (the
/// protocols' max_tokens; no EOS, so both sides run every step). Best of alternating rounds.
nlohmann::json generation_bench(const BenchOptions& options, int threads) {
  struct Threads {  // restored however the figure ends
    int before = at::get_num_threads();
    ~Threads() { at::set_num_threads(before); }
  } restore;
  at::set_num_threads(threads);
  torch::manual_seed(1);
  auto lm = std::make_shared<CausalTransformerLM>(CausalTransformerLMOptions(8000, 256, 4, 4, 128).dropout(0.0));
  lm->eval();
  RecomputedLM recomputed(lm);
  const int64_t rows = 16, prompt = 16;
  GenerateOptions generate_options;
  generate_options.max_tokens = 12;
  at::Tensor embeds;
  {
    torch::NoGradGuard no_grad;
    embeds = lm->embed(at::randint(lm->vocab_size(), {rows, prompt}, at::kLong));
  }
  // The two must decode the same pieces, or the figure compares different work.
  const bool same = generate(*lm, embeds, {}, generate_options) == generate(recomputed, embeds, {}, generate_options);
  double cached = 1e300, full = 1e300;
  for (int round = 0; round < (options.min_seconds >= 1 ? 3 : 1); ++round) {
    cached = std::min(cached, time_per_run(options.min_seconds / 6, [&] { generate(*lm, embeds, {}, generate_options); }));
    full = std::min(full, time_per_run(options.min_seconds / 6, [&] { generate(recomputed, embeds, {}, generate_options); }));
  }
  return {{"model", lm->config()}, {"rows", rows}, {"prompt_pieces", prompt}, {"new_pieces", generate_options.max_tokens},
          {"threads", threads}, {"cached_seconds", cached}, {"recomputed_seconds", full}, {"speedup", full / cached},
          {"same_output", same}};
}

}  // namespace

nlohmann::json runtime_bench(PluginRegistry& registry, const BenchOptions& options) {
  nlohmann::json out;
  // (3) Loader wait as a fraction of step time after the first epoch: a short training run of
  // the first pipeline; the trainer times cutting each batch against the whole epoch.
  const std::filesystem::path pipeline = options.pipelines.front();
  const ScratchDir dir(fs::temp_directory_path() / ("modalkit-bench-runtime-" + std::to_string(::getpid())));
  {
    TrainOptions t;
    t.out = dir.path;
    const ResolvedPipeline p = load_pipeline(pipeline, {"train.epochs=2", "train.max_steps=0", "train.early_stopping.patience=0", "train.progress=\"lines\""}, registry);
    train(p, registry, t);
    std::ifstream in(dir.path / "metrics.jsonl");
    nlohmann::json last;
    for (std::string line; std::getline(in, line);) last = nlohmann::json::parse(line);
    out["loader_wait"] = {{"pipeline", p.doc.at("name")}, {"epoch", last.at("epoch")},
                          {"fraction_of_step_time", last.at("loader_wait_fraction")},
                          {"samples_per_s", last.at("samples_per_s")}};
  }
  // (4) `plugins list` wall time (manifests only), against `--version` (process start, LibTorch
  // loaded, no plugin discovery) as the baseline.
  std::string paths;  // the same plugin directories this process searches
  for (const auto& d : registry.search_path()) paths += "--plugin-path '" + d.string() + "' ";
  const double list = process_seconds(paths + "plugins list", 5), version = process_seconds(paths + "--version", 5);
  out["plugins_list"]["plugins"] = registry.names().size();
  out["plugins_list"]["seconds"] = list;
  out["plugins_list"]["baseline_version_seconds"] = version;
  out["plugins_list"]["ratio"] = list / version;
  // (1) and (2): in a scratch directory of their own.
  const ScratchDir scratch(dir.path.string() + "-step");
  // A part that fails says why in its entry; the figures already measured are kept.
  auto part = [](const std::function<nlohmann::json()>& fn) -> nlohmann::json {
    try {
      return fn();
    } catch (const std::exception& e) {
      return {{"skipped", e.what()}};
    }
  };
  out["train_step"] = part([&] { return train_step_bench(registry, options, scratch.path); });
  // The same LibTorch thread count as the train-step figure (the pipelines' default).
  const int threads = out["train_step"].value("threads", 2);
  out["dynamic_vs_static"] = part([&] { return link_bench(registry, options, threads); });
  out["distributed"] = part([&] { return distributed_bench(registry, options, scratch.path / "distributed"); });
  out["generation"] = part([&] { return generation_bench(options, threads); });
  return out;
}

nlohmann::json run_bench(PluginRegistry& registry, const BenchOptions& options) {
  if (options.pipelines.empty()) {
    throw Error("bench: no pipelines (give PIPELINE.json files, or run from the source tree, where "
                "examples/pipelines holds the default ones)");
  }
  // Loader threads are what is measured: LibTorch's own (intra-op) threads stay at one so they
  // do not compete with them (featurize calls torch ops, e.g. the audio plugin's STFT).
  const ScratchDir scratch_dir(fs::temp_directory_path() / ("modalkit-bench-" + std::to_string(::getpid())));
  const fs::path& scratch = scratch_dir.path;
  // Restores the thread count however the run ends.
  struct Restore {
    int intra_op;
    ~Restore() { at::set_num_threads(intra_op); }
  } restore{at::get_num_threads()};
  at::set_num_threads(1);
  nlohmann::json out = {{"blas", active_blas()},
                        {"hardware_threads", std::thread::hardware_concurrency()},
                        {"min_seconds", options.min_seconds},
                        {"loader", nlohmann::json::array()}};
  for (const auto& file : options.pipelines) {
    ResolvedPipeline pipeline = load_pipeline(file, {}, registry);
    const nlohmann::json& doc = pipeline.doc;
    if (pipeline.multitask) {
      throw UsageError("bench --loader times one data set's loading; " + file.string() +
                       " is a multitask pipeline (time each task's data set with its own pipeline)");
    }
    std::vector<Dataset> datasets = open_datasets(pipeline);
    Dataset& dataset = datasets.at(0);
    HostContext context(spdlog::default_logger(), doc.at("seed"), c10::Device(c10::kCPU), scratch,
                        pipeline_artifacts(pipeline));
    BuiltModel model = create_modalities(pipeline, registry, datasets, context);
    const std::string split = doc.at("data").at("splits").at("train");
    const int64_t batch_size = doc.at("train").at("batch_size");
    if (model.stream) {  // no per-sample decoding: time a whole epoch of the stream's batches
      BatchStream& stream = *model.stream;
      const std::string field = doc.at("data").at("stream").at("field");
      const std::vector<FieldRef> values = stream_values(dataset, field, split);
      guard(stream.plugin_name(), [&] { stream.fit(values); });
      open_stream_split(stream, dataset, field, split);
      const int64_t batches = guard(stream.plugin_name(), [&] { return stream.batches(split, batch_size); });
      int64_t epoch = 0, examples = 0;  // a new epoch each time: its pairs are drawn anew, as in training
      const double s = time_per_run(options.min_seconds, [&] {
        ++epoch;
        examples = 0;
        for (int64_t i = 0; i < batches; ++i) {
          examples += guard(stream.plugin_name(), [&] { return stream.batch(split, epoch, i, batch_size); }).size();
        }
      });
      out["loader"].push_back({{"pipeline", doc.at("name")}, {"split", split}, {"stream", stream.plugin_name()},
                               {"batches", batches}, {"examples", examples}, {"epoch_seconds", s},
                               {"examples_per_s", static_cast<double>(examples) / s}});
      continue;
    }
    // Fit once (also warms file caches and plugin-side caches such as decompressed IDX files).
    SplitFeatures all = SplitFeatures::build(dataset, split, model.modalities, model.tasks, {2, true, false, {}});
    std::vector<std::string> names;
    for (const auto& m : model.modalities) names.push_back(m.name);

    nlohmann::json entry = {{"pipeline", doc.at("name")}, {"split", split}, {"samples", all.size()},
                            {"modalities", nlohmann::json::object()}};
    for (const auto& m : model.modalities) {
      // Three alternating rounds, the best of each kept: a burst of other load on a shared
      // machine then hurts one round, not the ratio.
      nlohmann::json rates = {{"1", 0.0}, {"2", 0.0}};
      for (int round = 0; round < 3; ++round) {
        for (int threads : {1, 2}) {
          const double s = time_per_run(options.min_seconds / 3, [&] {
            SplitFeatures::build(dataset, split, {m}, {}, {threads, false, false, {}});
          });
          auto& best = rates[std::to_string(threads)];
          best = std::max(best.get<double>(), static_cast<double>(all.size()) / s);
        }
      }
      entry["modalities"][m.name] = {{"plugin", m.plugin->plugin_name()},
                                     {"distinct_values", all.distinct().at(m.name)},
                                     {"decode_samples_per_s", rates},
                                     {"thread_scaling", rates["2"].get<double>() / rates["1"].get<double>()}};
    }
    std::mt19937_64 rng(doc.at("seed").get<uint64_t>());
    double load = 1e300, batching = 1e300;
    for (int round = 0; round < 3; ++round) {
      load = std::min(load, time_per_run(options.min_seconds / 3, [&] {
        SplitFeatures::build(dataset, split, model.modalities, model.tasks, {2, false, false, {}});
      }));
      batching = std::min(batching, time_per_run(options.min_seconds / 3, [&] { batch_epoch(all, batch_size, names, rng); }));
    }
    entry["epoch_seconds"] = {{"decoding", load + batching}, {"cached", batching}};
    entry["cached_epoch_speedup"] = (load + batching) / batching;
    out["loader"].push_back(entry);
  }
  out["runtime"] = runtime_bench(registry, options);
  return out;
}

}  // namespace modalkit::host
