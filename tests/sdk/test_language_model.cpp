// The SDK's language model: causality, padding, the two hooks, scoring against a hand
// computation, the artifact round trip, a TorchScript model a user brings, and generation
// (greedy against the argmax chain of a known bigram model, beam search finding the sequence
// greedy misses, the key-value cache against recomputing every position).
#include <cmath>
#include <filesystem>
#include <fstream>
#include <set>

#include <gtest/gtest.h>
#include <torch/script.h>
#include <torch/torch.h>

#include "modalkit/errors.hpp"
#include "modalkit/language_model.hpp"

namespace fs = std::filesystem;
using modalkit::CausalTransformerLM;
using modalkit::CausalTransformerLMOptions;
using modalkit::LmHooks;

namespace {

std::shared_ptr<CausalTransformerLM> tiny_lm(int64_t layers = 2, uint64_t seed = 3) {
  torch::manual_seed(seed);
  auto lm = std::make_shared<CausalTransformerLM>(CausalTransformerLMOptions(50, 16, layers, 4, 32).dropout(0.0));
  lm->eval();
  return lm;
}

at::Tensor ids(std::vector<int64_t> v) { return torch::tensor(v, torch::kLong).unsqueeze(0); }

fs::path temp_dir(const std::string& name) {
  const fs::path d = fs::temp_directory_path() / ("modalkit-lm-" + name + "-" + std::to_string(::getpid()));
  fs::remove_all(d);
  fs::create_directories(d);
  return d;
}

std::string message_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const std::exception& e) {
    return e.what();
  }
  return "(no error)";
}

/// A bigram language model in TorchScript, as a user might export one: the logits at a position
/// are row `id` of a fixed transition matrix, whatever came before.
torch::jit::Module bigram_module(const at::Tensor& logits_table) {
  torch::jit::Module m("BigramLM");
  m.register_parameter("table", logits_table.clone(), /*is_buffer=*/false);
  m.register_attribute("vocab_size", c10::IntType::get(), logits_table.size(0));
  m.register_attribute("width", c10::IntType::get(), logits_table.size(0));
  m.register_attribute("context", c10::IntType::get(), int64_t{64});
  // Embeddings are one-hot rows, so forward can read the id back from them.
  m.define(R"JIT(
def embed(self, ids):
    one_hot = torch.index_select(torch.eye(self.vocab_size), 0, ids.reshape(-1))
    return one_hot.reshape(ids.size(0), ids.size(1), self.vocab_size)

def forward(self, embeds, mask):
    return torch.matmul(embeds, self.table)
)JIT");
  return m;
}

}  // namespace

TEST(LanguageModel, APositionSeesOnlyWhatCameBefore) {
  auto lm = tiny_lm();
  torch::NoGradGuard no_grad;
  const at::Tensor a = lm->forward(lm->embed(ids({2, 7, 9, 11, 13})), {}, {});
  const at::Tensor b = lm->forward(lm->embed(ids({2, 7, 9, 40, 41})), {}, {});
  EXPECT_TRUE(torch::allclose(a.narrow(1, 0, 3), b.narrow(1, 0, 3), 1e-5, 1e-6));
  EXPECT_FALSE(torch::allclose(a.narrow(1, 3, 1), b.narrow(1, 3, 1), 1e-3, 1e-4));
}

TEST(LanguageModel, PaddingOnEitherSideLeavesRealPositionsUnchanged) {
  auto lm = tiny_lm();
  torch::NoGradGuard no_grad;
  const at::Tensor alone = lm->forward(lm->embed(ids({2, 7, 9})), {}, {});
  const at::Tensor left = lm->forward(lm->embed(ids({0, 0, 2, 7, 9})), torch::tensor({{false, false, true, true, true}}), {});
  const at::Tensor right = lm->forward(lm->embed(ids({2, 7, 9, 0, 0})), torch::tensor({{true, true, true, false, false}}), {});
  EXPECT_TRUE(torch::allclose(left.narrow(1, 2, 3), alone, 1e-5, 1e-5));
  EXPECT_TRUE(torch::allclose(right.narrow(1, 0, 3), alone, 1e-5, 1e-5));
  EXPECT_FALSE(torch::isnan(left).any().item<bool>()) << "padding positions must not produce NaN";
}

TEST(LanguageModel, ExtraKeysAndValuesAreAttendedToAndCarryGradients) {
  auto lm = tiny_lm();
  const at::Tensor x = lm->embed(ids({2, 7, 9})).detach();
  const at::Tensor plain = lm->forward(x, {}, {});
  LmHooks hooks;
  for (int l = 0; l < 2; ++l) {
    hooks.extra_keys.push_back(torch::randn({1, 2, 16}, torch::requires_grad()));
    hooks.extra_values.push_back(torch::randn({1, 2, 16}, torch::requires_grad()));
  }
  // Masked out, the extra positions change nothing.
  hooks.extra_mask = torch::zeros({1, 2}, torch::kBool);
  EXPECT_TRUE(torch::allclose(lm->forward(x, {}, hooks), plain, 1e-5, 1e-5));
  // Seen, they change every position, and the loss reaches them.
  hooks.extra_mask = at::Tensor();
  const at::Tensor with = lm->forward(x, {}, hooks);
  EXPECT_FALSE(torch::allclose(with.select(1, 0), plain.select(1, 0), 1e-3, 1e-4));
  with.sum().backward();
  for (const auto& k : hooks.extra_keys) EXPECT_GT(k.grad().abs().sum().item<double>(), 0.0);
  for (const auto& v : hooks.extra_values) EXPECT_GT(v.grad().abs().sum().item<double>(), 0.0);
  // One per layer, or a named error.
  hooks.extra_keys.pop_back();
  EXPECT_NE(message_of([&] { lm->forward(x, {}, hooks); }).find("each of its 2 layers"), std::string::npos);
}

TEST(LanguageModel, TheShiftHookReplacesTheHiddenStatesAtItsLayer) {
  auto lm = tiny_lm();
  torch::NoGradGuard no_grad;
  const at::Tensor x = lm->embed(ids({2, 7, 9}));
  const at::Tensor plain = lm->forward(x, {}, {});
  LmHooks hooks;
  hooks.shift_layer = 0;
  std::vector<int64_t> seen_shape;
  hooks.shift = [&](const at::Tensor& h) {
    seen_shape = h.sizes().vec();
    return h;
  };
  EXPECT_TRUE(torch::allclose(lm->forward(x, {}, hooks), plain, 1e-6, 1e-6));
  EXPECT_EQ(seen_shape, (std::vector<int64_t>{1, 3, 16}));
  // Not a constant offset: the LayerNorms that follow would remove that.
  hooks.shift = [](const at::Tensor& h) { return h * 1.5; };
  EXPECT_FALSE(torch::allclose(lm->forward(x, {}, hooks), plain, 1e-3, 1e-4));
  hooks.shift_layer = 2;
  EXPECT_NE(message_of([&] { lm->forward(x, {}, hooks); }).find("shift_layer 2 is not one of its layers 0..1"), std::string::npos);
}

TEST(LanguageModel, ContinuationLogProbsAreTheModelsOwnLogSoftmax) {
  auto lm = tiny_lm();
  torch::NoGradGuard no_grad;
  const at::Tensor prefix = lm->embed(ids({2, 5}));
  const at::Tensor cont = torch::tensor({{7, 9, 0}}, torch::kLong);
  const at::Tensor cont_mask = torch::tensor({{true, true, false}});
  const at::Tensor got = modalkit::continuation_log_probs(*lm, prefix, {}, cont, cont_mask);
  // By hand: the full sequence 2 5 7 9; position 1 predicts 7, position 2 predicts 9.
  const at::Tensor lp = torch::log_softmax(lm->forward(lm->embed(ids({2, 5, 7, 9})), {}, {}), -1);
  EXPECT_NEAR(got[0][0].item<double>(), lp[0][1][7].item<double>(), 1e-5);
  EXPECT_NEAR(got[0][1].item<double>(), lp[0][2][9].item<double>(), 1e-5);
  EXPECT_EQ(got[0][2].item<double>(), 0.0);
  EXPECT_NE(message_of([&] { modalkit::continuation_log_probs(*lm, prefix.narrow(1, 0, 0), {}, cont, cont_mask); }).find("prefix is empty"),
            std::string::npos);
}

TEST(LanguageModel, ASequenceLongerThanTheContextIsRefused) {
  auto lm = tiny_lm();
  const at::Tensor x = torch::zeros({1, 33, 16});
  EXPECT_NE(message_of([&] { lm->forward(x, {}, {}); }).find("33 positions is longer than its context of 32"), std::string::npos);
}

TEST(LanguageModel, TheArtifactRoundTripsAndBadFilesAreNamed) {
  const fs::path dir = temp_dir("artifact");
  auto lm = std::make_shared<CausalTransformerLM>(CausalTransformerLMOptions(50, 16, 2, 4, 32).dropout(0.2),
                                                  nlohmann::json{{"tokenizer_sha256", "abc"}});
  modalkit::save_language_model(*lm, dir / "lm.pt");
  auto back = modalkit::load_language_model(dir / "lm.pt");
  lm->eval();
  EXPECT_FALSE(back->is_training());
  EXPECT_TRUE(back->supports_hooks());
  EXPECT_EQ(back->config(), lm->config());
  torch::NoGradGuard no_grad;
  EXPECT_TRUE(torch::equal(back->forward(back->embed(ids({2, 7, 9})), {}, {}), lm->forward(lm->embed(ids({2, 7, 9})), {}, {})));

  std::ofstream(dir / "junk.pt") << "not an archive";
  const std::string junk = message_of([&] { modalkit::load_language_model(dir / "junk.pt"); });
  EXPECT_NE(junk.find((dir / "junk.pt").string()), std::string::npos) << junk;
  EXPECT_NE(junk.find("cannot be read"), std::string::npos) << junk;
  EXPECT_NE(message_of([&] { modalkit::load_language_model(dir / "missing.pt"); }).find("no file"), std::string::npos);
  fs::remove_all(dir);
}

TEST(LanguageModel, ATorchScriptModelServesWithoutHooks) {
  const fs::path dir = temp_dir("torchscript");
  torch::manual_seed(1);
  bigram_module(torch::randn({6, 6})).save((dir / "bigram.pt").string());
  auto lm = modalkit::load_language_model(dir / "bigram.pt");
  EXPECT_FALSE(lm->supports_hooks());
  EXPECT_EQ(lm->vocab_size(), 6);
  EXPECT_EQ(lm->width(), 6);
  EXPECT_EQ(lm->parameters().size(), 1u) << "its parameters are visible, so they can be frozen and moved";
  LmHooks hooks;
  hooks.shift_layer = 0;
  hooks.shift = [](const at::Tensor& h) { return h; };
  const std::string m = message_of([&] { lm->forward(lm->embed(ids({1, 2})), {}, hooks); });
  EXPECT_NE(m.find("TorchScript"), std::string::npos) << m;
  EXPECT_NE(m.find("prefix tuning"), std::string::npos) << m;

  torch::jit::Module incomplete("NoEmbed");
  incomplete.define("def forward(self, x, m):\n    return x\n");
  incomplete.save((dir / "incomplete.pt").string());
  EXPECT_NE(message_of([&] { modalkit::load_language_model(dir / "incomplete.pt"); }).find("no embed() method"), std::string::npos);
  fs::remove_all(dir);
}

TEST(Generate, GreedyFollowsTheArgmaxChainAndStopsAtEos) {
  const fs::path dir = temp_dir("greedy");
  torch::manual_seed(4);
  const at::Tensor table = torch::randn({6, 6});
  bigram_module(table).save((dir / "bigram.pt").string());
  auto lm = modalkit::load_language_model(dir / "bigram.pt");
  modalkit::GenerateOptions options;
  options.max_tokens = 5;
  const auto out = modalkit::generate(*lm, lm->embed(ids({1})), {}, options);
  std::vector<int64_t> expected;
  for (int64_t id = 1; expected.size() < 5;) expected.push_back(id = table[id].argmax().item<int64_t>());
  EXPECT_EQ(out.front(), expected);
  // With the chain's third id as EOS, the output ends before it.
  options.eos = expected[2];
  const auto cut = modalkit::generate(*lm, lm->embed(ids({1})), {}, options).front();
  const auto first_eos = std::find(expected.begin(), expected.end(), options.eos) - expected.begin();
  EXPECT_EQ(cut, std::vector<int64_t>(expected.begin(), expected.begin() + first_eos));
  fs::remove_all(dir);
}

namespace {

/// A bigram language model whose next-token probabilities after token i are p[i], saved as
/// TorchScript in `dir` and loaded as a LanguageModel.
std::shared_ptr<modalkit::LanguageModel> bigram_lm(const std::vector<std::vector<double>>& p, const fs::path& dir) {
  const auto n = static_cast<int64_t>(p.size());
  at::Tensor table = torch::empty({n, n});
  for (int64_t i = 0; i < n; ++i) {
    for (int64_t j = 0; j < n; ++j) table[i][j] = std::log(p[static_cast<size_t>(i)][static_cast<size_t>(j)]);
  }
  bigram_module(table).save((dir / "bigram.pt").string());
  return modalkit::load_language_model(dir / "bigram.pt");
}

}  // namespace

TEST(Generate, BeamSearchFindsTheLikelierSequenceGreedyMisses) {
  // From 0, token 1 is likelier than 2 (0.5 vs 0.4), but after 1 everything is spread thin while
  // after 2 the EOS (5) is nearly certain: p(1, x, ...) is at most 0.5 x 0.2, p(2, 5) = 0.4 x 0.96.
  std::vector<std::vector<double>> p(6, std::vector<double>(6, 0.2 / 4));
  p[0] = {0.02, 0.5, 0.4, 0.04, 0.02, 0.02};
  p[1] = {0.2, 0.2, 0.2, 0.2, 0.1, 0.1};
  p[2] = {0.01, 0.01, 0.01, 0.005, 0.005, 0.96};
  const fs::path dir = temp_dir("beam");
  auto lm = bigram_lm(p, dir);
  modalkit::GenerateOptions options;
  options.max_tokens = 3;
  options.eos = 5;
  options.length_penalty = 0.0;  // compare plain log-probabilities
  EXPECT_EQ(modalkit::generate(*lm, lm->embed(ids({0})), {}, options).front().front(), 1) << "greedy takes the likelier first step";
  options.beams = 3;
  EXPECT_EQ(modalkit::generate(*lm, lm->embed(ids({0})), {}, options).front(), (std::vector<int64_t>{2}));
  // Beam search takes one prompt at a time.
  EXPECT_NE(message_of([&] { modalkit::generate(*lm, lm->embed(torch::tensor({{0}, {1}}, torch::kLong)), {}, options); })
                .find("one prompt at a time"),
            std::string::npos);
  fs::remove_all(dir);
}

TEST(Generate, BeamSearchGoesOnWhileAnUnfinishedHypothesisIsLikelier) {
  // After two steps three hypotheses have ended ((), (2): 0.3 x 0.9 = 0.27, (1): 0.0225) but
  // (1, 4) at 0.405 has not; it must be followed, not returned unfinished: after 4 an EOS is
  // unlikely, so every completion of it scores below (2), which is the answer.
  std::vector<std::vector<double>> p(6, std::vector<double>(6, 1.0 / 6));
  p[0] = {0.02, 0.45, 0.3, 0.05, 0.03, 0.15};
  p[1] = {0.01, 0.01, 0.01, 0.02, 0.9, 0.05};
  p[2] = {0.02, 0.02, 0.02, 0.02, 0.02, 0.9};
  p[4] = {0.1, 0.1, 0.1, 0.5, 0.1, 0.1};
  const fs::path dir = temp_dir("beam-on");
  auto lm = bigram_lm(p, dir);
  modalkit::GenerateOptions options;
  options.max_tokens = 4;
  options.eos = 5;
  options.length_penalty = 0.0;
  options.beams = 2;
  EXPECT_EQ(modalkit::generate(*lm, lm->embed(ids({0})), {}, options).front(), (std::vector<int64_t>{2}));
  fs::remove_all(dir);
}

TEST(Generate, ABatchOfLeftPaddedPromptsGivesWhatEachPromptGivesAlone) {
  auto lm = tiny_lm(2, 9);
  modalkit::GenerateOptions options;
  options.max_tokens = 6;
  const auto a = modalkit::generate(*lm, lm->embed(ids({2, 7, 9, 4})), {}, options).front();
  const auto b = modalkit::generate(*lm, lm->embed(ids({2, 30})), {}, options).front();
  const at::Tensor batch = torch::tensor({{2, 7, 9, 4}, {0, 0, 2, 30}}, torch::kLong);
  const at::Tensor mask = torch::tensor({{true, true, true, true}, {false, false, true, true}});
  const auto both = modalkit::generate(*lm, lm->embed(batch), mask, options);
  EXPECT_EQ(both[0], a);
  EXPECT_EQ(both[1], b);
}

namespace {

/// The same model behind the LanguageModel interface only: generate() cannot tell it is a
/// CausalTransformerLM, so it runs forward() over the whole sequence at every step (what a
/// TorchScript model gets). The reference the key-value cache is checked against.
class Uncached : public modalkit::LanguageModel {
 public:
  explicit Uncached(std::shared_ptr<CausalTransformerLM> lm) : lm_(std::move(lm)) {}
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

/// A 3-layer tiny_lm with every weight scaled up, so that its next-piece distributions are
/// peaked and its hidden states far apart: a cache off by one position or one key changes the
/// chain of argmaxes, not just the fifth decimal.
std::shared_ptr<CausalTransformerLM> peaked_lm() {
  auto lm = tiny_lm(3, 11);
  torch::NoGradGuard no_grad;
  for (auto& p : lm->parameters()) p.mul_(4.0);
  return lm;
}

/// Hooks of both kinds on `rows` rows; the shift (at the last layer, so that every block's cached
/// attention is behind it) scales the hidden states and records each call's last position.
LmHooks both_hooks(int64_t rows, const at::Tensor& extra_mask, std::vector<at::Tensor>& last_hidden) {
  LmHooks hooks;
  for (int l = 0; l < 3; ++l) {
    hooks.extra_keys.push_back(torch::randn({rows, 2, 16}));
    hooks.extra_values.push_back(torch::randn({rows, 2, 16}));
  }
  hooks.extra_mask = extra_mask;
  hooks.shift_layer = 2;
  hooks.shift = [&last_hidden](const at::Tensor& h) {
    last_hidden.push_back(h.select(1, -1).clone());
    return h * 1.1;
  };
  return hooks;
}

}  // namespace

TEST(Generate, TheKeyValueCacheGivesWhatRecomputingGives) {
  auto lm = peaked_lm();
  Uncached reference(lm);
  torch::manual_seed(5);
  std::vector<at::Tensor> cached_hidden, recomputed_hidden;
  // Greedy, a left-padded batch, extra keys partly masked and a shift.
  const at::Tensor batch = torch::tensor({{2, 7, 9, 4}, {0, 0, 2, 30}, {0, 5, 6, 8}}, torch::kLong);
  const at::Tensor mask = torch::tensor({{true, true, true, true}, {false, false, true, true}, {false, true, true, true}});
  LmHooks hooks = both_hooks(3, torch::tensor({{true, true}, {true, false}, {false, true}}), cached_hidden);
  modalkit::GenerateOptions options;
  options.max_tokens = 8;
  const auto cached = modalkit::generate(*lm, lm->embed(batch), mask, options, hooks);
  hooks.shift = [&](const at::Tensor& h) {
    recomputed_hidden.push_back(h.select(1, -1).clone());
    return h * 1.1;
  };
  const auto recomputed = modalkit::generate(reference, reference.embed(batch), mask, options, hooks);
  EXPECT_EQ(cached, recomputed);
  ASSERT_EQ(cached_hidden.size(), 8U) << "the prompt, then one step per piece but the last";
  ASSERT_EQ(recomputed_hidden.size(), 8U);
  for (size_t i = 0; i < cached_hidden.size(); ++i) {
    EXPECT_TRUE(torch::allclose(cached_hidden[i], recomputed_hidden[i], 1e-4, 1e-5)) << "step " << i;
  }
  // Not a degenerate chain that any cache would reproduce.
  std::set<int64_t> pieces;
  for (const auto& row : cached) {
    pieces.insert(row.begin(), row.end());
  }
  EXPECT_GT(pieces.size(), 8U);

  // Beam search: one prompt, hooks of batch 1, the decoder's rows reordered after every step.
  cached_hidden.clear();
  recomputed_hidden.clear();
  LmHooks one = both_hooks(1, {}, cached_hidden);
  options.beams = 3;
  options.eos = 7;
  const auto beam_cached = modalkit::generate(*lm, lm->embed(ids({2, 7, 9})), {}, options, one);
  one.shift = [&](const at::Tensor& h) {
    recomputed_hidden.push_back(h.select(1, -1).clone());
    return h * 1.1;
  };
  EXPECT_EQ(beam_cached, modalkit::generate(reference, reference.embed(ids({2, 7, 9})), {}, options, one));
  ASSERT_EQ(cached_hidden.size(), recomputed_hidden.size());
  ASSERT_GT(cached_hidden.size(), 2U);
  for (size_t i = 0; i < cached_hidden.size(); ++i) {
    EXPECT_TRUE(torch::allclose(cached_hidden[i], recomputed_hidden[i], 1e-4, 1e-5)) << "beam step " << i;
  }
}

TEST(Generate, StopsAtTheContextOnlyWhenAPositionPastItIsNeeded) {
  auto lm = tiny_lm();  // context 32
  Uncached reference(lm);
  std::vector<int64_t> long_prompt(30, 3);
  modalkit::GenerateOptions options;
  // Pieces 31 and 32 fill the context; the last generated piece is never fed back.
  options.max_tokens = 3;
  EXPECT_EQ(modalkit::generate(*lm, lm->embed(ids(long_prompt)), {}, options).front().size(), 3U);
  EXPECT_EQ(modalkit::generate(reference, lm->embed(ids(long_prompt)), {}, options).front().size(), 3U);
  options.max_tokens = 4;
  for (modalkit::LanguageModel* model : {static_cast<modalkit::LanguageModel*>(lm.get()), static_cast<modalkit::LanguageModel*>(&reference)}) {
    EXPECT_NE(message_of([&] { modalkit::generate(*model, lm->embed(ids(long_prompt)), {}, options); })
                  .find("a sequence of 33 positions is longer than its context of 32"),
              std::string::npos);
  }
  EXPECT_NE(message_of([&] { modalkit::generate(*lm, torch::zeros({1, 0, 16}), {}, options); }).find("the prompt is empty"),
            std::string::npos);
}

TEST(Generate, BeamSearchWideEnoughIsExhaustiveSearchOverAModelWithHistory) {
  // A model whose next piece depends on more than the last one: trained briefly on sequences
  // that repeat with period 2 ("a b a b ...", pieces 0-3; EOS 4 ends them at random lengths).
  // Pieces 0-3 and EOS 4, at most 4 pieces: with 80 beams nothing is pruned before the last
  // step, so beam search must return the likeliest of every sequence, scored here independently
  // by continuation_log_probs (whole sequences through forward()). A cache reordered to the
  // wrong parent would continue the wrong history and score the wrong sequences.
  torch::manual_seed(21);
  auto lm = std::make_shared<CausalTransformerLM>(CausalTransformerLMOptions(5, 16, 2, 4, 32).dropout(0.0));
  torch::optim::Adam optimizer(lm->parameters(), torch::optim::AdamOptions(0.01));
  for (int step = 0; step < 150; ++step) {
    const at::Tensor pair = torch::randint(4, {32, 2}, torch::kLong);
    at::Tensor text = pair.repeat({1, 4});  // [32, 8]
    text.select(1, 7).fill_(4);             // then EOS
    const at::Tensor mask = torch::arange(8).unsqueeze(0) < torch::randint(3, 9, {32, 1});
    const at::Tensor loss = -modalkit::continuation_log_probs(*lm, lm->embed(torch::zeros({32, 1}, torch::kLong)), {}, text, mask)
                                 .sum() / mask.sum();
    optimizer.zero_grad();
    loss.backward();
    optimizer.step();
  }
  lm->eval();
  torch::NoGradGuard no_grad;
  // History matters: after "2 1" the model expects 2, after "3 1" it expects 3.
  auto next = [&](std::vector<int64_t> text) { return lm->forward(lm->embed(ids(text)), {}, {}).select(1, -1).argmax(-1).item<int64_t>(); };
  ASSERT_EQ(next({0, 2, 1}), 2);
  ASSERT_EQ(next({0, 3, 1}), 3);
  const at::Tensor prompt = lm->embed(ids({0}));
  // Every sequence of up to 4 pieces, finished by EOS (scored with it) or, at 4, unfinished.
  std::vector<std::vector<int64_t>> candidates = {{}};
  for (size_t begin = 0, length = 0; length < 4; ++length) {
    const size_t end = candidates.size();
    for (size_t i = begin; i < end; ++i) {
      for (int64_t piece = 0; piece < 4; ++piece) {
        candidates.push_back(candidates[i]);
        candidates.back().push_back(piece);
      }
    }
    begin = end;
  }
  std::vector<int64_t> best;
  double best_score = -1e300;
  for (const auto& c : candidates) {
    std::vector<int64_t> scored = c;
    if (c.size() < 4) scored.push_back(4);
    const double s = modalkit::continuation_log_probs(*lm, prompt, {}, ids(scored), {}).sum().item<double>();
    if (s > best_score) {
      best_score = s;
      best = c;
    }
  }
  modalkit::GenerateOptions options;
  options.max_tokens = 4;
  options.eos = 4;
  options.beams = 80;
  options.length_penalty = 0.0;
  EXPECT_EQ(modalkit::generate(*lm, prompt, {}, options).front(), best);
  Uncached reference(lm);
  EXPECT_EQ(modalkit::generate(reference, prompt, {}, options).front(), best);
}
