// The language-model pieces that need a real tokenizer: the SDK's Tokenizer (encode, decode,
// its sidecar hash), the lm_windows stream (windows are the joined corpus, epochs shuffle
// repeatably) and the language_model pretraining strategy (it memorises a small corpus, and the
// artifact it writes reloads with the same outputs and the perplexity it reports).
#include <cmath>
#include <cstdlib>
#include <fstream>
#include <map>
#include <set>

#include <ATen/ATen.h>
#include <gtest/gtest.h>
#include <torch/optim/adam.h>
#include <torch/script.h>

#include "../../plugins/evaluation/common/lm_protocols.hpp"
#include "modalkit/evaluation.hpp"
#include "modalkit/language_model.hpp"
#include "modalkit/stream.hpp"
#include "modalkit/tokenizer.hpp"
#include "strategy_fixture.hpp"

namespace {

using nlohmann::json;

const std::vector<std::string> kCorpus = {
    "sandal: a shoe consisting of a sole fastened by straps to the foot",
    "boot: footwear that covers the whole foot and the lower leg",
    "the quick brown fox jumps over the lazy dog",
};

class LmFixture : public ::testing::Test {
 public:  // protocol() below creates plugins through it
  std::filesystem::path dir;
  std::unique_ptr<modalkit::host::PluginRegistry> registry;
  LoggingContext context;
  std::vector<json> held;
  const std::string base_ = ".", origin_ = "corpus.jsonl:1";

  void SetUp() override {
    dir = std::filesystem::current_path() / ("tmp-lm-" + std::to_string(::getpid()));
    std::filesystem::remove_all(dir);
    std::filesystem::create_directories(dir);
    registry = std::make_unique<modalkit::host::PluginRegistry>(
        std::vector<std::filesystem::path>{std::getenv("MODALKIT_PLUGIN_BUILD_DIR")});
    std::ofstream corpus(dir / "corpus.txt");
    for (int i = 0; i < 50; ++i) {
      for (const auto& line : kCorpus) corpus << line << "\n";
    }
    corpus.close();
    const std::string train = std::string(std::getenv("MODALKIT_SPM_HELPER")) + " train --input=" + (dir / "corpus.txt").string() +
                              " --model_prefix=" + (dir / "tok").string() +
                              " --vocab_size=60 --hard_vocab_limit=false --pad_id=0 --unk_id=1 --bos_id=2 --eos_id=3 --minloglevel=2";
    ASSERT_EQ(std::system(train.c_str()), 0) << train;
    std::ofstream(dir / "tok.model.artifact.json") << R"({"type": "sentencepiece", "sha256": "5eed"})";
    context.artifacts["tokenizer"] = dir / "tok.model";
    context.run = dir;
  }
  void TearDown() override { std::filesystem::remove_all(dir); }

  modalkit::CreateArgs args(const std::string& plugin, json config, const std::string& pointer) {
    return plugin_args(*registry, plugin, std::move(config), pointer, &context);
  }

  std::vector<modalkit::FieldRef> refs(const std::vector<std::string>& texts) {
    held.clear();
    for (const auto& t : texts) held.emplace_back(t);
    std::vector<modalkit::FieldRef> out;
    for (const auto& v : held) out.push_back(modalkit::FieldRef{v, base_, origin_});
    return out;
  }

  /// An lm_windows stream with windows of `window` pieces over `texts` as split "train" (and "val").
  std::shared_ptr<modalkit::BatchStream> stream(int64_t window, const std::vector<std::string>& texts) {
    auto s = registry->create<modalkit::BatchStream>("lm_windows", MODALKIT_KIND_STREAM,
                                                     args("lm_windows", {{"context", window}}, "/data/stream/config"));
    s->fit(refs(texts));
    s->open("train", refs(texts));
    s->open("val", refs(texts));
    return s;
  }
};

}  // namespace

TEST_F(LmFixture, TheTokenizerDecodesWhatItEncodes) {
  const modalkit::Tokenizer tok(dir / "tok.model");
  EXPECT_EQ(tok.bos(), 2);
  EXPECT_EQ(tok.eos(), 3);
  EXPECT_EQ(tok.pad(), 0);
  EXPECT_EQ(tok.sha256(), "5eed") << "read from the artifact sidecar";
  const std::string text = "the lazy dog fastened by straps";
  std::vector<int64_t> ids = tok.encode(text);
  ASSERT_FALSE(ids.empty());
  for (const int64_t id : ids) EXPECT_LT(id, tok.pieces());
  EXPECT_EQ(tok.decode(ids), text);
  ids.insert(ids.begin(), tok.bos());
  ids.push_back(tok.eos());
  EXPECT_EQ(tok.decode(ids), text) << "BOS and EOS are not text";
  try {
    tok.decode({tok.pieces()});
    ADD_FAILURE() << "an id past the vocabulary was decoded";
  } catch (const modalkit::Error& e) {
    EXPECT_NE(std::string(e.what()).find("is not a piece"), std::string::npos) << e.what();
  }
}

TEST_F(LmFixture, AMissingHelperIsNamed) {
  const std::string saved = std::getenv("MODALKIT_SPM_HELPER");
  ::setenv("MODALKIT_SPM_HELPER", (dir / "no-such-helper").c_str(), 1);
  try {
    modalkit::Tokenizer tok(dir / "tok.model");
    ADD_FAILURE() << "a tokenizer started without its helper";
  } catch (const modalkit::Error& e) {
    EXPECT_NE(std::string(e.what()).find("no-such-helper"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("tok.model"), std::string::npos) << e.what();
  }
  ::setenv("MODALKIT_SPM_HELPER", saved.c_str(), 1);
}

TEST_F(LmFixture, WindowsAreTheJoinedCorpusInOrder) {
  const modalkit::Tokenizer tok(dir / "tok.model");
  std::vector<int64_t> joined;
  for (const auto& t : kCorpus) {
    joined.push_back(tok.bos());
    for (const int64_t id : tok.encode(t)) joined.push_back(id);
    joined.push_back(tok.eos());
  }
  auto s = stream(8, kCorpus);
  const int64_t windows = (static_cast<int64_t>(joined.size()) - 1) / 8;
  EXPECT_EQ(s->batches("train", 4), (windows + 3) / 4);
  int64_t w = 0;
  for (int64_t i = 0; i < s->batches("train", 4); ++i) {
    const modalkit::Batch b = s->batch("train", 0, i, 4);
    const at::Tensor& t = b.inputs.at("tokens").data;
    ASSERT_EQ(t.size(1), 9);
    for (int64_t r = 0; r < t.size(0); ++r, ++w) {
      EXPECT_EQ(b.index[r].item<int64_t>(), w);
      for (int64_t c = 0; c < 9; ++c) ASSERT_EQ(t[r][c].item<int64_t>(), joined[static_cast<size_t>(w * 8 + c)]) << "window " << w;
    }
  }
  EXPECT_EQ(w, windows);
  const json info = s->info();
  EXPECT_EQ(info.at("pieces"), tok.pieces());
  EXPECT_EQ(info.at("tokenizer_sha256"), "5eed");
  EXPECT_EQ(info.at("tokens").at("train"), joined.size());
}

TEST_F(LmFixture, TrainingEpochsShuffleRepeatablyAndVisitEveryWindowOnce) {
  auto s = stream(4, kCorpus);
  auto order = [&](int64_t epoch) {
    std::vector<int64_t> out;
    for (int64_t i = 0; i < s->batches("train", 3); ++i) {
      const at::Tensor idx = s->batch("train", epoch, i, 3).index;
      for (int64_t r = 0; r < idx.size(0); ++r) out.push_back(idx[r].item<int64_t>());
    }
    return out;
  };
  const auto first = order(1), again = order(1), second = order(2), plain = order(0);
  EXPECT_EQ(first, again) << "a batch is a pure function of (seed, split, epoch, index)";
  EXPECT_NE(first, second);
  EXPECT_NE(first, plain);
  EXPECT_EQ(std::multiset<int64_t>(first.begin(), first.end()), std::multiset<int64_t>(plain.begin(), plain.end()));
  // A window's pieces do not depend on the epoch it is served in.
  const modalkit::Batch b = s->batch("train", 1, 0, 3);
  const modalkit::Batch in_order = s->batch("train", 0, b.index[0].item<int64_t>() / 3, 3);
  EXPECT_TRUE(at::equal(b.inputs.at("tokens").data[0], in_order.inputs.at("tokens").data[b.index[0].item<int64_t>() % 3]));
}

TEST_F(LmFixture, TooLittleTextIsRefusedNamingTheSplit) {
  try {
    stream(1000, kCorpus);
    ADD_FAILURE() << "a split shorter than one window was opened";
  } catch (const modalkit::DataError& e) {
    EXPECT_NE(std::string(e.what()).find("split \"train\""), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("lower config context"), std::string::npos) << e.what();
  }
}

TEST_F(LmFixture, PretrainingMemorisesACorpusAndWritesALoadableArtifact) {
  auto s = stream(16, kCorpus);
  std::vector<std::string> repeated;
  for (int i = 0; i < 20; ++i) repeated.insert(repeated.end(), kCorpus.begin(), kCorpus.end());
  s->open("train", refs(repeated));
  context.components["stream"] = s;
  auto model = registry->create<modalkit::TransferStrategy>(
      "language_model", MODALKIT_KIND_TRANSFER,
      args("language_model", {{"width", 32}, {"layers", 2}, {"heads", 2}, {"dropout", 0.0}, {"probe_prompts", {"sandal:"}}, {"probe_tokens", 6}},
           "/transfer/config"));
  model->build({});
  torch::manual_seed(1);
  torch::optim::Adam adam(model->parameters(), torch::optim::AdamOptions(3e-3));
  double first = 0, last = 0;
  for (int64_t epoch = 1; epoch <= 6; ++epoch) {
    for (int64_t i = 0; i < s->batches("train", 8); ++i) {
      const at::Tensor loss = model->loss(s->batch("train", epoch, i, 8)).at("lm");
      if (first == 0) first = loss.item<double>();
      last = loss.item<double>();
      adam.zero_grad();
      loss.backward();
      adam.step();
    }
  }
  EXPECT_LT(last, 0.25 * first) << "first " << first << ", last " << last;

  MemorySource source;
  for (int64_t i = 0; i < s->batches("val", 4); ++i) source.splits["val"].push_back(s->batch("val", 0, i, 4));
  source.splits["test"] = source.splits["val"];
  model->finalize(source);

  // The artifact reloads, checked against the tokenizer, and scores the validation windows as
  // perplexity.json says: continuation_log_probs is another path through the model than the loss.
  const modalkit::Tokenizer tok(dir / "tok.model");
  auto lm = modalkit::load_language_model(dir / "language_model.pt", &tok);
  EXPECT_EQ(lm->config().at("provenance").at("tokenizer_sha256"), "5eed");
  double nll = 0;
  int64_t count = 0;
  {
    torch::NoGradGuard no_grad;
    for (const auto& b : source.splits["val"]) {
      const at::Tensor t = b.inputs.at("tokens").data;
      const at::Tensor rest = t.narrow(1, 1, t.size(1) - 1);
      nll -= modalkit::continuation_log_probs(*lm, lm->embed(t.narrow(1, 0, 1)), {}, rest, {}).sum().item<double>();
      count += rest.numel();
    }
  }
  json report;
  std::ifstream(dir / "perplexity.json") >> report;
  EXPECT_NEAR(report.at("val").at("perplexity").get<double>(), std::exp(nll / static_cast<double>(count)), 1e-3);
  EXPECT_EQ(report.at("config").at("width"), 32);
  EXPECT_NEAR(report.at("test").at("perplexity").get<double>(), report.at("val").at("perplexity").get<double>(), 1e-9);

  // A split the run did not load is left out, not an error; a failing split is an error.
  source.splits.erase("test");
  model->finalize(source);
  std::ifstream(dir / "perplexity.json") >> report;
  EXPECT_TRUE(report.contains("val"));
  EXPECT_FALSE(report.contains("test")) << report.dump();
  source.splits["test"] = {modalkit::Batch{}};  // no "tokens": the model cannot read it
  EXPECT_THROW(model->finalize(source), modalkit::Error);

  json samples;
  std::ifstream(dir / "samples.json") >> samples;
  ASSERT_EQ(samples.size(), 1u);
  EXPECT_EQ(samples[0].at("prompt"), "sandal:");
  EXPECT_EQ(samples[0].at("continuation").get<std::string>().rfind("a shoe", 0), 0u)
      << "the memorised gloss continues the prompt: " << samples[0].dump();
}

TEST_F(LmFixture, PretrainingConfigAndDataErrorsAreNamed) {
  try {
    registry->create<modalkit::TransferStrategy>("language_model", MODALKIT_KIND_TRANSFER,
                                                 args("language_model", {{"width", 30}, {"heads", 4}}, "/transfer/config"));
    ADD_FAILURE() << "width 30 with 4 heads was accepted";
  } catch (const modalkit::PluginError& e) {
    EXPECT_NE(std::string(e.what()).find("/transfer/config/heads"), std::string::npos) << e.what();
  }
  auto model = registry->create<modalkit::TransferStrategy>("language_model", MODALKIT_KIND_TRANSFER,
                                                            args("language_model", json::object(), "/transfer/config"));
  try {
    model->build({});
    ADD_FAILURE() << "built without a stream";
  } catch (const std::exception& e) {
    EXPECT_NE(std::string(e.what()).find("lm_windows"), std::string::npos) << e.what();
  }
}

// ---- Transfer into the language model: prefix tuning and representation tuning ----

namespace {

const std::vector<std::string> kClasses = {"sandal", "boot", "fox"};

/// A fixture with a small language model artifact over the test tokenizer, pretrained here on
/// the corpus and the three captions (so that, as in Frozen, the model can already say each
/// caption and the conditioning has to pick the right one), and a synthetic modality "image"
/// ([B, 8] vectors around one mean per class).
class TransferFixture : public LmFixture {
 protected:
  at::Tensor x, y;

  void SetUp() override {
    LmFixture::SetUp();
    // Pretrained once per test program (the tokenizer each test trains is the same).
    static const std::filesystem::path pretrained =
        std::filesystem::temp_directory_path() / ("modalkit-test-lm-" + std::to_string(::getpid()) + ".pt");
    static const struct Cleanup {
      std::filesystem::path file;
      ~Cleanup() { std::filesystem::remove(file); }
    } cleanup{pretrained};
    if (!std::filesystem::exists(pretrained)) pretrain(pretrained);
    std::filesystem::copy_file(pretrained, dir / "lm.pt");
    context.artifacts["language_model"] = dir / "lm.pt";
    const at::Tensor means = torch::randn({3, 8}) * 2;
    y = torch::arange(90, torch::kLong) % 3;
    x = means.index_select(0, y) + 0.3 * torch::randn({90, 8});
  }

  void pretrain(const std::filesystem::path& file) {
    const modalkit::Tokenizer tok(dir / "tok.model");
    torch::manual_seed(5);
    auto written = std::make_shared<modalkit::CausalTransformerLM>(
        modalkit::CausalTransformerLMOptions(tok.pieces(), 32, 2, 2, 64).dropout(0.1), json{{"tokenizer_sha256", "5eed"}});
    std::vector<int64_t> corpus;
    for (int r = 0; r < 10; ++r) {
      std::vector<std::string> lines = kCorpus;
      for (const auto& c : kClasses) lines.push_back("this is a " + c + ".");
      for (const auto& line : lines) {
        corpus.push_back(tok.bos());
        for (const int64_t id : tok.encode(line)) corpus.push_back(id);
        corpus.push_back(tok.eos());
      }
    }
    const at::Tensor text = torch::tensor(corpus, torch::kLong);
    torch::optim::Adam adam(written->parameters(), torch::optim::AdamOptions(3e-3));
    for (int step = 0; step < 150; ++step) {
      const at::Tensor starts = torch::randint(text.size(0) - 25, {16}, torch::kLong);
      std::vector<at::Tensor> rows;
      for (int64_t i = 0; i < 16; ++i) rows.push_back(text.narrow(0, starts[i].item<int64_t>(), 25));
      const at::Tensor windows = at::stack(rows);
      const at::Tensor logits = written->forward(written->embed(windows.narrow(1, 0, 24)), {}, {});
      const at::Tensor loss = at::cross_entropy_loss(logits.reshape({-1, logits.size(-1)}), windows.narrow(1, 1, 24).reshape({-1}));
      adam.zero_grad();
      loss.backward();
      adam.step();
    }
    modalkit::save_language_model(*written, file);
  }

  /// The strategy built over a multiclass task "label" and, when `caption_task`, a generation
  /// task "caption" over the same classes.
  std::shared_ptr<modalkit::TransferStrategy> strategy(const std::string& plugin, json config, bool caption_task = false) {
    config["class_names"] = kClasses;
    const std::vector<std::string> modalities{"image"};
    modalkit::CreateArgs a = args(plugin, config, "/transfer/config");
    a.modalities = modalities;
    a.d_model = 16;
    auto model = registry->create<modalkit::TransferStrategy>(plugin, MODALKIT_KIND_TRANSFER, a);
    modalkit::ModelParts parts;
    parts.d_model = 16;
    torch::manual_seed(6);
    parts.encoders["image"] = modalkit::EncoderRef(std::make_shared<LinearEncoder>(8), "test");
    modalkit::TaskSpec spec{"label", modalkit::TaskType::kMulticlass, "label", {"a", "b", "c"}, 3, {"accuracy"}};
    parts.heads["label"] = modalkit::make_task_head(spec, 16);
    parts.tasks["label"] = spec;
    if (caption_task) parts.tasks["caption"] = {"caption", modalkit::TaskType::kGeneration, "label", {"a", "b", "c"}, 0, {"accuracy"}};
    model->build(parts);
    return model;
  }

  /// Trains `model` with Adam for `epochs` over batches of 30; returns the first and last loss.
  std::pair<double, double> train(modalkit::TransferStrategy& model, int epochs, double lr = 1e-2) {
    std::vector<at::Tensor> params;
    for (const auto& g : model.parameter_groups()) {
      if (!g.frozen) params.insert(params.end(), g.parameters.begin(), g.parameters.end());
    }
    torch::optim::Adam adam(params, torch::optim::AdamOptions(lr));
    model.train();
    double first = 0, last = 0;
    for (int e = 0; e < epochs; ++e) {
      for (int64_t s = 0; s < 90; s += 30) {
        const auto batch = make_batch({{"image", x.slice(0, s, s + 30)}}, y.slice(0, s, s + 30), s);
        const at::Tensor loss = model.loss(batch).at("caption");
        if (e == 0 && s == 0) first = loss.item<double>();
        last = loss.item<double>();
        adam.zero_grad();
        loss.backward();
        adam.step();
      }
    }
    model.eval();
    return {first, last};
  }

  double accuracy(modalkit::TransferStrategy& model) {
    torch::NoGradGuard no_grad;
    const at::Tensor scores = model.predict(make_batch({{"image", x}}, y, 0)).at("label");
    return scores.argmax(1).eq(y).to(at::kDouble).mean().item<double>();
  }
};

std::vector<at::Tensor> copies(const std::vector<at::Tensor>& params) {
  std::vector<at::Tensor> out;
  for (const auto& p : params) out.push_back(p.detach().clone());
  return out;
}

bool all_equal(const std::vector<at::Tensor>& a, const std::vector<at::Tensor>& b) {
  if (a.size() != b.size()) return false;
  for (size_t i = 0; i < a.size(); ++i) {
    if (!at::equal(a[i], b[i])) return false;
  }
  return true;
}

}  // namespace

TEST_F(TransferFixture, PrefixTuningTrainsTheEncoderThroughAFrozenModel) {
  auto model = strategy("prefix_tuning", {{"prefix_length", 2}});
  auto& lm = dynamic_cast<modalkit::ConditionedLanguageModel&>(*model).language_model();
  const auto lm_before = copies(lm.parameters());
  ASSERT_FALSE(lm_before.empty());
  auto* encoder = model->named_modules()["encoders.image"].get();
  ASSERT_NE(encoder, nullptr);
  const auto encoder_before = copies(encoder->parameters());
  for (const auto& item : model->named_parameters()) EXPECT_NE(item.key().rfind("lm.", 0), 0u) << "a frozen model is not saved: " << item.key();

  // One backward pass: gradients reach the encoder through the frozen model, none the model.
  model->train();
  model->loss(make_batch({{"image", x.slice(0, 0, 30)}}, y.slice(0, 0, 30), 0)).at("caption").backward();
  for (const auto& p : encoder->parameters()) {
    ASSERT_TRUE(p.grad().defined());
    EXPECT_GT(p.grad().abs().sum().item<double>(), 0.0);
  }
  for (const auto& p : lm.parameters()) EXPECT_FALSE(p.grad().defined());
  model->zero_grad();

  const auto [first, last] = train(*model, 40);
  EXPECT_LT(last, 0.5 * first) << "first " << first << ", last " << last;
  EXPECT_TRUE(all_equal(copies(lm.parameters()), lm_before)) << "the language model changed";
  EXPECT_FALSE(all_equal(copies(encoder->parameters()), encoder_before)) << "the encoder did not train";
  EXPECT_FALSE(lm.is_training()) << "a frozen model stays in evaluation mode (no dropout)";
  // Ranking the three captions by likelihood names the class.
  EXPECT_GT(accuracy(*model), 0.9);
  // The caption a protocol would check.
  EXPECT_EQ(dynamic_cast<modalkit::ConditionedLanguageModel&>(*model).caption(1), "this is a boot.");
}

TEST_F(TransferFixture, AGenerationTaskIsPredictedByGeneratingTheCaption) {
  auto model = strategy("prefix_tuning", {{"prefix_length", 2}}, /*caption_task=*/true);
  train(*model, 40);
  torch::NoGradGuard no_grad;
  const modalkit::Predictions p = model->predict(make_batch({{"image", x}}, y, 0));
  ASSERT_EQ(p.at("label").sizes(), (std::vector<int64_t>{90, 3})) << "the multiclass task is still ranked";
  const at::Tensor ids = p.at("caption");
  ASSERT_EQ(ids.scalar_type(), at::kLong);
  ASSERT_EQ(ids.size(0), 90);
  auto& c = dynamic_cast<modalkit::ConditionedLanguageModel&>(*model);
  int named = 0, exact = 0;
  for (int64_t r = 0; r < 90; ++r) {
    const std::vector<int64_t> row = modalkit::generated_row(ids, r);
    ASSERT_LE(static_cast<int64_t>(row.size()), 12) << "caption_tokens caps the length";
    for (const int64_t id : row) ASSERT_GE(id, 0);
    const std::string text = c.tokenizer().decode(row);
    const int64_t label = y[r].item<int64_t>();
    named += modalkit::mentioned_class(text, kClasses) == label ? 1 : 0;
    exact += modalkit::caption_words(text) == modalkit::caption_words(c.caption(label)) ? 1 : 0;
  }
  EXPECT_GT(named, 80) << "the generated captions name the image's class";
  EXPECT_GT(exact, 70) << "and are the trained caption";
  // The padding convention round trips.
  const at::Tensor padded = modalkit::pad_generated({{4, 5}, {}, {6}});
  EXPECT_TRUE(at::equal(padded, torch::tensor({4, 5, -1, -1, 6, -1}, torch::kLong).view({3, 2})));
  EXPECT_EQ(modalkit::generated_row(padded, 0), (std::vector<int64_t>{4, 5}));
  EXPECT_TRUE(modalkit::generated_row(padded, 1).empty());
}

TEST_F(TransferFixture, AFineTunedModelChangesAndIsSavedWithTheRun) {
  auto model = strategy("prefix_tuning", {{"freeze_lm", false}, {"lm_lr", 1e-3}});
  auto& lm = dynamic_cast<modalkit::ConditionedLanguageModel&>(*model).language_model();
  const auto lm_before = copies(lm.parameters());
  const auto groups = model->parameter_groups();
  ASSERT_EQ(groups.size(), 2u);
  EXPECT_EQ(groups[1].name, "lm");
  EXPECT_EQ(groups[1].lr, 1e-3);
  EXPECT_EQ(groups[1].parameters.size(), lm.parameters().size());
  train(*model, 2);
  EXPECT_FALSE(all_equal(copies(lm.parameters()), lm_before));
}

TEST_F(TransferFixture, RepresentationTuningTrainsBothVariantsInsideAFrozenModel) {
  for (const std::string variant : {"pseudo_self_attention", "adaptation_gate"}) {
    SCOPED_TRACE(variant);
    auto model = strategy("representation_tuning", {{"variant", variant}, {"layer", 0}});
    auto& c = dynamic_cast<modalkit::ConditionedLanguageModel&>(*model);
    EXPECT_FALSE(c.interleavable());
    const auto lm_before = copies(c.language_model().parameters());
    const modalkit::Conditioning cond = c.condition(make_batch({{"image", x.slice(0, 0, 4)}}, y.slice(0, 0, 4), 0));
    EXPECT_FALSE(cond.prefix.defined());
    if (variant == "pseudo_self_attention") {
      ASSERT_EQ(cond.hooks.extra_keys.size(), 2u);
      EXPECT_EQ(cond.hooks.extra_keys[0].sizes().vec(), (std::vector<int64_t>{4, 1, 32}));
    } else {
      EXPECT_EQ(cond.hooks.shift_layer, 0);
      // The gate bounds the shift: |h' - h| <= beta |h| at every position.
      const at::Tensor h = torch::randn({4, 3, 32});
      EXPECT_TRUE(((cond.hooks.shift(h) - h).norm(2, -1) <= h.norm(2, -1) * (1 + 1e-5)).all().item<bool>());
    }
    const auto [first, last] = train(*model, 40);
    EXPECT_LT(last, 0.5 * first) << "first " << first << ", last " << last;
    EXPECT_TRUE(all_equal(copies(c.language_model().parameters()), lm_before));
    EXPECT_GT(accuracy(*model), 0.9);
  }
}

TEST_F(TransferFixture, ConfigErrorsAreNamed) {
  auto message = [&](const std::string& plugin, const json& config) -> std::string {
    try {
      strategy(plugin, config);
    } catch (const std::exception& e) {
      return e.what();
    }
    return "(no error)";
  };
  EXPECT_NE(message("prefix_tuning", {{"caption_template", "a photo"}}).find("/transfer/config/caption_template"), std::string::npos);
  EXPECT_NE(message("representation_tuning", {{"variant", "adaptation_gate"}, {"layer", 5}}).find("has 2 blocks"), std::string::npos);
  // A TorchScript model has no hooks: representation tuning says so.
  torch::jit::Module m("Bigram");
  m.register_parameter("table", torch::zeros({60, 60}), false);
  m.register_attribute("vocab_size", c10::IntType::get(), int64_t{modalkit::Tokenizer(dir / "tok.model").pieces()});
  m.register_attribute("width", c10::IntType::get(), int64_t{60});
  m.register_attribute("context", c10::IntType::get(), int64_t{64});
  m.define("def embed(self, ids):\n    return torch.zeros(ids.size(0), ids.size(1), 60)\n\ndef forward(self, e, m):\n    return e\n");
  m.save((dir / "ts.pt").string());
  context.artifacts["language_model"] = dir / "ts.pt";
  EXPECT_NE(message("representation_tuning", json::object()).find("serves prefix_tuning only"), std::string::npos);
  // A model trained with another tokenizer is refused, naming both.
  std::ofstream(dir / "tok.model.artifact.json") << R"({"type": "sentencepiece", "sha256": "0ther"})";
  context.artifacts["language_model"] = dir / "lm.pt";
  EXPECT_NE(message("prefix_tuning", json::object()).find("was trained with tokenizer sha256 5eed"), std::string::npos);
}

// ---- Evaluation protocols on a model that conditions a language model ----

TEST(LmProtocols, StatisticsAndMatchingAgreeWithHandComputations) {
  namespace lp = modalkit::lm_protocols;
  const auto [lo, hi] = lp::wilson95(8, 10);  // Wilson (1927); e.g. Newcombe (1998), table I
  EXPECT_NEAR(lo, 0.4902, 1e-4);
  EXPECT_NEAR(hi, 0.9433, 1e-4);
  EXPECT_NEAR(lp::binomial_p_at_least(7, 10, 0.5), 176.0 / 1024.0, 1e-12);  // C(10,7..10) / 2^10
  EXPECT_NEAR(lp::binomial_p_at_least(0, 10, 0.5), 1.0, 1e-12);
  const std::vector<std::string> names{"boot", "ankle boot", "t-shirt/top"};
  EXPECT_EQ(modalkit::mentioned_class("This is an Ankle boot.", names), 1) << "the longest name wins";
  EXPECT_EQ(modalkit::mentioned_class("a boot, surely", names), 0);
  EXPECT_EQ(modalkit::mentioned_class("a t-shirt/top", names), 2);
  EXPECT_EQ(modalkit::mentioned_class("bootleg", names), -1) << "whole words only";
}

namespace {

std::shared_ptr<modalkit::EvaluationProtocol> protocol(LmFixture& f, const std::string& plugin, json config) {
  return f.registry->create<modalkit::EvaluationProtocol>(plugin, MODALKIT_KIND_EVALUATION,
                                                          f.args(plugin, std::move(config), "/evaluate/protocols/" + plugin));
}

}  // namespace

TEST_F(TransferFixture, CaptioningNamesTheClassAndABlindModelCannot) {
  auto model = strategy("prefix_tuning", json::object());
  train(*model, 40);
  MemorySource source;
  for (int64_t s = 0; s < 90; s += 30) source.splits["test"].push_back(make_batch({{"image", x.slice(0, s, s + 30)}}, y.slice(0, s, s + 30), s));
  const json seen = protocol(*this, "captioning", {{"max_tokens", 16}})->evaluate(*model, source, "test", {"image"});
  EXPECT_EQ(seen.at("n"), 90);
  EXPECT_GT(seen.at("accuracy").get<double>(), 0.9) << seen.dump();
  EXPECT_LE(seen.at("ci95_low").get<double>(), seen.at("accuracy").get<double>());
  EXPECT_EQ(seen.at("examples").size(), 10u);
  // Blind, every prompt is the same, so is every caption: at most one class of three is right.
  const json blind = protocol(*this, "captioning", {{"condition", "none"}})->evaluate(*model, source, "test", {"image"});
  EXPECT_LE(blind.at("accuracy").get<double>(), 1.0 / 3.0 + 1e-9) << blind.dump();
}

TEST_F(TransferFixture, PromptsThatCannotDifferAreGeneratedOnceWithTheSameResult) {
  namespace lp = modalkit::lm_protocols;
  auto model = strategy("prefix_tuning", json::object());
  train(*model, 10);
  auto& c = dynamic_cast<modalkit::ConditionedLanguageModel&>(*model);
  const auto batch = make_batch({{"image", x.slice(0, 0, 12)}}, y.slice(0, 0, 12), 0);
  modalkit::GenerateOptions options;
  options.max_tokens = 6;
  options.eos = c.tokenizer().eos();
  for (const char* condition : {"none", "class_name", "input"}) {
    const lp::PromptConfig config(modalkit::Config({{"task", "label"}, {"condition", condition}, {"class_text", "this is a {}. "}}, "/c"));
    const lp::Prompts every = lp::prompts(c, batch, config, "question: what is it? answer:");
    const auto expected = modalkit::generate(c.language_model(), every.embeds, every.mask, options, every.hooks);
    EXPECT_EQ(lp::generate_rows(c, batch, config, "question: what is it? answer:", options), expected) << condition;
  }
}

TEST_F(TransferFixture, RowsWithDifferentPromptsArePaddedAndAnswerAsEachAlone) {
  // The knowledge protocol asks a batch's (sample, question) pairs in one call: prompts of
  // different lengths, padded on the left behind the prefix. Each row must get what it gets alone.
  namespace lp = modalkit::lm_protocols;
  const std::vector<std::string> texts = {"question: what is it? answer:", "a", "question: what does it cover and why? answer:"};
  for (const json& which : {json{{"plugin", "prefix_tuning"}, {"config", json::object()}},
                            json{{"plugin", "representation_tuning"}, {"config", {{"variant", "pseudo_self_attention"}}}},
                            json{{"plugin", "representation_tuning"}, {"config", {{"variant", "adaptation_gate"}}}}}) {
    auto model = strategy(which.at("plugin"), which.at("config"));
    train(*model, 10);
    auto& c = dynamic_cast<modalkit::ConditionedLanguageModel&>(*model);
    const auto batch = make_batch({{"image", x.slice(0, 0, 9)}}, y.slice(0, 0, 9), 0);
    std::vector<std::string> per_row;
    // Classes cycle with r % 3 and texts with r / 3: every class meets every text, so a row's
    // prefix, hooks or class name swapped with another row's of the same text would show.
    for (int64_t r = 0; r < 9; ++r) per_row.push_back(texts[static_cast<size_t>(r / 3)]);
    modalkit::GenerateOptions options;
    options.max_tokens = 5;
    for (const char* condition : {"none", "class_name", "input"}) {
      const lp::PromptConfig config(modalkit::Config({{"task", "label"}, {"condition", condition}, {"class_text", "this is a {}. "}}, "/c"));
      const lp::Prompts p = lp::prompts(c, batch, config, per_row);
      ASSERT_EQ(p.mask.size(0), 9);
      EXPECT_TRUE(p.mask.select(1, -1).all().item<bool>()) << "every row ends at a real position";
      EXPECT_FALSE(p.mask.all().item<bool>()) << "the rows differ in length";
      const auto together = lp::generate_rows(c, batch, config, per_row, options);
      ASSERT_EQ(together.size(), 9u);
      std::set<std::vector<int64_t>> distinct;
      for (int64_t r = 0; r < 9; ++r) {
        const auto one = batch.select(at::tensor({r}, at::kLong));
        const lp::Prompts alone = lp::prompts(c, one, config, std::vector<std::string>{per_row[static_cast<size_t>(r)]});
        EXPECT_TRUE(alone.mask.all().item<bool>());
        const auto expected = modalkit::generate(c.language_model(), alone.embeds, alone.mask, options, alone.hooks);
        EXPECT_EQ(together[static_cast<size_t>(r)], expected.at(0)) << which.dump() << " " << condition << " row " << r;
        distinct.insert(expected.at(0));
      }
      // Otherwise any mix-up of rows would pass.
      EXPECT_GE(distinct.size(), 2u) << which.dump() << " " << condition << ": every row answered the same";
    }
  }
}

TEST_F(TransferFixture, FewShotEpisodesAreScoredAgainstChance) {
  auto model = strategy("prefix_tuning", json::object());
  MemorySource source;
  for (int64_t s = 0; s < 90; s += 30) source.splits["test"].push_back(make_batch({{"image", x.slice(0, s, s + 30)}}, y.slice(0, s, s + 30), s));
  const json r = protocol(*this, "few_shot_binding", {{"episodes", 24}, {"shots", 1}, {"support_template", "a {}."}, {"query_prompt", "a"}})->evaluate(*model, source, "test", {"image"});
  EXPECT_EQ(r.at("applicable"), true);
  EXPECT_EQ(r.at("n"), 24);
  namespace lp = modalkit::lm_protocols;
  EXPECT_NEAR(r.at("p_value").get<double>(), lp::binomial_p_at_least(r.at("correct"), 24, 0.5), 1e-12);
  // The same seed draws the same episodes.
  EXPECT_EQ(protocol(*this, "few_shot_binding", {{"episodes", 24}, {"shots", 1}, {"support_template", "a {}."}, {"query_prompt", "a"}})->evaluate(*model, source, "test", {"image"}), r);
  // The words scored against each other take the same number of pieces (a shorter word would be
  // likelier for its length alone): the largest such group of the configured words.
  const auto& tok = dynamic_cast<modalkit::ConditionedLanguageModel&>(*model).tokenizer();
  std::map<size_t, size_t> group_size;
  const json& configured = registry->find("few_shot_binding")->config_schema.at("properties").at("words").at("default");
  for (const auto& w : configured) ++group_size[tok.encode(w.get<std::string>() + ".").size()];
  const size_t pieces = tok.encode(r.at("words").at(0).get<std::string>() + ".").size();
  for (const auto& w : r.at("words")) EXPECT_EQ(tok.encode(w.get<std::string>() + ".").size(), pieces) << w;
  EXPECT_EQ(r.at("words").size(), group_size.at(pieces));
  for (const auto& [n, k] : group_size) EXPECT_LE(k, group_size.at(pieces)) << n << " pieces";
  const std::string short_word = "a", long_word = "qzxqvjqzxqvjqzx";
  ASSERT_NE(tok.encode(short_word + ".").size(), tok.encode(long_word + ".").size());
  try {
    protocol(*this, "few_shot_binding", {{"words", json::array({short_word, long_word})}})->evaluate(*model, source, "test", {"image"});
    ADD_FAILURE() << "words of different lengths were scored against each other";
  } catch (const modalkit::ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find("same length in pieces"), std::string::npos) << e.what();
  }
  // Hooks condition a whole sequence on one input: no episodes.
  auto gated = strategy("representation_tuning", {{"variant", "adaptation_gate"}});
  EXPECT_EQ(protocol(*this, "few_shot_binding", json::object())->evaluate(*gated, source, "test", {"image"}).at("applicable"), false);
}

TEST_F(TransferFixture, KnowledgeQuestionsAskEachSampleItsClasssQuestions) {
  auto model = strategy("prefix_tuning", json::object());
  std::ofstream(dir / "questions.jsonl") << R"({"class": "sandal", "question": "what is it?", "answer": "shoe"})" << "\n"
                                         << R"({"class": "fox", "question": "what does it jump over?", "answer": "dog"})" << "\n";
  context.artifacts["questions"] = dir / "questions.jsonl";
  MemorySource source;
  source.splits["test"].push_back(make_batch({{"image", x}}, y, 0));
  const json r = protocol(*this, "knowledge_questions", {{"condition", "class_name"}})->evaluate(*model, source, "test", {"image"});
  EXPECT_EQ(r.at("n"), 60) << "30 sandals and 30 foxes, one question each";
  EXPECT_EQ(r.at("per_question")[0].at("asked"), 30);
  EXPECT_EQ(r.at("per_question")[1].at("answer"), "dog");
  // Bad files are named with their line.
  std::ofstream(dir / "bad.jsonl") << R"({"class": "sandal", "question": "what is it?", "answer": "a shoe"})" << "\n";
  context.artifacts["questions"] = dir / "bad.jsonl";
  try {
    protocol(*this, "knowledge_questions", json::object());
    ADD_FAILURE() << "a two-word answer was accepted";
  } catch (const modalkit::PluginError& e) {
    EXPECT_NE(std::string(e.what()).find("bad.jsonl:1"), std::string::npos) << e.what();
  }
  // An answer a caption says ("this is a fox.") is refused: it tests the tuning, not the LM.
  std::ofstream(dir / "caption.jsonl") << R"({"class": "sandal", "question": "what is it?", "answer": "shoe"})" << "\n"
                                       << R"({"class": "sandal", "question": "what chases it?", "answer": "Fox"})" << "\n";
  context.artifacts["questions"] = dir / "caption.jsonl";
  try {
    protocol(*this, "knowledge_questions", json::object())->evaluate(*model, source, "test", {"image"});
    ADD_FAILURE() << "an answer that is a caption word was accepted";
  } catch (const modalkit::DataError& e) {
    EXPECT_NE(std::string(e.what()).find("caption.jsonl:2"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("\"fox\" is a word of the caption \"this is a fox.\""), std::string::npos) << e.what();
  }
  std::ofstream(dir / "other.jsonl") << R"({"class": "coat", "question": "what is it?", "answer": "garment"})" << "\n";
  context.artifacts["questions"] = dir / "other.jsonl";
  try {
    protocol(*this, "knowledge_questions", json::object())->evaluate(*model, source, "test", {"image"});
    ADD_FAILURE() << "a class the model does not know was accepted";
  } catch (const modalkit::DataError& e) {
    EXPECT_NE(std::string(e.what()).find("\"coat\" is not one of the model's class names"), std::string::npos) << e.what();
  }
}
