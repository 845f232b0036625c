// Data sets, the loader's thread pool, targets and metrics, against hand-computed values.
#include <unistd.h>

#include <atomic>
#include <cmath>
#include <fstream>

#include <gtest/gtest.h>
#include <torch/torch.h>

#include <spdlog/spdlog.h>

#include "dataset.hpp"
#include "error_of.hpp"
#include "engine.hpp"
#include "loader.hpp"
#include "metrics.hpp"
#include "modalkit/errors.hpp"

namespace fs = std::filesystem;
using modalkit::TaskSpec;
using modalkit::TaskType;
using modalkit::testing::error_of;

namespace {

struct DatasetDir {
  fs::path dir;
  DatasetDir() {
    dir = fs::current_path() / ("tmp-dataset-" + std::to_string(::getpid()));
    fs::remove_all(dir);
    fs::create_directories(dir);
  }
  ~DatasetDir() { fs::remove_all(dir); }
  void write(const std::string& name, const std::string& text) const {
    std::ofstream(dir / name) << text;
  }
  fs::path write_dataset(int declared_count, const std::string& samples) const {
    write("train.jsonl", samples);
    nlohmann::json doc = {
        {"name", "tiny"},
        {"fields", {{"x", {{"type", "number"}}}, {"y", {{"type", "label"}, {"labels", {"a", "b", "c"}}}}}},
        {"splits", {{"train", {{"samples", "train.jsonl"}, {"count", declared_count}}}}},
        {"provenance", {{"recipe", "written by a test"}, {"license", "CC0"}}}};
    write("dataset.json", doc.dump());
    return dir / "dataset.json";
  }
};

/// A modality whose field is a number: decode counts its calls and refuses negatives with a
/// DataError (bad data), fit records the mean of what it saw.
class NumberModality : public modalkit::ModalityPlugin {
 public:
  NumberModality() { attach_library("number", nullptr); }
  mutable std::atomic<int> decodes{0};
  double fitted_mean = 0;
  int fits = 0;
  modalkit::RawValue decode(const modalkit::FieldRef& f) const override {
    ++decodes;
    const double v = f.value.get<double>();
    if (v < 0) throw modalkit::DataError(f.origin, "negative value " + f.value.dump());
    return {at::full({1}, v, at::kFloat), "", 0};
  }
  void fit(const std::vector<modalkit::RawValue>& train) override {
    double sum = 0;
    for (const auto& r : train) sum += r.tensor.item<double>();
    fitted_mean = sum / static_cast<double>(train.size());
    ++fits;
  }
  at::Tensor featurize(const modalkit::RawValue& raw) const override { return raw.tensor - fitted_mean; }
  std::shared_ptr<modalkit::Encoder> make_encoder() override { return nullptr; }
};

modalkit::host::LoadOptions load(bool fit, bool skip_bad, std::vector<int64_t> rows = {}) {
  return {2, fit, skip_bad, std::move(rows)};
}

}  // namespace

TEST(Dataset, ReadsSamplesWithOrigins) {
  DatasetDir d;
  auto file = d.write_dataset(2, "{\"x\": 1, \"y\": \"a\"}\n\n{\"x\": 2, \"y\": \"c\"}\n");
  auto ds = modalkit::host::Dataset::open(file);
  const auto& s = ds.samples("train");
  ASSERT_EQ(s.size(), 2u);
  EXPECT_EQ(s[1].origin, (d.dir / "train.jsonl").string() + ":3");
  EXPECT_EQ(ds.labels("y"), (std::vector<std::string>{"a", "b", "c"}));
  EXPECT_EQ(ds.sha256().size(), 64u);
}

TEST(Dataset, ErrorsNameFileAndLine) {
  DatasetDir d;
  auto file = d.write_dataset(2, "{\"x\": 1, \"y\": \"a\"}\n{\"x\": oops\n");
  auto ds = modalkit::host::Dataset::open(file);
  EXPECT_EQ(error_of([&] { ds.samples("train"); }), (d.dir / "train.jsonl").string() + ":2: not a JSON object");
  EXPECT_NE(error_of([&] { ds.samples("test"); }).find("has no split \"test\" (splits: train)"), std::string::npos);
  EXPECT_NE(error_of([&] { ds.field("z"); }).find("has no field \"z\" (fields: x, y)"), std::string::npos);
}

TEST(Dataset, CountMismatchIsAnError) {
  DatasetDir d;
  auto file = d.write_dataset(3, "{\"x\": 1, \"y\": \"a\"}\n");
  auto ds = modalkit::host::Dataset::open(file);
  EXPECT_NE(error_of([&] { ds.samples("train"); }).find("holds 1 samples"), std::string::npos);
}

TEST(Dataset, SchemaViolationsArePointers) {
  DatasetDir d;
  d.write("dataset.json", R"({"name": "x", "fields": {"y": {"type": "label"}}, "splits": {}, "provenance": {"recipe": "r"}})");
  auto msg = error_of([&] { modalkit::host::Dataset::open(d.dir / "dataset.json"); });
  EXPECT_NE(msg.find("/provenance"), std::string::npos) << msg;
  EXPECT_NE(msg.find("license"), std::string::npos) << msg;
}

TEST(Loader, TargetsAreCheckedAgainstTheLabelSet) {
  TaskSpec t{"label", TaskType::kMulticlass, "y", {"a", "b", "c"}, 3, {"accuracy"}};
  modalkit::host::Sample ok{{{"y", "c"}}, "f:1"};
  EXPECT_EQ(modalkit::host::read_target(ok, t), 2.0);
  modalkit::host::Sample idx{{{"y", 1}}, "f:2"};
  EXPECT_EQ(modalkit::host::read_target(idx, t), 1.0);
  modalkit::host::Sample bad{{{"y", "d"}}, "f:3"};
  EXPECT_EQ(error_of([&] { modalkit::host::read_target(bad, t); }),
            "f:3: label \"d\" of field \"y\" is not in the data set's label set");
  modalkit::host::Sample out{{{"y", 3}}, "f:4"};
  EXPECT_NE(error_of([&] { modalkit::host::read_target(out, t); }).find("outside the label set"), std::string::npos);
  modalkit::host::Sample missing{{{"x", 1}}, "f:5"};
  EXPECT_EQ(error_of([&] { modalkit::host::read_target(missing, t); }),
            "f:5: missing target field \"y\" of task label");
  TaskSpec r{"value", TaskType::kRegression, "y", {}, 1, {"mae"}};
  modalkit::host::Sample nan{{{"y", "NaN"}}, "f:6"};
  EXPECT_NE(error_of([&] { modalkit::host::read_target(nan, r); }).find("must be a number"), std::string::npos);
}

TEST(Loader, LabelSetsBecomeOneZeroPerLabel) {
  TaskSpec t{"tomorrow", TaskType::kMultilabel, "y", {"rain", "warm", "windy"}, 3, {"micro_f1"}};
  using V = std::vector<double>;
  EXPECT_EQ(modalkit::host::read_label_set({{{"y", {"windy", "rain"}}}, "f:1"}, t), (V{1, 0, 1}));
  EXPECT_EQ(modalkit::host::read_label_set({{{"y", nlohmann::json::array()}}, "f:2"}, t), (V{0, 0, 0}));
  EXPECT_EQ(modalkit::host::read_label_set({{{"y", {1}}}, "f:3"}, t), (V{0, 1, 0}));
  EXPECT_EQ(error_of([&] { modalkit::host::read_label_set({{{"y", "rain"}}, "f:4"}, t); }),
            "f:4: label_set field \"y\" must be an array of label names or indices (empty for none), found \"rain\"");
  EXPECT_EQ(error_of([&] { modalkit::host::read_label_set({{{"y", {"snow"}}}, "f:5"}, t); }),
            "f:5: label \"snow\" of field \"y\" is not in the data set's label set");
  EXPECT_EQ(error_of([&] { modalkit::host::read_label_set({{{"y", {"rain", 0}}}, "f:6"}, t); }),
            "f:6: label \"rain\" appears twice in field \"y\"");
  EXPECT_NE(error_of([&] { modalkit::host::read_label_set({{{"y", {3}}}, "f:7"}, t); }).find("outside the label set"),
            std::string::npos);
  EXPECT_NE(error_of([&] { modalkit::host::read_target({{{"y", {0}}}, "f:8"}, t); }).find("read_label_set"),
            std::string::npos);
}

TEST(Loader, BatchesNameSamplesByTheirRowInTheSplit) {
  DatasetDir d;
  auto file = d.write_dataset(3, "{\"x\": 1, \"y\": \"a\"}\n{\"x\": 2, \"y\": \"b\"}\n{\"x\": 3, \"y\": \"c\"}\n");
  auto ds = modalkit::host::Dataset::open(file);
  std::map<std::string, TaskSpec> tasks{{"label", {"label", TaskType::kMulticlass, "y", {"a", "b", "c"}, 3, {"accuracy"}}}};
  // A label subset keeps rows 2 and 0 of the split, in that order.
  auto f = modalkit::host::SplitFeatures::build(ds, "train", {}, tasks, load(false, false, {2, 0}));
  ASSERT_EQ(f.size(), 2);
  modalkit::Batch b = f.batch({1, 0}, {});
  EXPECT_EQ(std::vector<int64_t>(b.index.data_ptr<int64_t>(), b.index.data_ptr<int64_t>() + 2),
            (std::vector<int64_t>{0, 2}));
  const at::Tensor y = b.targets.at("label");
  EXPECT_EQ(y[0].item<int64_t>(), 0);  // row 0 is "a"
  EXPECT_EQ(y[1].item<int64_t>(), 2);  // row 2 is "c"
}

TEST(Loader, RowsOutsideTheLabelledOnesKeepTheirDataButLoseTheirTargets) {
  DatasetDir d;
  // Row 2's label is not in the label set: withheld, it is never read, so it fails nothing.
  auto file = d.write_dataset(3, "{\"x\": 1, \"y\": \"a\"}\n{\"x\": 2, \"y\": \"b\"}\n{\"x\": 3, \"y\": \"zzz\"}\n");
  auto ds = modalkit::host::Dataset::open(file);
  std::map<std::string, TaskSpec> tasks{{"label", {"label", TaskType::kMulticlass, "y", {"a", "b", "c"}, 3, {"accuracy"}}},
                                        {"value", {"value", TaskType::kRegression, "x", {}, 1, {"mae"}}}};
  auto number = std::make_shared<NumberModality>();
  modalkit::host::LoadOptions options = load(true, false);
  options.labelled = {1};  // data.unlabelled = auxiliary: only row 1 is in the label subset
  auto f = modalkit::host::SplitFeatures::build(ds, "train", {{"x", "x", number}}, tasks, options);
  ASSERT_EQ(f.size(), 3);
  EXPECT_DOUBLE_EQ(number->fitted_mean, 2.0);  // fitted on every row: fitting reads no label
  const modalkit::Batch b = f.batch({0, 1, 2}, {"x"});
  const at::Tensor y = b.targets.at("label");
  EXPECT_EQ((std::vector<int64_t>(y.data_ptr<int64_t>(), y.data_ptr<int64_t>() + 3)), (std::vector<int64_t>{-1, 1, -1}));
  const at::Tensor v = b.targets.at("value");
  EXPECT_TRUE(std::isnan(v[0].item<float>()));
  EXPECT_EQ(v[1].item<float>(), 2.0f);
  EXPECT_TRUE(std::isnan(v[2].item<float>()));
  EXPECT_EQ(b.inputs.at("x").data.sizes(), (std::vector<int64_t>{3, 1}));
}

TEST(Loader, EqualFieldValuesAreDecodedOnceAndFitSeesEverySample) {
  DatasetDir d;
  auto file = d.write_dataset(5, "{\"x\": 1, \"y\": \"a\"}\n{\"x\": 1, \"y\": \"b\"}\n{\"x\": 7, \"y\": \"c\"}\n"
                                 "{\"x\": 1, \"y\": \"a\"}\n{\"x\": 7, \"y\": \"b\"}\n");
  auto ds = modalkit::host::Dataset::open(file);
  auto plugin = std::make_shared<NumberModality>();
  auto f = modalkit::host::SplitFeatures::build(ds, "train", {{"x", "x", plugin}}, {}, load(true, false));
  EXPECT_EQ(plugin->decodes.load(), 2);          // the values 1 and 7
  EXPECT_DOUBLE_EQ(plugin->fitted_mean, 17.0 / 5);  // weighted by occurrence: (1+1+7+1+7)/5
  EXPECT_EQ(f.distinct().at("x"), 2);
  modalkit::Batch b = f.batch({0, 2, 3}, {"x"});
  EXPECT_NEAR(b.inputs.at("x").data[0][0].item<double>(), 1 - 3.4, 1e-6);
  EXPECT_NEAR(b.inputs.at("x").data[1][0].item<double>(), 7 - 3.4, 1e-6);
  EXPECT_NEAR(b.inputs.at("x").data[2][0].item<double>(), 1 - 3.4, 1e-6);
}

TEST(Loader, BuildAllFitsEachPluginOnceOnEveryFittingJobThenFeaturizes) {
  // A multitask run: one modality seen by two tasks, each with its own data set and field.
  DatasetDir d;
  auto first = modalkit::host::Dataset::open(d.write_dataset(2, "{\"x\": 1, \"y\": \"a\"}\n{\"x\": 3, \"y\": \"b\"}\n"));
  fs::create_directories(d.dir / "other");
  std::ofstream(d.dir / "other" / "train.jsonl") << "{\"z\": 5}\n{\"z\": 7}\n{\"z\": 9}\n";
  std::ofstream(d.dir / "other" / "val.jsonl") << "{\"z\": 11}\n";
  std::ofstream(d.dir / "other" / "dataset.json")
      << nlohmann::json{{"name", "other"},
                        {"fields", {{"z", {{"type", "number"}}}}},
                        {"splits", {{"train", {{"samples", "train.jsonl"}, {"count", 3}}}, {"val", {{"samples", "val.jsonl"}, {"count", 1}}}}},
                        {"provenance", {{"recipe", "written by a test"}, {"license", "CC0"}}}}
             .dump();
  auto second = modalkit::host::Dataset::open(d.dir / "other" / "dataset.json");
  auto plugin = std::make_shared<NumberModality>();
  std::map<std::string, TaskSpec> tasks{{"label", {"label", TaskType::kMulticlass, "y", {"a", "b", "c"}, 3, {"accuracy"}}}};
  using modalkit::host::LoadJob;
  const std::vector<LoadJob> jobs{LoadJob{&first, "train", {{"m", "x", plugin}}, tasks, load(true, false), 0},
                                  LoadJob{&second, "train", {{"m", "z", plugin}}, {}, load(true, false), 1},
                                  LoadJob{&second, "val", {{"m", "z", plugin}}, {}, load(false, false), 1}};
  const auto f = modalkit::host::SplitFeatures::build_all(jobs);
  ASSERT_EQ(f.size(), 3u);
  EXPECT_EQ(plugin->fits, 1);                        // once, on both train splits
  EXPECT_DOUBLE_EQ(plugin->fitted_mean, 25.0 / 5);   // (1 + 3 + 5 + 7 + 9) / 5
  // Every job is featurized with that fit, and its batches carry its task id and targets.
  modalkit::Batch a = f[0].batch({1}, {"m"}), b = f[1].batch({0}, {"m"}), v = f[2].batch({0}, {"m"});
  EXPECT_NEAR(a.inputs.at("m").data[0][0].item<double>(), 3 - 5.0, 1e-6);
  EXPECT_NEAR(b.inputs.at("m").data[0][0].item<double>(), 5 - 5.0, 1e-6);
  EXPECT_NEAR(v.inputs.at("m").data[0][0].item<double>(), 11 - 5.0, 1e-6);
  EXPECT_EQ(a.task_id, 0);
  EXPECT_EQ(b.task_id, 1);
  EXPECT_EQ(a.targets.count("label"), 1u);
  EXPECT_EQ(b.targets.count("label"), 0u);
  EXPECT_EQ(f[1].modalities(), std::vector<std::string>{"m"});
}

TEST(Loader, BadSamplesFailTheLoadNamingTheSampleUnlessSkipped) {
  DatasetDir d;
  auto file = d.write_dataset(5, "{\"x\": 1, \"y\": \"a\"}\n{\"x\": -2, \"y\": \"b\"}\n{\"x\": 3, \"y\": \"zebra\"}\n"
                                 "{\"y\": \"a\"}\n{\"x\": 5, \"y\": \"b\"}\n");
  auto ds = modalkit::host::Dataset::open(file);
  std::map<std::string, TaskSpec> tasks{{"label", {"label", TaskType::kMulticlass, "y", {"a", "b", "c"}, 3, {"accuracy"}}}};
  auto plugin = std::make_shared<NumberModality>();
  const std::string samples = (d.dir / "train.jsonl").string();
  // Without --skip-bad the first bad sample in file order stops the load, whichever stage finds
  // it: the plugin's decode error on line 2 comes before the label on line 3.
  EXPECT_EQ(error_of([&] { modalkit::host::SplitFeatures::build(ds, "train", {{"x", "x", plugin}}, tasks, load(true, false)); }),
            "plugin number: " + samples + ":2: negative value -2");
  EXPECT_EQ(error_of([&] { modalkit::host::SplitFeatures::build(ds, "train", {}, tasks, load(true, false)); }),
            samples + ":3: label \"zebra\" of field \"y\" is not in the data set's label set");
  auto f = modalkit::host::SplitFeatures::build(ds, "train", {{"x", "x", plugin}}, tasks, load(true, true));
  ASSERT_EQ(f.size(), 2);
  ASSERT_EQ(f.skipped().size(), 3u);
  EXPECT_EQ(f.skipped()[0].row, 1);
  EXPECT_EQ(f.skipped()[0].reason, samples + ":2: negative value -2");
  EXPECT_EQ(f.skipped()[1].row, 2);
  EXPECT_EQ(f.skipped()[2].reason, samples + ":4: sample has no field \"x\"");
  EXPECT_DOUBLE_EQ(plugin->fitted_mean, 3.0);  // fit saw only the kept samples 1 and 5
  modalkit::Batch b = f.batch({0, 1}, {"x"});
  EXPECT_EQ(b.index[1].item<int64_t>(), 4);  // kept samples keep their rows in the file
  EXPECT_EQ(b.targets.at("label")[1].item<int64_t>(), 1);
}

TEST(Loader, SamplesSharingABadValueAreEachNamed) {
  DatasetDir d;
  auto file = d.write_dataset(3, "{\"x\": -4, \"y\": \"a\"}\n{\"x\": 2, \"y\": \"b\"}\n{\"x\": -4, \"y\": \"c\"}\n");
  auto ds = modalkit::host::Dataset::open(file);
  auto plugin = std::make_shared<NumberModality>();
  const std::string samples = (d.dir / "train.jsonl").string();
  auto f = modalkit::host::SplitFeatures::build(ds, "train", {{"x", "x", plugin}}, {}, load(true, true));
  EXPECT_EQ(plugin->decodes.load(), 2);
  ASSERT_EQ(f.skipped().size(), 2u);
  EXPECT_EQ(f.skipped()[0].reason, samples + ":1: negative value -4");
  EXPECT_EQ(f.skipped()[1].row, 2);
  EXPECT_EQ(f.skipped()[1].reason, samples + ":3: same \"x\" value as " + samples + ":1, which failed: " + samples +
                                       ":1: negative value -4");
}

/// A modality whose decode fails on its own account (not the data's) for the value 9.
class FaultyModality : public NumberModality {
 public:
  modalkit::RawValue decode(const modalkit::FieldRef& f) const override {
    if (f.value.get<double>() == 9) throw std::runtime_error("internal fault");
    return NumberModality::decode(f);
  }
};

TEST(Loader, APluginFaultIsNeverSkippedAndComesInFileOrder) {
  DatasetDir d;
  auto file = d.write_dataset(3, "{\"x\": 1, \"y\": \"zebra\"}\n{\"x\": -1, \"y\": \"a\"}\n{\"x\": 9, \"y\": \"a\"}\n");
  auto ds = modalkit::host::Dataset::open(file);
  std::map<std::string, TaskSpec> tasks{{"label", {"label", TaskType::kMulticlass, "y", {"a", "b", "c"}, 3, {"accuracy"}}}};
  auto plugin = std::make_shared<FaultyModality>();
  const std::string samples = (d.dir / "train.jsonl").string();
  // Without skipping: the bad label on line 1 comes first, though the fault was met too.
  EXPECT_EQ(error_of([&] { modalkit::host::SplitFeatures::build(ds, "train", {{"x", "x", plugin}}, tasks, load(false, false)); }),
            samples + ":1: label \"zebra\" of field \"y\" is not in the data set's label set");
  // Skipping skips the data errors (lines 1, 2) but not the plugin's fault on line 3.
  EXPECT_EQ(error_of([&] { modalkit::host::SplitFeatures::build(ds, "train", {{"x", "x", plugin}}, tasks, load(false, true)); }),
            "plugin number: internal fault");
}

TEST(Loader, SkippingEverySampleIsAnError) {
  DatasetDir d;
  auto file = d.write_dataset(2, "{\"x\": -1, \"y\": \"a\"}\n{\"x\": -2, \"y\": \"b\"}\n");
  auto ds = modalkit::host::Dataset::open(file);
  auto plugin = std::make_shared<NumberModality>();
  const std::string msg =
      error_of([&] { modalkit::host::SplitFeatures::build(ds, "train", {{"x", "x", plugin}}, {}, load(true, true)); });
  EXPECT_NE(msg.find("every one of the 2 samples of split \"train\" is bad"), std::string::npos) << msg;
}

TEST(Loader, EmptySplitIsADataError) {
  DatasetDir d;
  auto file = d.write_dataset(0, "");
  auto ds = modalkit::host::Dataset::open(file);
  EXPECT_EQ(error_of([&] { modalkit::host::SplitFeatures::build(ds, "train", {}, {}, load(true, false)); }),
            file.string() + ": split \"train\" holds no samples");
}

TEST(Loader, ParallelForReportsTheLowestFailingIndex) {
  for (int threads : {1, 2, 4}) {
    std::vector<int> seen(100, 0);
    auto msg = error_of([&] {
      modalkit::host::parallel_for(100, threads, [&](size_t i) {
        seen[i] = 1;
        if (i == 37 || i == 80) throw std::runtime_error("failed at " + std::to_string(i));
      });
    });
    EXPECT_EQ(msg, "failed at 37");
    EXPECT_EQ(std::count(seen.begin(), seen.end(), 1), 100);  // every item still ran
  }
}

TEST(Metrics, AgreeWithHandComputedValues) {
  TaskSpec t{"label", TaskType::kMulticlass, "y", {"a", "b", "c"}, 3, {"accuracy", "macro_f1"}};
  // predictions: 0, 1, 1, 2 ; truth: 0, 1, 2, 2
  auto logits = torch::tensor({{5.0, 0.0, 0.0}, {0.0, 5.0, 0.0}, {0.0, 5.0, 0.0}, {0.0, 0.0, 5.0}});
  auto truth = torch::tensor({0, 1, 2, 2});
  auto m = modalkit::host::compute_metrics(t, logits, truth);
  EXPECT_DOUBLE_EQ(m["accuracy"].get<double>(), 0.75);
  // F1: class a 1, class b 2/3 (tp1 fp1), class c 2/3 (tp1 fn1) → mean 7/9.
  EXPECT_NEAR(m["macro_f1"].get<double>(), 7.0 / 9.0, 1e-12);

  TaskSpec b{"spam", TaskType::kBinary, "y", {"ham", "spam"}, 1, {"auroc", "auprc", "accuracy"}};
  auto scores = torch::tensor({0.1, 0.4, 0.35, 0.8});
  auto y = torch::tensor({0, 0, 1, 1});
  auto mb = modalkit::host::compute_metrics(b, scores, y);
  EXPECT_NEAR(mb["auroc"].get<double>(), 0.75, 1e-12);  // 3 of 4 positive-negative pairs ordered
  EXPECT_NEAR(mb["auprc"].get<double>(), (1.0 + 2.0 / 3.0) / 2.0, 1e-12);
  EXPECT_DOUBLE_EQ(mb["accuracy"].get<double>(), 0.5);  // logits > 0: all predicted spam

  TaskSpec r{"v", TaskType::kRegression, "y", {}, 1, {"mae", "pearson_r"}};
  auto mr = modalkit::host::compute_metrics(r, torch::tensor({1.0, 2.0, 3.0}), torch::tensor({2.0, 4.0, 6.0}));
  EXPECT_NEAR(mr["mae"].get<double>(), 2.0, 1e-12);
  EXPECT_NEAR(mr["pearson_r"].get<double>(), 1.0, 1e-12);
  TaskSpec wrong{"v", TaskType::kRegression, "y", {}, 1, {"accuracy"}};
  EXPECT_EQ(error_of([&] { modalkit::host::compute_metrics(wrong, torch::zeros({3}), torch::zeros({3})); }),
            "task v: metric \"accuracy\" does not apply to a regression task (use mae, pearson_r)");
  TaskSpec ranked{"label", TaskType::kMulticlass, "y", {"a", "b", "c"}, 3, {"auroc"}};
  EXPECT_EQ(error_of([&] { modalkit::host::compute_metrics(ranked, logits, truth); }),
            "task label: metric \"auroc\" does not apply to a multiclass task (use accuracy, macro_f1)");
}

TEST(Metrics, MultilabelAgreesWithHandComputedValues) {
  TaskSpec t{"tomorrow", TaskType::kMultilabel, "y", {"rain", "warm", "windy"}, 3,
             {"subset_accuracy", "micro_f1", "macro_f1", "auroc", "auprc"}};
  // Logits (a label is predicted where > 0) and truth for 4 samples:
  //   sample 0: pred {rain}        truth {rain}          exact
  //   sample 1: pred {rain, warm}  truth {warm}          fp rain
  //   sample 2: pred {}            truth {rain, windy}   fn rain, fn windy
  //   sample 3: pred {warm, windy} truth {warm, windy}   exact
  auto logits = torch::tensor({{2.0, -1.0, -3.0}, {0.5, 1.0, -2.0}, {-0.5, -2.0, -0.1}, {-1.0, 3.0, 0.2}});
  auto truth = torch::tensor({{1.0, 0.0, 0.0}, {0.0, 1.0, 0.0}, {1.0, 0.0, 1.0}, {0.0, 1.0, 1.0}});
  auto m = modalkit::host::compute_metrics(t, logits, truth);
  EXPECT_DOUBLE_EQ(m["subset_accuracy"].get<double>(), 0.5);
  // Pooled over labels: tp 4 (rain 1, warm 2, windy 1), fp 1, fn 2 → 8 / 11.
  EXPECT_NEAR(m["micro_f1"].get<double>(), 8.0 / 11.0, 1e-12);
  // Per label: rain tp1 fp1 fn1 → 1/2; warm tp2 → 1; windy tp1 fn1 → 2/3.
  EXPECT_NEAR(m["macro_f1"].get<double>(), (0.5 + 1.0 + 2.0 / 3.0) / 3.0, 1e-12);
  // AUROC per label from the logits' ranks: rain: positives {2.0, -0.5}, negatives {0.5, -1.0}:
  // pairs ordered 2.0>0.5, 2.0>-1, -0.5>-1 → 3/4. warm: positives {1.0, 3.0} above negatives
  // {-1, -2} → 1. windy: positives {-0.1, 0.2} above {-3, -2} → 1.
  EXPECT_NEAR(m["auroc"].get<double>(), (0.75 + 1.0 + 1.0) / 3.0, 1e-12);
  // AP: rain ranks 2.0(+), 0.5(-), -0.5(+) → (1 + 2/3) / 2; warm and windy 1.
  EXPECT_NEAR(m["auprc"].get<double>(), ((1.0 + 2.0 / 3.0) / 2.0 + 1.0 + 1.0) / 3.0, 1e-12);
  // A label never present has no AUROC: it leaves the mean instead of making it NaN.
  auto none = truth.clone();
  none.select(1, 2).zero_();
  TaskSpec only{"tomorrow", TaskType::kMultilabel, "y", {"rain", "warm", "windy"}, 3, {"auroc"}};
  EXPECT_NEAR(modalkit::host::compute_metrics(only, logits, none)["auroc"].get<double>(), (0.75 + 1.0) / 2.0, 1e-12);
  TaskSpec acc{"tomorrow", TaskType::kMultilabel, "y", {"rain", "warm", "windy"}, 3, {"accuracy"}};
  EXPECT_EQ(error_of([&] { modalkit::host::compute_metrics(acc, logits, truth); }),
            "task tomorrow: metric \"accuracy\" does not apply to a multilabel task (use subset_accuracy, micro_f1, "
            "macro_f1, auroc, auprc)");
}

TEST(Context, ArtifactsResolveAgainstThePipelineFile) {
  modalkit::host::ResolvedPipeline p;
  p.file = "/data/pipelines/p.json";
  p.base_dir = "/data/pipelines";
  p.doc = {{"artifacts", {{"word_vectors", "../runs/wv/vectors.pt"}, {"abs", "/opt/lm.pt"}}}};
  modalkit::host::HostContext ctx(spdlog::default_logger(), 7, torch::kCPU, "/runs/x",
                                  modalkit::host::pipeline_artifacts(p));
  EXPECT_EQ(ctx.artifact_path("word_vectors"), fs::path("/data/pipelines/../runs/wv/vectors.pt"));
  EXPECT_EQ(ctx.artifact_path("abs"), fs::path("/opt/lm.pt"));
  EXPECT_EQ(error_of([&] { ctx.artifact_path("lm"); }),
            "artifact \"lm\" is not declared in the pipeline's /artifacts (declared: abs, word_vectors)");
  EXPECT_EQ(ctx.seed(), 7u);
  EXPECT_EQ(ctx.find_component("image"), nullptr);
}
