// The text plugin through the host: inline and file texts, a SentencePiece tokenizer trained
// here on a few sentences by the modalkit-spm helper, BOS and truncation, bad input, perturbations, and the encoder's
// masks (padding never reaching real pieces).
#include <fstream>
#include <sstream>

#include <gtest/gtest.h>
#include <torch/torch.h>

#include "modality_fixture.hpp"

namespace {

/// Runs `command`, returns its stdout.
std::string output_of(const std::string& command) {
  std::string out;
  FILE* pipe = ::popen(command.c_str(), "r");
  char buf[4096];
  for (size_t n; (n = fread(buf, 1, sizeof buf, pipe)) > 0;) out.append(buf, n);
  ::pclose(pipe);
  return out;
}

struct TextFixture : ModalityFixture {
  TextFixture() : ModalityFixture("text") {}
  TestContext context;
  const std::string helper = std::string(std::getenv("MODALKIT_PLUGIN_BUILD_DIR")) + "/modalkit-spm";

  void SetUp() override {
    ModalityFixture::SetUp();
    std::ofstream corpus(dir / "corpus.txt");
    for (int i = 0; i < 50; ++i) {
      corpus << "sandal: a shoe consisting of a sole fastened by straps to the foot\n"
             << "boot: footwear that covers the whole foot and the lower leg\n"
             << "the quick brown fox jumps over the lazy dog number " << i << "\n";
    }
    corpus.close();
    const std::string train = helper + " train --input=" + (dir / "corpus.txt").string() + " --model_prefix=" +
                              (dir / "tok").string() +
                              " --vocab_size=60 --hard_vocab_limit=false --pad_id=0 --unk_id=1 --bos_id=2 --eos_id=3"
                              " --minloglevel=2";
    ASSERT_EQ(std::system(train.c_str()), 0) << train;
    context.artifacts["tokenizer"] = dir / "tok.model";
  }
};

TEST_F(TextFixture, PiecesFollowTheTokenizerAfterBosAndAreCut) {
  auto text = make({{"max_tokens", 5}}, &context);
  auto raw = decode_with(*text, "the lazy dog fastened by straps", dir);
  EXPECT_EQ(raw.text, "the lazy dog fastened by straps");
  // The pieces the helper's one-shot mode gives for the same text.
  std::istringstream listed(output_of("printf '%s' '" + raw.text + "' | " + helper + " encode " + (dir / "tok.model").string()));
  std::vector<int64_t> ids;
  for (int64_t id; listed >> id;) ids.push_back(id);
  ASSERT_GT(ids.size(), 5u);
  auto f = text->featurize(raw);
  ASSERT_EQ(f.numel(), 6);  // BOS + 5 pieces
  EXPECT_EQ(f[0].item<int64_t>(), 2);
  for (int i = 0; i < 5; ++i) EXPECT_EQ(f[i + 1].item<int64_t>(), ids[size_t(i)]);
  EXPECT_EQ(text->featurize({{}, "", 0}).numel(), 1);  // empty text: BOS only
}

TEST_F(TextFixture, FilesAreReadAndBadOnesNamed) {
  auto text = make({{"source", "file"}, {"max_bytes", 20}}, &context);
  std::ofstream(dir / "a.txt") << "a shoe";
  EXPECT_EQ(decode_with(*text, "a.txt", dir).text, "a shoe");
  std::ofstream(dir / "big.txt") << std::string(21, 'x');
  auto error = decode_error_with(*text, "big.txt", dir);
  EXPECT_NE(error.find("big.txt is 21 bytes, over max_bytes 20"), std::string::npos) << error;
  error = decode_error_with(*text, "gone.txt", dir);
  EXPECT_NE(error.find("gone.txt"), std::string::npos) << error;
  EXPECT_NE(error.find("samples.jsonl:1"), std::string::npos) << error;
  error = decode_error_with(*text, 5, dir);
  EXPECT_NE(error.find("path string"), std::string::npos) << error;
  // Without a tokenizer, decoding works and featurizing says why it cannot.
  auto bare = make({});
  auto raw = decode_with(*bare, "words", dir);
  try {
    bare->featurize(raw);
    ADD_FAILURE() << "featurize without a tokenizer";
  } catch (const std::exception& e) {
    EXPECT_NE(std::string(e.what()).find("no tokenizer"), std::string::npos) << e.what();
  }
}

TEST_F(TextFixture, PerturbationsGrowWithLevelAndAreRepeatable) {
  auto drop = make({{"perturbation", "word_drop"}}, &context), typos = make({}, &context);
  const modalkit::RawValue raw{{}, "one two three four five six seven eight nine ten eleven twelve", 0};
  auto run = [&](const modalkit::ModalityPlugin& p, double level, uint64_t seed) {
    std::mt19937_64 rng(seed);
    return p.perturb(raw, level, rng).text;
  };
  EXPECT_EQ(run(*drop, 0.0, 1), raw.text);
  EXPECT_EQ(run(*drop, 1.0, 1), "");
  EXPECT_LT(run(*drop, 0.8, 1).size(), run(*drop, 0.2, 1).size());
  EXPECT_EQ(run(*typos, 0.5, 7), run(*typos, 0.5, 7));
  auto differing = [&](double level) {
    const auto a = run(*typos, level, 3);
    std::istringstream x(a), y(raw.text);
    int n = 0;
    for (std::string u, v; x >> u && y >> v;) n += u != v;
    return n;
  };
  EXPECT_EQ(differing(0.0), 0);
  EXPECT_LT(differing(0.1), differing(1.0));
}

TEST_F(TextFixture, EncoderMasksPaddingAndKeepsRealPiecesIndependentOfIt) {
  auto text = make({{"dropout", 0.0}}, &context);
  auto a = text->featurize({{}, "a shoe", 0}), b = text->featurize({{}, "footwear that covers the whole foot", 0});
  ASSERT_LT(a.numel(), b.numel());
  auto both = text->collate({a, b});
  EXPECT_EQ(both.data.size(1), b.numel());
  EXPECT_EQ(both.mask[0].sum().item<int64_t>(), a.numel());
  auto net = text->make_encoder();
  net->eval();
  torch::NoGradGuard no_grad;
  auto batched = net->forward(both);
  auto alone = net->forward(text->collate({a}));
  EXPECT_EQ(batched.x.sizes(), (std::vector<int64_t>{2, b.numel(), 16}));
  EXPECT_TRUE(batched.x[0].narrow(0, 0, a.numel()).allclose(alone.x[0], 1e-4, 1e-5));
}

}  // namespace

TEST_F(TextFixture, AMissingOrBrokenTokenizerIsNamed) {
  std::ofstream(dir / "junk.model") << "not a model";
  context.artifacts["tokenizer"] = dir / "junk.model";
  auto text = make({}, &context);
  try {
    text->featurize({{}, "words", 0});
    ADD_FAILURE() << "a junk tokenizer was accepted";
  } catch (const std::exception& e) {
    EXPECT_NE(std::string(e.what()).find("junk.model"), std::string::npos) << e.what();
  }
}
