// The skipgram stream and the word_vectors strategy, loaded through the host like any plugin:
// tokenisation and vocabulary, the exact pairs of a small corpus, window bounds, determinism of
// batches (the property resume relies on), the noise distribution, subsampling, errors, and the
// loss against a direct computation.
#include <cmath>
#include <fstream>
#include <list>
#include <set>

#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include "strategy_fixture.hpp"
#include "modalkit/strategy.hpp"
#include "modalkit/stream.hpp"
#include "modalkit/word_vectors.hpp"

namespace {

using nlohmann::json;

/// A context whose find_component("stream") is the stream under test.
class StreamContext : public TestContext {
 public:
  std::shared_ptr<modalkit::Component> stream;
  std::filesystem::path run;
  std::filesystem::path run_dir() const override { return run; }
  std::shared_ptr<modalkit::Component> find_component(const std::string& name) const override {
    return name == "stream" ? stream : nullptr;
  }
};

class SkipGram : public ::testing::Test {
 protected:
  std::unique_ptr<modalkit::host::PluginRegistry> registry;
  StreamContext context;
  void SetUp() override {
    registry = std::make_unique<modalkit::host::PluginRegistry>(
        std::vector<std::filesystem::path>{std::getenv("MODALKIT_PLUGIN_BUILD_DIR")});
  }

  modalkit::CreateArgs args(const std::string& plugin, json config, const std::string& pointer) {
    return plugin_args(*registry, plugin, std::move(config), pointer, &context);
  }

  /// A stream with `config`, fitted on `train` and with split "train" opened.
  std::shared_ptr<modalkit::BatchStream> stream(const json& config, const std::vector<json>& train) {
    auto s = registry->create<modalkit::BatchStream>("skipgram", MODALKIT_KIND_STREAM, args("skipgram", config, "/data/stream/config"));
    s->fit(refs(train));
    s->open("train", refs(train));
    return s;
  }

  /// FieldRefs over `values` (kept alive in this fixture).
  std::vector<modalkit::FieldRef> refs(const std::vector<json>& values) {
    held_.push_back(values);
    std::vector<modalkit::FieldRef> out;
    for (const auto& v : held_.back()) out.push_back(modalkit::FieldRef{v, base_, origin_});
    return out;
  }

  /// Every (center, context) pair of `epoch` of split "train", as words.
  static std::multiset<std::pair<std::string, std::string>> pairs(const modalkit::BatchStream& s, int64_t epoch,
                                                                   int64_t batch_size) {
    const auto words = s.info().at("vocabulary").get<std::vector<std::string>>();
    std::multiset<std::pair<std::string, std::string>> out;
    for (int64_t i = 0; i < s.batches("train", batch_size); ++i) {
      const modalkit::Batch b = s.batch("train", epoch, i, batch_size);
      for (int64_t k = 0; k < b.size(); ++k) {
        out.emplace(words.at(static_cast<size_t>(b.inputs.at("center").data[k].item<int64_t>())),
                    words.at(static_cast<size_t>(b.inputs.at("context").data[k].item<int64_t>())));
      }
    }
    return out;
  }

 private:
  std::list<std::vector<json>> held_;
  std::filesystem::path base_ = ".";
  std::string origin_ = "samples.jsonl:1";
};

TEST_F(SkipGram, VocabularyIsTheFrequentWordsByCountThenSpelling) {
  auto s = stream({{"min_count", 2}, {"subsample", 0}}, {"The cat sat on the mat.", "A T-shirt, don't; the_cat", "cat mat zebra"});
  // the ×3 (the_cat splits at '_'), cat ×3, mat ×2; t-shirt, don't, sat, on, a, zebra once.
  EXPECT_EQ(s->info().at("vocabulary"), json({"cat", "the", "mat"}));
  EXPECT_EQ(s->info().at("counts"), json({3, 3, 2}));
  auto all = stream({{"min_count", 1}, {"subsample", 0}}, {"A T-shirt, don't; x-", "T-SHIRT"});
  const auto words = all->info().at("vocabulary").get<std::vector<std::string>>();
  EXPECT_EQ(words.front(), "t-shirt");  // hyphenated words are one word, lower-cased
  EXPECT_NE(std::find(words.begin(), words.end(), "don't"), words.end());
  EXPECT_NE(std::find(words.begin(), words.end(), "x"), words.end());  // a trailing '-' separates
}

TEST_F(SkipGram, SourceFileReadsTheTextFromFiles) {
  const std::string name = "skipgram-text-" + std::to_string(::getpid()) + ".txt";
  std::ofstream(name) << "alpha beta alpha gamma";
  auto s = stream({{"min_count", 1}, {"subsample", 0}, {"source", "file"}}, {name});
  EXPECT_EQ(s->info().at("vocabulary"), json({"alpha", "beta", "gamma"}));
  std::filesystem::remove(name);
  auto inline_text = registry->create<modalkit::BatchStream>("skipgram", MODALKIT_KIND_STREAM,
                                                             args("skipgram", {{"source", "file"}}, "/data/stream/config"));
  try {
    inline_text->fit(refs({"no such file.txt"}));
    ADD_FAILURE() << "a missing file was read";
  } catch (const modalkit::Error& e) {
    EXPECT_NE(std::string(e.what()).find("samples.jsonl:1: cannot read ./no such file.txt (config source is \"file\")"),
              std::string::npos) << e.what();
  }
}

TEST_F(SkipGram, AWindowOfOnePairsNeighboursWithinADocumentOnly) {
  auto s = stream({{"min_count", 1}, {"window", 1}, {"subsample", 0}}, {"a b c", "d e"});
  EXPECT_EQ(s->batches("train", 4), 2);  // 6 pairs
  const std::multiset<std::pair<std::string, std::string>> expected{{"a", "b"}, {"b", "a"}, {"b", "c"},
                                                                    {"c", "b"}, {"d", "e"}, {"e", "d"}};
  for (int64_t epoch : {0, 1, 2}) EXPECT_EQ(pairs(*s, epoch, 4), expected) << "epoch " << epoch;
}

TEST_F(SkipGram, PairsStayInsideTheDynamicWindow) {
  std::string doc;
  for (int i = 0; i < 40; ++i) doc += "w" + std::to_string(i) + " ";
  auto s = stream({{"min_count", 1}, {"window", 3}, {"subsample", 0}}, {doc});
  std::set<int> distances;
  for (const auto& [c, o] : pairs(*s, 1, 64)) {
    const int d = std::abs(std::stoi(c.substr(1)) - std::stoi(o.substr(1)));
    EXPECT_GE(d, 1);
    EXPECT_LE(d, 3);
    distances.insert(d);
  }
  EXPECT_EQ(distances, (std::set<int>{1, 2, 3}));
}

TEST_F(SkipGram, BatchesAreAPureFunctionOfSeedSplitEpochAndIndex) {
  const std::vector<json> text{"the quick brown fox jumps over the lazy dog", "the dog sleeps", "a fox runs over the hill"};
  const json config = {{"min_count", 1}, {"subsample", 0.01}};
  auto one = stream(config, text), two = stream(config, text);
  const modalkit::Batch a = one->batch("train", 2, 1, 8), b = two->batch("train", 2, 1, 8);
  const modalkit::Batch again = one->batch("train", 2, 1, 8);  // from the cache
  one->batch("train", 3, 0, 8);
  one->batch("train", 4, 0, 8);  // the cache keeps two epochs: epoch 2 is made again below
  const modalkit::Batch later = one->batch("train", 2, 1, 8);
  for (const char* k : {"center", "context", "negatives"}) {
    EXPECT_TRUE(a.inputs.at(k).data.equal(b.inputs.at(k).data)) << k;
    EXPECT_TRUE(a.inputs.at(k).data.equal(again.inputs.at(k).data)) << k;
    EXPECT_TRUE(a.inputs.at(k).data.equal(later.inputs.at(k).data)) << k;
  }
  EXPECT_EQ(a.inputs.at("negatives").data.sizes(), (std::vector<int64_t>{8, 5}));
  // Another epoch is another draw.
  bool differs = false;
  for (int64_t i = 0; i < one->batches("train", 8); ++i) {
    differs = differs || !one->batch("train", 1, i, 8).inputs.at("center").data.equal(one->batch("train", 2, i, 8).inputs.at("center").data);
  }
  EXPECT_TRUE(differs);
}

TEST_F(SkipGram, EveryEpochHasEpochZerosLengthWrappingOrCutting) {
  // Subsampling and windows are redrawn each epoch, so epochs draw different numbers of pairs;
  // each is served as exactly batches() batches, the last one partial, wrapping when short.
  std::string text;
  for (int i = 0; i < 60; ++i) text += "w" + std::to_string(i % 7) + " ";
  auto s = stream({{"min_count", 1}, {"subsample", 0.05}, {"window", 3}}, {text});
  const int64_t n = s->batches("train", 16);
  const int64_t last = s->batch("train", 0, n - 1, 16).size();
  ASSERT_GE(last, 1);
  for (int64_t epoch = 1; epoch <= 6; ++epoch) {
    for (int64_t i = 0; i < n - 1; ++i) ASSERT_EQ(s->batch("train", epoch, i, 16).size(), 16) << epoch << " " << i;
    EXPECT_EQ(s->batch("train", epoch, n - 1, 16).size(), last) << "epoch " << epoch;
  }
  try {
    s->batch("train", 1, n, 16);
    ADD_FAILURE() << "a batch past the end was served";
  } catch (const modalkit::Error& e) {
    EXPECT_NE(std::string(e.what()).find("out of range"), std::string::npos) << e.what();
  }
}

TEST_F(SkipGram, NegativesFollowTheUnigramDistributionToTheThreeQuarters) {
  std::string text;
  for (int i = 0; i < 16; ++i) text += "common ";
  text += "rare rare";  // counts 16 and 2: noise weights 16^0.75 = 8 and 2^0.75
  auto s = stream({{"min_count", 1}, {"subsample", 0}, {"negatives", 50}}, {text});
  const auto words = s->info().at("vocabulary").get<std::vector<std::string>>();
  int64_t common = 0, total = 0;
  for (int64_t i = 0; i < s->batches("train", 8); ++i) {
    const at::Tensor n = s->batch("train", 1, i, 8).inputs.at("negatives").data;
    common += (n == (words[0] == "common" ? 0 : 1)).sum().item<int64_t>();
    total += n.numel();
  }
  const double expected = 8.0 / (8.0 + std::pow(2.0, 0.75));
  ASSERT_GT(total, 1000);
  EXPECT_NEAR(static_cast<double>(common) / static_cast<double>(total), expected, 0.03);
}

TEST_F(SkipGram, SubsamplingThinsOutFrequentWords) {
  std::string text;
  for (int i = 0; i < 200; ++i) text += "the w" + std::to_string(i % 50) + " ";
  auto share_of_the = [&](double t) {
    auto s = stream({{"min_count", 1}, {"subsample", t}}, {text});
    int64_t the = 0, all = 0;
    for (const auto& [c, o] : pairs(*s, 1, 256)) {
      the += c == "the";
      ++all;
    }
    return static_cast<double>(the) / static_cast<double>(all);
  };
  const double kept = share_of_the(0), thinned = share_of_the(0.01);
  EXPECT_NEAR(kept, 0.5, 0.02);
  EXPECT_LT(thinned, kept - 0.1);
}

TEST_F(SkipGram, BadInputIsNamed) {
  auto s = registry->create<modalkit::BatchStream>("skipgram", MODALKIT_KIND_STREAM, args("skipgram", {{"min_count", 3}}, "/data/stream/config"));
  try {
    s->fit(refs({"one two", "three"}));
    ADD_FAILURE() << "fit accepted a corpus without frequent words";
  } catch (const modalkit::Error& e) {
    EXPECT_NE(std::string(e.what()).find("0 word(s) seen at least 3 times; lower config min_count"), std::string::npos) << e.what();
  }
  try {
    s->fit(refs({json(42)}));
    ADD_FAILURE() << "fit accepted a number";
  } catch (const modalkit::Error& e) {
    EXPECT_NE(std::string(e.what()).find("samples.jsonl:1: skipgram reads text, found number"), std::string::npos) << e.what();
  }
  auto ok = stream({{"min_count", 1}, {"subsample", 0}}, {"a b", "a b"});
  try {
    ok->batches("val", 4);
    ADD_FAILURE() << "a split that was never opened gave batches";
  } catch (const modalkit::Error& e) {
    EXPECT_NE(std::string(e.what()).find("split \"val\" was not opened"), std::string::npos) << e.what();
  }
  try {
    ok->open("val", refs({"zzz unknown"}));
    ADD_FAILURE() << "a split without known words opened";
  } catch (const modalkit::Error& e) {
    EXPECT_NE(std::string(e.what()).find("split \"val\" yields no pairs"), std::string::npos) << e.what();
  }
  // The default subsampling (t = 1e-4) leaves almost nothing of a tiny corpus, and says what to change.
  try {
    stream({{"min_count", 1}}, {"a b", "a b"});
    ADD_FAILURE() << "a tiny corpus subsampled to nothing opened";
  } catch (const modalkit::Error& e) {
    EXPECT_NE(std::string(e.what()).find("lower config subsample"), std::string::npos) << e.what();
  }
}

TEST_F(SkipGram, FittedStateRestoresTheSameBatches) {
  const std::vector<json> text{"red green blue red green", "blue blue red"};
  const json config = {{"min_count", 1}, {"subsample", 0.1}};  // the counts drive subsampling and negatives
  auto a = stream(config, text);
  auto b = registry->create<modalkit::BatchStream>("skipgram", MODALKIT_KIND_STREAM, args("skipgram", config, "/data/stream/config"));
  b->load_fitted_state(json::parse(a->fitted_state().dump()));
  b->open("train", refs(text));
  ASSERT_EQ(a->batches("train", 4), b->batches("train", 4));
  for (int64_t i = 0; i < a->batches("train", 4); ++i) {
    const modalkit::Batch x = a->batch("train", 1, i, 4), y = b->batch("train", 1, i, 4);
    for (const char* k : {"center", "context", "negatives"}) EXPECT_TRUE(x.inputs.at(k).data.equal(y.inputs.at(k).data)) << k;
  }
}

TEST_F(SkipGram, TheLossIsSkipGramWithNegativeSampling) {
  auto s = stream({{"min_count", 1}, {"negatives", 3}, {"subsample", 0}}, {"one two three four five six seven", "two four six"});
  context.stream = s;
  auto model = registry->create<modalkit::TransferStrategy>("word_vectors", MODALKIT_KIND_TRANSFER,
                                                            args("word_vectors", {{"dim", 6}}, "/transfer/config"));
  model->build(modalkit::ModelParts{});
  at::Tensor c, o;
  for (auto& p : model->named_parameters()) {
    if (p.key() == "center") c = p.value();
    if (p.key() == "context") o = p.value();
  }
  ASSERT_TRUE(c.defined() && o.defined());
  EXPECT_EQ(c.sizes(), (std::vector<int64_t>{7, 6}));
  {
    at::NoGradGuard no_grad;
    o.normal_();  // word2vec starts context vectors at zero; make the check non-trivial
  }
  const modalkit::Batch b = s->batch("train", 1, 0, 5);
  const double loss = model->loss(b).at("skipgram").item<double>();
  // Directly: mean over pairs of -log σ(c·o) - Σ_k log σ(-c·n_k), in double.
  auto sig = [](double x) { return 1.0 / (1.0 + std::exp(-x)); };
  const at::Tensor cd = c.detach().to(at::kDouble), od = o.detach().to(at::kDouble);
  double sum = 0;
  for (int64_t i = 0; i < b.size(); ++i) {
    const at::Tensor ci = cd[b.inputs.at("center").data[i].item<int64_t>()];
    sum -= std::log(sig(ci.dot(od[b.inputs.at("context").data[i].item<int64_t>()]).item<double>()));
    for (int64_t k = 0; k < 3; ++k) {
      sum -= std::log(sig(-ci.dot(od[b.inputs.at("negatives").data[i][k].item<int64_t>()]).item<double>()));
    }
  }
  EXPECT_NEAR(loss, sum / static_cast<double>(b.size()), 1e-5);
  EXPECT_TRUE(model->predict(b).empty());
}

TEST_F(SkipGram, TheWrittenVectorsReadBackThroughTheSdk) {
  // finalize writes word2vec text; the SDK reader other plugins use gets the center vectors back.
  auto s = stream({{"min_count", 1}, {"subsample", 0}}, {"red green blue red", "green blue yellow"});
  context.stream = s;
  context.run = std::filesystem::current_path() / ("wv-run-" + std::to_string(::getpid()));
  std::filesystem::create_directories(context.run);
  auto model = registry->create<modalkit::TransferStrategy>("word_vectors", MODALKIT_KIND_TRANSFER,
                                                            args("word_vectors", {{"dim", 5}}, "/transfer/config"));
  model->build(modalkit::ModelParts{});
  struct NoData : modalkit::BatchSource {
    void for_each(const std::string&, const std::vector<std::string>&, const std::function<void(const modalkit::Batch&)>&) override {}
  } none;
  model->finalize(none);
  const modalkit::WordVectors wv = modalkit::read_word_vectors(context.run / "word_vectors.txt");
  EXPECT_EQ(json(wv.words), s->info().at("vocabulary"));
  at::Tensor center;
  for (auto& p : model->named_parameters()) {
    if (p.key() == "center") center = p.value().detach();
  }
  EXPECT_TRUE(at::allclose(wv.vectors, center, /*rtol=*/1e-5, /*atol=*/1e-9));
  std::filesystem::remove_all(context.run);
}

}  // namespace
