// Data sets, the loader's thread pool, targets and metrics, against hand-computed values.
#include <unistd.h>

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

TEST(Loader, BatchesNameSamplesByTheirRowInTheSplit) {
  DatasetDir d;
  auto file = d.write_dataset(3, "{\"x\": 1, \"y\": \"a\"}\n{\"x\": 2, \"y\": \"b\"}\n{\"x\": 3, \"y\": \"c\"}\n");
  auto ds = modalkit::host::Dataset::open(file);
  std::map<std::string, TaskSpec> tasks{{"label", {"label", TaskType::kMulticlass, "y", {"a", "b", "c"}, 3, {"accuracy"}}}};
  // A label subset keeps rows 2 and 0 of the split, in that order.
  auto f = modalkit::host::SplitFeatures::build(ds, "train", {}, tasks, 1, false, {2, 0});
  ASSERT_EQ(f.size(), 2);
  modalkit::Batch b = f.batch({1, 0}, {});
  EXPECT_EQ(std::vector<int64_t>(b.index.data_ptr<int64_t>(), b.index.data_ptr<int64_t>() + 2),
            (std::vector<int64_t>{0, 2}));
  const at::Tensor y = b.targets.at("label");
  EXPECT_EQ(y[0].item<int64_t>(), 0);  // row 0 is "a"
  EXPECT_EQ(y[1].item<int64_t>(), 2);  // row 2 is "c"
}

TEST(Loader, EmptySplitIsADataError) {
  DatasetDir d;
  auto file = d.write_dataset(0, "");
  auto ds = modalkit::host::Dataset::open(file);
  EXPECT_EQ(error_of([&] { modalkit::host::SplitFeatures::build(ds, "train", {}, {}, 1, true); }),
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
  EXPECT_NE(error_of([&] { modalkit::host::compute_metrics(wrong, torch::zeros({3}), torch::zeros({3})); })
                .find("needs a classification task"),
            std::string::npos);
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
