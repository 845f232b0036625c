// The SDK's own behaviour: config access, batches, pooling and presence, task heads, guards.
#include <unistd.h>

#include <cmath>
#include <fstream>

#include <gtest/gtest.h>
#include <torch/torch.h>

#include "error_of.hpp"
#include "modalkit/sdk.hpp"

using modalkit::Config;
using modalkit::ConfigError;
using modalkit::testing::error_of;

TEST(Config, TypedAccessAndPointersInErrors) {
  Config c(nlohmann::json{{"n", 3}, {"lr", 0.5}, {"name", "x"}, {"flag", true}, {"sub", {{"k", 1}}}},
           "/modalities/image/config");
  EXPECT_EQ(c.get<int64_t>("n"), 3);
  EXPECT_DOUBLE_EQ(c.get<double>("lr"), 0.5);
  EXPECT_DOUBLE_EQ(c.get<double>("n"), 3.0);  // an integer is a number
  EXPECT_EQ(c.get<std::string>("name"), "x");
  EXPECT_TRUE(c.get<bool>("flag"));
  EXPECT_EQ(c.get_or<int64_t>("absent", 7), 7);
  EXPECT_EQ(c.at("sub").get<int64_t>("k"), 1);
  EXPECT_EQ(c.at("sub").pointer(), "/modalities/image/config/sub");
  EXPECT_EQ(error_of([&] { c.get<int64_t>("name"); }),
            "/modalities/image/config/name: expected integer, found string \"x\"");
  EXPECT_EQ(error_of([&] { c.get<int64_t>("lr"); }),
            "/modalities/image/config/lr: expected integer, found number 0.5");
  EXPECT_EQ(error_of([&] { c.get<std::string>("missing"); }),
            "/modalities/image/config/missing: missing required value");
  EXPECT_EQ(error_of([&] { c.get_or<bool>("n", false); }),
            "/modalities/image/config/n: expected boolean, found number 3");
  EXPECT_THROW(Config(nlohmann::json::array(), "/x"), ConfigError);
}

TEST(Config, EscapesKeysInPointers) {
  Config c(nlohmann::json::object(), "/a");
  EXPECT_EQ(error_of([&] { c.get<int>("b/c~d"); }), "/a/b~1c~0d: missing required value");
}

TEST(Batch, SizeAndMoveKeepEverything) {
  modalkit::Batch b;
  b.inputs["image"] = {torch::rand({4, 1, 2, 2}), {}, torch::tensor({true, false, true, true})};
  b.targets["label"] = torch::tensor({0, 1, 2, 3});
  b.task_id = 3;
  b.index = torch::arange(4);
  EXPECT_EQ(b.size(), 4);
  modalkit::Batch c = b.to(torch::kCPU);
  EXPECT_EQ(c.task_id, 3);
  EXPECT_TRUE(c.inputs.at("image").data.equal(b.inputs.at("image").data));
  EXPECT_FALSE(c.inputs.at("image").mask.defined());
  EXPECT_TRUE(c.inputs.at("image").present.equal(b.inputs.at("image").present));
  EXPECT_TRUE(c.has("image"));
  EXPECT_FALSE(c.has("audio"));
}

TEST(Layers, MaskedMeanPoolMatchesManualMean) {
  torch::manual_seed(0);
  auto x = torch::randn({2, 3, 4});
  auto mask = torch::tensor({{true, false, true}, {false, false, false}});
  auto pooled = modalkit::masked_mean_pool({x, mask});
  auto expected0 = (x[0][0] + x[0][2]) / 2;
  EXPECT_TRUE(torch::allclose(pooled[0], expected0));
  EXPECT_TRUE(torch::equal(pooled[1], torch::zeros({4})));  // nothing real: zeros, by the mask
}

TEST(Layers, PresenceClearsWholeRows) {
  auto mask = torch::ones({3, 2}, torch::kBool);
  auto out = modalkit::apply_presence(mask, torch::tensor({true, false, true}));
  EXPECT_EQ(out.sum().item<int64_t>(), 4);
  EXPECT_FALSE(out[1].any().item<bool>());
  EXPECT_TRUE(modalkit::apply_presence(mask, torch::Tensor()).equal(mask));
}

TEST(Layers, ProjectionIsIdentityWhenWidthsAgree) {
  modalkit::Projection same(modalkit::ProjectionOptions(8, 8));
  EXPECT_EQ(same->parameters().size(), 0u);
  auto x = torch::randn({2, 8});
  EXPECT_TRUE(same->forward(x).equal(x));
  modalkit::Projection wider(modalkit::ProjectionOptions(8, 16));
  EXPECT_EQ(wider->forward(x).sizes(), (std::vector<int64_t>{2, 16}));
}

TEST(TaskHead, MulticlassLossIsCrossEntropyOfPooledLinear) {
  torch::manual_seed(1);
  modalkit::TaskSpec spec{"label", modalkit::TaskType::kMulticlass, "label", {"a", "b", "c"}, 3, {"accuracy"}};
  auto head = modalkit::make_task_head(spec, 4);
  auto x = torch::randn({2, 5, 4});
  auto mask = torch::ones({2, 5}, torch::kBool);
  auto logits = head->forward({x, mask});
  ASSERT_EQ(logits.sizes(), (std::vector<int64_t>{2, 3}));
  // Independent computation: the head's linear layer applied to the plain mean.
  auto params = head->named_parameters();
  auto manual = torch::matmul(x.mean(1), params["linear.weight"].t()) + params["linear.bias"];
  EXPECT_TRUE(torch::allclose(logits, manual, 1e-5, 1e-6));
  auto targets = torch::tensor({2, 0});
  auto logp = torch::log_softmax(manual, 1);
  auto expected = -(logp[0][2] + logp[1][0]) / 2;
  EXPECT_NEAR(head->loss(logits, targets).item<double>(), expected.item<double>(), 1e-5);
}

TEST(TaskHead, RowsWithoutALabelAddNothingToTheLoss) {
  torch::manual_seed(2);
  // Multiclass: -1 marks a row without a label; the loss is cross-entropy over the others alone.
  modalkit::TaskSpec spec{"label", modalkit::TaskType::kMulticlass, "label", {"a", "b", "c"}, 3, {"accuracy"}};
  auto head = modalkit::make_task_head(spec, 4);
  auto logits = torch::randn({4, 3}, torch::requires_grad());
  auto logp = torch::log_softmax(logits, 1);
  auto expected = -(logp[1][2] + logp[3][0]) / 2;
  auto loss = head->loss(logits, torch::tensor({-1, 2, -1, 0}));
  EXPECT_NEAR(loss.item<double>(), expected.item<double>(), 1e-6);
  loss.backward();
  EXPECT_EQ(logits.grad()[0].abs().sum().item<double>(), 0.0);  // no gradient through an unlabelled row
  EXPECT_GT(logits.grad()[1].abs().sum().item<double>(), 0.0);
  // No labelled row: zero, and backward still works.
  auto none = head->loss(logits, torch::tensor({-1, -1, -1, -1}));
  EXPECT_EQ(none.item<double>(), 0.0);
  EXPECT_NO_THROW(none.backward());
  // Regression and multilabel: NaN marks a row without a label.
  modalkit::TaskSpec reg{"t", modalkit::TaskType::kRegression, "t", {}, 1, {"mae"}};
  auto out = torch::tensor({1.0f, 2.0f, 3.0f});
  auto nan = std::nan("");
  EXPECT_NEAR(modalkit::make_task_head(reg, 4)->loss(out, torch::tensor({nan, 4.0, 3.5})).item<double>(), (4.0 + 0.25) / 2, 1e-6);
  modalkit::TaskSpec multi{"tags", modalkit::TaskType::kMultilabel, "tags", {"x", "y"}, 2, {}};
  auto ml_out = torch::randn({2, 2});
  auto ml_t = torch::tensor({nan, nan, 1.0, 0.0}).view({2, 2});
  auto ml_expected = torch::binary_cross_entropy_with_logits(ml_out[1], torch::tensor({1.0f, 0.0f}));
  EXPECT_NEAR(modalkit::make_task_head(multi, 4)->loss(ml_out, ml_t).item<double>(), ml_expected.item<double>(), 1e-6);
}

TEST(TaskHead, BinaryAndRegressionShapes) {
  modalkit::TaskSpec bin{"spam", modalkit::TaskType::kBinary, "y", {"ham", "spam"}, 1, {}};
  auto head = modalkit::make_task_head(bin, 4);
  auto out = head->forward({torch::randn({3, 1, 4}), torch::ones({3, 1}, torch::kBool)});
  EXPECT_EQ(out.sizes(), (std::vector<int64_t>{3}));
  auto t = torch::tensor({0.0, 1.0, 1.0});
  auto expected = torch::binary_cross_entropy_with_logits(out, t.to(torch::kFloat));
  EXPECT_NEAR(head->loss(out, t).item<double>(), expected.item<double>(), 1e-6);
  modalkit::TaskSpec gen{"caption", modalkit::TaskType::kGeneration, "text", {}, 1, {}};
  EXPECT_THROW(modalkit::make_task_head(gen, 4), modalkit::Error);
  EXPECT_EQ(modalkit::parse_task_type("regression"), modalkit::TaskType::kRegression);
  EXPECT_THROW(modalkit::parse_task_type("ranking"), modalkit::Error);
}

TEST(Guard, NamesThePluginAndKeepsTheInnermostName) {
  EXPECT_EQ(error_of([] { modalkit::guard("image", [] { throw std::runtime_error("bad pixel"); }); }),
            "plugin image: bad pixel");
  EXPECT_EQ(error_of([] {
              modalkit::guard("supervised", [] {
                modalkit::guard("image", [] { throw std::runtime_error("bad pixel"); });
              });
            }),
            "plugin image: bad pixel");
  // LibTorch errors lose their C++ backtrace on the way.
  std::string msg = error_of([] { modalkit::guard("concat", [] { TORCH_CHECK(false, "shapes differ"); }); });
  EXPECT_EQ(msg, "plugin concat: shapes differ");
  EXPECT_EQ(modalkit::guard("x", [] { return 5; }), 5);
}

namespace {
struct BadEncoder : modalkit::Encoder {
  modalkit::Sequence forward(const modalkit::ModalityInput& in) override {
    return {in.data, torch::ones({in.data.size(0)}, torch::kBool)};  // mask of the wrong rank
  }
};
struct GoodEncoder : modalkit::Encoder {
  modalkit::Sequence forward(const modalkit::ModalityInput& in) override {
    return {in.data, torch::ones({in.data.size(0), in.data.size(1)}, torch::kBool)};
  }
};
struct FixedModality : modalkit::ModalityPlugin {
  modalkit::RawValue decode(const modalkit::FieldRef&) const override { return {}; }
  at::Tensor featurize(const modalkit::RawValue& r) const override { return r.tensor; }
  std::shared_ptr<modalkit::Encoder> make_encoder() override { return std::make_shared<GoodEncoder>(); }
};
}  // namespace

TEST(EncoderRef, ChecksShapesAndAppliesPresence) {
  modalkit::ModalityInput in{torch::randn({2, 3, 4}), {}, torch::tensor({true, false})};
  modalkit::EncoderRef bad(std::make_shared<BadEncoder>(), "audio");
  EXPECT_NE(error_of([&] { bad(in); }).find("plugin audio: encoder must return x [B,T,D] and mask [B,T]"),
            std::string::npos);
  modalkit::EncoderRef good(std::make_shared<GoodEncoder>(), "audio");
  auto seq = good(in);
  EXPECT_TRUE(seq.mask[0].all().item<bool>());
  EXPECT_FALSE(seq.mask[1].any().item<bool>());
}

TEST(ModalityPlugin, DefaultCollateStacksOrExplains) {
  FixedModality m;
  auto batch = m.collate({torch::zeros({2, 2}), torch::ones({2, 2})});
  EXPECT_EQ(batch.data.sizes(), (std::vector<int64_t>{2, 2, 2}));
  EXPECT_NE(error_of([&] { m.collate({torch::zeros({2}), torch::zeros({3})}); })
                .find("a variable-length modality must override collate()"),
            std::string::npos);
  std::mt19937_64 rng(1);
  modalkit::RawValue raw{torch::ones({2}), "", 0};
  EXPECT_TRUE(m.perturb(raw, 0.5, rng).tensor.equal(raw.tensor));  // default: unchanged
  EXPECT_TRUE(m.fitted_state().is_null());
}

TEST(TemporalConv, MatchesConv1dArithmetic) {
  torch::manual_seed(0);
  modalkit::TemporalConv conv(modalkit::TemporalConvOptions(3, 5, 3).stride(2).padding(1));
  auto x = torch::randn({4, 3, 11});
  auto params = conv->named_parameters();
  auto w = params["conv.weight"].squeeze(2), b = params["conv.bias"];
  // The same weights through conv1d, in double: an independent computation.
  auto expected = torch::conv1d(x.to(torch::kDouble), w.to(torch::kDouble), b.to(torch::kDouble), 2, 1);
  auto y = conv->forward(x);
  ASSERT_EQ(y.sizes(), (std::vector<int64_t>{4, 5, 6}));
  EXPECT_TRUE(y.to(torch::kDouble).allclose(expected, 1e-5, 1e-5));
}

TEST(TemporalConv, TrainingRepeatsBitForBitAtSmallBatches) {
  // The failure this layer avoids: Conv1d training at batch 8 drifted or went NaN between runs.
  auto train = [] {
    torch::manual_seed(1);
    modalkit::TemporalConv c1(modalkit::TemporalConvOptions(1, 16, 5).padding(2));
    modalkit::TemporalConv c2(modalkit::TemporalConvOptions(16, 16, 5).padding(2));
    std::vector<torch::Tensor> params = c1->parameters();
    for (auto& p : c2->parameters()) params.push_back(p);
    torch::optim::Adam opt(params, 1e-3);
    auto x = torch::randn({64, 1, 32});
    double total = 0;
    for (int64_t s = 0; s < 64; s += 8) {
      opt.zero_grad();
      auto loss = c2->forward(torch::gelu(c1->forward(x.narrow(0, s, 8)))).pow(2).mean();
      loss.backward();
      opt.step();
      total += loss.item<double>();
    }
    return total;
  };
  const double first = train();
  EXPECT_TRUE(std::isfinite(first));
  for (int i = 0; i < 3; ++i) EXPECT_EQ(train(), first);
}

namespace {

/// Writes `text` to a scratch file named after the test and returns its path.
std::filesystem::path scratch_file(const std::string& name, const std::string& text) {
  const auto path = std::filesystem::current_path() / ("wv-" + name + "-" + std::to_string(::getpid()) + ".txt");
  std::ofstream(path) << text;
  return path;
}

}  // namespace

TEST(WordVectors, ReadsWord2vecTextFormat) {
  const auto file = scratch_file("ok", "3 2\nshirt 0.5 -1\nt-shirt 2 3e-1\n\nboot -0.25 4\n");
  const modalkit::WordVectors wv = modalkit::read_word_vectors(file);
  EXPECT_EQ(wv.words, (std::vector<std::string>{"shirt", "t-shirt", "boot"}));
  EXPECT_TRUE(wv.vectors.equal(torch::tensor({0.5f, -1.f, 2.f, 0.3f, -0.25f, 4.f}).view({3, 2})));
  EXPECT_EQ(wv.find("t-shirt"), 1);
  EXPECT_EQ(wv.find("sandal"), -1);
  EXPECT_TRUE(wv.at("boot").equal(torch::tensor({-0.25f, 4.f})));
  EXPECT_NE(error_of([&] { wv.at("sandal"); }).find("no vector for \"sandal\" (3 words)"), std::string::npos);
  std::filesystem::remove(file);
}

TEST(WordVectors, MalformedFilesAreNamedWithTheirLine) {
  const std::vector<std::pair<std::string, std::string>> cases = {
      {"header", "two 2\na 1 2\n"},
      {"values", "2 2\na 1 2\nb 1\n"},
      {"nan", "1 2\na 1 nan\n"},
      {"repeat", "2 1\na 1\na 2\n"},
      {"short", "3 1\na 1\nb 2\n"},
      {"long", "1 1\na 1\nb 2\n"},
  };
  const std::vector<std::string> expected = {
      ":1: expected the word2vec header \"WORDS DIMENSIONS\", found \"two 2\"",
      ":3: \"b\" has 1 values, the header says 2",
      ":2: value 2 is not a finite number",
      ":3: the word \"a\" appears twice",
      ": 2 words, the header says 3",
      ":3: more words than the header's 1",
  };
  for (size_t i = 0; i < cases.size(); ++i) {
    const auto file = scratch_file(cases[i].first, cases[i].second);
    const std::string message = error_of([&] { modalkit::read_word_vectors(file); });
    EXPECT_EQ(message, file.string() + expected[i]) << cases[i].first;
    std::filesystem::remove(file);
  }
  EXPECT_NE(error_of([] { modalkit::read_word_vectors("/nonexistent/wv.txt"); }).find("cannot read"),
            std::string::npos);
}
