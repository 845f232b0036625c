// The `modalkit` binary end to end: versions, plugin listing, validation errors and exit
// codes, the image → concat → supervised slice trained and evaluated on the embedded set, and
// failing plugins contained with their names.
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <chrono>
#include <cstring>
#include <thread>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <functional>
#include <random>
#include <regex>
#include <csignal>
#include <map>
#include <set>
#include <tuple>
#include <sstream>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "modalkit/abi.h"  // the ABI version --version must print

namespace fs = std::filesystem;
using nlohmann::json;

namespace {

struct Result {
  int rc = -1;
  std::string out, err;
};

std::string env(const char* name) {
  const char* v = std::getenv(name);
  return v ? v : "";
}

std::string read_all(const fs::path& p) {
  std::ifstream in(p);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

/// Runs the CLI with the build's plugin directories on its path.
Result modalkit(const std::string& args) {
  const fs::path err_file = fs::current_path() / ("cli-stderr-" + std::to_string(::getpid()));
  const std::string cmd = "'" + env("MODALKIT_BIN") + "' --plugin-path '" + env("MODALKIT_PLUGIN_BUILD_DIR") +
                          "' --plugin-path '" + env("MODALKIT_TEST_PLUGIN_DIR") + "' " + args + " 2>'" +
                          err_file.string() + "'";
  Result r;
  FILE* pipe = ::popen(cmd.c_str(), "r");
  std::array<char, 4096> buf{};
  size_t n;
  while ((n = fread(buf.data(), 1, buf.size(), pipe)) > 0) r.out.append(buf.data(), n);
  const int status = ::pclose(pipe);
  r.rc = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  r.err = read_all(err_file);
  fs::remove(err_file);
  return r;
}

fs::path source(const std::string& rel) { return fs::path(env("MODALKIT_SOURCE_ROOT")) / rel; }

/// Writes a variant `name` of example pipeline `example` on embedded data set `data` (in the
/// build tree, with an absolute data set path), with `edit` applied.
fs::path example_variant(const std::string& example, const std::string& data, const std::string& name,
                         const std::function<void(json&)>& edit) {
  json doc = json::parse(read_all(source("examples/pipelines/" + example + ".json")));
  doc["data"]["dataset"] = source("data/embedded/" + data + "/dataset.json").string();
  edit(doc);
  const fs::path file = fs::current_path() / ("pipeline-" + name + "-" + std::to_string(::getpid()) + ".json");
  std::ofstream(file) << doc.dump(2);
  return file;
}

/// A variant of the slice pipeline (fashion-mnist-image).
fs::path pipeline_variant(const std::string& name, const std::function<void(json&)>& edit) {
  return example_variant("fashion-mnist-image", "fashion-mnist", name, edit);
}

bool has(const std::string& text, const std::string& part) { return text.find(part) != std::string::npos; }

/// An embedded data set's test split (its first `limit` samples; all when 0) as predict input,
/// written to a scratch file: each sample reduced to `fields`, their paths made absolute (no
/// targets: predict needs none). `each`, when given, sees every sample as the data set has it,
/// to collect the truth.
fs::path predict_input(const fs::path& data, const std::vector<std::string>& fields, size_t limit = 0,
                       const std::function<void(const json&)>& each = {}) {
  const fs::path input = fs::current_path() / ("predict-input-" + std::to_string(::getpid()) + ".jsonl");
  std::ifstream in(data / "test.jsonl");
  std::ofstream out(input);
  std::string line;
  for (size_t k = 0; (limit == 0 || k < limit) && std::getline(in, line); ++k) {
    const json s = json::parse(line);
    if (each) each(s);
    json reduced = json::object();
    for (const auto& f : fields) reduced[f] = (data / s[f].get<std::string>()).string();
    out << reduced.dump() << "\n";
  }
  return input;
}

/// The standard output of a shell command.
std::string capture(const std::string& cmd) {
  std::string out;
  FILE* pipe = ::popen(cmd.c_str(), "r");
  std::array<char, 4096> buf{};
  size_t n;
  while (pipe != nullptr && (n = fread(buf.data(), 1, buf.size(), pipe)) > 0) out.append(buf.data(), n);
  if (pipe != nullptr) ::pclose(pipe);
  return out;
}

}  // namespace

TEST(Cli, VersionNamesLibTorchThreadsAndBlas) {
  auto r = modalkit("--version");
  ASSERT_EQ(r.rc, 0) << r.err;
  EXPECT_TRUE(has(r.out, "modalkit 0.1.0")) << r.out;
  EXPECT_TRUE(has(r.out, "LibTorch: 1.13")) << r.out;
  EXPECT_TRUE(has(r.out, "threads: ")) << r.out;
  EXPECT_TRUE(has(r.out, "BLAS: ")) << r.out;
  EXPECT_TRUE(has(r.out, "(ABI " + std::to_string(MODALKIT_SDK_ABI_MAJOR) + "." + std::to_string(MODALKIT_SDK_ABI_MINOR) + ")"))
      << r.out;
}

TEST(Cli, PluginsListJsonHasKindVersionAbi) {
  auto r = modalkit("plugins list --json");
  ASSERT_EQ(r.rc, 0) << r.err;
  json list = json::parse(r.out);
  std::map<std::string, json> by_name;
  for (const auto& p : list) by_name[p["name"]] = p;
  for (const auto& [name, kind] : std::map<std::string, std::string>{
           {"image", "modality"}, {"concat", "fusion"}, {"supervised", "transfer"}}) {
    ASSERT_TRUE(by_name.count(name)) << r.out;
    EXPECT_EQ(by_name[name]["kind"], kind);
    EXPECT_EQ(by_name[name]["version"], "0.1.0");
    EXPECT_EQ(by_name[name]["abi"]["major"], 1);
  }
  // Broken manifests are reported, not fatal.
  EXPECT_TRUE(has(r.err, "brokenjson.plugin.json")) << r.err;
}

TEST(Cli, DescribeShowsDefaults) {
  auto r = modalkit("plugins describe image --json");
  ASSERT_EQ(r.rc, 0) << r.err;
  json d = json::parse(r.out);
  EXPECT_EQ(d["config_defaults"]["height"], 28);
  EXPECT_EQ(d["config_defaults"]["perturbation"], "noise");
  // What a plugin needs and what it writes for other pipelines.
  auto text = modalkit("plugins describe text");
  EXPECT_TRUE(has(text.out, "needs artifact tokenizer (type sentencepiece)")) << text.out;
  auto wv = modalkit("plugins describe word_vectors");
  EXPECT_TRUE(has(wv.out, "produces artifact word_vectors (type word_vectors): RUN/word_vectors.txt")) << wv.out;
  auto unknown = modalkit("plugins describe nosuch");
  EXPECT_EQ(unknown.rc, 2);
  EXPECT_TRUE(has(unknown.err, "unknown plugin \"nosuch\" (known: ")) << unknown.err;
}

TEST(Cli, ValidateAcceptsTheExample) {
  auto r = modalkit("validate '" + source("examples/pipelines/fashion-mnist-image.json").string() + "'");
  EXPECT_EQ(r.rc, 0) << r.err;
  EXPECT_TRUE(has(r.out, "valid (pipeline \"fashion-mnist-image\", 1 modality, data set ")) << r.out;
  auto multitask = modalkit("validate '" + source("examples/pipelines/highmmt-multitask.json").string() + "'");
  EXPECT_EQ(multitask.rc, 0) << multitask.err;
  EXPECT_TRUE(has(multitask.out, "6 modalities, 5 tasks, each with its own data set)")) << multitask.out;
}

TEST(Cli, ValidateReportsEveryErrorAsPointersWithExit2) {
  auto file = pipeline_variant("bad", [](json& d) {
    d["train"]["epochs"] = "five";
    d["train"]["epoch"] = 3;
    d.erase("transfer");
    d["fusion"]["plugin"] = "nosuchfusion";
  });
  auto r = modalkit("validate '" + file.string() + "'");
  EXPECT_EQ(r.rc, 2);
  EXPECT_TRUE(has(r.err, "/train/epochs")) << r.err;
  EXPECT_TRUE(has(r.err, "\"five\"")) << r.err;
  EXPECT_TRUE(has(r.err, "epoch")) << r.err;
  EXPECT_TRUE(has(r.err, "transfer")) << r.err;
  EXPECT_TRUE(has(r.err, file.filename().string())) << r.err;
  fs::remove(file);
}

TEST(Cli, ValidateChecksPluginConfigsAndPlugins) {
  auto file = pipeline_variant("config", [](json& d) {
    d["modalities"]["image"]["config"]["height"] = "28";
    d["fusion"]["plugin"] = "nosuchfusion";
  });
  auto r = modalkit("validate '" + file.string() + "'");
  EXPECT_EQ(r.rc, 2);
  EXPECT_TRUE(has(r.err, "/modalities/image/config/height")) << r.err;
  EXPECT_TRUE(has(r.err, "/fusion/plugin")) << r.err;
  EXPECT_TRUE(has(r.err, "nosuchfusion")) << r.err;
  fs::remove(file);
}

TEST(Cli, ValidateChecksThePipelineAgainstTheDataSet) {
  // Every data set mistake at once, each at its pointer.
  auto file = pipeline_variant("target", [](json& d) {
    d["tasks"]["label"]["target"] = "colour";
    d["tasks"]["size"] = {{"type", "regression"}, {"target", "label"}, {"metrics", {"mae"}}};
    d["tasks"]["tags"] = {{"type", "multilabel"}, {"target", "label"}, {"metrics", {"micro_f1"}}};
    d["modalities"]["image"]["field"] = "label";
    d["data"]["splits"] = {{"val", "validation"}};
  });
  auto r = modalkit("validate '" + file.string() + "'");
  EXPECT_EQ(r.rc, 2);
  EXPECT_TRUE(has(r.err, "/tasks/label/target: no field \"colour\"")) << r.err;
  EXPECT_TRUE(has(r.err, "(fields: image, label, noun, source)")) << r.err;
  EXPECT_TRUE(has(r.err, "/tasks/size/target: field \"label\"")) << r.err;
  EXPECT_TRUE(has(r.err, "a regression task needs a number field")) << r.err;
  EXPECT_TRUE(has(r.err, "/tasks/tags/target: field \"label\"")) << r.err;
  EXPECT_TRUE(has(r.err, "a multilabel task needs a label_set field")) << r.err;
  EXPECT_TRUE(has(r.err, "/modalities/image/field: field \"label\"")) << r.err;
  EXPECT_TRUE(has(r.err, "plugin \"image\" reads image")) << r.err;
  EXPECT_TRUE(has(r.err, "/data/splits/val: no split \"validation\"")) << r.err;
  fs::remove(file);
}

TEST(Cli, ValidateChecksMetricsAgainstTaskTypes) {
  auto file = pipeline_variant("metrics", [](json& d) { d["tasks"]["label"]["metrics"] = {"accuracy", "mae"}; });
  auto r = modalkit("validate '" + file.string() + "'");
  EXPECT_EQ(r.rc, 2);
  EXPECT_TRUE(has(r.err, "/tasks/label/metrics/1: metric \"mae\" does not apply to a multiclass task")) << r.err;
  fs::remove(file);
  // AUROC needs one score per sample: binary and multilabel tasks have it, multiclass does not
  // (it used to pass validation and fail at the first evaluation, after an epoch of training).
  file = pipeline_variant("auroc", [](json& d) { d["tasks"]["label"]["metrics"] = {"auroc"}; });
  r = modalkit("validate '" + file.string() + "'");
  EXPECT_EQ(r.rc, 2);
  EXPECT_TRUE(has(r.err, "/tasks/label/metrics/0: metric \"auroc\" does not apply to a multiclass task (use accuracy, "
                         "macro_f1)")) << r.err;
  fs::remove(file);
  file = pipeline_variant("nometrics", [](json& d) { d["tasks"]["label"]["metrics"] = json::array(); });
  r = modalkit("validate '" + file.string() + "'");
  EXPECT_EQ(r.rc, 2);
  EXPECT_TRUE(has(r.err, "/tasks/label/metrics")) << r.err;
  fs::remove(file);
}

TEST(Cli, MalformedSetIsAUsageError) {
  const std::string pipeline = source("examples/pipelines/fashion-mnist-image.json").string();
  auto r = modalkit("train '" + pipeline + "' --out /nonexistent/run --set train.epochs");
  EXPECT_EQ(r.rc, 2);
  EXPECT_TRUE(has(r.err, "--set train.epochs: expected path=value")) << r.err;
  r = modalkit("train '" + pipeline + "' --out /nonexistent/run --set train.epochs=0");
  EXPECT_EQ(r.rc, 2);
  EXPECT_TRUE(has(r.err, "/train/epochs")) << r.err;
}

TEST(Cli, DataValidateChecksEverySample) {
  const std::string embedded = source("data/embedded/fashion-mnist/dataset.json").string();
  auto r = modalkit("data validate '" + embedded + "'");
  ASSERT_EQ(r.rc, 0) << r.out << r.err;
  EXPECT_TRUE(has(r.out, ": valid (data set \"fashion-mnist\")")) << r.out;
  EXPECT_TRUE(has(r.out, "train: 2000 samples; image 2000/2000 ok (decoded by image); label 2000/2000 ok")) << r.out;

  // A broken copy: an unknown label, an image index past the file's end, a missing PNG, a
  // sample without its label. Every one is reported with its file and line; nothing aborts.
  const fs::path dir = fs::current_path() / ("broken-dataset-" + std::to_string(::getpid()));
  fs::remove_all(dir);
  fs::create_directories(dir);
  json doc = json::parse(read_all(embedded));
  doc["splits"] = {{"train", {{"samples", "train.jsonl"}, {"count", 5}}}};
  doc["fields"].erase("noun");
  std::ofstream(dir / "dataset.json") << doc.dump();
  const std::string idx = source("data/embedded/fashion-mnist/train-images.idx.gz").string();
  std::ofstream(dir / "train.jsonl") << "{\"image\": \"" << idx << "#0\", \"label\": \"dress\", \"source\": \"a\"}\n"
                                     << "{\"image\": \"" << idx << "#1\", \"label\": \"dragon\", \"source\": \"b\"}\n"
                                     << "{\"image\": \"" << idx << "#99999\", \"label\": \"dress\", \"source\": \"c\"}\n"
                                     << "{\"image\": \"missing.png\", \"label\": \"dress\", \"source\": \"d\"}\n"
                                     << "{\"image\": \"" << idx << "#2\", \"source\": \"e\"}\n";
  r = modalkit("data validate '" + (dir / "dataset.json").string() + "'");
  EXPECT_EQ(r.rc, 2) << r.out << r.err;
  EXPECT_TRUE(has(r.out, ": INVALID")) << r.out;
  EXPECT_TRUE(has(r.out, "image 3/5 ok")) << r.out;
  EXPECT_TRUE(has(r.out, "label 3/5 ok")) << r.out;
  EXPECT_TRUE(has(r.out, "4 errors:")) << r.out;
  const std::string lines = (dir / "train.jsonl").string();
  EXPECT_TRUE(has(r.out, lines + ":2: label \"dragon\"")) << r.out;
  EXPECT_TRUE(has(r.out, lines + ":3: ")) << r.out;
  EXPECT_TRUE(has(r.out, lines + ":4: ")) << r.out;
  EXPECT_TRUE(has(r.out, "missing.png")) << r.out;
  EXPECT_TRUE(has(r.out, lines + ":5: sample has no field \"label\"")) << r.out;
  fs::remove_all(dir);
}

TEST(Cli, DataInspectCountsLabelsAndDescribesFields) {
  auto r = modalkit("data inspect '" + source("data/embedded/fashion-mnist/dataset.json").string() + "' --json");
  ASSERT_EQ(r.rc, 0) << r.err;
  json j = json::parse(r.out);
  const json& train = j["splits"]["train"];
  EXPECT_EQ(train["samples"], 2000);
  int64_t total = 0;
  for (const auto& [label, count] : train["fields"]["label"]["labels"].items()) total += count.get<int64_t>();
  EXPECT_EQ(total, 2000);
  EXPECT_EQ(train["fields"]["label"]["labels"].size(), 10u);
  const json& pixels = train["fields"]["image"]["decoded_values"];
  EXPECT_EQ(pixels["count"], 2000 * 28 * 28);
  EXPECT_GE(pixels["min"].get<double>(), 0.0);
  EXPECT_EQ(pixels["max"].get<double>(), 255.0);  // decoded pixels are raw bytes
  EXPECT_GT(pixels["mean"].get<double>(), 0.2 * 255);  // Fashion-MNIST's mean pixel is ~0.29 * 255
  EXPECT_LT(pixels["mean"].get<double>(), 0.4 * 255);
  EXPECT_EQ(train["fields"]["image"]["shapes"].size(), 1u);

  // A label_set field: how many samples carry each label, against a count of train.jsonl here.
  const fs::path weather = source("data/embedded/seattle-weather");
  r = modalkit("data inspect '" + (weather / "dataset.json").string() + "' --json");
  ASSERT_EQ(r.rc, 0) << r.err;
  std::map<std::string, int64_t> counted;
  std::ifstream in(weather / "train.jsonl");
  for (std::string line; std::getline(in, line);) {
    const json sample = json::parse(line);  // kept alive: the loop below iterates inside it
    for (const auto& l : sample["next_day"]) ++counted[l.get<std::string>()];
  }
  ASSERT_EQ(counted.size(), 3u);
  const json next = json::parse(r.out)["splits"]["train"]["fields"]["next_day"];
  EXPECT_EQ(next["type"], "label_set");
  for (const auto& [label, n] : counted) EXPECT_EQ(next["labels"][label], n) << label;
}

TEST(Cli, UsageErrorsExit2) {
  EXPECT_EQ(modalkit("frobnicate").rc, 2);
  auto r = modalkit("train '" + source("examples/pipelines/fashion-mnist-image.json").string() + "'");
  EXPECT_EQ(r.rc, 2);
  EXPECT_TRUE(has(r.err, "train needs --out DIR")) << r.err;
  EXPECT_EQ(modalkit("validate /nonexistent/pipeline.json").rc, 2);
}

TEST(Cli, TrainsTheSliceAndEvalReproducesIt) {
  const fs::path run = fs::current_path() / ("run-slice-" + std::to_string(::getpid()));
  fs::remove_all(run);
  const std::string pipeline = source("examples/pipelines/fashion-mnist-image.json").string();
  auto r = modalkit("train '" + pipeline + "' --out '" + run.string() + "' --set train.epochs=4");
  ASSERT_EQ(r.rc, 0) << r.err;
  EXPECT_TRUE(has(r.out, "held-out label: accuracy = ")) << r.out;
  for (const char* f : {"pipeline.json", "run.json", "metrics.jsonl", "model.pt", "results.json", "fitted_state.json"}) {
    EXPECT_TRUE(fs::exists(run / f)) << f;
  }
  json results = json::parse(read_all(run / "results.json"));
  const double acc = results["tasks"]["label"]["accuracy"];
  EXPECT_GT(acc, 0.5);  // chance is 0.1; 4 epochs reach ~0.65 here
  EXPECT_EQ(results["samples"], 500);
  json resolved = json::parse(read_all(run / "pipeline.json"));
  EXPECT_EQ(resolved["train"]["epochs"], 4);  // --set took effect, defaults filled in
  EXPECT_EQ(resolved["train"]["optimizer"]["weight_decay"], 0);
  json runinfo = json::parse(read_all(run / "run.json"));
  EXPECT_EQ(runinfo["plugins"]["image"]["sha256"].get<std::string>().size(), 64u);
  std::ifstream metrics(run / "metrics.jsonl");
  int lines = 0;
  for (std::string line; std::getline(metrics, line);) ++lines;
  EXPECT_EQ(lines, 4);

  auto e = modalkit("eval '" + pipeline + "' --run '" + run.string() + "' --json");
  ASSERT_EQ(e.rc, 0) << e.err;
  json ev = json::parse(e.out);
  EXPECT_DOUBLE_EQ(ev["tasks"]["label"]["accuracy"].get<double>(), acc);
  EXPECT_TRUE(has(e.err, "differs from the one the run was trained with")) << e.err;  // epochs 15 vs 4

  // Without a pipeline argument eval uses the run's own resolved pipeline (with its --set),
  // from any working directory.
  e = modalkit("eval --run '" + run.string() + "' --json");
  ASSERT_EQ(e.rc, 0) << e.err;
  EXPECT_DOUBLE_EQ(json::parse(e.out)["tasks"]["label"]["accuracy"].get<double>(), acc);
  EXPECT_FALSE(has(e.err, "differs")) << e.err;

  e = modalkit("eval --run '" + run.string() + "' --modalities image,sound");
  EXPECT_EQ(e.rc, 2);
  EXPECT_TRUE(has(e.err, "--modalities: \"sound\" is not a modality")) << e.err;
  fs::remove_all(run);
}

TEST(Cli, SigintStopsTrainingWithExit130AndResumeFinishesTheRun) {
  const fs::path run = fs::current_path() / ("run-sigint-" + std::to_string(::getpid()));
  const fs::path err = fs::current_path() / ("sigint-stderr-" + std::to_string(::getpid()));
  fs::remove_all(run);
  const std::string pipeline = source("examples/pipelines/fashion-mnist-image.json").string();
  // Interrupt once the first epoch has been written, as a user pressing Ctrl-C would.
  const std::string cmd =
      "'" + env("MODALKIT_BIN") + "' --plugin-path '" + env("MODALKIT_PLUGIN_BUILD_DIR") + "' train '" + pipeline +
      "' --out '" + run.string() + "' --set train.epochs=3 2>'" + err.string() + "' & pid=$!; " +
      "for i in $(seq 1 1200); do [ -s '" + (run / "metrics.jsonl").string() + "' ] && break; sleep 0.1; done; " +
      "kill -INT $pid; wait $pid";
  const int status = std::system(cmd.c_str());
  ASSERT_TRUE(WIFEXITED(status));
  ASSERT_EQ(WEXITSTATUS(status), 130) << read_all(err);
  EXPECT_TRUE(has(read_all(err), "interrupted in epoch ")) << read_all(err);
  EXPECT_TRUE(has(read_all(err), "continue with --resume")) << read_all(err);
  EXPECT_TRUE(fs::exists(run / "checkpoint.pt"));
  EXPECT_TRUE(fs::exists(run / "model.pt"));  // the best epoch so far survives
  EXPECT_FALSE(fs::exists(run / "results.json"));  // an interrupted run is not a finished one

  // Training again into the same directory without --resume is refused: nothing is overwritten.
  auto again = modalkit("train '" + pipeline + "' --out '" + run.string() + "' --set train.epochs=3");
  EXPECT_EQ(again.rc, 1);
  EXPECT_TRUE(has(again.err, "already holds a run; pass --resume")) << again.err;
  // Another pipeline (other epochs: another hash) may not resume it.
  auto other = modalkit("train '" + pipeline + "' --out '" + run.string() + "' --set train.epochs=4 --resume");
  EXPECT_EQ(other.rc, 1);
  EXPECT_TRUE(has(other.err, "written by another pipeline")) << other.err;

  // The progress display is not part of what a run is: resuming with another one continues it.
  auto resumed = modalkit("train '" + pipeline + "' --out '" + run.string() +
                          "' --set train.epochs=3 --set train.progress=lines --resume");
  ASSERT_EQ(resumed.rc, 0) << resumed.err;
  EXPECT_TRUE(has(resumed.err, "resuming ")) << resumed.err;
  EXPECT_TRUE(fs::exists(run / "results.json"));
  // A finished run is not resumed again (finalize would run twice).
  auto twice = modalkit("train '" + pipeline + "' --out '" + run.string() + "' --set train.epochs=3 --resume");
  EXPECT_EQ(twice.rc, 1);
  EXPECT_TRUE(has(twice.err, "the run is finished")) << twice.err;
  std::ifstream metrics(run / "metrics.jsonl");
  std::vector<int> epochs;
  for (std::string line; std::getline(metrics, line);) epochs.push_back(json::parse(line)["epoch"]);
  EXPECT_EQ(epochs, (std::vector<int>{1, 2, 3}));  // each epoch once, in order
  fs::remove_all(run);
  fs::remove(err);
}

// Ctrl-C during the final evaluation: the protocol running finishes, no further one starts, the
// run exits 130 without results, and --resume evaluates again without training again.
TEST(Cli, SigintDuringEvaluationStopsBeforeTheNextProtocolAndResumeEvaluates) {
  const fs::path run = fs::current_path() / ("run-sigint-eval-" + std::to_string(::getpid()));
  fs::remove_all(run);
  const std::string pipeline = source("examples/pipelines/fashion-mnist-image.json").string();
  // `interrupter` raises SIGINT inside its evaluate() while this variable is set; protocols run
  // in name order, so "a" is interrupted and "b" must never start.
  const std::string args = "train '" + pipeline + "' --out '" + run.string() +
                           "' --set train.epochs=1 --set 'evaluate.protocols={\"a\":{\"plugin\":\"interrupter\"},"
                           "\"b\":{\"plugin\":\"interrupter\"}}'";
  ::setenv("MODALKIT_TEST_RAISE_SIGINT", "1", 1);
  auto r = modalkit(args);
  ::unsetenv("MODALKIT_TEST_RAISE_SIGINT");
  ASSERT_EQ(r.rc, 130) << r.err;
  EXPECT_TRUE(has(r.err, "interrupt received; stopping at the next training step or evaluation protocol")) << r.err;
  EXPECT_TRUE(has(r.err, "protocol a (interrupter)")) << r.err;  // the running one finished
  EXPECT_FALSE(has(r.err, "protocol b (interrupter)")) << r.err;
  EXPECT_TRUE(has(r.err, "interrupted during the evaluation on split \"test\", before protocol b; training is complete"))
      << r.err;
  EXPECT_TRUE(has(r.err, "continue with --resume to evaluate again")) << r.err;
  EXPECT_FALSE(fs::exists(run / "results.json"));

  auto resumed = modalkit(args + " --resume");
  ASSERT_EQ(resumed.rc, 0) << resumed.err;
  EXPECT_FALSE(has(resumed.err, "epoch 1/1")) << resumed.err;  // nothing trained twice
  const json results = json::parse(read_all(run / "results.json"));
  EXPECT_EQ(results["protocols"]["a"]["interrupted"], false);
  EXPECT_EQ(results["protocols"]["b"]["interrupted"], false);
  std::ifstream metrics(run / "metrics.jsonl");
  int lines = 0;
  for (std::string line; std::getline(metrics, line);) ++lines;
  EXPECT_EQ(lines, 1);
  fs::remove_all(run);
}

namespace {

/// Trains `file` (3 epochs, checkpoints every few steps) once uninterrupted and once killed with
/// SIGKILL at a random moment inside epoch 2 and resumed; the two must end with the same bits.
void expect_killed_and_resumed_run_bit_identical(const fs::path& file, const std::string& tag) {
  const fs::path a = fs::current_path() / ("run-" + tag + "-a-" + std::to_string(::getpid()));
  const fs::path b = fs::current_path() / ("run-" + tag + "-b-" + std::to_string(::getpid()));
  const fs::path err = fs::current_path() / (tag + "-stderr-" + std::to_string(::getpid()));
  fs::remove_all(a);
  fs::remove_all(b);
  auto r = modalkit("train '" + file.string() + "' --out '" + a.string() + "'");
  ASSERT_EQ(r.rc, 0) << r.err;
  std::vector<json> lines;
  {
    std::ifstream in(a / "metrics.jsonl");
    for (std::string line; std::getline(in, line);) lines.push_back(json::parse(line));
  }
  ASSERT_EQ(lines.size(), 3u);
  // Kill at a random moment inside epoch 2: once its first checkpoint is logged, wait a random
  // part of that epoch's duration, then SIGKILL (no handler runs, nothing is flushed).
  std::mt19937 rng(std::random_device{}());
  const double epoch_s = lines[1]["seconds"];
  const double wait_s = std::uniform_real_distribution<double>(0.05, 0.6)(rng) * epoch_s;
  const std::string cmd = "'" + env("MODALKIT_BIN") + "' -v --plugin-path '" + env("MODALKIT_PLUGIN_BUILD_DIR") +
                          "' train '" + file.string() + "' --out '" + b.string() + "' 2>'" + err.string() +
                          "' & pid=$!; for i in $(seq 1 3000); do grep -q 'checkpoint: epoch 2 step' '" +
                          err.string() + "' && break; sleep 0.02; done; sleep " + std::to_string(wait_s) +
                          "; kill -KILL $pid; wait $pid";
  const int status = std::system(cmd.c_str());
  ASSERT_TRUE(WIFEXITED(status));
  ASSERT_EQ(WEXITSTATUS(status), 128 + SIGKILL) << "the run ended before it was killed:\n" << read_all(err);
  ASSERT_FALSE(fs::exists(b / "results.json"));
  auto resumed = modalkit("-v train '" + file.string() + "' --out '" + b.string() + "' --resume");
  ASSERT_EQ(resumed.rc, 0) << resumed.err;
  std::smatch where;
  const std::string resumed_err = resumed.err;
  ASSERT_TRUE(std::regex_search(resumed_err, where, std::regex("resuming .* at epoch (\\d+), step (\\d+)"))) << resumed.err;
  std::cout << tag << ": killed " << wait_s << " s into epoch 2; resumed at epoch " << where[1] << ", step " << where[2] << "\n";

  for (const auto& run : {a, b}) {
    auto e = modalkit("export --run '" + run.string() + "'");
    ASSERT_EQ(e.rc, 0) << e.err;
  }
  const std::string wa = read_all(a / "model.safetensors"), wb = read_all(b / "model.safetensors");
  EXPECT_GT(wa.size(), 10000u);
  EXPECT_TRUE(wa == wb) << "weights differ after kill and resume";
  const json ra = json::parse(read_all(a / "results.json")), rb = json::parse(read_all(b / "results.json"));
  EXPECT_EQ(ra["tasks"], rb["tasks"]);
  EXPECT_EQ(ra.value("loss", -1.0), rb.value("loss", -1.0));
  std::ifstream in(b / "metrics.jsonl");
  size_t k = 0;
  for (std::string line; std::getline(in, line); ++k) {
    ASSERT_LT(k, lines.size());
    EXPECT_EQ(json::parse(line)["train_loss"], lines[k]["train_loss"]) << "epoch " << k + 1;
  }
  EXPECT_EQ(k, lines.size());
  fs::remove_all(a);
  fs::remove_all(b);
  fs::remove(err);
}

/// A variant of the word-vectors example on the embedded corpus.
fs::path word_vectors_variant(const std::string& name, const std::function<void(json&)>& edit) {
  return example_variant("word-vectors", "text-corpus", name, [&](json& d) {
    d["artifacts"]["similarity_pairs"] = source("data/embedded/text-corpus/synonym-pairs.txt").string();
    edit(d);
  });
}

}  // namespace

TEST(Cli, KilledMidEpochAndResumedEndsBitIdentical) {
  // Deterministic mode, 2 loader threads, shuffling and dropout on; checkpoints every 3 steps.
  auto file = pipeline_variant("kill", [](json& d) {
    d["train"]["epochs"] = 3;
    d["train"]["loader_threads"] = 2;
    d["train"]["checkpoint_every"] = 3;
    d["train"]["select"] = {{"checkpoint", "last"}};
    d["modalities"]["image"]["config"]["dropout"] = 0.2;
  });
  expect_killed_and_resumed_run_bit_identical(file, "kill");
  fs::remove(file);
}

TEST(Cli, AStreamRunKilledMidEpochAndResumedEndsBitIdentical) {
  // The stream draws each epoch's pairs and each batch's negatives from the seed, the epoch and
  // the batch index: a resumed epoch must get the very batches it had reached.
  auto file = word_vectors_variant("kill-stream", [](json& d) {
    d["train"]["epochs"] = 3;
    d["train"]["batch_size"] = 256;  // a few seconds an epoch: the kill lands inside epoch 2
    d["train"]["checkpoint_every"] = 10;
    d["train"]["select"] = {{"checkpoint", "last"}};
    d["data"]["stream"]["config"]["window"] = 2;  // fewer pairs: a shorter test
    d["transfer"]["config"]["dim"] = 16;
  });
  expect_killed_and_resumed_run_bit_identical(file, "kill-stream");
  fs::remove(file);
}

TEST(Cli, PretrainLmPublishesALanguageModelAndItsPerplexity) {
  auto file = example_variant("pretrain-lm", "text-corpus", "lm", [](json& d) {
    d["artifacts"]["tokenizer"] = source("data/embedded/text-corpus/tokenizer.model").string();
    d["data"]["stream"]["config"]["context"] = 32;
    d["transfer"]["config"]["width"] = 32;
    d["transfer"]["config"]["layers"] = 1;
    d["transfer"]["config"]["heads"] = 2;
    d["transfer"]["config"]["probe_tokens"] = 4;
    d["train"]["epochs"] = 2;
    d["train"]["max_steps"] = 40;
    d["train"]["optimizer"]["lr"] = 0.01;
    d["train"]["schedule"]["warmup_steps"] = 5;
  });
  const fs::path run = fs::current_path() / ("run-lm-" + std::to_string(::getpid()));
  fs::remove_all(run);
  auto r = modalkit("train '" + file.string() + "' --out '" + run.string() + "'");
  ASSERT_EQ(r.rc, 0) << r.err;
  const json results = json::parse(read_all(run / "results.json"));
  const json sidecar = json::parse(read_all(run / "language_model.pt.artifact.json"));
  EXPECT_EQ(sidecar["type"], "language_model");
  EXPECT_EQ(results["artifacts"]["language_model"]["sha256"], sidecar["sha256"]);
  // The strategy's perplexities are the host's losses: the kept epoch's validation loss and the
  // held-out (test) loss, both mean cross-entropy per predicted piece, computed by other code.
  const json ppl = json::parse(read_all(run / "perplexity.json"));
  EXPECT_NEAR(ppl["val"]["nll_per_piece"].get<double>(), results["selected_on"]["value"].get<double>(), 1e-4);
  EXPECT_NEAR(ppl["test"]["nll_per_piece"].get<double>(), results["loss"].get<double>(), 1e-4);
  EXPECT_NEAR(ppl["test"]["perplexity"].get<double>(), std::exp(results["loss"].get<double>()), 1e-2);
  // 40 steps cannot make a language model, but they must beat a uniform guess over 8,000 pieces.
  EXPECT_LT(results["loss"].get<double>(), std::log(8000.0) - 0.5);
  EXPECT_EQ(ppl["config"]["provenance"]["tokenizer_sha256"],
            json::parse(read_all(source("data/embedded/text-corpus/tokenizer.model.artifact.json")))["sha256"]);
  const json samples = json::parse(read_all(run / "samples.json"));
  ASSERT_EQ(samples.size(), 5u);
  EXPECT_EQ(samples[0]["prompt"], "sandal:");
  fs::remove_all(run);
  fs::remove(file);
}

TEST(Cli, FrozenTrainsFromJsonOnAPretrainedModelAndRunsItsProtocols) {
  // A small language model first (the pretrain-lm pipeline, cut short), then prefix tuning on it.
  auto lm_file = example_variant("pretrain-lm", "text-corpus", "frozen-lm", [](json& d) {
    d["artifacts"]["tokenizer"] = source("data/embedded/text-corpus/tokenizer.model").string();
    d["data"]["stream"]["config"]["context"] = 32;
    d["transfer"]["config"]["width"] = 32;
    d["transfer"]["config"]["layers"] = 1;
    d["transfer"]["config"]["heads"] = 2;
    d["transfer"]["config"]["context"] = 128;  // 3-shot episodes are longer than the windows
    d["transfer"]["config"]["probe_prompts"] = json::array();
    d["train"]["epochs"] = 1;
    d["train"]["max_steps"] = 20;
    d["train"]["optimizer"]["lr"] = 0.01;
  });
  const fs::path lm_run = fs::current_path() / ("run-frozen-lm-" + std::to_string(::getpid()));
  fs::remove_all(lm_run);
  auto pre = modalkit("train '" + lm_file.string() + "' --out '" + lm_run.string() + "'");
  ASSERT_EQ(pre.rc, 0) << pre.err;
  auto file = example_variant("frozen-fashion-mnist", "fashion-mnist", "frozen", [&](json& d) {
    d["artifacts"]["tokenizer"] = source("data/embedded/text-corpus/tokenizer.model").string();
    d["artifacts"]["language_model"] = (lm_run / "language_model.pt").string();
    d["artifacts"]["questions"] = source("data/artifacts/fashion-knowledge-questions.jsonl").string();
    d["train"]["epochs"] = 1;
    d["train"]["max_steps"] = 15;
    for (const char* p : {"few_shot_1", "few_shot_3"}) d["evaluate"]["protocols"][p]["config"]["episodes"] = 20;
    // The knowledge protocols run in the frozen-lm quick experiment's test.
    for (const char* p : {"knowledge", "knowledge_blind", "knowledge_text"}) d["evaluate"]["protocols"].erase(p);
  });
  const fs::path run = fs::current_path() / ("run-frozen-" + std::to_string(::getpid()));
  fs::remove_all(run);
  auto r = modalkit("train '" + file.string() + "' --out '" + run.string() + "'");
  ASSERT_EQ(r.rc, 0) << r.err;
  const json results = json::parse(read_all(run / "results.json"));
  // Ranking the ten captions is the task's prediction; the protocols report under their names.
  EXPECT_TRUE(results["tasks"]["label"].contains("accuracy"));
  for (const char* p : {"captioning", "captioning_blind"}) {
    const json& c = results["protocols"][p];
    EXPECT_EQ(c["n"], 500) << p;
    EXPECT_NEAR(c["accuracy"].get<double>(), c["correct"].get<double>() / 500.0, 1e-12) << p;
  }
  EXPECT_EQ(results["protocols"]["few_shot_3"]["shots"], 3);
  EXPECT_EQ(results["protocols"]["few_shot_3"]["n"], 20);
  // The generation task generates what the captioning protocol generates (same prompt, same
  // 12 pieces), so its accuracy is the protocol's, to the sample.
  EXPECT_DOUBLE_EQ(results["tasks"]["caption"]["accuracy"].get<double>(), results["protocols"]["captioning"]["accuracy"].get<double>());
  EXPECT_GE(results["tasks"]["caption"]["exact_match"].get<double>(), 0.0);
  EXPECT_LE(results["tasks"]["caption"]["exact_match"].get<double>(), results["tasks"]["caption"]["accuracy"].get<double>())
      << "the trained caption names the class";
  ASSERT_EQ(results["examples"]["caption"].size(), 10u);
  EXPECT_EQ(results["examples"]["caption"][0]["text"], results["protocols"]["captioning"]["examples"][0]["caption"]);
  // predict writes each sample's generated text and the label of the class it names.
  const fs::path input = predict_input(source("data/embedded/fashion-mnist"), {"image"}, 3);
  auto p = modalkit("predict '" + file.string() + "' --run '" + run.string() + "' --input '" + input.string() + "'");
  ASSERT_EQ(p.rc, 0) << p.err;
  std::istringstream lines(p.out);
  size_t n = 0;
  for (std::string line; std::getline(lines, line); ++n) {
    const json l = json::parse(line);
    EXPECT_TRUE(l["caption"]["text"].is_string()) << line;
    EXPECT_TRUE(l["caption"]["label"].is_null() || l["caption"]["label"].is_string()) << line;
    EXPECT_TRUE(l["label"].contains("probabilities")) << line;
  }
  EXPECT_EQ(n, 3u);
  fs::remove(input);
  // The run's plugins include the protocols (a changed protocol build makes experiments retrain).
  const json info = json::parse(read_all(run / "run.json"));
  EXPECT_TRUE(info["plugins"].contains("few_shot_binding"));
  // eval reproduces every figure from the saved run.
  auto e = modalkit("eval '" + file.string() + "' --run '" + run.string() + "' --json");
  ASSERT_EQ(e.rc, 0) << e.err;
  EXPECT_EQ(json::parse(e.out)["protocols"], results["protocols"]);
  // A protocol name that is a task's, and a protocol plugin that is not one, are refused at validate.
  auto bad = example_variant("frozen-fashion-mnist", "fashion-mnist", "frozen-bad", [&](json& d) {
    d["artifacts"]["tokenizer"] = source("data/embedded/text-corpus/tokenizer.model").string();
    d["artifacts"]["language_model"] = (lm_run / "language_model.pt").string();
    d["artifacts"]["questions"] = source("data/artifacts/fashion-knowledge-questions.jsonl").string();
    d["evaluate"]["protocols"]["label"] = {{"plugin", "captioning"}};
    d["evaluate"]["protocols"]["oops"] = {{"plugin", "concat"}};
    d["tasks"]["caption"]["metrics"] = {"macro_f1"};
  });
  auto v = modalkit("validate '" + bad.string() + "'");
  EXPECT_NE(v.rc, 0);
  EXPECT_TRUE(has(v.err, "/tasks/caption/metrics/0: metric \"macro_f1\" does not apply to a generation task (use accuracy, exact_match)")) << v.err;
  EXPECT_TRUE(has(v.err, "/evaluate/protocols/label: has the name of a task")) << v.err;
  EXPECT_TRUE(has(v.err, "/evaluate/protocols/oops/plugin: plugin \"concat\" is a fusion plugin, expected an evaluation plugin")) << v.err;
  // A generation task needs a strategy that conditions a language model, and a label field.
  auto plain = example_variant("fashion-mnist-image", "fashion-mnist", "generation-bad", [&](json& d) {
    d["tasks"]["caption"] = {{"type", "generation"}, {"target", "label"}};
  });
  v = modalkit("validate '" + plain.string() + "'");
  EXPECT_NE(v.rc, 0);
  EXPECT_TRUE(has(v.err, "/tasks/caption/type: transfer plugin \"supervised\" does not train generation tasks (it trains "
                         "multiclass, binary, multilabel, regression); prefix_tuning, representation_tuning do")) << v.err;
  for (const auto& f : {lm_file, file, bad, plain}) fs::remove(f);
  fs::remove_all(lm_run);
  fs::remove_all(run);
}

TEST(Cli, WordVectorsPretrainOnAStreamAndPublishATypedArtifact) {
  auto file = word_vectors_variant("wv", [](json& d) {
    d["train"]["epochs"] = 3;
    d["train"]["batch_size"] = 1024;
    d["transfer"]["config"]["dim"] = 16;
    d["transfer"]["config"]["probe_words"] = {"dress", "qqqq"};
  });
  const fs::path run = fs::current_path() / ("run-wv-" + std::to_string(::getpid()));
  fs::remove_all(run);
  auto r = modalkit("train '" + file.string() + "' --out '" + run.string() + "'");
  ASSERT_EQ(r.rc, 0) << r.err;
  const json results = json::parse(read_all(run / "results.json"));
  EXPECT_EQ(results["tasks"], json::object());
  EXPECT_EQ(results["selected_on"]["metric"], "loss");
  EXPECT_EQ(results["split"], "test");
  // Each epoch logs its training and validation loss; selection kept the lowest validation loss.
  std::vector<json> lines;
  std::ifstream metrics(run / "metrics.jsonl");
  for (std::string line; std::getline(metrics, line);) lines.push_back(json::parse(line));
  ASSERT_EQ(lines.size(), 3u);
  double best = 1e9;
  for (const auto& l : lines) best = std::min(best, l["val_loss"].get<double>());
  EXPECT_EQ(results["selected_on"]["value"].get<double>(), best);
  EXPECT_LT(lines[2]["train_loss"].get<double>(), lines[0]["train_loss"].get<double>());
  // A random model scores log 2 per pair and per negative (6 log 2 = 4.16); training must beat it.
  EXPECT_LT(results["loss"].get<double>(), 6 * std::log(2.0) - 0.5);

  // The artifact: word2vec text format over the stream's vocabulary, with a sidecar whose type and
  // sha256 are what other pipelines' /artifacts are checked against.
  const json sidecar = json::parse(read_all(run / "word_vectors.txt.artifact.json"));
  EXPECT_EQ(sidecar["type"], "word_vectors");
  const std::string sha = capture("sha256sum '" + (run / "word_vectors.txt").string() + "'").substr(0, 64);
  EXPECT_EQ(sidecar["sha256"], sha);
  EXPECT_EQ(results["artifacts"]["word_vectors"]["sha256"], sha);
  const auto words = json::parse(read_all(run / "fitted_state.json"))["stream"]["words"].get<std::vector<std::string>>();
  std::ifstream vectors(run / "word_vectors.txt");
  size_t v = 0, d = 0;
  vectors >> v >> d;
  EXPECT_EQ(v, words.size());
  EXPECT_EQ(d, 16u);
  std::string line;
  std::getline(vectors, line);
  for (size_t i = 0; i < words.size() && std::getline(vectors, line); ++i) {
    std::istringstream fields(line);
    std::string word;
    fields >> word;
    ASSERT_EQ(word, words[i]) << "line " << i + 2;
    size_t values = 0;
    for (double x; fields >> x; ++values) ASSERT_TRUE(std::isfinite(x));
    ASSERT_EQ(values, 16u) << word;
  }
  // The similarity check: the synonym pairs found in the vocabulary and their mean cosine,
  // recomputed here from the written vectors and the pairs file.
  {
    std::map<std::string, std::vector<double>> unit;
    std::ifstream again(run / "word_vectors.txt");
    std::getline(again, line);
    while (std::getline(again, line)) {
      std::istringstream fields(line);
      std::string word;
      fields >> word;
      std::vector<double> x;
      double norm = 0;
      for (double value; fields >> value;) {
        x.push_back(value);
        norm += value * value;
      }
      for (double& value : x) value /= std::sqrt(norm);
      unit[word] = x;
    }
    std::ifstream pairs(source("data/embedded/text-corpus/synonym-pairs.txt"));
    double sum = 0;
    size_t found = 0;
    for (std::string a, b; pairs >> a >> b;) {
      if (!unit.count(a) || !unit.count(b)) continue;
      double dot = 0;
      for (size_t k = 0; k < unit[a].size(); ++k) dot += unit[a][k] * unit[b][k];
      sum += dot;
      ++found;
    }
    const json similarity = json::parse(read_all(run / "similarity.json"));
    EXPECT_EQ(similarity["pairs_in_vocabulary"], found);
    ASSERT_GE(found, 2u);
    EXPECT_NEAR(similarity["mean_cosine_related"].get<double>(), sum / static_cast<double>(found), 1e-4);
    EXPECT_GE(similarity["auroc"].get<double>(), 0.0);
    EXPECT_LE(similarity["auroc"].get<double>(), 1.0);
  }
  const json neighbours = json::parse(read_all(run / "neighbours.json"));
  EXPECT_EQ(neighbours["dress"].size(), 8u);
  EXPECT_TRUE(neighbours["qqqq"].is_null());  // not in the vocabulary, and said so
  EXPECT_TRUE(has(r.err, "probe word \"qqqq\" is not in the vocabulary")) << r.err;

  // eval recomputes the test loss from the saved run; predict and robustness have nothing to do.
  EXPECT_TRUE(has(r.out, "held-out loss = ")) << r.out;
  EXPECT_TRUE(has(r.out, "artifact word_vectors (word_vectors): ")) << r.out;
  auto e = modalkit("eval '" + file.string() + "' --run '" + run.string() + "' --json");
  ASSERT_EQ(e.rc, 0) << e.err;
  EXPECT_NEAR(json::parse(e.out)["loss"].get<double>(), results["loss"].get<double>(), 1e-9);
  auto p = modalkit("predict '" + file.string() + "' --run '" + run.string() + "' --input /dev/null");
  EXPECT_EQ(p.rc, 2);
  EXPECT_TRUE(has(p.err, "has no tasks, so its runs predict nothing")) << p.err;
  auto rob = modalkit("eval '" + file.string() + "' --run '" + run.string() + "' --robustness");
  EXPECT_EQ(rob.rc, 2);
  EXPECT_TRUE(has(rob.err, "--robustness scores a task")) << rob.err;
  // The report shows the loss, both loss curves and the artifact.
  auto rep = modalkit("report '" + run.string() + "'");
  ASSERT_EQ(rep.rc, 0) << rep.err;
  const std::string html = read_all(run / "report.html");
  for (const char* part : {"<td>loss</td>", "val loss", "Artifact <code>word_vectors</code> (word_vectors)"}) {
    EXPECT_TRUE(has(html, part)) << part;
  }
  fs::remove_all(run);
  fs::remove(file);
}

TEST(Cli, SelectionOnValidationLossWorksWithTasksToo) {
  auto file = pipeline_variant("select-loss", [](json& d) {
    d["train"]["epochs"] = 2;
    d["data"]["label_fraction"] = 0.25;
    d["train"]["select"] = {{"metric", "loss"}};
  });
  const fs::path run = fs::current_path() / ("run-select-loss-" + std::to_string(::getpid()));
  fs::remove_all(run);
  auto r = modalkit("train '" + file.string() + "' --out '" + run.string() + "'");
  ASSERT_EQ(r.rc, 0) << r.err;
  const json results = json::parse(read_all(run / "results.json"));
  EXPECT_EQ(results["selected_on"]["metric"], "loss");
  EXPECT_TRUE(results["tasks"]["label"].contains("accuracy"));  // the tasks are still evaluated
  std::vector<double> val_loss;
  std::ifstream metrics(run / "metrics.jsonl");
  for (std::string line; std::getline(metrics, line);) {
    const json l = json::parse(line);
    val_loss.push_back(l.at("val_loss"));
    EXPECT_TRUE(l["val"]["label"].contains("accuracy"));
  }
  ASSERT_EQ(val_loss.size(), 2u);
  const int best = val_loss[1] < val_loss[0] ? 2 : 1;
  EXPECT_EQ(results["best_epoch"], best);
  EXPECT_EQ(results["selected_on"]["value"].get<double>(), val_loss[static_cast<size_t>(best - 1)]);
  fs::remove_all(run);
  fs::remove(file);
}

TEST(Cli, StreamPipelineMistakesAreNamedBeforeTraining) {
  auto file = word_vectors_variant("wv-bad", [](json& d) {
    d["data"]["stream"]["field"] = "body";
    d["data"]["stream"]["config"]["window"] = 0;
    d["modalities"] = {{"text", {{"plugin", "text"}, {"field", "text"}}}};
  });
  auto r = modalkit("validate '" + file.string() + "'");
  EXPECT_EQ(r.rc, 2);
  EXPECT_TRUE(has(r.err, "/modalities: must be empty (a pipeline with /data/stream")) << r.err;
  EXPECT_TRUE(has(r.err, "/data/stream/config/window: must be >= 1 (got 0)")) << r.err;
  auto field = word_vectors_variant("wv-field", [](json& d) { d["data"]["stream"]["field"] = "body"; });
  r = modalkit("validate '" + field.string() + "'");
  EXPECT_EQ(r.rc, 2);
  EXPECT_TRUE(has(r.err, "/data/stream/field: no field \"body\"")) << r.err;
  fs::remove(file);
  fs::remove(field);
}

TEST(Cli, ThrowingPluginsAreContainedAndNamed) {
  for (const std::string fail : {"construct", "forward"}) {
    auto file = pipeline_variant("faulty-" + fail, [&](json& d) {
      d["fusion"] = {{"plugin", "faulty"}, {"config", {{"fail", fail}}}};
      d["train"]["epochs"] = 1;
    });
    const fs::path run = fs::current_path() / ("run-faulty-" + fail);
    auto r = modalkit("train '" + file.string() + "' --out '" + run.string() + "'");
    EXPECT_EQ(r.rc, 1) << fail;
    EXPECT_TRUE(has(r.err, "plugin faulty: ")) << r.err;
    EXPECT_TRUE(has(r.err, fail == "construct" ? "constructor failed on purpose" : "forward failed on purpose"))
        << r.err;
    fs::remove(file);
    fs::remove_all(run);
  }
}

TEST(Cli, AnArtifactAPluginDeclaresButDoesNotWriteIsNamed) {
  auto file = pipeline_variant("faulty-produces", [&](json& d) {
    d["fusion"] = {{"plugin", "faulty"}, {"config", {{"fail", "none"}}}};
    d["train"]["epochs"] = 1;
    d["data"]["label_fraction"] = 0.1;
  });
  const fs::path run = fs::current_path() / ("run-faulty-produces-" + std::to_string(::getpid()));
  fs::remove_all(run);
  auto r = modalkit("train '" + file.string() + "' --out '" + run.string() + "'");
  EXPECT_EQ(r.rc, 1);
  EXPECT_TRUE(has(r.err, "plugin faulty: its manifest says it produces notes (" + (run / "faulty-notes.txt").string() +
                             "), but it did not write that file")) << r.err;
  EXPECT_FALSE(fs::exists(run / "results.json"));  // a run whose outputs are incomplete is not finished
  fs::remove(file);
  fs::remove_all(run);
}

TEST(Cli, MismatchedPluginIsRefusedWithBothVersions) {
  auto file = pipeline_variant("badabi", [](json& d) { d["fusion"] = {{"plugin", "badabi"}}; });
  auto r = modalkit("train '" + file.string() + "' --out '" + (fs::current_path() / "run-badabi").string() + "'");
  EXPECT_EQ(r.rc, 1);
  EXPECT_TRUE(has(r.err, "plugin badabi: refused by the handshake: SDK ABI major 99 does not match the host's 1"))
      << r.err;
  fs::remove(file);
  fs::remove_all(fs::current_path() / "run-badabi");
}

TEST(Cli, SameSeedSameRun) {
  const std::string pipeline = source("examples/pipelines/fashion-mnist-image.json").string();
  std::vector<json> losses;
  for (int i = 0; i < 2; ++i) {
    const fs::path run = fs::current_path() / ("run-determinism-" + std::to_string(i));
    fs::remove_all(run);
    auto r = modalkit("train '" + pipeline + "' --out '" + run.string() + "' --set train.epochs=1");
    ASSERT_EQ(r.rc, 0) << r.err;
    losses.push_back(json::parse(read_all(run / "metrics.jsonl"))["train_loss"]);
    losses.push_back(json::parse(read_all(run / "results.json"))["tasks"]);
    fs::remove_all(run);
  }
  EXPECT_EQ(losses[0], losses[2]);  // bit-identical loss: seeded init, shuffling and dropout
  EXPECT_EQ(losses[1], losses[3]);
}

TEST(Cli, EveryEmbeddedDataSetValidatesThroughItsPlugins) {
  // penguins' island and sex columns hold categories: the pipeline says so, and so must validate.
  for (const auto& [name, config] : std::vector<std::pair<std::string, std::string>>{
           {"fashion-mnist", ""}, {"spoken-words", ""}, {"wine", ""}, {"breast-cancer", ""}, {"sensor-network", ""}, {"spam", ""},
           {"text-corpus", ""}, {"av-fashion", ""}, {"seattle-weather", ""},
           {"digits", " --config 'image={\"height\": 8, \"width\": 8}'"},
           {"penguins", " --config 'features={\"categorical\": [\"island\", \"sex\"]}'"}}) {
    const std::string file = source("data/embedded/" + name + "/dataset.json").string();
    auto r = modalkit("data validate '" + file + "' --json" + config);
    ASSERT_EQ(r.rc, 0) << name << r.out << r.err;
    json report = json::parse(r.out);
    EXPECT_TRUE(report["valid"].get<bool>()) << name;
    EXPECT_EQ(report["error_count"], 0) << name;
  }
  // The media fields went through their plugins, not just the schema.
  auto r = modalkit("data validate '" + source("data/embedded/spoken-words/dataset.json").string() + "'");
  EXPECT_TRUE(has(r.out, "(decoded by audio)")) << r.out;
  r = modalkit("data validate '" + source("data/embedded/penguins/dataset.json").string() +
               "' --config 'features={\"categorical\": [\"island\", \"sex\"]}'");
  EXPECT_TRUE(has(r.out, "(decoded by tabular)")) << r.out;
  // Without saying which columns are categorical, the text cells are refused by file and line.
  r = modalkit("data validate '" + source("data/embedded/penguins/dataset.json").string() + "'");
  EXPECT_EQ(r.rc, 2) << r.out;
  // Listed in file order whatever the decode threads: the first sample of the first split.
  EXPECT_TRUE(has(r.out, "333 errors (the first 20 listed):\n  plugin tabular: " +
                             source("data/embedded/penguins/test.csv").string() +
                             ":2: column \"island\": expected a finite number, found \"Torgersen\"")) << r.out;
}

TEST(Cli, TabularAndAudioPipelinesTrainAndEvalRestoresTheirFittedState) {
  // penguins: the encoder's embedding tables are sized by the vocabularies fit learned, so eval
  // must restore the fitted state before it builds the networks.
  for (const auto& [name, epochs, floor] : std::vector<std::tuple<std::string, int, double>>{
           {"penguins-tabular", 10, 0.8}, {"spoken-words-audio", 3, 0.08},
           // which mote, from temperature alone, is near chance on held-out time (docs/data.md):
           // this one checks that eval rebuilds the encoder from the fitted channel count.
           {"sensor-network-temperature", 2, 0.0},
           // spam: 16 test mails and 2 epochs, too few for a floor; eval must still rebuild the
           // encoder with the tokenizer's piece count and reproduce the accuracy.
           {"spam-text", 2, 0.0},
           // two modalities through concat: eval must restore both fitted states.
           {"av-fashion-fusion", 1, 0.0}}) {
    const fs::path run = fs::current_path() / ("run-" + name + "-" + std::to_string(::getpid()));
    fs::remove_all(run);
    const std::string pipeline = source("examples/pipelines/" + name + ".json").string();
    auto r = modalkit("train '" + pipeline + "' --out '" + run.string() + "' --set train.epochs=" + std::to_string(epochs));
    ASSERT_EQ(r.rc, 0) << name << r.err;
    const double acc = json::parse(read_all(run / "results.json"))["tasks"]["label"]["accuracy"];
    EXPECT_GE(acc, floor) << name;  // penguins: chance 0.44 (majority class); spoken words: chance 0.05
    auto e = modalkit("eval --run '" + run.string() + "' --json");
    ASSERT_EQ(e.rc, 0) << name << e.err;
    EXPECT_DOUBLE_EQ(json::parse(e.out)["tasks"]["label"]["accuracy"].get<double>(), acc) << name;
    fs::remove_all(run);
  }
}

TEST(Cli, EveryFusionPluginTrainsEvaluatesAndHandlesAMissingModality) {
  const std::string pipeline = source("examples/pipelines/av-fashion-fusion.json").string();
  // Five test pairs as predict input, paths made absolute.
  const fs::path input = predict_input(source("data/embedded/av-fashion"), {"image", "audio"}, 5);
  for (const std::string fusion : {"concat", "late", "tensor", "lowrank", "cross_attention", "gated"}) {
    const fs::path run = fs::current_path() / ("run-fusion-" + fusion + "-" + std::to_string(::getpid()));
    fs::remove_all(run);
    auto r = modalkit("train '" + pipeline + "' --out '" + run.string() + "' --set train.epochs=1 --set fusion.plugin=" +
                      fusion + " --set train.max_steps=3");
    ASSERT_EQ(r.rc, 0) << fusion << r.err;
    const json res = json::parse(read_all(run / "results.json"));
    EXPECT_EQ(res["steps"], 3) << fusion;  // the step budget holds
    EXPECT_EQ(res["modalities"], json({"audio", "image"})) << fusion;
    auto e = modalkit("eval --run '" + run.string() + "' --json");
    ASSERT_EQ(e.rc, 0) << fusion << e.err;
    EXPECT_DOUBLE_EQ(json::parse(e.out)["tasks"]["label"]["accuracy"].get<double>(),
                     res["tasks"]["label"]["accuracy"].get<double>()) << fusion;
    // With the audio missing at test time every fusion still answers, from the image alone.
    e = modalkit("eval --run '" + run.string() + "' --modalities image --json");
    ASSERT_EQ(e.rc, 0) << fusion << e.err;
    const json only = json::parse(e.out);
    EXPECT_EQ(only["modalities"], json({"image"})) << fusion;
    EXPECT_GE(only["tasks"]["label"]["accuracy"].get<double>(), 0.0) << fusion;
    auto p = modalkit("predict --run '" + run.string() + "' --input '" + input.string() + "'");
    ASSERT_EQ(p.rc, 0) << fusion << p.err;
    EXPECT_EQ(std::count(p.out.begin(), p.out.end(), '\n'), 5) << fusion;
    auto rep = modalkit("report '" + run.string() + "'");
    ASSERT_EQ(rep.rc, 0) << fusion << rep.err;
    EXPECT_TRUE(has(read_all(run / "report.html"), "class='confusion'")) << fusion;
    fs::remove_all(run);
  }
  fs::remove(input);
}

TEST(Cli, CoLearningFusionTrainsOnBothAndTestsOnThePrimaryOnly) {
  const std::string pipeline = source("examples/pipelines/av-fashion-fusion.json").string();
  for (const std::string fill : {"zeros", "learned"}) {
    const fs::path run = fs::current_path() / ("run-colearn-" + fill + "-" + std::to_string(::getpid()));
    fs::remove_all(run);
    auto r = modalkit("train '" + pipeline + "' --out '" + run.string() +
                      "' --set train.epochs=2 --set transfer='{\"plugin\": \"colearning_fusion\", \"config\": "
                      "{\"primary\": \"image\", \"fill\": \"" + fill + "\"}}'");
    ASSERT_EQ(r.rc, 0) << fill << r.err;
    const json res = json::parse(read_all(run / "results.json"));
    EXPECT_EQ(res["modalities"], json({"image"})) << fill;  // tested with the primary only
    std::ifstream metrics(run / "metrics.jsonl");
    std::string line;
    std::getline(metrics, line);
    EXPECT_TRUE(json::parse(line)["loss_terms"].contains("task/label")) << line;
    // The learned fill is a parameter of the model; zeros are not.
    auto x = modalkit("export --run '" + run.string() + "'");
    ASSERT_EQ(x.rc, 0) << x.err;
    EXPECT_EQ(has(read_all(run / "model.safetensors"), "\"absent_audio\""), fill == "learned") << fill;
    fs::remove_all(run);
  }
  // A primary that is not trained on is refused with its pointer.
  const fs::path run = fs::current_path() / ("run-colearn-bad-" + std::to_string(::getpid()));
  auto bad = modalkit("train '" + pipeline + "' --out '" + run.string() + "' --set transfer='{\"plugin\": "
                      "\"colearning_fusion\", \"config\": {\"primary\": \"video\"}}'");
  EXPECT_NE(bad.rc, 0);
  EXPECT_TRUE(has(bad.err, "/transfer/config/primary")) << bad.err;
  EXPECT_TRUE(has(bad.err, "\"video\" is not among the modalities trained on")) << bad.err;
  fs::remove_all(run);
}

TEST(Cli, ExperimentsRunResumeCompareAndKeepQuickTablesOutOfTheResults) {
  // A small experiment over the embedded av-fashion: two rows, two settings, two seeds.
  const fs::path dir = fs::current_path() / ("experiment-" + std::to_string(::getpid()));
  fs::remove_all(dir);
  fs::create_directories(dir);
  const fs::path results_doc = dir / "results.md";
  json exp = {{"name", "tiny"},
              {"dataset", source("data/embedded/av-fashion/dataset.json").string()},
              {"metric", "label/accuracy"},
              {"seeds", {1, 2}},
              {"set", {{"train.max_steps", 4}, {"train.epochs", 1}, {"evaluate.modalities", {"image"}}}},
              {"settings", {{{"name", "half"}, {"set", {{"data.label_fraction", 0.5}}}}, {{"name", "all"}}}},
              {"rows", {{{"name", "image only"}, {"pipeline", source("examples/pipelines/av-fashion-image.json").string()},
                         {"baseline", true}},
                        {{"name", "co-learning"}, {"pipeline", source("examples/pipelines/av-fashion-fusion.json").string()},
                         {"set", {{"transfer", {{"plugin", "colearning_fusion"}, {"config", {{"primary", "image"}}}}}}}}}},
              {"quick", {{"dataset", source("data/embedded/av-fashion/dataset.json").string()}, {"seeds", {3}}}},
              {"results", results_doc.string()}};
  std::ofstream(dir / "tiny.json") << exp.dump(2);
  const std::string runs = (dir / "runs").string();
  const std::string cmd = "experiments run '" + (dir / "tiny.json").string() + "' --out '" + runs + "'";

  auto dry = modalkit(cmd + " --dry-run");
  ASSERT_EQ(dry.rc, 0) << dry.err;
  EXPECT_TRUE(has(dry.out, "8 of 8 runs to do, 32 optimiser steps")) << dry.out;

  auto r = modalkit(cmd);
  ASSERT_EQ(r.rc, 0) << r.err;
  EXPECT_TRUE(has(r.out, "| image only (baseline) |")) << r.out;
  EXPECT_TRUE(has(r.out, "| co-learning |")) << r.out;
  EXPECT_TRUE(has(r.out, "Optimiser steps per run: half 4 (every row); all 4 (every row);")) << r.out;
  EXPECT_TRUE(has(r.out, "paired t-test")) << r.out;
  EXPECT_TRUE(std::regex_search(r.out, std::regex(R"(\| 0\.\d{3} ± 0\.\d{3} \([+-]\d+\.\d(, p=\d\.\d\d)?\) \|)"))) << r.out;
  // The full run's table lands in the results document, between its markers, with the seeds.
  const std::string doc = read_all(results_doc);
  EXPECT_TRUE(has(doc, "<!-- experiment:tiny")) << doc;
  EXPECT_TRUE(has(doc, "seeds [1,2]")) << doc;
  // The mean ± std of a row is that of its runs' results.json.
  std::vector<double> acc;
  for (const char* seed : {"seed-1", "seed-2"}) {
    acc.push_back(json::parse(read_all(dir / "runs/image-only/all" / seed / "results.json"))["tasks"]["label"]["accuracy"]);
  }
  const double m = (acc[0] + acc[1]) / 2, sd = std::fabs(acc[0] - acc[1]) / std::sqrt(2.0);
  char expect[64];
  std::snprintf(expect, sizeof expect, "%.3f ± %.3f", m, sd);
  EXPECT_TRUE(has(r.out, std::string("| image only (baseline) | ")) && has(r.out, expect)) << expect << "\n" << r.out;
  // The table names the commit its runs were trained at, as their run.json records it.
  const json info = json::parse(read_all(dir / "runs/image-only/all/seed-1/run.json"));
  ASSERT_TRUE(info.contains("commit")) << info.dump();
  EXPECT_TRUE(has(r.out, ", commit `" + info["commit"].get<std::string>() + "`, command")) << r.out;

  // Resumable: a second run trains nothing, and the dry run says every run is done.
  auto again = modalkit(cmd);
  ASSERT_EQ(again.rc, 0) << again.err;
  EXPECT_EQ(again.out, r.out);
  EXPECT_TRUE(has(again.err, "done already, skipped")) << again.err;
  EXPECT_FALSE(has(again.err, "loaded ")) << again.err;
  dry = modalkit(cmd + " --dry-run");
  EXPECT_TRUE(has(dry.out, "0 of 8 runs to do")) << dry.out;
  // A changed budget changes the pipelines' hashes: the stale runs are trained again.
  exp["set"]["train.max_steps"] = 3;
  std::ofstream(dir / "tiny.json") << exp.dump(2);
  dry = modalkit(cmd + " --dry-run");
  EXPECT_TRUE(has(dry.out, "8 of 8 runs to do")) << dry.out;

  // Rows whose names map to one directory, and a metric a row does not compute, are refused
  // before anything trains.
  json twin = exp;
  twin["rows"][1]["name"] = "Image only!";
  std::ofstream(dir / "twin.json") << twin.dump(2);
  auto bad = modalkit("experiments run '" + (dir / "twin.json").string() + "' --dry-run");
  EXPECT_EQ(bad.rc, 2);
  EXPECT_TRUE(has(bad.err, "/rows/1/name: \"Image only!\" and \"image only\" would share the run directory")) << bad.err;
  twin = exp;
  twin["metric"] = "label/mae";
  std::ofstream(dir / "twin.json") << twin.dump(2);
  bad = modalkit("experiments run '" + (dir / "twin.json").string() + "' --dry-run");
  EXPECT_EQ(bad.rc, 2);
  EXPECT_TRUE(has(bad.err, "/metric: row \"image only\"")) << bad.err;
  EXPECT_TRUE(has(bad.err, "does not compute label/mae")) << bad.err;

  // --quick never writes the results document.
  const std::string before = read_all(results_doc);
  auto quick = modalkit(cmd + " --quick");
  ASSERT_EQ(quick.rc, 0) << quick.err;
  EXPECT_TRUE(has(quick.out, "(--quick: embedded data, not a result)")) << quick.out;
  EXPECT_EQ(read_all(results_doc), before);
  fs::remove_all(dir);
}

TEST(Cli, FrozenLmQuickExperimentFillsEveryColumn) {
  // issue 6's experiment end to end on the embedded images and the committed tiny LM
  // (data/artifacts/tiny-lm): four rows, seven columns, few-shot n/a for the hook models.
  const fs::path out = fs::current_path() / ("exp-frozen-lm-" + std::to_string(::getpid()));
  fs::remove_all(out);
  auto r = modalkit("experiments run '" + source("examples/experiments/frozen-lm.json").string() + "' --quick --out '" +
                    out.string() + "'");
  ASSERT_EQ(r.rc, 0) << r.err;
  std::map<std::string, std::string> rows;
  std::istringstream lines(r.out);
  for (std::string line; std::getline(lines, line);) {
    for (const char* row : {"prefix tuning (Frozen)", "pseudo-self-attention", "adaptation gate (MAG)", "prefix tuning, LM fine-tuned"}) {
      if (line.rfind(std::string("| ") + row + " ", 0) == 0) rows[row] = line;
    }
  }
  ASSERT_EQ(rows.size(), 4u) << r.out;
  auto count = [](const std::string& s, const std::string& what) {
    size_t n = 0;
    for (size_t at = s.find(what); at != std::string::npos; at = s.find(what, at + 1)) ++n;
    return n;
  };
  auto numbers = [](const std::string& line) {  // cells that hold a figure
    size_t n = 0;
    std::istringstream cells(line);
    for (std::string c; std::getline(cells, c, '|');) {
      const auto b = c.find_first_not_of(' ');
      n += b != std::string::npos && std::isdigit(static_cast<unsigned char>(c[b])) != 0 ? 1 : 0;
    }
    return n;
  };
  for (const auto& [row, line] : rows) {
    const bool hooks = row == "pseudo-self-attention" || row == "adaptation gate (MAG)";
    EXPECT_EQ(count(line, " n/a |"), hooks ? 2u : 0u) << line;
    EXPECT_EQ(numbers(line), hooks ? 5u : 7u) << line;
    EXPECT_EQ(count(line, " ± "), 0u) << "one seed has no spread: " << line;
  }
  EXPECT_TRUE(has(r.out, "(one seed, [1]: no spread and no test)")) << r.out;
  EXPECT_FALSE(has(r.out, "t-test")) << r.out;
  EXPECT_TRUE(has(r.out, "n/a: the protocol does not apply to the row's model")) << r.out;
  // Each run's results hold the figures the table was made from.
  const json res = json::parse(read_all(out / "adaptation-gate-mag" / "fashion-mnist" / "seed-1" / "results.json"));
  EXPECT_EQ(res["protocols"]["few_shot_3"]["applicable"], false);
  EXPECT_TRUE(res["protocols"]["knowledge_text"].contains("accuracy"));
  fs::remove_all(out);
}

TEST(Cli, QuickTablesNeverReachDocsResults) {
  // docs/results.md holds full-data tables only: none of them may come from a --quick run or
  // from an embedded subset.
  const std::string doc = read_all(source("docs/results.md"));
  EXPECT_FALSE(has(doc, "--quick: embedded data")) << "a --quick table was written to docs/results.md";
  EXPECT_FALSE(has(doc, "experiments run") && has(doc, " --quick`.")) << "a --quick command in docs/results.md";
  // An embedded data set may be named only where it is the whole table (wine, breast-cancer:
  // their recipe has no --subset); a table on an embedded subset is not a full-data result.
  const std::regex embedded_ref("data/embedded/([a-z0-9-]+)/dataset\\.json");
  for (std::sregex_iterator it(doc.begin(), doc.end(), embedded_ref), end; it != end; ++it) {
    const fs::path file = source("data/embedded/" + (*it)[1].str() + "/dataset.json");
    ASSERT_TRUE(fs::exists(file)) << "docs/results.md names " << (*it)[0] << ", which does not exist";
    const std::string recipe = json::parse(read_all(file))["provenance"]["recipe"];
    EXPECT_FALSE(has(recipe, "--subset")) << "a table on the embedded subset " << (*it)[0]
                                          << " (recipe: " << recipe << ") was written to docs/results.md";
  }
  EXPECT_FALSE(has(std::regex_replace(doc, embedded_ref, ""), "data/embedded/"))
      << "docs/results.md names an embedded path that is not a data set file";
  // And every shipped experiment is valid and names its quick variant.
  for (const auto& e : fs::directory_iterator(source("examples/experiments"))) {
    auto r = modalkit("experiments run '" + e.path().string() + "' --quick --dry-run --out '" +
                      (fs::current_path() / "dry").string() + "'");
    EXPECT_EQ(r.rc, 0) << e.path() << r.err;
  }
}

TEST(Cli, RobustnessSweepsEachModalityAndReportsBothFigures) {
  const fs::path run = fs::current_path() / ("run-robust-" + std::to_string(::getpid()));
  fs::remove_all(run);
  const std::string pipeline = source("examples/pipelines/av-fashion-fusion.json").string();
  auto r = modalkit("train '" + pipeline + "' --out '" + run.string() +
                    "' --set train.epochs=2 --set evaluate.robustness.levels=5");
  ASSERT_EQ(r.rc, 0) << r.err;
  auto e = modalkit("eval --run '" + run.string() + "' --robustness --json");
  ASSERT_EQ(e.rc, 0) << e.err;
  const json out = json::parse(e.out);
  const json& rb = out["robustness"];
  EXPECT_EQ(rb["levels"], json({0.0, 0.25, 0.5, 0.75, 1.0}));
  EXPECT_DOUBLE_EQ(rb["clean"].get<double>(), out["tasks"]["label"]["accuracy"].get<double>());
  for (const std::string m : {"audio", "image"}) {
    const auto curve = rb["perturbation"][m]["curve"].get<std::vector<double>>();
    ASSERT_EQ(curve.size(), 5u) << m;
    EXPECT_DOUBLE_EQ(curve[0], rb["clean"].get<double>()) << m;
    // MultiBench's figures, computed here independently: the trapezoid area over [0, 1], and
    // (against a flat reference) the summed drop from the clean value.
    double area = 0, drop = 0;
    for (size_t i = 0; i + 1 < curve.size(); ++i) area += (curve[i] + curve[i + 1]) * 0.25 / 2;
    for (double c : curve) drop += c - curve[0];
    EXPECT_NEAR(rb["perturbation"][m]["relative_robustness"].get<double>(), area, 1e-12) << m;
    EXPECT_NEAR(rb["perturbation"][m]["effective_robustness"].get<double>(), drop, 1e-12) << m;
    EXPECT_TRUE(rb["missing"].contains(m)) << m;
  }
  // Full-strength image noise (sigma 1 on [0,1] pixels) costs accuracy.
  EXPECT_LT(rb["perturbation"]["image"]["curve"].back().get<double>(), rb["clean"].get<double>());
  EXPECT_TRUE(fs::exists(run / "robustness.json"));
  // The sweep is repeatable (seeded perturbations), and against itself as the reference the
  // effective robustness is exactly 0.
  auto again = modalkit("eval --run '" + run.string() + "' --robustness --reference '" + run.string() + "' --json");
  ASSERT_EQ(again.rc, 0) << again.err;
  const json rb2 = json::parse(again.out)["robustness"];
  EXPECT_EQ(rb2["perturbation"]["image"]["curve"], rb["perturbation"]["image"]["curve"]);
  EXPECT_NEAR(rb2["perturbation"]["image"]["effective_robustness"].get<double>(), 0.0, 1e-12);
  EXPECT_EQ(rb2["perturbation"]["image"]["reference"], "run");
  auto text = modalkit("eval --run '" + run.string() + "' --robustness");
  EXPECT_TRUE(has(text.out, "image perturbed: relative robustness ")) << text.out;
  EXPECT_TRUE(has(text.out, "effective robustness ")) << text.out;
  EXPECT_TRUE(has(text.out, "audio missing: ")) << text.out;

  // The report holds every part, self-contained (no scripts, nothing fetched).
  auto rep = modalkit("report '" + run.string() + "'");
  ASSERT_EQ(rep.rc, 0) << rep.err;
  const std::string html = read_all(run / "report.html");
  for (const char* part : {"<svg", "aria-label='Loss'", "aria-label='Validation metrics'", "class='confusion'",
                           "image perturbed", "relative robustness", "Resolved pipeline", "&quot;av-fashion-fusion&quot;"}) {
    EXPECT_TRUE(has(html, part)) << part;
  }
  EXPECT_FALSE(has(html, "<script")) << "the report runs no scripts";
  EXPECT_FALSE(has(html, "http://") || has(html, "https://")) << "the report fetches nothing";
  // It renders in headless Chromium (scripts/test.sh installs it): a screenshot of real content.
  if (std::system("command -v chromium >/dev/null 2>&1") == 0) {
    const fs::path png = run / "report.png";
    const std::string shot = "cd '" + run.string() + "' && timeout 120 chromium --headless --no-sandbox --disable-gpu "
                             "--hide-scrollbars --window-size=1200,1800 --screenshot='" + png.string() + "' 'file://" +
                             (run / "report.html").string() + "' >/dev/null 2>&1";
    EXPECT_EQ(std::system(shot.c_str()), 0);
    ASSERT_TRUE(fs::exists(png));
    const std::string bytes = read_all(png);
    EXPECT_EQ(bytes.substr(1, 3), "PNG");
    EXPECT_GT(bytes.size(), 50000u) << "a near-empty screenshot: the report did not render";  // ~170 kB when it does
  } else {
    std::cout << "chromium not installed: the render check is skipped\n";
  }
  fs::remove_all(run);
}

TEST(Cli, MultilabelTrainsEvaluatesAndPredictsLabelSets) {
  // seattle-weather's next_day: any subset of rain / warm / windy. The micro-F1 and subset
  // accuracy of results.json are recomputed here from predict's label sets and the truth.
  const fs::path run = fs::current_path() / ("run-multilabel-" + std::to_string(::getpid()));
  fs::remove_all(run);
  const std::string pipeline = source("examples/pipelines/seattle-weather-next-day.json").string();
  auto r = modalkit("train '" + pipeline + "' --out '" + run.string() + "' --set train.epochs=5");
  ASSERT_EQ(r.rc, 0) << r.err;
  std::vector<std::set<std::string>> truth;
  const fs::path input = predict_input(source("data/embedded/seattle-weather"), {"features"}, 0, [&](const json& s) {
    truth.emplace_back(s["next_day"].begin(), s["next_day"].end());
  });
  auto p = modalkit("predict --run '" + run.string() + "' --input '" + input.string() + "'");
  ASSERT_EQ(p.rc, 0) << p.err;
  std::istringstream lines(p.out);
  size_t n = 0, exact = 0;
  double tp = 0, fp = 0, fn = 0;
  for (std::string line; std::getline(lines, line); ++n) {
    const json j = json::parse(line)["next_day"];
    ASSERT_LT(n, truth.size());
    std::set<std::string> predicted;
    for (const auto& l : j["labels"]) predicted.insert(l.get<std::string>());
    ASSERT_EQ(j["probabilities"].size(), 3u) << j.dump();
    for (const auto& [label, prob] : j["probabilities"].items()) {
      EXPECT_EQ(prob.get<double>() > 0.5, predicted.count(label) == 1) << j.dump();  // the set is the 0.5 cut
      const bool t = truth[n].count(label) == 1, q = predicted.count(label) == 1;
      tp += t && q;
      fp += !t && q;
      fn += t && !q;
    }
    exact += predicted == truth[n];
  }
  ASSERT_EQ(n, truth.size());
  const json result = json::parse(read_all(run / "results.json"))["tasks"]["next_day"];
  EXPECT_NEAR(result["micro_f1"].get<double>(), 2 * tp / (2 * tp + fp + fn), 1e-12);
  EXPECT_NEAR(result["subset_accuracy"].get<double>(), static_cast<double>(exact) / static_cast<double>(n), 1e-12);
  EXPECT_GT(result["auroc"].get<double>(), 0.6);  // it learned something: chance is 0.5
  // The report renders a multilabel run (no confusion matrix: a label set has none).
  auto rep = modalkit("report '" + run.string() + "'");
  EXPECT_EQ(rep.rc, 0) << rep.err;
  EXPECT_TRUE(has(read_all(run / "report.html"), "micro_f1"));
  fs::remove(input);
  fs::remove_all(run);
}

TEST(Cli, MultilabelMistakesAreNamedBeforeTraining) {
  const std::string pipeline = source("examples/pipelines/seattle-weather-next-day.json").string();
  const fs::path run = fs::current_path() / ("run-multilabel-bad-" + std::to_string(::getpid()));
  auto acc = modalkit("train '" + pipeline + "' --out '" + run.string() + "' --set 'tasks.next_day.metrics=[\"accuracy\"]'");
  EXPECT_EQ(acc.rc, 2);
  EXPECT_FALSE(fs::exists(run / "metrics.jsonl"));  // refused before anything trained
  EXPECT_TRUE(has(acc.err, "/tasks/next_day/metrics/0: metric \"accuracy\" does not apply to a multilabel task (use "
                           "subset_accuracy, micro_f1, macro_f1, auroc, auprc)")) << acc.err;
  // A multilabel task needs a label_set field; the day's weather is one label.
  auto field = modalkit("train '" + pipeline + "' --out '" + run.string() + "' --set tasks.next_day.target='\"label\"'");
  EXPECT_EQ(field.rc, 2) << field.err;
  EXPECT_TRUE(has(field.err, "/tasks/next_day/target: field \"label\"")) << field.err;
  EXPECT_TRUE(has(field.err, "is of type label, a multilabel task needs a label_set field")) << field.err;
  fs::remove_all(run);
  // Without metrics a task gets its type's first one, not the multiclass default.
  json doc = json::parse(read_all(pipeline));
  doc["data"]["dataset"] = source("data/embedded/seattle-weather/dataset.json").string();
  doc["tasks"]["next_day"].erase("metrics");
  const fs::path variant = fs::current_path() / ("pipeline-nometrics-" + std::to_string(::getpid()) + ".json");
  std::ofstream(variant) << doc.dump(2);
  auto v = modalkit("validate '" + variant.string() + "'");
  EXPECT_EQ(v.rc, 0) << v.err;
  fs::remove(variant);
}

TEST(Cli, PredictAgreesWithEvalAndNamesBadInput) {
  const fs::path run = fs::current_path() / ("run-predict-" + std::to_string(::getpid()));
  fs::remove_all(run);
  const std::string pipeline = source("examples/pipelines/fashion-mnist-image.json").string();
  auto r = modalkit("train '" + pipeline + "' --out '" + run.string() + "' --set train.epochs=2");
  ASSERT_EQ(r.rc, 0) << r.err;
  // The test split as user input: paths made absolute, labels removed (predict needs none).
  const fs::path data = source("data/embedded/fashion-mnist");
  std::vector<std::string> truth;
  const fs::path input = predict_input(data, {"image"}, 0, [&](const json& s) { truth.push_back(s["label"]); });
  auto p = modalkit("predict --run '" + run.string() + "' --input '" + input.string() + "'");
  ASSERT_EQ(p.rc, 0) << p.err;
  std::istringstream lines(p.out);
  size_t n = 0, right = 0;
  for (std::string line; std::getline(lines, line); ++n) {
    const json j = json::parse(line);
    double total = 0;
    for (const auto& [label, prob] : j["label"]["probabilities"].items()) total += prob.get<double>();
    EXPECT_NEAR(total, 1.0, 1e-9);
    ASSERT_LT(n, truth.size());
    right += j["label"]["label"] == truth[n];
  }
  ASSERT_EQ(n, truth.size());
  const double acc = json::parse(read_all(run / "results.json"))["tasks"]["label"]["accuracy"];
  EXPECT_DOUBLE_EQ(static_cast<double>(right) / static_cast<double>(n), acc);  // the same model, the same answers

  std::ofstream(input) << json{{"image", (data / "test-images.idx.gz").string() + "#0"}}.dump() << "\n"
                       << json{{"picture", "x.png"}}.dump() << "\n";
  auto bad = modalkit("predict --run '" + run.string() + "' --input '" + input.string() + "'");
  EXPECT_EQ(bad.rc, 1) << bad.err;  // a data error: the run fails, naming the line
  EXPECT_TRUE(has(bad.err, input.string() + ":2")) << bad.err;
  EXPECT_TRUE(has(bad.err, "no field \"image\"")) << bad.err;
  fs::remove(input);
  fs::remove_all(run);
}

namespace {

/// Tensor name → raw bytes of a safetensors file (the format: 8-byte LE header size, JSON header).
std::map<std::string, std::string> safetensors_bytes(const fs::path& file) {
  const std::string b = read_all(file);
  uint64_t n = 0;
  for (int i = 7; i >= 0; --i) n = (n << 8) | static_cast<unsigned char>(b[static_cast<size_t>(i)]);
  const json header = json::parse(b.substr(8, n));
  std::map<std::string, std::string> out;
  for (const auto& [name, info] : header.items()) {
    if (name == "__metadata__") continue;
    const uint64_t begin = info["data_offsets"][0], end = info["data_offsets"][1];
    out[name] = b.substr(8 + n + begin, end - begin);
  }
  return out;
}

}  // namespace

TEST(Cli, InitFromCopiesMatchingWeightsAcrossPipelinesAndFrozenGroupsStayPut) {
  const fs::path a = fs::current_path() / ("run-init-a-" + std::to_string(::getpid()));
  const fs::path b = fs::current_path() / ("run-init-b-" + std::to_string(::getpid()));
  fs::remove_all(a);
  fs::remove_all(b);
  auto r = modalkit("train '" + source("examples/pipelines/av-fashion-image.json").string() + "' --out '" + a.string() +
                    "' --set train.epochs=1");
  ASSERT_EQ(r.rc, 0) << r.err;
  // The image encoder of the unimodal run starts the fusion pipeline's, frozen; the audio
  // encoder, fusion and head train.
  const std::string fusion = source("examples/pipelines/av-fashion-fusion.json").string();
  const std::string init = " --set init_from='{\"run\": \"" + a.string() + "\", \"include\": [\"encoders.image.*\"]}'";
  r = modalkit("train '" + fusion + "' --out '" + b.string() + "' --set train.epochs=1" + init +
               " --set train.parameter_groups='[{\"name\": \"pretrained\", \"match\": [\"encoders.image.*\"], \"frozen\": true}]'");
  ASSERT_EQ(r.rc, 0) << r.err;
  EXPECT_TRUE(has(r.err, "init_from: 13 tensors")) << r.err;
  for (const auto& run : {a, b}) ASSERT_EQ(modalkit("export --run '" + run.string() + "'").rc, 0);
  const auto wa = safetensors_bytes(a / "model.safetensors"), wb = safetensors_bytes(b / "model.safetensors");
  int image = 0;
  for (const auto& [name, bytes] : wa) {
    if (name.rfind("encoders.image.", 0) != 0) continue;
    ++image;
    ASSERT_TRUE(wb.count(name)) << name;
    EXPECT_TRUE(wb.at(name) == bytes) << name << " moved although frozen, or was not copied";
  }
  EXPECT_EQ(image, 13);
  EXPECT_GT(wb.size(), wa.size());  // the fusion model has an audio encoder besides

  // Shapes are checked, names are matched, and a pattern that matches nothing is an error.
  fs::remove_all(b);
  r = modalkit("train '" + fusion + "' --out '" + b.string() + "' --set train.epochs=1" + init +
               " --set modalities.image.config.conv_channels=[8,16]");
  EXPECT_EQ(r.rc, 1);
  EXPECT_TRUE(has(r.err, "/init_from: tensor encoders.image.")) << r.err;
  EXPECT_TRUE(has(r.err, " has shape [") && has(r.err, "] in this pipeline's model")) << r.err;
  fs::remove_all(b);
  r = modalkit("train '" + fusion + "' --out '" + b.string() + "' --set train.epochs=1 --set init_from='{\"run\": \"" +
               a.string() + "\", \"include\": [\"encoder.*\"]}'");
  EXPECT_EQ(r.rc, 1);
  EXPECT_TRUE(has(r.err, "/init_from: no tensor of")) << r.err;
  fs::remove_all(a);
  fs::remove_all(b);
}

TEST(Cli, ATorchScriptEncoderTrainsInPlaceOfThePluginsOwn) {
  const fs::path dir = fs::current_path() / ("torchscript-" + std::to_string(::getpid()));
  fs::remove_all(dir);
  fs::create_directories(dir);
  const fs::path enc = dir / "encoder.pt";
  ASSERT_EQ(std::system(("'" + env("MODALKIT_MAKE_TORCHSCRIPT") + "' '" + enc.string() + "' >/dev/null").c_str()), 0);
  const std::string pipeline = source("examples/pipelines/fashion-mnist-image.json").string();
  const fs::path run = dir / "run";
  auto r = modalkit("train '" + pipeline + "' --out '" + run.string() + "' --set train.epochs=2 --set "
                    "modalities.image.torchscript='{\"path\": \"" + enc.string() + "\", \"width\": 32}'");
  ASSERT_EQ(r.rc, 0) << r.err;
  EXPECT_GT(json::parse(read_all(run / "results.json"))["tasks"]["label"]["accuracy"].get<double>(), 0.4);  // chance 0.1
  auto e = modalkit("eval --run '" + run.string() + "' --json");
  ASSERT_EQ(e.rc, 0) << e.err;
  EXPECT_EQ(json::parse(e.out)["tasks"], json::parse(read_all(run / "results.json"))["tasks"]);
  ASSERT_EQ(modalkit("export --run '" + run.string() + "'").rc, 0);
  const auto w = safetensors_bytes(run / "model.safetensors");
  EXPECT_TRUE(w.count("encoders.image.script_weight")) << "the scripted parameters are the model's";
  // Width 32 → d_model 64: a learned projection, part of the model too.
  EXPECT_TRUE(std::any_of(w.begin(), w.end(), [](const auto& kv) { return kv.first.rfind("encoders.image.projection.", 0) == 0; }));
  // The scripted weights are the ones that train: they move between epoch 1 and epoch 2 (the
  // last epoch kept), and stay byte-identical with trainable false.
  for (const bool trainable : {true, false}) {
    std::vector<std::string> weight;
    for (int epochs : {1, 2}) {
      fs::remove_all(run);
      r = modalkit("train '" + pipeline + "' --out '" + run.string() + "' --set train.epochs=" + std::to_string(epochs) +
                   " --set train.select.checkpoint=last --set modalities.image.torchscript='{\"path\": \"" + enc.string() +
                   "\", \"width\": 32, \"trainable\": " + (trainable ? "true" : "false") + "}'");
      ASSERT_EQ(r.rc, 0) << r.err;
      ASSERT_EQ(modalkit("export --run '" + run.string() + "'").rc, 0);
      weight.push_back(safetensors_bytes(run / "model.safetensors").at("encoders.image.script_weight"));
    }
    EXPECT_EQ(weight[0] == weight[1], !trainable) << (trainable ? "trainable weights did not train" : "frozen weights moved");
  }
  // A declared width that is not what the module returns, and a file that is not TorchScript.
  fs::remove_all(run);
  r = modalkit("train '" + pipeline + "' --out '" + run.string() + "' --set train.epochs=1 --set "
               "modalities.image.torchscript='{\"path\": \"" + enc.string() + "\", \"width\": 16}'");
  EXPECT_EQ(r.rc, 1);
  EXPECT_TRUE(has(r.err, "returned width 32, the pipeline declares torchscript.width 16")) << r.err;
  std::ofstream(dir / "junk.pt") << "not a zip";
  fs::remove_all(run);
  r = modalkit("train '" + pipeline + "' --out '" + run.string() + "' --set train.epochs=1 --set "
               "modalities.image.torchscript='{\"path\": \"" + (dir / "junk.pt").string() + "\", \"width\": 32}'");
  EXPECT_EQ(r.rc, 1);
  EXPECT_TRUE(has(r.err, "junk.pt: not a loadable TorchScript module")) << r.err;
  fs::remove_all(dir);
}

TEST(Cli, ArtifactsAreCheckedForTypeAndHashBeforeUse) {
  // A copy of the embedded tokenizer and its sidecar, then three ways to spoil it.
  const fs::path dir = fs::current_path() / ("artifacts-" + std::to_string(::getpid()));
  fs::remove_all(dir);
  fs::create_directories(dir);
  const fs::path model = source("data/embedded/text-corpus/tokenizer.model");
  fs::copy_file(model, dir / "tok.model");
  fs::copy_file(model.string() + ".artifact.json", dir / "tok.model.artifact.json");
  const std::string pipeline = source("examples/pipelines/spam-text.json").string();
  auto train = [&] {
    fs::remove_all(dir / "run");
    return modalkit("train '" + pipeline + "' --out '" + (dir / "run").string() +
                    "' --set train.epochs=1 --set artifacts.tokenizer='\"" + (dir / "tok.model").string() + "\"'");
  };
  auto r = train();
  ASSERT_EQ(r.rc, 0) << r.err;  // the intact copy is accepted

  json sidecar = json::parse(read_all(dir / "tok.model.artifact.json"));
  sidecar["type"] = "word-vectors";
  std::ofstream(dir / "tok.model.artifact.json") << sidecar.dump();
  r = train();
  EXPECT_NE(r.rc, 0);
  EXPECT_TRUE(has(r.err, "artifact \"tokenizer\"")) << r.err;
  EXPECT_TRUE(has(r.err, "is of type \"word-vectors\", the plugin needs \"sentencepiece\"")) << r.err;

  sidecar["type"] = "sentencepiece";
  std::ofstream(dir / "tok.model.artifact.json") << sidecar.dump();
  std::ofstream(dir / "tok.model", std::ios::app) << "x";
  r = train();
  EXPECT_NE(r.rc, 0);
  EXPECT_TRUE(has(r.err, "differs from the")) << r.err;

  fs::remove(dir / "tok.model.artifact.json");
  r = train();
  EXPECT_NE(r.rc, 0);
  EXPECT_TRUE(has(r.err, "missing or unreadable tok.model.artifact.json")) << r.err;
  fs::remove_all(dir);
}

TEST(Cli, SkipBadLeavesOutBadSamplesAndCountsThem) {
  // A copy of the wine set with one NaN cell and one missing row reference in train.
  const fs::path dir = fs::current_path() / ("wine-bad-" + std::to_string(::getpid()));
  fs::remove_all(dir);
  fs::copy(source("data/embedded/wine"), dir, fs::copy_options::recursive);
  std::string csv = read_all(dir / "train.csv");
  const size_t line3 = csv.find('\n', csv.find('\n', csv.find('\n') + 1) + 1) + 1;  // start of data row 3 (file line 4)
  csv.replace(line3, csv.find(',', line3) - line3, "NaN");
  std::ofstream(dir / "train.csv") << csv;
  std::string samples = read_all(dir / "train.jsonl");
  const size_t last = samples.rfind("train.csv#");
  samples.replace(last, samples.find('"', last) - last, "train.csv#99999");
  std::ofstream(dir / "train.jsonl") << samples;

  json doc = json::parse(read_all(source("examples/pipelines/wine-tabular.json")));
  doc["data"]["dataset"] = (dir / "dataset.json").string();
  doc["train"]["epochs"] = 1;
  const fs::path pipeline = dir / "pipeline.json";
  std::ofstream(pipeline) << doc.dump(2);
  const fs::path run = dir / "run";

  // Without --skip-bad: exit 1, naming the file, the line and the column.
  auto r = modalkit("train '" + pipeline.string() + "' --out '" + run.string() + "'");
  EXPECT_EQ(r.rc, 1);
  EXPECT_TRUE(has(r.err, "train.csv:4")) << r.err;
  EXPECT_TRUE(has(r.err, "NaN")) << r.err;

  r = modalkit("train '" + pipeline.string() + "' --out '" + run.string() + "' --skip-bad");
  ASSERT_EQ(r.rc, 0) << r.err;
  EXPECT_TRUE(has(r.err, "--skip-bad: skipped 2 of 107 samples of split \"train\"")) << r.err;
  const json result = json::parse(read_all(run / "results.json"));
  EXPECT_EQ(result["skipped"]["train"], 2);
  EXPECT_EQ(result["skipped"]["test"], 0);
  EXPECT_EQ(result["train_samples"], 105);
  fs::remove_all(dir);
}

TEST(Cli, BenchReportsLoaderThroughputAndTheCachedEpoch) {
  auto r = modalkit("bench '" + source("examples/pipelines/wine-tabular.json").string() + "' '" +
                    source("examples/pipelines/fashion-mnist-image.json").string() + "' '" +
                    source("examples/pipelines/word-vectors.json").string() + "' --json --min-seconds 0.05");
  ASSERT_EQ(r.rc, 0) << r.err;
  const json b = json::parse(r.out);
  ASSERT_EQ(b["loader"].size(), 3u);
  // A stream makes whole batches: timed as an epoch of them (a new epoch's pairs each time).
  const json& st = b["loader"][2];
  EXPECT_EQ(st["stream"], "skipgram");
  const int64_t batches = st["batches"], examples = st["examples"];
  EXPECT_GT(examples, (batches - 1) * 4096);  // full batches but the last
  EXPECT_LE(examples, batches * 4096);
  EXPECT_GT(st["examples_per_s"].get<double>(), 0.0);
  const json& e = b["loader"][0];
  EXPECT_EQ(e["pipeline"], "wine-tabular");
  EXPECT_EQ(e["samples"], 107);
  const json& m = e["modalities"]["features"];
  EXPECT_EQ(m["plugin"], "tabular");
  EXPECT_EQ(m["distinct_values"], 107);  // every wine row is its own value
  EXPECT_GT(m["decode_samples_per_s"]["1"].get<double>(), 0.0);
  EXPECT_GT(m["decode_samples_per_s"]["2"].get<double>(), 0.0);
  EXPECT_NEAR(m["thread_scaling"].get<double>(),
              m["decode_samples_per_s"]["2"].get<double>() / m["decode_samples_per_s"]["1"].get<double>(), 1e-9);
  // An epoch that decodes includes the cached epoch's batching, so the ratio is above 1 by construction.
  EXPECT_GT(e["cached_epoch_speedup"].get<double>(), 1.0);
  EXPECT_FALSE(b["blas"].get<std::string>().empty());
  // Runtime figures: the loader's share of step time after the first epoch, plugins list time.
  const json& rt = b["runtime"];
  EXPECT_EQ(rt["loader_wait"]["pipeline"], "wine-tabular");
  EXPECT_EQ(rt["loader_wait"]["epoch"], 2);
  EXPECT_GT(rt["loader_wait"]["fraction_of_step_time"].get<double>(), 0.0);
  EXPECT_LT(rt["loader_wait"]["fraction_of_step_time"].get<double>(), 1.0);
  EXPECT_GT(rt["plugins_list"]["seconds"].get<double>(), 0.0);
  EXPECT_GE(rt["plugins_list"]["plugins"].get<int>(), 12);  // the build's plugins were found
  EXPECT_NEAR(rt["plugins_list"]["ratio"].get<double>(),
              rt["plugins_list"]["seconds"].get<double>() / rt["plugins_list"]["baseline_version_seconds"].get<double>(), 1e-9);
  // (1) The host's train step against modalkit-bench-bare over the same TorchScript graph.
  const json& ts = rt["train_step"];
  ASSERT_FALSE(ts.contains("skipped")) << ts.dump();
  EXPECT_EQ(ts["pipeline"], "fashion-mnist-image");
  EXPECT_EQ(ts["samples"], 2000);
  EXPECT_GT(ts["bare_seconds_per_step"].get<double>(), 0.0);
  EXPECT_NEAR(ts["ratio"].get<double>(),
              ts["host_seconds_per_step"].get<double>() / ts["bare_seconds_per_step"].get<double>(), 1e-9);
  // (2) The image plugin's library against its own objects linked into modalkit-bench-link, on
  // the train step's thread count.
  const json& dl = rt["dynamic_vs_static"];
  ASSERT_FALSE(dl.contains("skipped")) << dl.dump();
  EXPECT_EQ(dl["plugin"], "image");
  EXPECT_EQ(dl["threads"], ts["threads"]);
  EXPECT_TRUE(has(dl["library"].get<std::string>(), "libmodalkit_image.so")) << dl.dump();
  EXPECT_GT(dl["static_seconds_per_step"].get<double>(), 0.0);
  // The figure is the median of the rounds' ratios (not their mean or the best round).
  std::vector<double> rounds = dl["round_ratios"].get<std::vector<double>>();
  ASSERT_EQ(rounds.size(), dl["rounds"].get<size_t>());
  std::sort(rounds.begin(), rounds.end());
  const size_t k = rounds.size();
  EXPECT_DOUBLE_EQ(dl["ratio"].get<double>(), k % 2 ? rounds[k / 2] : 0.5 * (rounds[k / 2 - 1] + rounds[k / 2]));
  // (5) Two local ranks against one, the same global batch and cores.
  const json& dd = rt["distributed"];
  ASSERT_FALSE(dd.contains("skipped")) << dd.dump();
  EXPECT_EQ(dd["threads_per_rank"].get<int>() * 2, dd["one_rank_threads"].get<int>());
  EXPECT_GT(dd["one_rank_samples_per_s"].get<double>(), 0.0);
  EXPECT_NEAR(dd["ratio"].get<double>(), dd["two_ranks_samples_per_s"].get<double>() / dd["one_rank_samples_per_s"].get<double>(), 1e-9);
  EXPECT_NEAR(dd["scaling_efficiency"].get<double>(),
              dd["two_ranks_samples_per_s"].get<double>() / (2 * dd["one_rank_per_rank_threads_samples_per_s"].get<double>()), 1e-9);
  // (6) Generation with the key-value cache against recomputing: the same pieces decoded.
  const json& g = rt["generation"];
  ASSERT_FALSE(g.contains("skipped")) << g.dump();
  EXPECT_TRUE(g["same_output"].get<bool>());
  EXPECT_EQ(g["model"]["width"], 256);
  EXPECT_GT(g["cached_seconds"].get<double>(), 0.0);
  EXPECT_NEAR(g["speedup"].get<double>(), g["recomputed_seconds"].get<double>() / g["cached_seconds"].get<double>(), 1e-9);
}

TEST(Cli, TheBareBaselineLinksNeitherTheSdkNorAPlugin) {
  // The bench's baseline must be the loop a user writes with LibTorch alone.
  const fs::path bare = fs::path(std::getenv("MODALKIT_BIN")).parent_path().parent_path() / "bench" / "modalkit-bench-bare";
  ASSERT_TRUE(fs::exists(bare)) << bare;
  // NEEDED entries only: a RUNPATH may well contain "modalkit".
  const std::string needed = capture("readelf -d '" + bare.string() + "' | grep NEEDED");
  EXPECT_TRUE(has(needed, "libtorch")) << needed;
  EXPECT_FALSE(has(needed, "modalkit")) << needed;
}

TEST(Cli, FitSeesTheTrainSplitOnly) {
  // The same wine data with a poisoned val and test split (every cell x1000): the fitted
  // standardisation must not move, and must equal the train split's own column statistics.
  const fs::path dir = fs::current_path() / ("wine-poison-" + std::to_string(::getpid()));
  fs::remove_all(dir);
  fs::copy(source("data/embedded/wine"), dir, fs::copy_options::recursive);
  for (const char* split : {"val.csv", "test.csv"}) {
    std::istringstream in(read_all(dir / split));
    std::string line, out;
    std::getline(in, line);
    out = line + "\n";
    while (std::getline(in, line)) {
      std::istringstream cells(line);
      std::string cell, row;
      while (std::getline(cells, cell, ',')) row += (row.empty() ? "" : ",") + std::to_string(std::stod(cell) * 1000);
      out += row + "\n";
    }
    std::ofstream(dir / split) << out;
  }
  auto fitted = [&](const fs::path& dataset, const std::string& tag) {
    json doc = json::parse(read_all(source("examples/pipelines/wine-tabular.json")));
    doc["data"]["dataset"] = dataset.string();
    doc["train"]["epochs"] = 1;
    const fs::path pipeline = dir / (tag + ".json"), run = dir / ("run-" + tag);
    std::ofstream(pipeline) << doc.dump(2);
    auto r = modalkit("train '" + pipeline.string() + "' --out '" + run.string() + "'");
    EXPECT_EQ(r.rc, 0) << r.err;
    return json::parse(read_all(run / "fitted_state.json"))["features"];
  };
  const json clean = fitted(source("data/embedded/wine/dataset.json"), "clean");
  const json poisoned = fitted(dir / "dataset.json", "poisoned");
  EXPECT_EQ(clean, poisoned);
  // Against the train split's column 0 (alcohol), computed here.
  std::istringstream in(read_all(dir / "train.csv"));
  std::string line;
  std::getline(in, line);
  std::vector<double> alcohol;
  while (std::getline(in, line)) alcohol.push_back(std::stod(line.substr(0, line.find(','))));
  double mean = 0;
  for (double v : alcohol) mean += v / double(alcohol.size());
  EXPECT_NEAR(clean["mean"][0].get<double>(), mean, 1e-9);
  fs::remove_all(dir);
}

TEST(Cli, AvFashionPairsByClassWithHeldOutVoices) {
  const fs::path dir = source("data/embedded/av-fashion");
  std::map<std::string, std::set<std::string>> voices;  // split → voices heard
  std::map<std::string, int> uses;                      // clip → samples pairing with it
  for (const std::string split : {"train", "val", "test"}) {
    std::istringstream in(read_all(dir / (split + ".jsonl")));
    for (std::string line; std::getline(in, line);) {
      const json s = json::parse(line);
      const std::string audio = s["audio"], label = s["label"];
      std::string safe = label;
      for (char& c : safe) c = (c == '/' || c == ' ') ? '_' : c;
      // The clip says the image's class and comes from the image's split.
      EXPECT_EQ(audio.rfind("audio/" + split + "/" + safe + "-", 0), 0u) << line;
      EXPECT_TRUE(fs::exists(dir / audio)) << audio;
      voices[split].insert(s["voice"].get<std::string>());
      ++uses[audio];
    }
  }
  for (const auto& v : voices["test"]) EXPECT_EQ(voices["train"].count(v), 0u) << v << " is in train and test";
  // Clips are shared (that is what makes it paired by class, not by instance).
  int shared = 0;
  for (const auto& [clip, n] : uses) shared += n > 1;
  EXPECT_GT(shared, 0);
}

TEST(Cli, AvFashionRecipeIsDeterministicAndValidates) {
  // A tiny av-fashion (espeak-ng and dataset-fashion-mnist come with scripts/setup.sh): the same
  // seed gives byte-identical files, another seed other ones, and the output validates.
  const fs::path root = fs::current_path() / ("avf-recipe-" + std::to_string(::getpid()));
  fs::remove_all(root);
  auto prepare = [&](const std::string& name, int seed) {
    auto r = modalkit("data prepare av-fashion --subset train=20,val=10,test=10 --seed " + std::to_string(seed) +
                      " --cache '" + (root / "cache").string() + "' --out '" + (root / name).string() + "'");
    EXPECT_EQ(r.rc, 0) << r.err;
    std::map<std::string, std::string> files;
    for (const auto& e : fs::recursive_directory_iterator(root / name)) {
      if (e.is_regular_file()) files[fs::relative(e.path(), root / name).string()] = read_all(e.path());
    }
    return files;
  };
  const auto a = prepare("a", 5), b = prepare("b", 5), c = prepare("c", 6);
  ASSERT_FALSE(a.empty());
  EXPECT_EQ(a, b);
  EXPECT_NE(a.at("train.jsonl"), c.at("train.jsonl"));
  EXPECT_EQ(a.count("train-images.idx.gz"), 1u);
  auto v = modalkit("data validate '" + (root / "a" / "dataset.json").string() + "' --json");
  ASSERT_EQ(v.rc, 0) << v.out << v.err;
  EXPECT_EQ(json::parse(v.out)["error_count"], 0);
  const json doc = json::parse(a.at("dataset.json"));
  EXPECT_TRUE(has(doc["provenance"]["synthetic"].get<std::string>(), "white noise at -15.0 dB")) << doc["provenance"];
  fs::remove_all(root);
}

TEST(Cli, SpokenTopicsRecipePairsEachClipWithItsTranscriptSplitsByTextAndVoiceAndCachesRenders) {
  // A tiny render (espeak-ng, Festival and its voices come with scripts/setup.sh).
  const fs::path root = fs::current_path() / ("topics-recipe-" + std::to_string(::getpid()));
  fs::remove_all(root);
  auto prepare = [&](const std::string& name) {
    auto r = modalkit("data prepare spoken-topics --subset train=16,val=8,test=8 --seed 5 --cache '" +
                      (root / "cache").string() + "' --out '" + (root / name).string() + "'");
    EXPECT_EQ(r.rc, 0) << r.err;
    return r;
  };
  const auto first = prepare("a");
  EXPECT_TRUE(has(first.err, "rendering 32 of 32 clips (0 cached)")) << first.err;
  auto v = modalkit("data validate '" + (root / "a" / "dataset.json").string() + "' --json");
  ASSERT_EQ(v.rc, 0) << v.out << v.err;
  EXPECT_EQ(json::parse(v.out)["error_count"], 0);
  std::map<std::string, std::set<std::string>> texts, voices;
  std::map<std::string, int> per_text;
  std::set<std::string> synthesizers;
  for (const std::string split : {"train", "val", "test"}) {
    std::ifstream in(root / "a" / (split + ".jsonl"));
    int n = 0;
    for (std::string line; std::getline(in, line); ++n) {
      const json s = json::parse(line);
      EXPECT_TRUE(fs::exists(root / "a" / s["audio"].get<std::string>())) << s;
      EXPECT_FALSE(s["text"].get<std::string>().empty()) << s;
      texts[split].insert(s["text"]);
      voices[split].insert(s["voice"]);
      synthesizers.insert(s["synthesizer"]);
      if (split == "train") ++per_text[s["text"]];
    }
    EXPECT_EQ(n, split == "train" ? 16 : 8) << split;
  }
  // No sentence and no voice in two splits; each training text spoken by two different voices.
  for (const std::string a : {"train", "val", "test"}) {
    for (const std::string b : {"train", "val", "test"}) {
      if (a >= b) continue;
      for (const auto& t : texts[a]) EXPECT_EQ(texts[b].count(t), 0u) << t << " in " << a << " and " << b;
      for (const auto& w : voices[a]) EXPECT_EQ(voices[b].count(w), 0u) << w << " in " << a << " and " << b;
    }
  }
  for (const auto& [text, n] : per_text) EXPECT_EQ(n, 2) << text;
  EXPECT_EQ(synthesizers, (std::set<std::string>{"espeak-ng", "festival"}));
  // Again: nothing is synthesised anew, and the files are the same bytes.
  const auto second = prepare("b");
  EXPECT_TRUE(has(second.err, "all 32 clips are in the render cache")) << second.err;
  for (const auto& e : fs::recursive_directory_iterator(root / "a")) {
    if (e.is_regular_file()) {
      EXPECT_EQ(read_all(e.path()), read_all(root / "b" / fs::relative(e.path(), root / "a"))) << e.path();
    }
  }
  fs::remove_all(root);
}

TEST(Cli, UnlabelledPairsTrainOnlyTheAuxiliaryLossAndOnlyForAStrategyThatSaysSo) {
  auto variant = [](const std::string& name, const std::string& transfer) {
    return example_variant("spoken-topics-fusion", "spoken-topics", name, [&](json& doc) {
      doc["artifacts"]["tokenizer"] = source("data/embedded/text-corpus/tokenizer.model").string();
      doc["data"]["label_fraction"] = 0.25;
      doc["data"]["unlabelled"] = "auxiliary";
      doc["train"]["epochs"] = 1;
      doc["evaluate"]["modalities"] = {"audio"};
      doc["transfer"] = json::parse(transfer);
    });
  };
  const fs::path refused = variant("unlabelled-supervised", R"({"plugin": "supervised"})");
  auto r = modalkit("validate '" + refused.string() + "'");
  EXPECT_EQ(r.rc, 2);
  EXPECT_TRUE(has(r.out + r.err, "/data/unlabelled: \"auxiliary\" keeps training samples without labels, and transfer "
                                 "plugin \"supervised\" has no loss that learns from them")) << r.out << r.err;
  const fs::path pipeline =
      variant("unlabelled-translation", R"({"plugin": "translation", "config": {"source": "audio", "target": "text", "target_features": "encoder"}})");
  const fs::path out = fs::current_path() / ("run-unlabelled-" + std::to_string(::getpid()));
  fs::remove_all(out);
  r = modalkit("train '" + pipeline.string() + "' --out '" + out.string() + "'");
  ASSERT_EQ(r.rc, 0) << r.err;
  EXPECT_TRUE(has(r.err, "labels on 48 of 192 training samples, the other 144 kept without labels")) << r.err;
  const json results = json::parse(read_all(out / "results.json"));
  EXPECT_EQ(results["unlabelled"], "auxiliary");
  EXPECT_EQ(results["train_samples"], 192);
  EXPECT_EQ(results["steps"], 6);  // every pair is stepped over: 192 / 32
  fs::remove_all(out);
  fs::remove(refused);
  fs::remove(pipeline);
}

TEST(Cli, CoLearningStrategiesTrainFromJsonAndTestOnThePrimaryAlone) {
  // translation, cyclic_translation and vokenization on real paired sensor windows: each trains
  // from JSON, logs its own loss terms, needs temperature alone at test, and its saved run (with
  // the layers and buffers sized in prepare) reproduces its result in eval.
  const std::map<std::string, std::pair<json, std::vector<std::string>>> cases = {
      {"translation", {{{"source", "temperature"}, {"target", "humidity"}}, {"translation"}}},
      {"cyclic_translation", {{{"source", "temperature"}, {"target", "humidity"}}, {"translation", "cycle"}}},
      {"vokenization", {{{"primary", "temperature"}, {"secondary", "humidity"}, {"features", "raw"}, {"vokens", 6}}, {"voken"}}}};
  for (const auto& [plugin, c] : cases) {
    const json& config = c.first;
    const auto& terms = c.second;
    auto file = example_variant("sensor-network-fusion", "sensor-network", "colearn-" + plugin, [&](json& d) {
      d["transfer"] = {{"plugin", plugin}, {"config", config}};
      d["train"]["epochs"] = 2;
    });
    const fs::path run = fs::current_path() / ("run-colearn-" + plugin + "-" + std::to_string(::getpid()));
    fs::remove_all(run);
    auto r = modalkit("train '" + file.string() + "' --out '" + run.string() + "'");
    ASSERT_EQ(r.rc, 0) << plugin << r.err;
    const json results = json::parse(read_all(run / "results.json"));
    EXPECT_EQ(results["modalities"], json({"temperature"})) << plugin;
    std::ifstream metrics(run / "metrics.jsonl");
    std::string line;
    std::getline(metrics, line);
    for (const auto& term : terms) {
      EXPECT_TRUE(json::parse(line)["loss_terms"].contains(term)) << plugin << " " << term << " " << line;
    }
    auto e = modalkit("eval --run '" + run.string() + "' --json");
    ASSERT_EQ(e.rc, 0) << plugin << e.err;
    EXPECT_EQ(json::parse(e.out)["tasks"], results["tasks"]) << plugin;
    if (plugin == "vokenization") {
      const json vokens = json::parse(read_all(run / "vokens.json"));
      EXPECT_EQ(vokens["vokens"], 6);
      EXPECT_GE(vokens["nmi"].get<double>(), 0.0);
      EXPECT_LE(vokens["nmi"].get<double>(), 1.0);
      EXPECT_TRUE(has(r.err, "NMI")) << r.err;
    }
    fs::remove_all(run);
    fs::remove(file);
  }
}

TEST(Cli, ZeroShotReportsSeenAndUnseenAccuracyFromItsConfusionMatrix) {
  auto file = example_variant("fashion-mnist-zero-shot", "fashion-mnist", "zero-shot", [](json& d) {
    d["train"]["epochs"] = 2;
    d["artifacts"]["word_vectors"] = source("data/artifacts/fashion-class-words.txt").string();
  });
  const fs::path run = fs::current_path() / ("run-zero-shot-" + std::to_string(::getpid()));
  fs::remove_all(run);
  auto r = modalkit("train '" + file.string() + "' --out '" + run.string() + "'");
  ASSERT_EQ(r.rc, 0) << r.err;
  EXPECT_TRUE(has(r.err, "novelty threshold")) << r.err;
  const json results = json::parse(read_all(run / "results.json"));
  const json& label = results["tasks"]["label"];
  // The group figures, recomputed here from the confusion matrix (rows: true class).
  const auto labels = results["confusion"]["label"]["labels"].get<std::vector<std::string>>();
  const auto matrix = results["confusion"]["label"]["matrix"].get<std::vector<std::vector<int64_t>>>();
  auto group_accuracy = [&](const std::set<std::string>& group) {
    double right = 0, all = 0;
    for (size_t i = 0; i < labels.size(); ++i) {
      if (!group.count(labels[i])) continue;
      right += static_cast<double>(matrix[i][i]);
      for (int64_t n : matrix[i]) all += static_cast<double>(n);
    }
    return right / all;
  };
  EXPECT_NEAR(label["unseen_accuracy"].get<double>(), group_accuracy({"sandal", "pullover"}), 1e-12);
  EXPECT_NEAR(label["seen_accuracy"].get<double>(),
              group_accuracy({"t-shirt/top", "trouser", "dress", "coat", "shirt", "sneaker", "bag", "ankle boot"}), 1e-12);
  // Zero-shot is not chance: an unseen image named right more often than 1 in 10.
  EXPECT_GT(label["unseen_accuracy"].get<double>(), 0.1) << label;
  auto e = modalkit("eval --run '" + run.string() + "' --json");
  ASSERT_EQ(e.rc, 0) << e.err;
  EXPECT_EQ(json::parse(e.out)["tasks"], results["tasks"]);

  // A class group naming no label of the task is refused at validate, with its pointer.
  auto bad = example_variant("fashion-mnist-zero-shot", "fashion-mnist", "zero-shot-typo", [](json& d) {
    d["tasks"]["label"]["class_groups"]["unseen"] = {"sandal", "pulover"};
    d["artifacts"]["word_vectors"] = source("data/artifacts/fashion-class-words.txt").string();
  });
  auto v = modalkit("validate '" + bad.string() + "'");
  EXPECT_EQ(v.rc, 2);
  EXPECT_TRUE(has(v.err, "/tasks/label/class_groups/unseen/1: \"pulover\" is not a label of field \"label\"")) << v.err;
  fs::remove_all(run);
  fs::remove(file);
  fs::remove(bad);
}

TEST(Cli, AnExperimentSuiteRunsItsPartsAndATableMayShowSeveralMetrics) {
  const fs::path dir = fs::current_path() / ("suite-" + std::to_string(::getpid()));
  fs::remove_all(dir);
  fs::create_directories(dir);
  json part = {{"name", "part"},
               {"dataset", source("data/embedded/fashion-mnist/dataset.json").string()},
               {"metric", {"label/accuracy", "label/macro_f1"}},
               {"seeds", {1}},
               {"set", {{"train.max_steps", 2}, {"train.epochs", 1}}},
               {"rows", {{{"name", "image"}, {"pipeline", source("examples/pipelines/fashion-mnist-image.json").string()},
                          {"baseline", true}}}},
               {"results", (dir / "results.md").string()}};
  std::ofstream(dir / "part.json") << part.dump(2);
  std::ofstream(dir / "suite.json") << json({{"name", "suite"}, {"experiments", {"part.json"}}}).dump(2);
  auto r = modalkit("experiments run '" + (dir / "suite.json").string() + "' --out '" + (dir / "runs").string() + "'");
  ASSERT_EQ(r.rc, 0) << r.err;
  EXPECT_TRUE(has(r.out, "| row | default: accuracy | default: macro_f1 |")) << r.out;
  EXPECT_TRUE(has(r.out, "accuracy of task label and macro_f1 of task label on the test split")) << r.out;
  EXPECT_TRUE(fs::exists(dir / "runs/part/image/default/seed-1/results.json"));
  // A suite that includes itself is refused, naming the field.
  std::ofstream(dir / "loop.json") << json({{"name", "loop"}, {"experiments", {"loop.json"}}}).dump(2);
  auto loop = modalkit("experiments run '" + (dir / "loop.json").string() + "' --dry-run");
  EXPECT_EQ(loop.rc, 2);
  EXPECT_TRUE(has(loop.err, "/experiments: includes itself")) << loop.err;
  EXPECT_TRUE(has(read_all(dir / "results.md"), "<!-- experiment:part")) << read_all(dir / "results.md");
  // A suite has no rows of its own.
  std::ofstream(dir / "suite.json") << json({{"name", "suite"}, {"experiments", {"part.json"}}, {"metric", "label/accuracy"}}).dump(2);
  auto bad = modalkit("experiments run '" + (dir / "suite.json").string() + "' --dry-run");
  EXPECT_EQ(bad.rc, 2);
  EXPECT_TRUE(has(bad.err, "/metric: a suite (/experiments) has no metric of its own")) << bad.err;
  fs::remove_all(dir);
}

namespace {

/// Lines of a JSON-lines file.
int64_t count_lines(const fs::path& file) {
  std::ifstream in(file);
  int64_t n = 0;
  for (std::string line; std::getline(in, line);) n += line.empty() ? 0 : 1;
  return n;
}

}  // namespace

TEST(Cli, MultitaskTrainsEachTaskOnItsOwnDataSetAndTransfers) {
  const fs::path run = fs::current_path() / ("run-multitask-" + std::to_string(::getpid()));
  const fs::path rr = fs::current_path() / ("run-multitask-rr-" + std::to_string(::getpid()));
  const fs::path tuned = fs::current_path() / ("run-multitask-tuned-" + std::to_string(::getpid()));
  for (const auto& d : {run, rr, tuned}) fs::remove_all(d);
  const std::string pipeline = source("examples/pipelines/highmmt-multitask.json").string();
  // Five tasks, each on its own embedded data set, seeing only its own modalities.
  const std::map<std::string, std::string> data = {
      {"clothes", "fashion-mnist"}, {"words", "spoken-words"}, {"mote", "sensor-network"}, {"wine", "wine"}, {"spam", "spam"}};
  const std::string budget = " --set train.epochs=2 --set tasks.clothes.data.label_fraction=0.25";
  auto r = modalkit("train '" + pipeline + "' --out '" + run.string() + "'" + budget);
  ASSERT_EQ(r.rc, 0) << r.err;
  const json results = json::parse(read_all(run / "results.json"));
  // Proportional sampling: each task's batches once an epoch, ceil(train / 32) of them.
  std::map<std::string, int64_t> batches;
  int64_t steps = 0;
  for (const auto& [task, set] : data) {
    const fs::path dir = source("data/embedded/" + set);
    const int64_t train = count_lines(dir / "train.jsonl");
    const int64_t used = task == "clothes" ? static_cast<int64_t>(std::llround(0.25 * static_cast<double>(train))) : train;
    batches[task] = (used + 31) / 32;
    steps += batches[task];
    // Every task is scored on its own data set's test split, and only there.
    EXPECT_EQ(results["task_samples"][task], count_lines(dir / "test.jsonl")) << task;
    EXPECT_TRUE(results["tasks"][task]["accuracy"].is_number()) << task;
    EXPECT_EQ(results["task_data"][task]["train_samples"], used) << task;
  }
  EXPECT_GT(results["tasks"]["clothes"]["accuracy"].get<double>(), 0.2);  // chance 0.1; 0.29 here after 2 short epochs
  EXPECT_EQ(results["steps"], 2 * steps);
  EXPECT_EQ(results["selected_on"]["metric"], "mean");
  EXPECT_GT(results["parameters"]["total"].get<int64_t>(), 0);
  std::ifstream metrics(run / "metrics.jsonl");
  int epochs = 0;
  for (std::string line; std::getline(metrics, line); ++epochs) {
    const json l = json::parse(line);
    for (const auto& [task, n] : batches) EXPECT_EQ(l["task_steps"][task], n) << task;
    EXPECT_EQ(l["val"].size(), 5u);
  }
  EXPECT_EQ(epochs, 2);
  const json info = json::parse(read_all(run / "run.json"));
  EXPECT_EQ(info["datasets"].size(), 5u);

  // eval scores every task on its own split again, to the same numbers.
  auto e = modalkit("eval --run '" + run.string() + "' --json");
  ASSERT_EQ(e.rc, 0) << e.err;
  const json ev = json::parse(e.out);
  for (const auto& [task, set] : data) {
    EXPECT_DOUBLE_EQ(ev["tasks"][task]["accuracy"].get<double>(), results["tasks"][task]["accuracy"].get<double>()) << task;
  }
  // The report shows each task's data and curves.
  e = modalkit("report '" + run.string() + "'");
  ASSERT_EQ(e.rc, 0) << e.err;
  const std::string html = read_all(run / "report.html");
  EXPECT_TRUE(has(html, "<caption>Tasks</caption>")) << html.substr(0, 2000);
  for (const auto& [task, set] : data) EXPECT_TRUE(has(html, task + "/accuracy")) << task;
  // predict reads one data set's fields: a multitask run says so.
  const fs::path input = predict_input(source("data/embedded/wine"), {"features"}, 3);
  e = modalkit("predict --run '" + run.string() + "' --input '" + input.string() + "'");
  EXPECT_EQ(e.rc, 2);
  EXPECT_TRUE(has(e.err, "is a multitask pipeline")) << e.err;
  fs::remove(input);

  // Round robin: the tasks in turn, the same number of steps; per-task early stopping ends the
  // run once every task has stopped improving (by more than 1: at once, after its first epoch).
  r = modalkit("train '" + pipeline + "' --out '" + rr.string() + "'" + budget +
               " --set train.epochs=4 --set train.task_sampling=round_robin"
               " --set train.early_stopping='{\"patience\": 1, \"min_delta\": 1}'");
  ASSERT_EQ(r.rc, 0) << r.err;
  const json rr_results = json::parse(read_all(rr / "results.json"));
  std::ifstream rr_metrics(rr / "metrics.jsonl");
  std::string first;
  std::getline(rr_metrics, first);
  const json l = json::parse(first);
  for (const auto& [task, n] : batches) {
    // 47 steps over 5 tasks in turn: 10 or 9 each, tasks in name order.
    EXPECT_EQ(l["task_steps"][task], steps / 5 + (l["task_steps"][task].get<int64_t>() > steps / 5 ? 1 : 0)) << task;
    EXPECT_EQ(rr_results["task_data"][task]["stopped_after_epoch"], 2) << task;
  }
  EXPECT_EQ(count_lines(rr / "metrics.jsonl"), 2);
  EXPECT_TRUE(has(r.err, "early stop of task wine")) << r.err;

  // Transfer: the shared backbone and the modality embeddings start a single-task run.
  ASSERT_EQ(modalkit("export --run '" + run.string() + "'").rc, 0);
  int64_t shared = 0;
  for (const auto& [name, bytes] : safetensors_bytes(run / "model.safetensors")) {
    shared += name.rfind("backbone.", 0) == 0 || name == "modality_embeddings.table" ? 1 : 0;
  }
  r = modalkit("train '" + source("examples/pipelines/highmmt-wine.json").string() + "' --out '" + tuned.string() +
               "' --set train.epochs=1 --set init_from='{\"run\": \"" + run.string() +
               "\", \"include\": [\"backbone.*\", \"modality_embeddings.*\"]}'");
  ASSERT_EQ(r.rc, 0) << r.err;
  EXPECT_TRUE(has(r.err, "init_from: " + std::to_string(shared) + " tensors")) << r.err;
  for (const auto& d : {run, rr, tuned}) fs::remove_all(d);
}

TEST(Cli, MultitaskMistakesPointIntoTheTaskThatMadeThem) {
  const std::string pipeline = source("examples/pipelines/highmmt-multitask.json").string();
  const fs::path out = fs::current_path() / ("pipeline-multitask-bad-" + std::to_string(::getpid()) + ".json");
  json doc = json::parse(read_all(pipeline));
  for (auto& [task, spec] : doc["tasks"].items()) {  // absolute paths: the file is written elsewhere
    spec["data"]["dataset"] = (fs::path(pipeline).parent_path() / spec["data"]["dataset"].get<std::string>()).lexically_normal().string();
  }
  doc["artifacts"]["tokenizer"] = source("data/embedded/text-corpus/tokenizer.model").string();
  doc["tasks"]["wine"]["modalities"]["table"] = "nosuch";
  doc["tasks"]["mote"]["data"]["splits"] = {{"val", "dev"}};
  std::ofstream(out) << doc.dump(2);
  auto r = modalkit("validate '" + out.string() + "'");
  EXPECT_EQ(r.rc, 2);
  EXPECT_TRUE(has(r.err, "/tasks/wine/modalities/table: no field \"nosuch\" of ")) << r.err;
  EXPECT_TRUE(has(r.err, "/tasks/mote/data/splits/val: no split \"dev\" of ")) << r.err;
  fs::remove(out);
}

TEST(Cli, HighmmtQuickExperimentSearchesComparesAndTransfersFromTheChosenRun) {
  // issue 7's experiment end to end on the embedded sets: five single-task models (one row of
  // five pipelines) against the multitask model, each with the same learning-rate search chosen
  // on validation; then transfer from the chosen multitask run of the same seed.
  const fs::path out = fs::current_path() / ("exp-highmmt-" + std::to_string(::getpid()));
  fs::remove_all(out);
  auto r = modalkit("experiments run '" + source("examples/experiments/highmmt.json").string() + "' --quick --out '" + out.string() + "'");
  ASSERT_EQ(r.rc, 0) << r.err;
  EXPECT_TRUE(has(r.out, "| row | parameters | 100 % labels: clothes/accuracy | 100 % labels: words/accuracy |")) << r.out;
  EXPECT_TRUE(has(r.out, "| 100 % labels: mean |")) << r.out;
  EXPECT_TRUE(has(r.out, "Search, the same for every row: train.optimizer.lr ∈ [0.001,0.003];")) << r.out;
  EXPECT_TRUE(has(r.out, "| 10 % labels: cancer/accuracy | 10 % labels: avf/accuracy |")) << r.out;
  const fs::path mt = out / "highmmt-multitask-quick";
  // The chosen candidate is the one best on validation, and the table reads it.
  for (const auto& [row, part] : std::vector<std::pair<std::string, std::string>>{{"multitask-model", ""},
                                                                                   {"single-task-models", "highmmt-clothes"}}) {
    const fs::path seed = mt / row / "100-labels" / "seed-1" / part;
    ASSERT_TRUE(fs::is_symlink(seed / "best")) << seed;
    double best = -1, chosen = -1;
    for (const auto& e : fs::directory_iterator(seed)) {
      if (fs::is_symlink(e.path())) continue;
      const json res = json::parse(read_all(e.path() / "results.json"));
      best = std::max(best, res["selected_on"]["value"].get<double>());
    }
    chosen = json::parse(read_all(seed / "best" / "results.json"))["selected_on"]["value"].get<double>();
    EXPECT_EQ(chosen, best) << seed;
  }
  const json clothes = json::parse(read_all(mt / "single-task-models" / "100-labels" / "seed-1" / "highmmt-clothes" / "best" / "results.json"));
  char cell[64];
  std::snprintf(cell, sizeof cell, "| %.3f |", clothes["tasks"]["clothes"]["accuracy"].get<double>());  // one seed: no ±
  EXPECT_TRUE(has(r.out, std::string("| single-task models (baseline) | largest ")) && has(r.out, cell)) << r.out << cell;
  // The transfer row started from that run, by the {runs}/{quick}/{seed} template.
  const json resolved = json::parse(read_all(out / "highmmt-transfer-quick" / "from-the-multitask-model" / "10-labels" / "seed-1" /
                                             "highmmt-avf" / "pipeline.json"));
  EXPECT_EQ(resolved["init_from"]["run"], (mt / "multitask-model" / "100-labels" / "seed-1" / "best").string());
  fs::remove_all(out);
}

// ---- Distributed training (c10d, Gloo) on loopback ----

namespace {

/// Starts the CLI in the background (as modalkit() would run it), stderr to `err`; its pid.
pid_t spawn(const std::string& args, const fs::path& err) {
  const std::string cmd = "exec '" + env("MODALKIT_BIN") + "' --plugin-path '" + env("MODALKIT_PLUGIN_BUILD_DIR") +
                          "' --plugin-path '" + env("MODALKIT_TEST_PLUGIN_DIR") + "' " + args + " >/dev/null 2>'" +
                          err.string() + "'";
  const pid_t pid = ::fork();
  if (pid == 0) {
    ::execl("/bin/sh", "sh", "-c", cmd.c_str(), static_cast<char*>(nullptr));
    ::_exit(127);
  }
  return pid;
}

/// The exit code of `pid` once it ends, or -1 (and the process killed) when it has not ended
/// within `seconds`; `took` gets the seconds waited.
int wait_exit(pid_t pid, double seconds, double* took = nullptr) {
  const auto t0 = std::chrono::steady_clock::now();
  int status = 0;
  while (::waitpid(pid, &status, WNOHANG) == 0) {
    if (std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count() > seconds) {
      ::kill(pid, SIGKILL);
      ::waitpid(pid, &status, 0);
      return -1;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  if (took != nullptr) *took = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

/// Waits up to `seconds` for `file` to exist.
bool wait_for(const fs::path& file, double seconds) {
  const auto t0 = std::chrono::steady_clock::now();
  while (!fs::exists(file)) {
    if (std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count() > seconds) return false;
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  return true;
}

/// A TCP port free on this machine at the time of the call (the system's choice, not a fixed
/// number another program may hold).
int free_port() {
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof(addr);
  ::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr));
  ::getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len);
  ::close(fd);
  return ntohs(addr.sin_port);
}

/// The float32 tensors of a safetensors file (8-byte header size, JSON header, data), by name.
std::map<std::string, std::vector<float>> read_safetensors(const fs::path& file) {
  const std::string bytes = read_all(file);
  uint64_t n = 0;
  std::memcpy(&n, bytes.data(), 8);
  const json header = json::parse(bytes.substr(8, n));
  std::map<std::string, std::vector<float>> out;
  for (const auto& [name, info] : header.items()) {
    if (name == "__metadata__" || info["dtype"] != "F32") continue;
    const size_t begin = info["data_offsets"][0], end = info["data_offsets"][1];
    std::vector<float> v((end - begin) / 4);
    std::memcpy(v.data(), bytes.data() + 8 + n + begin, end - begin);
    out[name] = v;
  }
  return out;
}

/// ‖a − b‖ / ‖a‖ over every tensor of two runs' exported weights (the same names in both).
double relative_difference(const fs::path& run_a, const fs::path& run_b) {
  for (const auto& run : {run_a, run_b}) {
    auto r = modalkit("export --run '" + run.string() + "' --out '" + (run / "weights.safetensors").string() + "'");
    EXPECT_EQ(r.rc, 0) << r.err;
  }
  const auto a = read_safetensors(run_a / "weights.safetensors"), b = read_safetensors(run_b / "weights.safetensors");
  EXPECT_EQ(a.size(), b.size());
  EXPECT_GT(a.size(), 5u);
  double diff = 0, norm = 0;
  for (const auto& [name, va] : a) {
    const auto& vb = b.at(name);
    EXPECT_EQ(va.size(), vb.size()) << name;
    for (size_t i = 0; i < std::min(va.size(), vb.size()); ++i) {
      diff += (static_cast<double>(va[i]) - vb[i]) * (static_cast<double>(va[i]) - vb[i]);
      norm += static_cast<double>(va[i]) * va[i];
    }
  }
  return std::sqrt(diff / norm);
}

/// The wine pipeline without dropout (so one and two ranks compute the same function) on one
/// intra-op thread, trained for `steps` optimiser steps in global batches of 16.
std::string wine_args(int steps) {
  return "train '" + source("examples/pipelines/wine-tabular.json").string() +
         "' --set modalities.features.config.dropout=0 --set train.threads=1 --set train.batch_size=16"
         " --set train.epochs=1000 --set train.max_steps=" + std::to_string(steps);
}

}  // namespace

TEST(Cli, TwoRanksEndWithTheWeightsOfOneRankWithTheSameGlobalBatch) {
  const fs::path dir = fs::current_path() / ("dist-" + std::to_string(::getpid()));
  fs::remove_all(dir);
  auto one = modalkit(wine_args(50) + " --out '" + (dir / "one").string() + "'");
  ASSERT_EQ(one.rc, 0) << one.err;
  auto two = modalkit("launch -n 2 --timeout 60 -- " + wine_args(50) + " --out '" + (dir / "two").string() + "'");
  ASSERT_EQ(two.rc, 0) << two.err;
  EXPECT_LE(relative_difference(dir / "one", dir / "two"), 1e-5);
  // The rows were shared: each global batch of 16 split 8/8, the epoch's last of 107 - 6·16 = 11
  // rows split 5/6; 50 steps are 7 epochs and one batch.
  const json res = json::parse(read_all(dir / "two" / "results.json"));
  EXPECT_EQ(res["distributed"]["world_size"], 2);
  EXPECT_EQ(res["distributed"]["rows_this_sitting"], json({7 * (6 * 8 + 5) + 8, 7 * (6 * 8 + 6) + 8})) << res.dump();
  EXPECT_EQ(res["steps"], 50);
  // The same epochs and the same train loss (the global batch's) as one rank; rank 0 alone wrote.
  auto lines = [](const fs::path& f) {
    std::vector<json> out;
    std::ifstream in(f);
    for (std::string l; std::getline(in, l);) out.push_back(json::parse(l));
    return out;
  };
  const auto m1 = lines(dir / "one" / "metrics.jsonl"), m2 = lines(dir / "two" / "metrics.jsonl");
  ASSERT_EQ(m1.size(), m2.size());
  for (size_t i = 0; i < m1.size(); ++i) {
    EXPECT_NEAR(m1[i]["train_loss"].get<double>(), m2[i]["train_loss"].get<double>(), 1e-5) << "epoch " << i + 1;
  }
  std::set<std::string> files1, files2;
  for (const auto& e : fs::directory_iterator(dir / "one")) files1.insert(e.path().filename().string());
  for (const auto& e : fs::directory_iterator(dir / "two")) files2.insert(e.path().filename().string());
  EXPECT_EQ(files1, files2);
  fs::remove_all(dir);
}

TEST(Cli, AnInterruptedDistributedRunResumesToTheSameWeights) {
  const fs::path dir = fs::current_path() / ("dist-resume-" + std::to_string(::getpid()));
  fs::remove_all(dir);
  auto one = modalkit(wine_args(300) + " --out '" + (dir / "one").string() + "'");
  ASSERT_EQ(one.rc, 0) << one.err;
  // Ctrl-C to the launcher mid-run: passed on to the ranks, rank 0 checkpoints, all exit 130.
  const std::string two = wine_args(300) + " --out '" + (dir / "two").string() + "'";
  const pid_t launcher = spawn("launch -n 2 --timeout 60 -- " + two, dir.string() + "-err");
  ASSERT_TRUE(wait_for(dir / "two" / "checkpoint.pt", 60)) << read_all(dir.string() + "-err");
  ::kill(launcher, SIGINT);
  EXPECT_EQ(wait_exit(launcher, 60), 130) << read_all(dir.string() + "-err");
  ASSERT_FALSE(fs::exists(dir / "two" / "results.json")) << "the run ended before the interrupt; give it more steps";
  auto resumed = modalkit("launch -n 2 --timeout 60 -- " + two + " --resume");
  ASSERT_EQ(resumed.rc, 0) << resumed.err;
  EXPECT_LE(relative_difference(dir / "one", dir / "two"), 1e-5);
  fs::remove(dir.string() + "-err");
  fs::remove_all(dir);
}

TEST(Cli, ARankThatDiesOrHangsEndsTheOthersWithinTheTimeout) {
  const fs::path dir = fs::current_path() / ("dist-fault-" + std::to_string(::getpid()));
  fs::remove_all(dir);
  fs::create_directories(dir);
  // The timeout bounds the start too (rendezvous, connections, rank 0's first validation): long
  // enough for a loaded machine, short enough for a test.
  const int timeout = 15;
  for (const int sig : {SIGKILL, SIGSTOP}) {
    const std::string common = wine_args(100000) + " --world-size 2 --master 127.0.0.1:" + std::to_string(free_port()) +
                               " --timeout " + std::to_string(timeout);
    const fs::path out0 = dir / ("r0-" + std::to_string(sig)), out1 = dir / ("r1-" + std::to_string(sig));
    const pid_t r0 = spawn(common + " --rank 0 --out '" + out0.string() + "'", dir / "err0");
    const pid_t r1 = spawn(common + " --rank 1 --out '" + out1.string() + "'", dir / "err1");
    ASSERT_TRUE(wait_for(out0 / "checkpoint.pt", 60)) << read_all(dir / "err0") << read_all(dir / "err1");
    ::kill(r1, sig);  // dies, or stops answering
    double took = 0;
    EXPECT_EQ(wait_exit(r0, 30, &took), 1) << read_all(dir / "err0");
    EXPECT_LT(took, timeout + 10) << "rank 0 should give up within --timeout";
    const std::string err = read_all(dir / "err0");
    EXPECT_TRUE(has(err, "distributed (rank 0): ")) << err;
    EXPECT_TRUE(has(err, "another rank has died or stopped answering (waited at most " + std::to_string(timeout) +
                         " s, --timeout)"))
        << err;
    EXPECT_FALSE(fs::exists(out1)) << "only rank 0 writes the run directory";
    ::kill(r1, SIGKILL);
    wait_exit(r1, 10);
  }
  // Under launch, a rank killed from outside stops the other and the launcher names it.
  const pid_t launcher = spawn("launch -n 2 --timeout 20 -- " + wine_args(100000) + " --out '" + (dir / "l").string() + "'",
                               dir / "errl");
  ASSERT_TRUE(wait_for(dir / "l" / "checkpoint.pt", 60)) << read_all(dir / "errl");
  const std::string children = capture("pgrep -P " + std::to_string(launcher));
  ASSERT_FALSE(children.empty());
  ::kill(std::stoi(children.substr(children.rfind('\n', children.size() - 2) + 1)), SIGKILL);
  EXPECT_EQ(wait_exit(launcher, 30), 1) << read_all(dir / "errl");
  const std::string err = read_all(dir / "errl");
  // Whichever rank the launcher saw end first (the killed one, or the one that lost its peer).
  EXPECT_TRUE(has(err, "modalkit: launch: rank ")) << err;
  EXPECT_TRUE(has(err, "; its error is above); the other ranks were stopped")) << err;
  fs::remove_all(dir);
}

TEST(Cli, DistributedSetUpErrorsNameTheCause) {
  const fs::path dir = fs::current_path() / ("dist-errors-" + std::to_string(::getpid()));
  fs::remove_all(dir);
  fs::create_directories(dir);
  const std::string base = wine_args(10);
  const int p = free_port();  // p + 1 and p + 2 are tried below as well
  // Ranks started with different world sizes: both say so.
  const pid_t r0 = spawn(base + " --out '" + (dir / "a").string() + "' --rank 0 --world-size 2 --master 127.0.0.1:" +
                             std::to_string(p) + " --timeout 10",
                         dir / "err0");
  auto r1 = modalkit(base + " --out '" + (dir / "b").string() + "' --rank 1 --world-size 3 --master 127.0.0.1:" +
                     std::to_string(p) + " --timeout 10");
  EXPECT_EQ(r1.rc, 1);
  EXPECT_TRUE(has(r1.err, "distributed (rank 1): rank 1 was started with --world-size 3, rank 0 with 2")) << r1.err;
  EXPECT_EQ(wait_exit(r0, 30), 1);
  EXPECT_TRUE(has(read_all(dir / "err0"), "rank 1 was started with --world-size 3, rank 0 with 2")) << read_all(dir / "err0");
  // No master to reach.
  auto lonely = modalkit(base + " --out '" + (dir / "c").string() + "' --rank 1 --world-size 2 --master 127.0.0.1:" +
                         std::to_string(p + 1) + " --timeout 2");
  EXPECT_EQ(lonely.rc, 1);
  EXPECT_TRUE(has(lonely.err, "distributed (rank 1): cannot reach the master 127.0.0.1:" + std::to_string(p + 1) + " within 2 s"))
      << lonely.err;
  // The master's port taken by another program.
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_ANY);
  addr.sin_port = htons(static_cast<uint16_t>(p + 2));
  ASSERT_EQ(::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)), 0);
  ASSERT_EQ(::listen(fd, 1), 0);
  auto taken = modalkit(base + " --out '" + (dir / "d").string() + "' --rank 0 --world-size 2 --master 127.0.0.1:" +
                        std::to_string(p + 2) + " --timeout 2");
  ::close(fd);
  EXPECT_EQ(taken.rc, 1);
  EXPECT_TRUE(has(taken.err, "distributed (rank 0): cannot serve the rendezvous on 127.0.0.1:" + std::to_string(p + 2)))
      << taken.err;
  EXPECT_TRUE(has(taken.err, "Address already in use")) << taken.err;
  // Usage errors, before anything starts.
  for (const auto& [args, expected] : std::vector<std::pair<std::string, std::string>>{
           {base + " --out x --rank 2 --world-size 2", "--rank 2: expected 0 to 1 (--world-size 2)"},
           {base + " --out x --rank 0", "a distributed run needs --rank R and --world-size N"},
           {base + " --out x --rank 0 --world-size 2 --master nohost", "--master nohost: expected HOST:PORT"},
           {"launch -n 2 " + base + " --out x", "launch needs -- before the command"},
           {"launch -n 2 -- eval --run x", "launch runs train"},
           {"launch -n 2 -- " + base + " --out x --rank 1", "launch sets --rank for each rank"}}) {
    auto r = modalkit(args);
    EXPECT_EQ(r.rc, 2) << args;
    EXPECT_TRUE(has(r.err, expected)) << args << "\n" << r.err;
  }
  EXPECT_FALSE(fs::exists("x"));
  fs::remove_all(dir);
}

TEST(Cli, AStrategyWhosePrepareSizesItsLayersTrainsOnTwoRanks) {
  // translation sizes its translator from the data in prepare, which runs on rank 0 alone: the
  // other rank must take rank 0's sizes before the optimiser and the gradient buckets are made.
  const fs::path dir = fs::current_path() / ("dist-prepare-" + std::to_string(::getpid()));
  fs::remove_all(dir);
  const std::string transfer =
      R"(transfer={"plugin":"translation","config":{"source":"temperature","target":"humidity","target_features":"raw"}})";
  auto r = modalkit("launch -n 2 --timeout 120 -- train '" + source("examples/pipelines/sensor-network-fusion.json").string() +
                    "' --out '" + dir.string() + "' --set '" + transfer + "' --set train.epochs=1 --set train.threads=1");
  ASSERT_EQ(r.rc, 0) << r.err;
  const json res = json::parse(read_all(dir / "results.json"));
  EXPECT_EQ(res["distributed"]["world_size"], 2);
  EXPECT_TRUE(json::parse(read_all(dir / "metrics.jsonl"))["loss_terms"].contains("translation")) << read_all(dir / "metrics.jsonl");
  fs::remove_all(dir);
}
