// The sensor plugin through the host: windows of CSV rows, per-channel standardisation fitted on
// the windows given to fit, window normalisation, bad references and cells named, perturbations,
// and both encoders (one token per step, padding never leaking into real steps).
#include <fstream>

#include <gtest/gtest.h>
#include <torch/torch.h>

#include "modality_fixture.hpp"

namespace {

struct SensorFixture : ModalityFixture {
  SensorFixture() : ModalityFixture("sensor") {}

  void SetUp() override {
    ModalityFixture::SetUp();
    std::ofstream out(dir / "s.csv");
    out << "temp,hum\n";
    for (int i = 0; i < 40; ++i) out << 20 + i << "," << 50 - i << "\n";
  }

  modalkit::RawValue decode(const modalkit::ModalityPlugin& p, const std::string& ref) { return decode_with(p, ref, dir); }
};

TEST_F(SensorFixture, WindowsAreRowRangesStandardisedWithTrainStatistics) {
  auto s = make({});
  auto a = decode(*s, "s.csv#0:4"), b = decode(*s, "s.csv#4:8");
  ASSERT_EQ(a.tensor.sizes(), (std::vector<int64_t>{4, 2}));
  EXPECT_EQ(a.tensor[3][0].item<double>(), 23.0);
  EXPECT_EQ(a.tensor[3][1].item<double>(), 47.0);
  s->fit({a, b});
  // temp over rows 0..7: 20..27, mean 23.5, population std sqrt(5.25).
  auto f = s->featurize(b);
  EXPECT_NEAR(f[0][0].item<double>(), (24 - 23.5) / std::sqrt(5.25), 1e-6);
  EXPECT_NEAR(f[0][1].item<double>(), (46 - 46.5) / std::sqrt(5.25), 1e-6);
  // Window normalisation subtracts the window's own mean: row 4 of 4..7 is 1.5 below it.
  auto w = make({{"window_norm", true}});
  w->fit({a, b});
  EXPECT_NEAR(w->featurize(b)[0][0].item<double>(), -1.5 / std::sqrt(5.25), 1e-6);
  // One channel chosen by name; the state round-trips.
  auto hum = make({{"channels", {"hum"}}});
  EXPECT_EQ(decode(*hum, "s.csv#0:4").tensor.size(1), 1);
  auto fresh = make({});
  fresh->load_fitted_state(s->fitted_state());
  EXPECT_TRUE(fresh->featurize(b).equal(s->featurize(b)));
}

TEST_F(SensorFixture, BadReferencesAndCellsAreNamed) {
  auto s = make({{"max_length", 10}});
  EXPECT_NE(decode_error_with(*s, "s.csv#5", dir).find("file.csv#START:END"), std::string::npos);
  EXPECT_NE(decode_error_with(*s, "s.csv#5:5", dir).find("START < END"), std::string::npos);
  EXPECT_NE(decode_error_with(*s, "s.csv#0:20", dir).find("longer than max_length 10"), std::string::npos);
  auto error = decode_error_with(*s, "s.csv#35:42", dir);
  EXPECT_NE(error.find("run past the 40 data rows"), std::string::npos) << error;
  error = decode_error_with(*s, "none.csv#0:2", dir);
  EXPECT_NE(error.find("none.csv"), std::string::npos) << error;
  std::ofstream(dir / "bad.csv") << "temp\n1\nNaN\n3\n";
  error = decode_error_with(*s, "bad.csv#0:3", dir);
  EXPECT_NE(error.find("bad.csv:3"), std::string::npos) << error;
  EXPECT_NE(error.find("column \"temp\": expected a finite number, found \"NaN\""), std::string::npos) << error;
  error = decode_error_with(*make({{"channels", {"pressure"}}}), "s.csv#0:2", dir);
  EXPECT_NE(error.find("no column \"pressure\""), std::string::npos) << error;
}

TEST_F(SensorFixture, PerturbationsGrowWithLevelAndAreRepeatable) {
  auto drop = make({}), jitter = make({{"perturbation", "jitter"}});
  auto raw = decode(*drop, "s.csv#0:40");
  drop->fit({raw});
  jitter->fit({raw});
  auto changed = [&](const modalkit::ModalityPlugin& p, double level, uint64_t seed) {
    std::mt19937_64 rng(seed);
    return (p.featurize(p.perturb(raw, level, rng)) - p.featurize(raw)).abs().sum().item<double>();
  };
  EXPECT_EQ(changed(*drop, 0.0, 1), 0.0);
  EXPECT_LT(changed(*drop, 0.1, 1), changed(*drop, 0.9, 1));
  EXPECT_LT(changed(*jitter, 0.1, 1), changed(*jitter, 0.9, 1));
  EXPECT_EQ(changed(*jitter, 0.5, 3), changed(*jitter, 0.5, 3));
  std::mt19937_64 rng(1);
  EXPECT_TRUE(drop->featurize(drop->perturb(raw, 1.0, rng)).eq(0).all().item<bool>());  // all lost: the mean
}

TEST_F(SensorFixture, EncodersEmitOneTokenPerStepAndIgnorePadding) {
  for (const std::string encoder : {"conv", "gru"}) {
    auto s = make({{"encoder", encoder}, {"dropout", 0.0}, {"hidden", 8}});
    auto a = decode(*s, "s.csv#0:5"), b = decode(*s, "s.csv#5:14");
    s->fit({a, b});
    auto both = s->collate({s->featurize(a), s->featurize(b)});
    ASSERT_EQ(both.data.sizes(), (std::vector<int64_t>{2, 9, 2}));
    torch::manual_seed(3);
    auto net = s->make_encoder();
    net->eval();
    torch::NoGradGuard no_grad;
    auto batched = net->forward(both);
    EXPECT_EQ(batched.x.sizes(), (std::vector<int64_t>{2, 9, 16})) << encoder;
    EXPECT_EQ(batched.mask[0].sum().item<int64_t>(), 5) << encoder;
    auto alone = net->forward(s->collate({s->featurize(a)}));
    EXPECT_TRUE(batched.x[0].narrow(0, 0, 5).allclose(alone.x[0], 1e-5, 1e-6)) << encoder;
    // Same seed, same encoder, same output.
    torch::manual_seed(3);
    auto again = s->make_encoder();
    again->eval();
    EXPECT_TRUE(again->forward(both).x.equal(batched.x)) << encoder;
  }
}

}  // namespace
