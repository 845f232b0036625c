// The fusion plugins (concat, late, tensor, lowrank, cross_attention, gated), loaded through the
// host like any plugin: output kind and width as their manifests say, absent modalities that
// never reach the output (whatever their filler holds, and the same as leaving the modality out
// of the batch), gradients to every parameter, checkpoint names registered at construction,
// config errors at their JSON pointer, and the operators checked against hand computations
// from their named parameters (TFN's outer product, LMF's factorisation and its full-tensor
// equivalent, the two-modality GMU, late fusion's MLP).
#include <cmath>
#include <cstdlib>

#include <gtest/gtest.h>
#include <torch/torch.h>

#include "modalkit/fusion.hpp"
#include "modalkit/layers.hpp"
#include "registry.hpp"

namespace {

using modalkit::Sequence;
using Inputs = std::map<std::string, Sequence>;

constexpr int64_t kD = 8;  // d_model
constexpr int64_t kBatch = 3;
constexpr int64_t kTa = 4, kTb = 5;  // tokens of modalities a and b

std::unique_ptr<modalkit::host::PluginRegistry> make_registry() {
  const char* dir = std::getenv("MODALKIT_PLUGIN_BUILD_DIR");
  if (dir == nullptr) return nullptr;
  return std::make_unique<modalkit::host::PluginRegistry>(std::vector<std::filesystem::path>{dir});
}

bool contains(const std::string& text, const std::string& part) { return text.find(part) != std::string::npos; }

/// Two modalities for a batch of 3. a: 4 tokens, sample 2's last one padding. b: 5 tokens,
/// sample 0's last one padding; sample 1 lacks b (mask row all false) when `b_absent_for_1`.
/// Padding and absent rows hold `filler`; the real tokens are the same for every filler.
Inputs two_modalities(double filler, bool b_absent_for_1 = true) {
  torch::manual_seed(11);
  Sequence a{torch::randn({kBatch, kTa, kD}), torch::ones({kBatch, kTa}, torch::kBool)};
  Sequence b{torch::randn({kBatch, kTb, kD}), torch::ones({kBatch, kTb}, torch::kBool)};
  a.mask[2][kTa - 1] = false;
  a.x[2][kTa - 1].fill_(filler);
  b.mask[0][kTb - 1] = false;
  b.x[0][kTb - 1].fill_(filler);
  if (b_absent_for_1) {
    b.mask[1].fill_(false);
    b.x[1].fill_(filler);
  }
  return {{"a", a}, {"b", b}};
}

/// The head's view of a fusion output: the mean of its real tokens, [B, D].
torch::Tensor pooled(modalkit::FusionOperator& fusion, const Inputs& inputs) {
  return modalkit::masked_mean_pool(fusion.forward(inputs));
}

/// Mean over real tokens computed here, not with the SDK's masked_mean_pool: [B, D], zeros for
/// a sample without real tokens.
torch::Tensor hand_pool(const Sequence& s) {
  auto m = s.mask.to(torch::kFloat).unsqueeze(-1);
  return torch::where(m.expand_as(s.x) > 0, s.x, torch::zeros_like(s.x)).sum(1) / m.sum(1).clamp_min(1.0);
}

bool finite(const torch::Tensor& t) { return torch::isfinite(t).all().item<bool>(); }

class FusionFixture : public ::testing::Test {
 protected:
  std::unique_ptr<modalkit::host::PluginRegistry> registry;

  void SetUp() override {
    registry = make_registry();
    ASSERT_TRUE(registry) << "MODALKIT_PLUGIN_BUILD_DIR is not set (meson test sets it; by hand: "
                             "MODALKIT_PLUGIN_BUILD_DIR=build/plugins)";
  }

  /// `plugin` created by the host with `config` (defaults filled in) for modalities `widths`,
  /// in eval mode, its parameters jittered unless `fresh`: zero-initialised biases and unit
  /// LayerNorm gains could otherwise hide a path from an absent modality to the output.
  std::shared_ptr<modalkit::FusionOperator> make(const std::string& plugin, const nlohmann::json& config,
                                                 const std::map<std::string, int64_t>& widths = {{"a", kD},
                                                                                                 {"b", kD}},
                                                 bool fresh = false) {
    nlohmann::json filled = config.is_null() ? nlohmann::json::object() : config;
    const auto* manifest = registry->find(plugin);
    if (manifest == nullptr) throw std::runtime_error("no plugin " + plugin);
    manifest->config_validator->fill_defaults(filled);
    modalkit::CreateArgs args;
    args.config = modalkit::Config(filled, "/fusion/config");
    args.instance = "fusion";
    args.d_model = kD;
    for (const auto& [name, width] : widths) args.modalities.push_back(name);
    args.input_widths = widths;
    auto fusion = registry->create<modalkit::FusionOperator>(plugin, MODALKIT_KIND_FUSION, args);
    fusion->eval();  // dropout off: the comparisons below are exact
    if (!fresh) {
      torch::NoGradGuard no_grad;
      torch::manual_seed(3);
      for (auto& p : fusion->parameters()) p.add_(0.1 * torch::randn_like(p));
    }
    return fusion;
  }

  /// The message of the PluginError creating `plugin` throws; fails the test if it throws none.
  std::string make_error(const std::string& plugin, const nlohmann::json& config,
                         const std::map<std::string, int64_t>& widths = {{"a", kD}, {"b", kD}}) {
    try {
      make(plugin, config, widths);
    } catch (const modalkit::PluginError& e) {
      return e.what();
    }
    ADD_FAILURE() << "no PluginError for " << plugin << " " << config.dump();
    return "";
  }
};

// ---------------------------------------------------------------------------------------------
// Every fusion plugin.

struct FusionCase {
  std::string plugin;
  int64_t tokens;                    // T of the output for two_modalities()
  std::vector<std::string> keys;     // parameter names expected for modality "c" ({} = none)
};

void PrintTo(const FusionCase& c, std::ostream* os) { *os << c.plugin; }

std::string case_name(const ::testing::TestParamInfo<FusionCase>& info) { return info.param.plugin; }

class FusionEach : public FusionFixture, public ::testing::WithParamInterface<FusionCase> {};

TEST_P(FusionEach, OutputMatchesManifest) {
  auto fusion = make(GetParam().plugin, {});
  const std::string kind = registry->find(GetParam().plugin)->output.at("kind");
  EXPECT_EQ(registry->find(GetParam().plugin)->output.at("width"), "d_model");
  EXPECT_EQ(fusion->output_kind(),
            kind == "pooled" ? modalkit::FusionOutput::kPooled : modalkit::FusionOutput::kSequence);
  EXPECT_EQ(fusion->output_width(), kD);
  auto out = fusion->forward(two_modalities(1e3));
  ASSERT_EQ(out.x.dim(), 3);
  EXPECT_EQ(out.x.size(0), kBatch);
  EXPECT_EQ(out.x.size(1), kind == "pooled" ? 1 : GetParam().tokens);
  EXPECT_EQ(out.x.size(2), kD);
  EXPECT_EQ(out.mask.sizes(), (std::vector<int64_t>{kBatch, out.x.size(1)}));
  EXPECT_EQ(out.mask.scalar_type(), torch::kBool);
  EXPECT_TRUE(finite(out.x));
  EXPECT_TRUE(finite(pooled(*fusion, two_modalities(1e3))));
}

TEST_P(FusionEach, AbsentModalityNeverReachesTheOutput) {
  auto fusion = make(GetParam().plugin, {});
  // Sample 1 lacks b; its b rows (and the padding) hold garbage, twice different garbage.
  const auto garbage1 = pooled(*fusion, two_modalities(1e3));
  const auto garbage2 = pooled(*fusion, two_modalities(-7.5e2));
  EXPECT_TRUE(torch::allclose(garbage1, garbage2, 0.0, 1e-6)) << garbage1 - garbage2;
  // Leaving b out of the batch altogether: sample 1 (which has only a) sees no difference.
  Inputs only_a = two_modalities(1e3);
  only_a.erase("b");
  const auto without_b = pooled(*fusion, only_a);
  EXPECT_TRUE(torch::allclose(garbage1[1], without_b[1], 0.0, 1e-5))
      << GetParam().plugin << "\n" << garbage1[1] << "\n" << without_b[1];
  // ...while b does matter where it is present (the operator fuses at all).
  EXPECT_FALSE(torch::allclose(garbage1[0], without_b[0], 0.0, 1e-4)) << GetParam().plugin;
  auto out = fusion->forward(two_modalities(1e3));
  EXPECT_TRUE(out.mask[1].any().item<bool>());
}

TEST_P(FusionEach, NanFillerNeverReachesOutputOrGradients) {
  if (GetParam().plugin == "concat") {
    // concat passes filler tokens through untouched (masked), and masked_mean_pool multiplies
    // them by 0, which keeps NaN; encoders never emit NaN filler, so concat does not guard.
    GTEST_SKIP() << "concat leaves filler as is";
  }
  auto fusion = make(GetParam().plugin, {});
  auto reference = pooled(*fusion, two_modalities(1e3));
  auto out = pooled(*fusion, two_modalities(std::nan("")));
  EXPECT_TRUE(torch::allclose(reference, out, 0.0, 1e-6)) << out;
  out.sum().backward();
  for (const auto& p : fusion->named_parameters()) {
    ASSERT_TRUE(p.value().grad().defined()) << p.key();
    EXPECT_TRUE(finite(p.value().grad())) << p.key();
  }
}

TEST_P(FusionEach, AllAbsentSampleIsMaskedOut) {
  auto fusion = make(GetParam().plugin, {});
  auto inputs = two_modalities(1e3);
  inputs["a"].mask[1].fill_(false);
  inputs["a"].x[1].fill_(1e3);
  auto out = fusion->forward(inputs);
  EXPECT_FALSE(out.mask[1].any().item<bool>());
  EXPECT_TRUE(out.mask[0].any().item<bool>());
  EXPECT_TRUE(finite(out.x));
}

TEST_P(FusionEach, OneModalityInTheBatch) {
  auto fusion = make(GetParam().plugin, {});
  fusion->train();  // dropout on too
  Inputs only_a = two_modalities(1e3);
  only_a.erase("b");
  auto out = fusion->forward(only_a);
  EXPECT_TRUE(finite(out.x));
  EXPECT_TRUE(out.mask.any(1).all().item<bool>());
  modalkit::masked_mean_pool(out).sum().backward();
  for (const auto& p : fusion->named_parameters()) {
    if (p.value().grad().defined()) {
      EXPECT_TRUE(finite(p.value().grad())) << p.key();
    }
  }
}

TEST_P(FusionEach, GradientsReachEveryParameter) {
  auto fusion = make(GetParam().plugin, {});
  const auto out = pooled(*fusion, two_modalities(1e3, /*b_absent_for_1=*/false));
  // A fixed random weighting rather than a plain sum: the sum of a LayerNorm'ed vector (the
  // cross_attention output) is constant in its input, which would hide missing gradients.
  torch::manual_seed(5);
  (out * torch::randn({kD})).sum().backward();
  const auto params = fusion->named_parameters();
  ASSERT_GT(params.size(), 0u);
  for (const auto& p : params) {
    const auto& grad = p.value().grad();
    ASSERT_TRUE(grad.defined()) << p.key();
    EXPECT_TRUE(finite(grad)) << p.key();
    EXPECT_GT(grad.abs().sum().item<double>(), 0.0) << p.key();
  }
}

TEST_P(FusionEach, ModulesForEveryPipelineModalityAtConstruction) {
  // Modality c is declared but never in a batch: its parameters exist (checkpoint keys) anyway.
  auto fusion = make(GetParam().plugin, {}, {{"a", kD}, {"b", kD}, {"c", kD}});
  const auto params = fusion->named_parameters();
  for (const auto& key : GetParam().keys) EXPECT_TRUE(params.contains(key)) << key;
  auto out = fusion->forward(two_modalities(1e3));  // a and b only
  EXPECT_TRUE(finite(out.x));
}

TEST_P(FusionEach, InputWidthOtherThanDModelIsAConfigError) {
  const auto msg = make_error(GetParam().plugin, {}, {{"a", kD}, {"b", kD + 1}});
  EXPECT_TRUE(contains(msg, "plugin " + GetParam().plugin)) << msg;
  EXPECT_TRUE(contains(msg, "/fusion/config: ")) << msg;
  EXPECT_TRUE(contains(msg, "modality b has width 9")) << msg;
}

INSTANTIATE_TEST_SUITE_P(
    Fusion, FusionEach,
    ::testing::Values(FusionCase{"concat", kTa + kTb, {"embedding_c"}},
                      FusionCase{"late", 2, {"mlp_c.fc1.weight", "mlp_c.fc2.bias"}},
                      FusionCase{"tensor", 1, {"proj_c.weight", "proj_c.bias", "out.weight"}},
                      FusionCase{"lowrank", 1, {"factor_c", "fusion_weights", "fusion_bias"}},
                      FusionCase{"cross_attention", kTa + kTb,
                                 {"to_c.0.attn.in_proj_weight", "to_c.0.fc1.weight", "norm_c.weight"}},
                      FusionCase{"gated", 1, {"value_c.weight", "gate_c.weight"}}),
    case_name);

// ---------------------------------------------------------------------------------------------
// Operator by operator, against hand computations from the named parameters.

using FusionOps = FusionFixture;

TEST_F(FusionOps, ConcatJoinsAlongTimeWithEmbeddings) {
  auto fusion = make("concat", {});
  auto inputs = two_modalities(1e3);
  auto out = fusion->forward(inputs);
  auto p = fusion->named_parameters();
  EXPECT_TRUE(out.x.slice(1, 0, kTa).equal(inputs["a"].x + p["embedding_a"]));
  EXPECT_TRUE(out.mask.equal(torch::cat({inputs["a"].mask, inputs["b"].mask}, 1)));
}

TEST_F(FusionOps, LateHasOneTokenPerModality) {
  auto fusion = make("late", {{"hidden", 5}});
  auto inputs = two_modalities(1e3);
  auto out = fusion->forward(inputs);
  auto p = fusion->named_parameters();
  EXPECT_EQ(p["mlp_a.fc1.weight"].sizes(), (std::vector<int64_t>{5, kD}));
  // mask[b, m]: sample 1 lacks b; everything else is there.
  EXPECT_TRUE(out.mask.equal(torch::tensor({true, true, true, false, true, true}).view({kBatch, 2})));
  for (const std::string m : {"a", "b"}) {
    auto h = hand_pool(inputs[m]);
    auto expected = torch::relu(h.matmul(p["mlp_" + m + ".fc1.weight"].t()) + p["mlp_" + m + ".fc1.bias"])
                        .matmul(p["mlp_" + m + ".fc2.weight"].t()) +
                    p["mlp_" + m + ".fc2.bias"];
    auto token = out.x.select(1, m == "a" ? 0 : 1);
    auto real = out.mask.select(1, m == "a" ? 0 : 1);
    for (int64_t b = 0; b < kBatch; ++b) {
      if (real[b].item<bool>()) {
        EXPECT_TRUE(torch::allclose(token[b], expected[b], 1e-5, 1e-6)) << m << b;
      } else {
        EXPECT_TRUE(token[b].eq(0).all().item<bool>()) << m << b;  // absent: zeroed and masked
      }
    }
  }
  // The head's average = mean of the present modalities' vectors.
  auto head = modalkit::masked_mean_pool(out);
  EXPECT_TRUE(torch::allclose(head[0], (out.x[0][0] + out.x[0][1]) / 2, 1e-5, 1e-6));
  EXPECT_TRUE(torch::allclose(head[1], out.x[1][0], 1e-5, 1e-6));
}

TEST_F(FusionOps, TensorMatchesHandComputedOuterProduct) {
  const int64_t k = 3;
  auto fusion = make("tensor", {{"factor_width", k}, {"dropout", 0.0}});
  auto p = fusion->named_parameters();
  ASSERT_EQ(p["out.weight"].sizes(), (std::vector<int64_t>{kD, (k + 1) * (k + 1)}));
  auto inputs = two_modalities(1e3);
  auto out = fusion->forward(inputs);
  auto z = [&](const std::string& m) {
    auto h = hand_pool(inputs[m]).matmul(p["proj_" + m + ".weight"].t()) + p["proj_" + m + ".bias"];
    h = h * inputs[m].mask.any(1, true).to(torch::kFloat);  // absent: h_m = 0
    return torch::cat({h, torch::ones({kBatch, 1})}, 1);
  };
  auto za = z("a"), zb = z("b");
  EXPECT_TRUE(zb[1].slice(0, 0, k).eq(0).all().item<bool>());
  auto outer = torch::einsum("bi,bj->bij", {za, zb}).reshape({kBatch, -1});
  auto expected = torch::relu(outer.matmul(p["out.weight"].t()) + p["out.bias"]);
  EXPECT_TRUE(torch::allclose(out.x.squeeze(1), expected, 1e-5, 1e-6)) << out.x.squeeze(1) - expected;
  EXPECT_TRUE(out.mask.all().item<bool>());
  // Sample 1 (no b) uses only the entries of the product at b's constant 1: a's unimodal terms.
  auto kept = torch::arange(k + 1) * (k + 1) + k;  // index i*(k+1) + k
  auto only_a = torch::relu(za[1].matmul(p["out.weight"].index_select(1, kept).t()) + p["out.bias"]);
  EXPECT_TRUE(torch::allclose(out.x[1][0], only_a, 1e-5, 1e-6));
}

TEST_F(FusionOps, TensorRefusesTooManyFeatures) {
  const std::map<std::string, int64_t> four = {{"a", kD}, {"b", kD}, {"c", kD}, {"d", kD}};
  // Defaults: factor_width 8, max_features 4096 < 9^4 = 6561.
  const auto msg = make_error("tensor", {}, four);
  EXPECT_TRUE(contains(msg, "/fusion/config: ")) << msg;
  EXPECT_TRUE(contains(msg, "max_features 4096")) << msg;
  EXPECT_TRUE(contains(msg, "(8+1)^4")) << msg;
  EXPECT_NO_THROW(make("tensor", {{"max_features", 6561}}, four));
  EXPECT_NO_THROW(make("tensor", {{"factor_width", 7}}, four));  // 8^4 = 4096
}

TEST_F(FusionOps, LowrankMatchesFactorisationAndFullTensor) {
  const int64_t rank = 3;
  // As LMF initialises: the bias at zero.
  auto initial = make("lowrank", {}, {{"a", kD}, {"b", kD}}, /*fresh=*/true)->named_parameters();
  EXPECT_TRUE(initial["fusion_bias"].eq(0).all().item<bool>());
  auto fusion = make("lowrank", {{"rank", rank}});
  auto p = fusion->named_parameters();
  ASSERT_EQ(p["factor_a"].sizes(), (std::vector<int64_t>{rank, kD + 1, kD}));
  ASSERT_EQ(p["fusion_weights"].sizes(), (std::vector<int64_t>{1, rank}));
  auto inputs = two_modalities(1e3);
  auto out = fusion->forward(inputs).x.squeeze(1);
  auto z = [&](const std::string& m) {
    auto h = hand_pool(inputs[m]) * inputs[m].mask.any(1, true).to(torch::kFloat);
    return torch::cat({h, torch::ones({kBatch, 1})}, 1);
  };
  auto za = z("a"), zb = z("b");
  // Σ_r w_r (z_a · A_r) ⊙ (z_b · B_r) + bias, rank by rank.
  auto expected = p["fusion_bias"].squeeze(0).expand({kBatch, kD}).clone();
  for (int64_t r = 0; r < rank; ++r) {
    expected += p["fusion_weights"][0][r] * za.matmul(p["factor_a"][r]) * zb.matmul(p["factor_b"][r]);
  }
  EXPECT_TRUE(torch::allclose(out, expected, 1e-5, 1e-6)) << out - expected;
  // The same as TFN with the full weight tensor W = Σ_r w_r A_r ⊗ B_r, applied to z_a ⊗ z_b.
  auto w = torch::einsum("r,rio,rjo->ijo", {p["fusion_weights"][0], p["factor_a"], p["factor_b"]});
  auto tfn = torch::einsum("bi,bj,ijo->bo", {za, zb, w}) + p["fusion_bias"];
  EXPECT_TRUE(torch::allclose(out, tfn, 1e-4, 1e-5)) << out - tfn;
  // Sample 1 lacks b: b's factor reduces to its last row (the constant-1 slot).
  auto only_a = p["fusion_bias"].squeeze(0).clone();
  for (int64_t r = 0; r < rank; ++r) {
    only_a += p["fusion_weights"][0][r] * za[1].matmul(p["factor_a"][r]) * p["factor_b"][r][kD];
  }
  EXPECT_TRUE(torch::allclose(out[1], only_a, 1e-5, 1e-6));
}

TEST_F(FusionOps, GatedMixesPresentModalitiesOnly) {
  auto fusion = make("gated", {});
  auto p = fusion->named_parameters();
  ASSERT_EQ(p["gate_a.weight"].sizes(), (std::vector<int64_t>{kD, kD}));
  auto inputs = two_modalities(1e3);
  auto out = fusion->forward(inputs).x.squeeze(1);
  auto v = [&](const std::string& m) {
    return torch::tanh(hand_pool(inputs[m]).matmul(p["value_" + m + ".weight"].t()) + p["value_" + m + ".bias"]);
  };
  auto s = [&](const std::string& m) {
    return hand_pool(inputs[m]).matmul(p["gate_" + m + ".weight"].t()) + p["gate_" + m + ".bias"];
  };
  // Two modalities: GMU's z ⊙ v_a + (1 - z) ⊙ v_b with z = σ(s_a - s_b), per feature.
  auto zg = torch::sigmoid(s("a") - s("b"));
  auto gmu = zg * v("a") + (1 - zg) * v("b");
  for (int64_t b : {0, 2}) EXPECT_TRUE(torch::allclose(out[b], gmu[b], 1e-5, 1e-6)) << b;
  // Sample 1 lacks b: a's candidate, whole.
  EXPECT_TRUE(torch::allclose(out[1], v("a")[1], 1e-5, 1e-6));

  auto scalar = make("gated", {{"gate", "modality"}});
  auto q = scalar->named_parameters();
  ASSERT_EQ(q["gate_a.weight"].sizes(), (std::vector<int64_t>{1, kD}));
  auto outs = scalar->forward(inputs).x.squeeze(1);
  auto va = torch::tanh(hand_pool(inputs["a"]).matmul(q["value_a.weight"].t()) + q["value_a.bias"]);
  auto vb = torch::tanh(hand_pool(inputs["b"]).matmul(q["value_b.weight"].t()) + q["value_b.bias"]);
  auto za = torch::sigmoid(hand_pool(inputs["a"]).matmul(q["gate_a.weight"].t()) + q["gate_a.bias"] -
                           hand_pool(inputs["b"]).matmul(q["gate_b.weight"].t()) - q["gate_b.bias"]);  // [B, 1]
  EXPECT_TRUE(torch::allclose(outs[0], (za * va + (1 - za) * vb)[0], 1e-5, 1e-6));
  EXPECT_TRUE(torch::allclose(outs[1], va[1], 1e-5, 1e-6));
}

TEST_F(FusionOps, CrossAttentionHeadsMustDivideDModel) {
  const auto msg = make_error("cross_attention", {{"heads", 3}});
  EXPECT_TRUE(contains(msg, "/fusion/config/heads: d_model 8 is not divisible by heads 3")) << msg;
  EXPECT_NO_THROW(make("cross_attention", {{"heads", 2}, {"layers", 2}}));
}

TEST_F(FusionOps, CrossAttentionAttendsToTheOtherModality) {
  auto fusion = make("cross_attention", {{"layers", 2}});
  auto inputs = two_modalities(1e3);
  auto out = fusion->forward(inputs);
  // Changing b's real tokens of sample 0 moves a's tokens of sample 0, and only of sample 0.
  auto changed = two_modalities(1e3);
  // (Not a constant shift: the keys' LayerNorm would remove it.)
  changed["b"].x[0].slice(0, 0, kTb - 1).add_(torch::randn({kTb - 1, kD}));
  auto moved = fusion->forward(changed);
  auto a_out = out.x.slice(1, 0, kTa), a_moved = moved.x.slice(1, 0, kTa);
  EXPECT_FALSE(torch::allclose(a_out[0], a_moved[0], 0.0, 1e-4));
  EXPECT_TRUE(torch::allclose(a_out[2], a_moved[2], 0.0, 1e-6));
  EXPECT_TRUE(out.mask.equal(torch::cat({inputs["a"].mask, inputs["b"].mask}, 1)));
}

TEST_F(FusionOps, CrossAttentionHasNoNanWithoutKeys) {
  auto fusion = make("cross_attention", {{"layers", 2}});
  fusion->train();  // attention dropout and residual dropout on
  // Sample 1 has only a; sample 2 only b: both have no key for their one modality.
  auto inputs = two_modalities(1e3);
  inputs["a"].mask[2].fill_(false);
  inputs["a"].x[2].fill_(1e3);
  auto out = fusion->forward(inputs);
  EXPECT_TRUE(finite(out.x));
  modalkit::masked_mean_pool(out).sum().backward();
  for (const auto& p : fusion->named_parameters()) {
    ASSERT_TRUE(p.value().grad().defined()) << p.key();
    EXPECT_TRUE(finite(p.value().grad())) << p.key();
  }
  // One modality in the batch: no source at all.
  fusion->zero_grad();
  Inputs only_b{{"b", inputs["b"]}};
  auto single = fusion->forward(only_b);
  EXPECT_TRUE(finite(single.x));
  EXPECT_EQ(single.x.sizes(), (std::vector<int64_t>{kBatch, kTb, kD}));
  modalkit::masked_mean_pool(single).sum().backward();
  for (const auto& p : fusion->named_parameters()) {
    if (p.value().grad().defined()) {
      EXPECT_TRUE(finite(p.value().grad())) << p.key();
    }
  }
  // Without keys the block is residual + feed-forward: the same as with b absent.
  fusion->eval();
  Inputs a_only{{"a", two_modalities(1e3)["a"]}};
  auto with_b = pooled(*fusion, two_modalities(1e3));
  EXPECT_TRUE(torch::allclose(with_b[1], pooled(*fusion, a_only)[1], 0.0, 1e-5));
}

}  // namespace
