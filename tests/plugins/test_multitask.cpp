// The multitask strategy (HighMMT), loaded through the host like any plugin: a batch holds one
// task's targets and modalities, the loss is that task's alone, predictions cover every task;
// both backbones learn two synthetic tasks that see different modalities, and the parameters a
// transfer copies (modality embeddings, backbone) are the ones the docs name.
#include <unistd.h>

#include <set>

#include <ATen/ATen.h>
#include <gtest/gtest.h>
#include <torch/optim/adam.h>

#include "../common/error_of.hpp"
#include "strategy_fixture.hpp"
#include "modalkit/strategy.hpp"

namespace {

using nlohmann::json;
constexpr int64_t kD = 16;

class MultitaskBase : public ::testing::Test {
 protected:
  std::unique_ptr<modalkit::host::PluginRegistry> registry;
  LoggingContext context;

  void SetUp() override {
    registry = std::make_unique<modalkit::host::PluginRegistry>(
        std::vector<std::filesystem::path>{std::getenv("MODALKIT_PLUGIN_BUILD_DIR")});
    torch::manual_seed(5);
  }

  modalkit::CreateArgs args(json config) {
    registry->find("multitask")->config_validator->fill_defaults(config);
    modalkit::CreateArgs a;
    a.config = modalkit::Config(config, "/transfer/config");
    a.context = &context;
    a.instance = "transfer";
    a.d_model = kD;
    a.modalities = {"a", "b"};
    return a;
  }

  /// The strategy over linear encoders of "a" ([B, 4]) and "b" ([B, 3]), without fusion, with
  /// heads "left" (3 classes) and "right" (2 classes).
  std::shared_ptr<modalkit::TransferStrategy> make(json config) {
    auto model = registry->create<modalkit::TransferStrategy>("multitask", MODALKIT_KIND_TRANSFER, args(std::move(config)));
    modalkit::ModelParts parts;
    parts.d_model = kD;
    parts.encoders.emplace("a", modalkit::EncoderRef(std::make_shared<LinearEncoder>(4, kD), "test"));
    parts.encoders.emplace("b", modalkit::EncoderRef(std::make_shared<LinearEncoder>(3, kD), "test"));
    for (const auto& [task, k] : std::map<std::string, int64_t>{{"left", 3}, {"right", 2}}) {
      modalkit::TaskSpec spec;
      spec.name = task;
      spec.target = "label";
      for (int64_t c = 0; c < k; ++c) spec.labels.push_back("c" + std::to_string(c));
      spec.num_outputs = k;
      spec.metrics = {"accuracy"};
      parts.heads.emplace(task, modalkit::make_task_head(spec, kD));
      parts.tasks.emplace(task, spec);
    }
    model->build(parts);
    return model;
  }

  /// One task's batch: its modality only, its targets only.
  static modalkit::Batch batch_of(const std::string& task, const std::string& modality, const at::Tensor& x, const at::Tensor& y,
                                  int64_t id) {
    modalkit::Batch b;
    b.inputs.emplace(modality, modalkit::ModalityInput{x, {}, at::ones({x.size(0)}, at::kBool)});
    b.targets.emplace(task, y);
    b.index = at::arange(x.size(0), at::kLong);
    b.task_id = id;
    return b;
  }
};

class Multitask : public MultitaskBase, public ::testing::WithParamInterface<std::string> {};
class MultitaskApi : public MultitaskBase {};

TEST_P(Multitask, EachBatchTrainsItsOwnTaskAndBothTasksAreLearned) {
  auto model = make({{"backbone", GetParam()}, {"latents", 4}, {"layers", 1}, {"heads", 2}, {"dropout", 0.0}});
  // left: which third of a's first coordinate; right: the sign of b's second coordinate.
  auto left = [](const at::Tensor& a) { return (a.select(1, 0) > -0.43).to(at::kLong) + (a.select(1, 0) > 0.43).to(at::kLong); };
  auto right = [](const at::Tensor& b) { return (b.select(1, 1) > 0).to(at::kLong); };
  const at::Tensor a = at::randn({512, 4}), b = at::randn({512, 3});
  const auto la = batch_of("left", "a", a.slice(0, 0, 64), left(a.slice(0, 0, 64)), 0);
  const auto terms = model->loss(la);
  ASSERT_EQ(terms.size(), 1u);  // only the batch's task
  EXPECT_EQ(terms.begin()->first, "task/left");
  const auto p = model->predict(la);  // every task, from the one modality present
  EXPECT_EQ(p.at("left").sizes(), (std::vector<int64_t>{64, 3}));
  EXPECT_EQ(p.at("right").sizes(), (std::vector<int64_t>{64, 2}));
  std::vector<at::Tensor> params = model->parameters();
  torch::optim::Adam adam(params, torch::optim::AdamOptions(0.01));
  model->train();
  for (int epoch = 0; epoch < 15; ++epoch) {
    for (int64_t s = 0; s < 512; s += 64) {  // the tasks in turn
      for (const auto& batch : {batch_of("left", "a", a.slice(0, s, s + 64), left(a.slice(0, s, s + 64)), 0),
                                batch_of("right", "b", b.slice(0, s, s + 64), right(b.slice(0, s, s + 64)), 1)}) {
        adam.zero_grad();
        model->loss(batch).begin()->second.backward();
        adam.step();
      }
    }
  }
  model->eval();
  at::NoGradGuard no_grad;
  const at::Tensor ta = at::randn({400, 4}), tb = at::randn({400, 3});
  const double acc_left = model->predict(batch_of("left", "a", ta, left(ta), 0)).at("left").argmax(1).eq(left(ta)).to(at::kFloat).mean().item<double>();
  const double acc_right = model->predict(batch_of("right", "b", tb, right(tb), 1)).at("right").argmax(1).eq(right(tb)).to(at::kFloat).mean().item<double>();
  EXPECT_GT(acc_left, 0.85) << GetParam();   // chance 1/3
  EXPECT_GT(acc_right, 0.85) << GetParam();  // chance 1/2
}

INSTANTIATE_TEST_SUITE_P(Backbones, Multitask, ::testing::Values("perceiver", "transformer"));

TEST_F(MultitaskApi, TransferredNamesAreTheDocumentedOnesAndMistakesAreNamed) {
  auto model = make({{"backbone", "perceiver"}, {"latents", 4}, {"layers", 1}, {"heads", 2}});
  std::set<std::string> names;
  for (const auto& item : model->named_parameters(/*recurse=*/true)) names.insert(item.key());
  EXPECT_TRUE(names.count("modality_embeddings.a") && names.count("modality_embeddings.b"));
  EXPECT_TRUE(names.count("backbone.latents"));
  EXPECT_TRUE(names.count("heads.left.linear.weight"));
  for (const auto& n : names) {
    EXPECT_TRUE(n.rfind("modality_embeddings.", 0) == 0 || n.rfind("backbone.", 0) == 0 || n.rfind("encoders.", 0) == 0 ||
                n.rfind("heads.", 0) == 0)
        << n;  // no fusion: the strategy's manifest says it reads none
  }
  // A batch with none of the tasks' targets, or none of the modalities, says what it lacks.
  modalkit::Batch none = batch_of("other", "a", at::randn({2, 4}), at::zeros({2}, at::kLong), 0);
  EXPECT_NE(modalkit::testing::error_of([&] { model->loss(none); }).find("the targets of none of the tasks (left, right)"),
            std::string::npos);
  modalkit::Batch empty;
  empty.targets.emplace("left", at::zeros({2}, at::kLong));
  EXPECT_NE(modalkit::testing::error_of([&] { model->loss(empty); }).find("none of the modalities it reads (a, b)"),
            std::string::npos);
  // heads must divide d_model: said at the config's pointer when the plugin is made.
  EXPECT_NE(modalkit::testing::error_of([&] { make({{"heads", 3}}); }).find("/transfer/config/heads"), std::string::npos);
}

}  // namespace
