// The co-learning strategies (translation, cyclic_translation, vokenization, coordination),
// loaded through the host like any plugin and trained here on small synthetic problems whose
// answer is known: translation beats predicting the mean target, the cycle recovers the source,
// a frozen target encoder stays unchanged, k-means and NMI against hand computations, vokens
// that match well-separated clusters, and zero-shot classes recognised through a word space
// and the novelty detector fitted on seen-class validation data only.
#include <unistd.h>

#include <cmath>
#include <fstream>
#include <random>

#include <ATen/ATen.h>
#include <gtest/gtest.h>
#include <torch/nn/modules/linear.h>
#include <torch/optim/adam.h>

#include "../../plugins/transfer/common/colearning.hpp"
#include "strategy_fixture.hpp"
#include "modalkit/fusion.hpp"
#include "modalkit/strategy.hpp"

namespace {

using nlohmann::json;
namespace cl = modalkit::colearning;

constexpr int64_t kD = 16;  // d_model

/// Cuts whole-split tensors into batches of 64.
std::vector<modalkit::Batch> batches_of(const std::map<std::string, at::Tensor>& inputs, const at::Tensor& y) {
  std::vector<modalkit::Batch> out;
  for (int64_t s = 0; s < y.size(0); s += 64) {
    const int64_t e = std::min<int64_t>(y.size(0), s + 64);
    std::map<std::string, at::Tensor> part;
    for (const auto& [m, x] : inputs) part.emplace(m, x.slice(0, s, e));
    out.push_back(make_batch(part, y.slice(0, s, e), s));
  }
  return out;
}

class CoLearning : public ::testing::Test {
 protected:
  std::unique_ptr<modalkit::host::PluginRegistry> registry;
  LoggingContext context;
  std::filesystem::path dir;
  std::map<std::string, std::shared_ptr<LinearEncoder>> encoders;

  void SetUp() override {
    registry = std::make_unique<modalkit::host::PluginRegistry>(
        std::vector<std::filesystem::path>{std::getenv("MODALKIT_PLUGIN_BUILD_DIR")});
    dir = std::filesystem::current_path() / ("tmp-colearning-" + std::to_string(::getpid()));
    std::filesystem::remove_all(dir);
    std::filesystem::create_directories(dir);
    context.run = dir;
    torch::manual_seed(3);
  }
  void TearDown() override { std::filesystem::remove_all(dir); }

  modalkit::CreateArgs args(const std::string& plugin, json config, const std::vector<std::string>& modalities) {
    registry->find(plugin)->config_validator->fill_defaults(config);
    modalkit::CreateArgs a;
    a.config = modalkit::Config(config, "/transfer/config");
    a.context = &context;
    a.instance = "transfer";
    a.d_model = kD;
    a.modalities = modalities;
    for (const auto& m : modalities) a.input_widths[m] = kD;
    return a;
  }

  /// `plugin` with `config`, built over linear encoders of modalities `widths` (name → input
  /// width), concat fusion and a head for task "label" over `labels`.
  std::shared_ptr<modalkit::TransferStrategy> make(const std::string& plugin, const json& config,
                                                   const std::map<std::string, int64_t>& widths,
                                                   const std::vector<std::string>& labels) {
    std::vector<std::string> names;
    for (const auto& [m, w] : widths) names.push_back(m);
    auto model = registry->create<modalkit::TransferStrategy>(plugin, MODALKIT_KIND_TRANSFER, args(plugin, config, names));
    modalkit::ModelParts parts;
    parts.d_model = kD;
    for (const auto& [m, w] : widths) {
      encoders[m] = std::make_shared<LinearEncoder>(w);
      parts.encoders.emplace(m, modalkit::EncoderRef(encoders[m], "test"));
    }
    auto concat = registry->create<modalkit::FusionOperator>("concat", MODALKIT_KIND_FUSION, args("concat", json::object(), names));
    parts.fusion = modalkit::FusionRef(concat, "concat");
    modalkit::TaskSpec spec;
    spec.name = "label";
    spec.target = "label";
    spec.labels = labels;
    spec.num_outputs = static_cast<int64_t>(labels.size());
    spec.metrics = {"accuracy"};
    parts.heads.emplace("label", modalkit::make_task_head(spec, kD));
    model->build(parts);
    return model;
  }

  /// Trains `model` as the host does (frozen groups get no gradient) for `epochs` over `train`.
  static void fit(modalkit::TransferStrategy& model, const std::vector<modalkit::Batch>& train, int epochs) {
    std::vector<at::Tensor> params;
    for (auto& g : model.parameter_groups()) {
      for (auto& p : g.parameters) {
        p.set_requires_grad(!g.frozen);
        if (!g.frozen) params.push_back(p);
      }
    }
    torch::optim::Adam adam(params, torch::optim::AdamOptions(0.01));
    model.train();
    for (int e = 0; e < epochs; ++e) {
      for (const auto& b : train) {
        adam.zero_grad();
        at::Tensor total;
        for (const auto& [name, t] : model.loss(b)) total = total.defined() ? total + t : t;
        total.backward();
        adam.step();
      }
    }
    model.eval();
  }

  /// The mean of loss term `term` over `batches` (no gradient).
  static double mean_term(modalkit::TransferStrategy& model, const std::vector<modalkit::Batch>& batches, const std::string& term) {
    at::NoGradGuard no_grad;
    double sum = 0, n = 0;
    for (const auto& b : batches) {
      sum += model.loss(b).at(term).item<double>() * static_cast<double>(b.size());
      n += static_cast<double>(b.size());
    }
    return sum / n;
  }
};

/// Mean over rows and features of the squared standardised values of `x`, standardised with the
/// mean and population std of `train`: the MSE of always predicting the train mean.
double mean_target_mse(const at::Tensor& train, const at::Tensor& x) {
  const at::Tensor t = train.to(at::kDouble), v = x.to(at::kDouble);
  const at::Tensor mean = t.mean(0), sd = t.std(0, /*unbiased=*/false);
  return ((v - mean) / sd).pow(2).mean().item<double>();
}

/// A source `a` [N, 4] and a nonlinear, shifted and scaled target `b` [N, 8] with small noise;
/// label = sign of a's first coordinate.
std::tuple<at::Tensor, at::Tensor, at::Tensor> translation_data(int64_t n, const at::Tensor& mix) {
  const at::Tensor a = at::randn({n, 4});
  const at::Tensor b = at::tanh(a.matmul(mix)) * 3 + 5 + 0.05 * at::randn({n, 8});
  return {a, b, (a.select(1, 0) > 0).to(at::kLong)};
}

TEST_F(CoLearning, TranslationBeatsPredictingTheMeanTarget) {
  const at::Tensor mix = at::randn({4, 8});
  const auto [a, b, y] = translation_data(1024, mix);
  const auto [ta, tb, ty] = translation_data(256, mix);
  auto model = make("translation", {{"source", "a"}, {"target", "b"}, {"translation_weight", 0.5}}, {{"a", 4}, {"b", 8}}, {"neg", "pos"});
  MemorySource source;
  source.splits["train"] = batches_of({{"a", a}, {"b", b}}, y);
  model->prepare(source);
  const auto test = batches_of({{"a", ta}, {"b", tb}}, ty);
  fit(*model, source.splits["train"], 40);
  // The term is weighted: divide by the weight for the plain MSE on standardised targets.
  const double translation = mean_term(*model, test, "translation") / 0.5;
  const double baseline = mean_target_mse(b, tb);
  EXPECT_NEAR(baseline, 1.0, 0.2);
  EXPECT_LT(translation, 0.25 * baseline) << "translation MSE " << translation << " vs mean target " << baseline;
  // Only the source is needed at test time, and the task is learned.
  EXPECT_EQ(model->modalities_at_test(), std::vector<std::string>{"a"});
  modalkit::Batch only_a = test[0];
  only_a.inputs.erase("b");
  const at::Tensor pred = model->predict(only_a).at("label").argmax(1);
  EXPECT_GT(pred.eq(only_a.targets.at("label")).to(at::kDouble).mean().item<double>(), 0.8);
  // A batch without the target gets task terms only.
  EXPECT_EQ(model->loss(only_a).count("translation"), 0u);
}

TEST_F(CoLearning, UnlabelledRowsTrainTheTranslationButNeverTheLabelLoss) {
  // data.unlabelled = auxiliary: rows outside the label subset come with target -1.
  const at::Tensor mix = at::randn({4, 8});
  auto [a, b, y] = translation_data(64, mix);
  auto model = make("translation", {{"source", "a"}, {"target", "b"}}, {{"a", 4}, {"b", 8}}, {"neg", "pos"});
  MemorySource source;
  at::Tensor partial = y.clone();
  partial.index_put_({at::arange(0, 64, 2)}, -1);  // every other row unlabelled
  source.splits["train"] = batches_of({{"a", a}, {"b", b}}, partial);
  model->prepare(source);
  model->eval();  // no dropout: the terms are functions of the inputs alone
  at::NoGradGuard no_grad;
  const modalkit::Batch batch = source.splits["train"][0];
  const auto terms = model->loss(batch);
  // The label term is the cross-entropy over the labelled rows alone, computed independently.
  const at::Tensor labelled = at::arange(1, 64, 2);
  const at::Tensor logits = model->predict(batch).at("label").index_select(0, labelled);
  const double expected = at::cross_entropy_loss(logits, y.index_select(0, labelled)).item<double>();
  EXPECT_NEAR(terms.at("task/label").item<double>(), expected, 1e-6);
  // Changing an unlabelled row's source changes the translation term, never the label term.
  modalkit::Batch moved = batch;
  moved.inputs.at("a").data = batch.inputs.at("a").data.clone();
  moved.inputs.at("a").data[0] += 3;
  const auto after = model->loss(moved);
  EXPECT_EQ(after.at("task/label").item<double>(), terms.at("task/label").item<double>());
  EXPECT_NE(after.at("translation").item<double>(), terms.at("translation").item<double>());
  // A batch with no labelled row still trains the translation.
  modalkit::Batch unlabelled = batch;
  unlabelled.targets.at("label") = at::full({64}, -1, at::kLong);
  const auto only_aux = model->loss(unlabelled);
  EXPECT_EQ(only_aux.at("task/label").item<double>(), 0.0);
  EXPECT_GT(only_aux.at("translation").item<double>(), 0.0);
  // The manifests say which strategies learn from unlabelled rows (validate refuses the others).
  EXPECT_TRUE(registry->find("translation")->learns_from_unlabelled);
  EXPECT_TRUE(registry->find("cyclic_translation")->learns_from_unlabelled);
  EXPECT_TRUE(registry->find("vokenization")->learns_from_unlabelled);
  EXPECT_FALSE(registry->find("supervised")->learns_from_unlabelled);
  EXPECT_FALSE(registry->find("colearning_fusion")->learns_from_unlabelled);
}

TEST_F(CoLearning, CyclicTranslationRecoversTheSource) {
  const at::Tensor mix = at::randn({4, 8});
  const auto [a, b, y] = translation_data(1024, mix);
  const auto [ta, tb, ty] = translation_data(256, mix);
  auto model = make("cyclic_translation", {{"source", "a"}, {"target", "b"}}, {{"a", 4}, {"b", 8}}, {"neg", "pos"});
  MemorySource source;
  source.splits["train"] = batches_of({{"a", a}, {"b", b}}, y);
  model->prepare(source);
  const auto test = batches_of({{"a", ta}, {"b", tb}}, ty);
  const double cycle_before = mean_term(*model, test, "cycle") / 0.1;  // default weights 0.1
  fit(*model, source.splits["train"], 40);
  const double cycle = mean_term(*model, test, "cycle") / 0.1;
  const double translation = mean_term(*model, test, "translation") / 0.1;
  EXPECT_LT(translation, 0.5 * mean_target_mse(b, tb));
  EXPECT_LT(cycle, 0.5 * mean_target_mse(a, ta)) << "before training " << cycle_before;
  EXPECT_LT(cycle, 0.5 * cycle_before);
}

TEST_F(CoLearning, AFrozenEncoderTargetStaysFixedAndTheLayersSizedInPrepareSurviveASaveAndLoad) {
  const at::Tensor mix = at::randn({4, 8});
  const auto [a, b, y] = translation_data(256, mix);
  auto model = make("translation", {{"source", "a"}, {"target", "b"}, {"target_features", "encoder"}}, {{"a", 4}, {"b", 8}}, {"neg", "pos"});
  MemorySource source;
  source.splits["train"] = batches_of({{"a", a}, {"b", b}}, y);
  model->prepare(source);
  bool frozen_group = false;
  for (const auto& g : model->parameter_groups()) {
    if (g.frozen) {
      frozen_group = true;
      EXPECT_EQ(g.parameters.size(), encoders["b"]->parameters().size());
    }
  }
  EXPECT_TRUE(frozen_group);
  const at::Tensor before = encoders["b"]->parameters()[0].detach().clone();
  const at::Tensor source_before = encoders["a"]->parameters()[0].detach().clone();
  fit(*model, source.splits["train"], 3);
  EXPECT_TRUE(encoders["b"]->parameters()[0].detach().equal(before));
  EXPECT_FALSE(encoders["a"]->parameters()[0].detach().equal(source_before));

  // A fresh model (no prepare) loads the shapes prepare gave, as a resumed run or eval does.
  torch::serialize::OutputArchive out;
  model->save(out);
  out.save_to((dir / "model.pt").string());
  auto fresh = make("translation", {{"source", "a"}, {"target", "b"}, {"target_features", "encoder"}}, {{"a", 4}, {"b", 8}}, {"neg", "pos"});
  torch::serialize::InputArchive in;
  in.load_from((dir / "model.pt").string());
  fresh->load(in);
  const auto batch = source.splits["train"][0];
  at::NoGradGuard no_grad;
  EXPECT_TRUE(at::allclose(fresh->loss(batch).at("translation"), model->loss(batch).at("translation")));
}

TEST_F(CoLearning, ConfigMistakesNameTheirField) {
  try {
    make("cyclic_translation", {{"source", "a"}, {"target", "c"}}, {{"a", 4}, {"b", 8}}, {"x", "y"});
    ADD_FAILURE() << "no error";
  } catch (const std::exception& e) {
    EXPECT_NE(std::string(e.what()).find("/transfer/config/target"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("\"c\" is not one of the pipeline's modalities"), std::string::npos) << e.what();
  }
  // Raw features of a padded modality have no fixed width.
  auto model = make("translation", {{"source", "a"}, {"target", "b"}}, {{"a", 4}, {"b", 8}}, {"x", "y"});
  modalkit::Batch b = make_batch({{"a", at::randn({3, 4})}, {"b", at::randn({3, 5, 8})}}, at::zeros({3}, at::kLong), 0);
  b.inputs.at("b").mask = at::ones({3, 5}, at::kBool);
  b.inputs.at("b").mask[0][4] = false;
  MemorySource source;
  source.splits["train"] = {b};
  try {
    model->prepare(source);
    ADD_FAILURE() << "no error";
  } catch (const modalkit::Error& e) {
    EXPECT_NE(std::string(e.what()).find("padded (variable-length) features"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("\"pooled_raw\""), std::string::npos) << e.what();
  }
}

TEST(KMeans, FindsWellSeparatedClustersAndIsRepeatable) {
  torch::manual_seed(5);
  const at::Tensor centres = at::tensor({0.0, 0.0, 10.0, 0.0, 0.0, 10.0}).view({3, 2});
  const at::Tensor truth = at::arange(300, at::kLong) % 3;
  const at::Tensor x = centres.index_select(0, truth) + 0.3 * at::randn({300, 2}, at::kDouble);
  std::mt19937_64 r1(9), r2(9);
  const auto [c1, a1] = cl::kmeans(x, 3, 50, r1);
  const auto [c2, a2] = cl::kmeans(x, 3, 50, r2);
  EXPECT_TRUE(a1.equal(a2));
  EXPECT_DOUBLE_EQ(cl::normalized_mutual_information(a1, truth), 1.0);
  // Each found centroid sits on a true centre.
  for (int64_t k = 0; k < 3; ++k) {
    EXPECT_LT((centres - c1[k]).norm(2, 1).min().item<double>(), 0.2) << c1;
  }
  EXPECT_THROW(cl::kmeans(x.slice(0, 0, 2), 3, 5, r1), modalkit::Error);
}

TEST(Nmi, MatchesHandComputations) {
  // a = [0,0,1,1], b = [0,0,0,1]: H(a) = ln 2, H(b) = -(3/4 ln 3/4 + 1/4 ln 1/4),
  // I = 1/2 ln(4/3) + 1/4 ln(2/3) + 1/4 ln 2; NMI = 2I / (H(a) + H(b)) = 0.343711 (as scikit-learn computes it).
  const double ha = std::log(2.0), hb = -(0.75 * std::log(0.75) + 0.25 * std::log(0.25));
  const double mi = 0.5 * std::log(4.0 / 3.0) + 0.25 * std::log(2.0 / 3.0) + 0.25 * std::log(2.0);
  const double nmi = cl::normalized_mutual_information(at::tensor({0, 0, 1, 1}, at::kLong), at::tensor({0, 0, 0, 1}, at::kLong));
  EXPECT_NEAR(nmi, 2 * mi / (ha + hb), 1e-12);
  EXPECT_NEAR(nmi, 0.343711, 1e-6);
  // Renamed clusters: still 1. Independent balanced labelings: 0.
  EXPECT_DOUBLE_EQ(cl::normalized_mutual_information(at::tensor({0, 0, 1, 1, 2}, at::kLong), at::tensor({2, 2, 0, 0, 1}, at::kLong)), 1.0);
  EXPECT_NEAR(cl::normalized_mutual_information(at::tensor({0, 0, 1, 1}, at::kLong), at::tensor({0, 1, 0, 1}, at::kLong)), 0.0, 1e-12);
}

TEST_F(CoLearning, VokensAreTheSecondaryModalitysClusters) {
  // b has 3 well-separated clusters (= the labels); a sees the label only through noise.
  const int64_t n = 600;
  const at::Tensor y = at::arange(n, at::kLong) % 3;
  const at::Tensor b = at::one_hot(y, 3).to(at::kFloat) * 8 + 0.2 * at::randn({n, 3});
  const at::Tensor a = at::one_hot(y, 3).to(at::kFloat) + 1.0 * at::randn({n, 3});
  auto model = make("vokenization", {{"primary", "a"}, {"secondary", "b"}, {"features", "raw"}, {"vokens", 3}},
                    {{"a", 3}, {"b", 3}}, {"x", "y", "z"});
  MemorySource source;
  source.splits["train"] = batches_of({{"a", a}, {"b", b}}, y);
  model->prepare(source);
  const json report = json::parse(std::ifstream(dir / "vokens.json"));
  EXPECT_DOUBLE_EQ(report.at("nmi").get<double>(), 1.0);
  EXPECT_EQ(report.at("samples"), n);
  at::Tensor table;
  for (const auto& buf : model->named_buffers()) {
    if (buf.key() == "voken_of_row") table = buf.value();
  }
  ASSERT_EQ(table.size(0), n);
  EXPECT_DOUBLE_EQ(cl::normalized_mutual_information(table, y), 1.0);
  // Training needs only the primary; the voken term falls as the encoder learns the clusters.
  EXPECT_EQ(model->modalities_at_train(), std::vector<std::string>{"a"});
  std::vector<modalkit::Batch> primary_only = batches_of({{"a", a}}, y);
  model->train();  // the voken term is a training term: validation rows are another split's
  const double before = mean_term(*model, primary_only, "voken");
  fit(*model, primary_only, 20);
  EXPECT_EQ(model->loss(primary_only[0]).count("voken"), 0u);  // fit() left it in eval mode
  model->train();
  EXPECT_LT(mean_term(*model, primary_only, "voken"), 0.7 * before);
  // A row prepare never saw (beyond the table) adds no voken loss.
  modalkit::Batch unseen = primary_only[0];
  unseen.index = unseen.index + n;
  at::NoGradGuard no_grad;
  EXPECT_EQ(model->loss(unseen).at("voken").item<double>(), 0.0);
}

TEST_F(CoLearning, VokensOfUnlabelledRowsAreClusteredAndTheNmiReadsTheLabelledOnes) {
  const int64_t n = 300;
  const at::Tensor y = at::arange(n, at::kLong) % 3;
  const at::Tensor b = at::one_hot(y, 3).to(at::kFloat) * 8 + 0.2 * at::randn({n, 3});
  const at::Tensor a = at::randn({n, 3});
  at::Tensor partial = y.clone();
  partial.slice(0, 30) = -1;  // labels on the first 30 rows only
  auto model = make("vokenization", {{"primary", "a"}, {"secondary", "b"}, {"features", "raw"}, {"vokens", 3}},
                    {{"a", 3}, {"b", 3}}, {"x", "y", "z"});
  MemorySource source;
  source.splits["train"] = batches_of({{"a", a}, {"b", b}}, partial);
  model->prepare(source);
  const json report = json::parse(std::ifstream(dir / "vokens.json"));
  EXPECT_EQ(report.at("samples"), n);  // every row has a voken
  EXPECT_DOUBLE_EQ(report.at("nmi").get<double>(), 1.0);
}

/// Zero-shot fixture data: class vectors in a 3-d word space (the 4th class, "yellow", between
/// red and green, never seen in training); inputs are a fixed linear image of the class vector
/// plus noise, so a map learned on the seen classes carries over to the unseen one.
struct ZeroShotData {
  at::Tensor words;  // [4, 3]
  at::Tensor mix;    // [3, 6]
  std::pair<at::Tensor, at::Tensor> draw(int64_t n) const {
    const at::Tensor y = at::arange(n, at::kLong) % 4;
    return {words.index_select(0, y).matmul(mix) + 0.05 * at::randn({n, 6}), y};
  }
};

class Coordination : public CoLearning, public ::testing::WithParamInterface<std::string> {};

TEST_P(Coordination, RecognisesAnUnseenClassThroughTheWordSpace) {
  ZeroShotData data;
  data.words = at::tensor({1.0f, 0.0f, 0.0f, 0.0f, 1.0f, 0.0f, 0.0f, 0.0f, 1.0f, 0.7071f, 0.7071f, 0.0f}).view({4, 3});
  data.mix = at::randn({3, 6});
  {
    std::ofstream f(dir / "words.txt");
    f << "5 3\n";
    const char* names[] = {"red", "green", "blue", "yellow"};
    for (int k = 0; k < 4; ++k) f << names[k] << ' ' << data.words[k][0].item<float>() << ' ' << data.words[k][1].item<float>() << ' '
                                  << data.words[k][2].item<float>() << '\n';
    f << "unused 0.1 0.2 0.3\n";
  }
  context.artifacts["word_vectors"] = dir / "words.txt";
  auto model = make("coordination", {{"primary", "a"}, {"unseen", {"yellow"}}, {"objective", GetParam()}}, {{"a", 6}},
                    {"red", "green", "blue", "yellow"});
  auto [x, y] = data.draw(800);
  auto [vx, vy] = data.draw(200);
  auto [tx, ty] = data.draw(400);
  MemorySource source;
  source.splits["train"] = batches_of({{"a", x}}, y);
  source.splits["val"] = batches_of({{"a", vx}}, vy);
  model->prepare(source);
  // Samples of the unseen class add nothing to the training loss.
  {
    const at::Tensor yellow = (y == 3).nonzero().squeeze(1);
    const modalkit::Batch only_yellow = make_batch({{"a", x.index_select(0, yellow)}}, y.index_select(0, yellow), 0);
    model->zero_grad();
    at::Tensor total;
    for (const auto& [k, t] : model->loss(only_yellow)) total = total.defined() ? total + t : t;
    total.backward();
    for (const auto& p : model->parameters()) {
      if (p.grad().defined()) {
        EXPECT_EQ(p.grad().abs().sum().item<double>(), 0.0);
      }
    }
  }
  fit(*model, source.splits["train"], 30);
  model->finalize(source);
  at::Tensor threshold;
  for (const auto& buf : model->named_buffers()) {
    if (buf.key() == "threshold") threshold = buf.value();
  }
  ASSERT_EQ(threshold.numel(), 1);
  at::NoGradGuard no_grad;
  const at::Tensor pred = model->predict(make_batch({{"a", tx}}, ty, 0)).at("label").argmax(1);
  const at::Tensor right = pred.eq(ty).to(at::kDouble);
  const double unseen = right.index({ty == 3}).mean().item<double>(), seen = right.index({ty != 3}).mean().item<double>();
  EXPECT_GT(unseen, 0.8) << "seen " << seen;
  EXPECT_GT(seen, 0.85) << "unseen " << unseen;
}

// Both objectives: the novelty detector and the unseen-class choice must use the geometry the
// objective trains (Euclidean for squared, directions for max_margin's dot products).
INSTANTIATE_TEST_SUITE_P(Objectives, Coordination, ::testing::Values("squared", "max_margin"));

TEST_F(CoLearning, CoordinationNamesClassWordsMissingFromTheWordVectors) {
  {
    std::ofstream f(dir / "words.txt");
    f << "2 3\nred 1 0 0\ngreen 0 1 0\n";
  }
  context.artifacts["word_vectors"] = dir / "words.txt";
  auto model = make("coordination", {{"primary", "a"}, {"unseen", {"blue thing"}}, {"class_words", {{"blue thing", {"blue", "green"}}}}},
                    {{"a", 6}}, {"red", "green", "blue thing"});
  MemorySource source;
  try {
    model->prepare(source);
    ADD_FAILURE() << "no error";
  } catch (const modalkit::ConfigError& e) {
    const std::string what = e.what();
    EXPECT_NE(what.find("/transfer/config/class_words"), std::string::npos) << what;
    EXPECT_NE(what.find("class \"blue thing\": \"blue\""), std::string::npos) << what;
    EXPECT_EQ(what.find("\"green\""), std::string::npos) << what;
  }
  EXPECT_THROW(make("coordination", {{"primary", "a"}, {"unseen", {"purple"}}}, {{"a", 6}}, {"red", "green", "blue"}),
               modalkit::ConfigError);
}

}  // namespace

namespace {

TEST_F(CoLearning, CoordinationBuildsAModalitySpaceFromClassMeans) {
  // Space "b": each class's vector is the mean of b's standardised features over its train
  // samples (all four classes, the unseen one too: side information); a's inputs are a linear
  // image of the same class codes, so yellow is recognised without a training image.
  ZeroShotData data;
  data.words = at::tensor({1.0f, 0.0f, 0.0f, 0.0f, 1.0f, 0.0f, 0.0f, 0.0f, 1.0f, 0.7071f, 0.7071f, 0.0f}).view({4, 3});
  data.mix = at::randn({3, 6});
  auto model = make("coordination", {{"primary", "a"}, {"space", "b"}, {"space_features", "raw"}, {"unseen", {"yellow"}}},
                    {{"a", 6}, {"b", 3}}, {"red", "green", "blue", "yellow"});
  auto [x, y] = data.draw(800);
  auto [vx, vy] = data.draw(200);
  auto [tx, ty] = data.draw(400);
  const at::Tensor b = data.words.index_select(0, y) * 4 + 1 + 0.05 * at::randn({800, 3});
  MemorySource source;
  source.splits["train"] = batches_of({{"a", x}, {"b", b}}, y);
  source.splits["val"] = batches_of({{"a", vx}}, vy);
  model->prepare(source);
  at::Tensor vectors;
  for (const auto& buf : model->named_buffers()) {
    if (buf.key() == "class_vectors") vectors = buf.value();
  }
  // Independently: standardise b with its train mean and population std, average per class,
  // normalise each row.
  const at::Tensor z = (b - b.mean(0)) / b.std(0, /*unbiased=*/false);
  for (int64_t c = 0; c < 4; ++c) {
    const at::Tensor mean = z.index({y == c}).mean(0);
    EXPECT_TRUE(at::allclose(vectors[c], mean / mean.norm(), 1e-4, 1e-5)) << c;
  }
  fit(*model, source.splits["train"], 30);
  model->finalize(source);
  at::NoGradGuard no_grad;
  const at::Tensor pred = model->predict(make_batch({{"a", tx}}, ty, 0)).at("label").argmax(1);
  EXPECT_GT(pred.eq(ty).index({ty == 3}).to(at::kDouble).mean().item<double>(), 0.8);
  // Training and test need the primary only.
  EXPECT_EQ(model->modalities_at_train(), std::vector<std::string>{"a"});
}

}  // namespace
