// The image plugin, loaded through the host like any plugin: decoding against independent
// encodings (PNG written by stb_image_write, IDX written here), bad input, perturbations,
// normalisation fitted on train, the encoder's standardized sequence.
#include <fstream>

#include <gtest/gtest.h>
#include <torch/torch.h>
#include <zlib.h>

#define STB_IMAGE_WRITE_IMPLEMENTATION
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmissing-field-initializers"
#pragma GCC diagnostic ignored "-Wsign-compare"
#include <stb/stb_image_write.h>
#pragma GCC diagnostic pop

#include "modality_fixture.hpp"

namespace fs = std::filesystem;

namespace {

struct ImageFixture : ModalityFixture {
  std::shared_ptr<modalkit::ModalityPlugin> image;

  ImageFixture() : ModalityFixture("image") {}

  void SetUp() override {
    ModalityFixture::SetUp();
    image = make({{"height", 8}, {"width", 8}, {"channels", 1}, {"conv_channels", {4, 8}}, {"dropout", 0.0},
                  {"normalize", true}, {"perturbation", "noise"}});
  }

  modalkit::RawValue decode(const std::string& ref) { return decode_with(*image, ref, dir); }
  std::string decode_error(const std::string& ref) { return decode_error_with(*image, ref, dir); }

  void write_idx(const std::string& name, const std::vector<uint8_t>& pixels, uint32_t n, uint32_t rows,
                 uint32_t cols, bool gz) {
    std::string bytes;
    for (uint32_t v : {0x00000803u, n, rows, cols}) {
      for (int s = 24; s >= 0; s -= 8) bytes += static_cast<char>((v >> s) & 0xff);
    }
    bytes.append(pixels.begin(), pixels.end());
    if (gz) {
      gzFile f = gzopen((dir / name).c_str(), "wb");
      gzwrite(f, bytes.data(), static_cast<unsigned>(bytes.size()));
      gzclose(f);
    } else {
      std::ofstream(dir / name, std::ios::binary) << bytes;
    }
  }
};

std::vector<uint8_t> ramp(size_t n) {
  std::vector<uint8_t> px(n);
  for (size_t i = 0; i < n; ++i) px[i] = static_cast<uint8_t>((i * 7) % 256);
  return px;
}

}  // namespace

TEST_F(ImageFixture, PngRoundTrip) {
  auto px = ramp(64);
  ASSERT_TRUE(stbi_write_png((dir / "a.png").c_str(), 8, 8, 1, px.data(), 8));
  auto raw = decode("a.png");
  ASSERT_EQ(raw.tensor.sizes(), (std::vector<int64_t>{1, 8, 8}));
  ASSERT_EQ(raw.tensor.scalar_type(), torch::kUInt8);
  auto expected = torch::from_blob(px.data(), {1, 8, 8}, torch::kUInt8);
  EXPECT_TRUE(raw.tensor.equal(expected));
}

TEST_F(ImageFixture, RgbPngBecomesGreyOrStaysRgb) {
  std::vector<uint8_t> rgb(8 * 8 * 3, 0);
  for (size_t i = 0; i < rgb.size(); i += 3) rgb[i] = 255;  // pure red
  ASSERT_TRUE(stbi_write_png((dir / "red.png").c_str(), 8, 8, 3, rgb.data(), 24));
  auto grey = decode("red.png");
  EXPECT_EQ(grey.tensor.size(0), 1);
  auto colour = make({{"height", 8}, {"width", 8}, {"channels", 3}, {"conv_channels", {4, 8}}, {"dropout", 0.0},
                      {"normalize", true}, {"perturbation", "noise"}});
  nlohmann::json v = "red.png";
  std::string origin = "s:1";
  auto raw = colour->decode(modalkit::FieldRef{v, dir, origin});
  ASSERT_EQ(raw.tensor.sizes(), (std::vector<int64_t>{3, 8, 8}));
  EXPECT_EQ(raw.tensor[0].min().item<int>(), 255);
  EXPECT_EQ(raw.tensor[1].max().item<int>(), 0);
}

TEST_F(ImageFixture, IdxPlainAndGzipped) {
  auto px = ramp(3 * 64);
  write_idx("x.idx", px, 3, 8, 8, false);
  write_idx("x.idx.gz", px, 3, 8, 8, true);
  for (const std::string f : {"x.idx", "x.idx.gz"}) {
    auto raw = decode(f + "#2");
    auto expected = torch::from_blob(px.data() + 128, {1, 8, 8}, torch::kUInt8);
    EXPECT_TRUE(raw.tensor.equal(expected)) << f;
  }
  EXPECT_NE(decode_error("x.idx#3").find("index 3 is past the end"), std::string::npos);
  EXPECT_NE(decode_error("x.idx#-1").find("bad IDX index"), std::string::npos);
  EXPECT_NE(decode_error("x.idx#two").find("bad IDX index \"two\""), std::string::npos);
}

TEST_F(ImageFixture, BadInputNamesTheFile) {
  std::ofstream(dir / "corrupt.png", std::ios::binary) << "\x89PNG\r\n\x1a\nthis is not a png";
  auto msg = decode_error("corrupt.png");
  EXPECT_NE(msg.find((dir / "corrupt.png").string()), std::string::npos) << msg;
  EXPECT_NE(msg.find("not a readable PNG or JPEG"), std::string::npos) << msg;

  auto px = ramp(16 * 16);
  ASSERT_TRUE(stbi_write_png((dir / "big.png").c_str(), 16, 16, 1, px.data(), 16));
  msg = decode_error("big.png");
  EXPECT_NE(msg.find("image is 16x16, the image plugin is configured for 8x8"), std::string::npos) << msg;

  EXPECT_NE(decode_error("missing.png").find("samples.jsonl:1: cannot open image file"), std::string::npos);

  write_idx("trunc.idx", ramp(100), 3, 8, 8, false);  // header says 192 pixel bytes
  msg = decode_error("trunc.idx#0");
  EXPECT_NE(msg.find("but the file holds 100"), std::string::npos) << msg;

  write_idx("absurd.idx", ramp(10), 0xFFFFFFFFu, 4000, 4000, false);
  msg = decode_error("absurd.idx#0");
  EXPECT_NE(msg.find("beyond this reader's 4 GiB limit"), std::string::npos) << msg;

  nlohmann::json number = 5;
  std::string origin = "s:9";
  try {
    image->decode(modalkit::FieldRef{number, dir, origin});
    FAIL();
  } catch (const modalkit::DataError& e) {
    EXPECT_EQ(std::string(e.what()), "s:9: image field must be a path string, found 5");
  }
}

TEST_F(ImageFixture, PerturbationGrowsWithLevelAndIsRepeatable) {
  modalkit::RawValue raw{torch::full({1, 8, 8}, 128, torch::kUInt8), "", 0};
  double last = 0;
  for (double level : {0.1, 0.3, 0.6, 1.0}) {
    std::mt19937_64 rng(42);
    auto out = image->perturb(raw, level, rng);
    double change = (out.tensor.to(torch::kFloat) - raw.tensor.to(torch::kFloat)).abs().mean().item<double>();
    EXPECT_GT(change, last) << level;
    last = change;
    std::mt19937_64 again(42);
    EXPECT_TRUE(image->perturb(raw, level, again).tensor.equal(out.tensor));
  }
  std::mt19937_64 rng(1);
  EXPECT_TRUE(image->perturb(raw, 0.0, rng).tensor.equal(raw.tensor));
  auto occl = make({{"height", 8}, {"width", 8}, {"channels", 1}, {"conv_channels", {4, 8}}, {"dropout", 0.0},
                    {"normalize", true}, {"perturbation", "occlusion"}});
  std::mt19937_64 r2(3);
  auto half = occl->perturb(raw, 0.5, r2);
  EXPECT_EQ((half.tensor == 0).sum().item<int64_t>(), 16);  // a 4x4 square
}

TEST_F(ImageFixture, NormalisationIsFittedOnTrainOnly) {
  std::vector<modalkit::RawValue> train = {{torch::full({1, 8, 8}, 0, torch::kUInt8), "", 0},
                                           {torch::full({1, 8, 8}, 255, torch::kUInt8), "", 0}};
  image->fit(train);
  auto state = image->fitted_state();
  EXPECT_NEAR(state["mean"].get<double>(), 0.5, 1e-12);
  EXPECT_NEAR(state["std"].get<double>(), 0.5, 1e-12);
  auto f = image->featurize(train[1]);
  EXPECT_NEAR(f.mean().item<double>(), 1.0, 1e-6);
  auto fresh = make({{"height", 8}, {"width", 8}, {"channels", 1}, {"conv_channels", {4, 8}}, {"dropout", 0.0},
                     {"normalize", true}, {"perturbation", "noise"}});
  fresh->load_fitted_state(state);
  EXPECT_TRUE(fresh->featurize(train[1]).equal(f));
}

TEST_F(ImageFixture, EncoderEmitsOneTokenPerPatch) {
  auto encoder = image->make_encoder();
  modalkit::ModalityInput in{torch::randn({3, 1, 8, 8}), {}, torch::ones({3}, torch::kBool)};
  auto seq = encoder->forward(in);
  EXPECT_EQ(seq.x.sizes(), (std::vector<int64_t>{3, 4, 16}));  // (8/4)*(8/4) tokens of d_model 16
  EXPECT_EQ(seq.mask.sizes(), (std::vector<int64_t>{3, 4}));
  auto names = encoder->named_parameters();
  EXPECT_TRUE(names.contains("conv1.weight"));
  EXPECT_TRUE(names.contains("proj.linear.weight"));
}

TEST_F(ImageFixture, PatchEncoderEmitsOneTokenPerPatchAndLearns) {
  auto patch = make({{"height", 8}, {"width", 8}, {"encoder", "patch"}, {"patch_size", 2}, {"layers", 1},
                     {"heads", 4}, {"dropout", 0.0}});
  auto encoder = patch->make_encoder();
  modalkit::ModalityInput in{torch::randn({3, 1, 8, 8}), {}, torch::ones({3}, torch::kBool)};
  auto seq = encoder->forward(in);
  EXPECT_EQ(seq.x.sizes(), (std::vector<int64_t>{3, 16, 16}));  // (8/2)*(8/2) patches of d_model 16
  auto names = encoder->named_parameters();
  EXPECT_TRUE(names.contains("embed.weight"));
  EXPECT_TRUE(names.contains("transformer.blocks.layers.0.self_attn.in_proj_weight"));
  // Tokens depend on their own patch: changing one pixel changes only that patch's token
  // before attention, so with layers 0 exactly one token moves.
  auto local = make({{"height", 8}, {"width", 8}, {"encoder", "patch"}, {"patch_size", 2}, {"layers", 0},
                     {"dropout", 0.0}})->make_encoder();
  auto a = torch::randn({1, 1, 8, 8});
  auto b = a.clone();
  b[0][0][5][6] += 1.0;  // patch row 2, column 3 → token 2*4+3 = 11
  auto da = local->forward({a, {}, torch::ones({1}, torch::kBool)}).x;
  auto db = local->forward({b, {}, torch::ones({1}, torch::kBool)}).x;
  auto moved = (da - db)[0].abs().sum(-1).gt(1e-6).nonzero().flatten();  // token indices of sample 0
  ASSERT_EQ(moved.numel(), 1) << moved;
  EXPECT_EQ(moved[0].item<int64_t>(), 11);
  // It trains: a few Adam steps fit a fixed random batch's target.
  torch::optim::Adam opt(encoder->parameters(), torch::optim::AdamOptions(1e-2));
  auto x = torch::randn({8, 1, 8, 8});
  auto y = torch::randn({8, 16});
  double first = 0, last = 0;
  for (int step = 0; step < 30; ++step) {
    opt.zero_grad();
    auto loss = (encoder->forward({x, {}, torch::ones({8}, torch::kBool)}).x.mean(1) - y).pow(2).mean();
    loss.backward();
    opt.step();
    (step == 0 ? first : last) = loss.item<double>();
  }
  EXPECT_LT(last, 0.5 * first);

  auto msg = make_error({{"height", 8}, {"width", 8}, {"encoder", "patch"}, {"patch_size", 3}});
  EXPECT_NE(msg.find("/modalities/image/config/patch_size: height 8 and width 8 must be multiples"), std::string::npos)
      << msg;
  msg = make_error({{"height", 8}, {"width", 8}, {"encoder", "patch"}, {"heads", 3}});
  EXPECT_NE(msg.find("/modalities/image/config/heads: d_model 16 is not divisible by heads 3"), std::string::npos)
      << msg;
}

TEST_F(ImageFixture, ConfigErrorsNameThePointer) {
  auto msg = make_error({{"height", 10}, {"width", 8}, {"channels", 1}, {"conv_channels", {4, 8}}, {"dropout", 0.0},
                         {"normalize", true}, {"perturbation", "noise"}});
  EXPECT_NE(msg.find("/modalities/image/config/height: height and width must be multiples of 4"), std::string::npos)
      << msg;
}
