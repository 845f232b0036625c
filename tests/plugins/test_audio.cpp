// The audio plugin through the host: log-mel of a synthesised tone against a DFT and filterbank
// computed here by hand, WAV/FLAC decoding and resampling, bad input, perturbations, fitted
// normalisation, padding and masks through both encoders.
#include <cmath>
#include <fstream>

#include <gtest/gtest.h>
#include <sndfile.h>
#include <torch/torch.h>

#include "modality_fixture.hpp"

namespace fs = std::filesystem;

namespace {

constexpr double kPi = 3.14159265358979323846;

std::vector<float> tone(double hz, double seconds, int rate, double amplitude = 0.5) {
  std::vector<float> x(static_cast<size_t>(seconds * rate));
  for (size_t i = 0; i < x.size(); ++i) x[i] = float(amplitude * std::sin(2 * kPi * hz * double(i) / rate));
  return x;
}

struct AudioFixture : ModalityFixture {
  AudioFixture() : ModalityFixture("audio") {}

  /// Writes interleaved `samples` with libsndfile (`format`: SF_FORMAT_WAV | ..., SF_FORMAT_FLAC | ...).
  fs::path write(const std::string& name, const std::vector<float>& samples, int rate, int channels = 1,
                 int format = SF_FORMAT_WAV | SF_FORMAT_FLOAT) {
    SF_INFO info{};
    info.samplerate = rate;
    info.channels = channels;
    info.format = format;
    const fs::path path = dir / name;
    SNDFILE* f = sf_open(path.c_str(), SFM_WRITE, &info);
    EXPECT_NE(f, nullptr) << sf_strerror(nullptr);
    sf_writef_float(f, samples.data(), sf_count_t(samples.size() / channels));
    sf_close(f);
    return path;
  }

  modalkit::RawValue decode(const modalkit::ModalityPlugin& p, const std::string& name) {
    return decode_with(p, name, dir);
  }
  std::string decode_error(const modalkit::ModalityPlugin& p, const std::string& name) {
    return decode_error_with(p, name, dir);
  }
};

/// HTK mel, written independently of the plugin's code.
double mel(double hz) { return 2595.0 * std::log10(1.0 + hz / 700.0); }

TEST_F(AudioFixture, LogMelOfAToneMatchesAHandComputedDftAndFilterbank) {
  const int rate = 16000, n_fft = 400, hop = 160, n_mels = 40;
  auto audio = make({{"n_fft", n_fft}, {"hop", hop}, {"n_mels", n_mels}, {"normalize", false}});
  const auto x = tone(1000.0, 0.5, rate);
  write("tone.wav", x, rate);
  auto raw = decode(*audio, "tone.wav");
  ASSERT_EQ(raw.sample_rate, rate);
  ASSERT_EQ(raw.tensor.numel(), int64_t(x.size()));
  auto lm = audio->featurize(raw);
  ASSERT_EQ(lm.sizes(), (std::vector<int64_t>{1 + int64_t(x.size()) / hop, n_mels}));

  // Frame t is centred on sample t*hop: it covers x[t*hop - n_fft/2, t*hop + n_fft/2).
  const int t = 10, start = t * hop - n_fft / 2;
  std::vector<double> power(n_fft / 2 + 1);
  for (int k = 0; k <= n_fft / 2; ++k) {
    double re = 0, im = 0;
    for (int n = 0; n < n_fft; ++n) {
      const double w = 0.5 - 0.5 * std::cos(2 * kPi * n / n_fft);  // periodic Hann
      re += w * x[start + n] * std::cos(2 * kPi * k * n / n_fft);
      im -= w * x[start + n] * std::sin(2 * kPi * k * n / n_fft);
    }
    power[k] = re * re + im * im;
  }
  const double top = mel(rate / 2.0);
  for (int m = 0; m < n_mels; ++m) {
    auto hz = [&](int i) { return 700.0 * (std::pow(10.0, top * i / (n_mels + 1) / 2595.0) - 1.0); };
    const double lo = hz(m), mid = hz(m + 1), hi = hz(m + 2);
    double energy = 0;
    for (int k = 0; k <= n_fft / 2; ++k) {
      const double f = double(k) * rate / n_fft;
      if (f > lo && f < mid) energy += power[k] * (f - lo) / (mid - lo);
      if (f >= mid && f < hi) energy += power[k] * (hi - f) / (hi - mid);
    }
    EXPECT_NEAR(lm[t][m].item<double>(), std::log(energy + 1e-6), 1e-3) << "mel band " << m;
  }
  // And the loudest band is the one around 1 kHz.
  const int64_t loudest = lm[t].argmax().item<int64_t>();
  EXPECT_LT(std::abs(700.0 * (std::pow(10.0, top * (loudest + 1) / (n_mels + 1) / 2595.0) - 1.0) - 1000.0), 150.0);
}

TEST_F(AudioFixture, FlacAt22kIsResampledTo16kKeepingThePitch) {
  auto audio = make({{"normalize", false}});
  write("tone.flac", tone(1000.0, 1.0, 22050), 22050, 1, SF_FORMAT_FLAC | SF_FORMAT_PCM_16);
  auto raw = decode(*audio, "tone.flac");
  EXPECT_EQ(raw.sample_rate, 16000);
  EXPECT_NEAR(double(raw.tensor.numel()), 16000.0, 2.0);
  // The spectrum's peak stays at 1 kHz: FFT of 1 s at 16 kHz has 1 Hz bins.
  auto spectrum = torch::fft::rfft(raw.tensor.narrow(0, 1000, 8000)).abs();
  EXPECT_NEAR(spectrum.argmax().item<double>() * 16000.0 / 8000.0, 1000.0, 4.0);
  EXPECT_NEAR(raw.tensor.abs().max().item<double>(), 0.5, 0.02);

  auto strict = make({{"resample", false}});
  const auto error = decode_error(*strict, "tone.flac");
  EXPECT_NE(error.find("tone.flac"), std::string::npos) << error;
  EXPECT_NE(error.find("22050 Hz"), std::string::npos) << error;
  EXPECT_NE(error.find("resample: true"), std::string::npos) << error;
}

TEST_F(AudioFixture, StereoIsRefusedUnlessDownmixed) {
  std::vector<float> stereo;
  for (int i = 0; i < 1600; ++i) stereo.insert(stereo.end(), {0.2f, 0.6f});
  write("stereo.wav", stereo, 16000, 2);
  auto audio = make({});
  const auto error = decode_error(*audio, "stereo.wav");
  EXPECT_NE(error.find("stereo.wav"), std::string::npos) << error;
  EXPECT_NE(error.find("2 channels"), std::string::npos) << error;
  auto mixed = decode(*make({{"downmix", true}}), "stereo.wav");
  EXPECT_EQ(mixed.tensor.numel(), 1600);
  EXPECT_NEAR(mixed.tensor.mean().item<double>(), 0.4, 1e-6);
}

TEST_F(AudioFixture, BadFilesAreNamedWithWhatIsWrong) {
  auto audio = make({});
  // Not audio at all.
  std::ofstream(dir / "noise.wav") << "this is not a RIFF file";
  auto error = decode_error(*audio, "noise.wav");
  EXPECT_NE(error.find("samples.jsonl:1"), std::string::npos) << error;
  EXPECT_NE(error.find("noise.wav"), std::string::npos) << error;
  EXPECT_NE(error.find("cannot read audio"), std::string::npos) << error;
  // Missing.
  error = decode_error(*audio, "absent.flac");
  EXPECT_NE(error.find("absent.flac"), std::string::npos) << error;
  // A FLAC file cut in half: the header promises frames the file no longer holds.
  const auto path = write("cut.flac", tone(440.0, 1.0, 16000), 16000, 1, SF_FORMAT_FLAC | SF_FORMAT_PCM_16);
  fs::resize_file(path, fs::file_size(path) / 2);
  error = decode_error(*audio, "cut.flac");
  EXPECT_NE(error.find("cut.flac"), std::string::npos) << error;
  EXPECT_NE(error.find("truncated or corrupt"), std::string::npos) << error;
  // NaN samples in a float WAV.
  auto bad = tone(440.0, 0.1, 16000);
  bad[100] = std::nanf("");
  write("nan.wav", bad, 16000);
  error = decode_error(*audio, "nan.wav");
  EXPECT_NE(error.find("NaN"), std::string::npos) << error;
  // Not a path.
  error = decode_error_with(*audio, 3, dir);
  EXPECT_NE(error.find("path string"), std::string::npos) << error;
}

TEST_F(AudioFixture, OnlyMaxSecondsAreRead) {
  write("long.wav", tone(300.0, 3.0, 16000), 16000);
  EXPECT_EQ(decode(*make({{"max_seconds", 2.0}}), "long.wav").tensor.numel(), 32000);
  EXPECT_EQ(decode(*make({{"max_seconds", 0.5}}), "long.wav").tensor.numel(), 8000);
}

TEST_F(AudioFixture, PerturbationGrowsWithLevelAndIsRepeatable) {
  auto audio = make({});
  write("tone.wav", tone(500.0, 0.5, 16000), 16000);
  auto raw = decode(*audio, "tone.wav");
  std::mt19937_64 rng(1);
  EXPECT_TRUE(audio->perturb(raw, 0.0, rng).tensor.equal(raw.tensor));
  auto noise_power = [&](double level, uint64_t seed) {
    std::mt19937_64 r(seed);
    return (audio->perturb(raw, level, r).tensor - raw.tensor).pow(2).mean().item<double>();
  };
  const double signal = raw.tensor.pow(2).mean().item<double>();
  // SNR = 40 - 50 * level dB.
  EXPECT_NEAR(10 * std::log10(signal / noise_power(0.2, 3)), 30.0, 0.5);
  EXPECT_NEAR(10 * std::log10(signal / noise_power(1.0, 3)), -10.0, 0.5);
  EXPECT_EQ(noise_power(0.5, 9), noise_power(0.5, 9));

  auto dropout = make({{"perturbation", "dropout"}});
  auto silenced = [&](double level) {
    std::mt19937_64 r(5);
    return (dropout->perturb(raw, level, r).tensor == 0).sum().item<double>() / double(raw.tensor.numel());
  };
  EXPECT_LT(silenced(0.1), silenced(0.5));
  EXPECT_NEAR(silenced(0.5), 0.5, 0.2);
  EXPECT_NEAR(silenced(1.0), 1.0, 1e-9);
}

TEST_F(AudioFixture, NormalisationIsFittedOnTheGivenClipsOnly) {
  auto audio = make({});
  write("a.wav", tone(300.0, 0.5, 16000, 0.3), 16000);
  write("b.wav", tone(2000.0, 0.5, 16000, 0.8), 16000);
  std::vector<modalkit::RawValue> train{decode(*audio, "a.wav"), decode(*audio, "b.wav")};
  audio->fit(train);
  auto all = torch::cat({audio->featurize(train[0]), audio->featurize(train[1])});
  EXPECT_LT(all.mean(0).abs().max().item<double>(), 1e-3);
  EXPECT_NEAR(all.std(0, /*unbiased=*/false).mean().item<double>(), 1.0, 1e-2);
  // The state round-trips into a fresh instance; a different band count is refused.
  auto fresh = make({});
  fresh->load_fitted_state(audio->fitted_state());
  EXPECT_TRUE(fresh->featurize(train[0]).allclose(audio->featurize(train[0])));
  EXPECT_THROW(make({{"n_mels", 20}})->load_fitted_state(audio->fitted_state()), std::exception);
}

TEST_F(AudioFixture, SharedClipsWeighAsOftenAsTheyOccur) {
  // The loader gives samples that share a clip the same tensor; fit must count it per sample,
  // exactly as if every sample had its own copy.
  auto shared = make({}), copied = make({});
  write("a.wav", tone(300.0, 0.5, 16000, 0.3), 16000);
  write("b.wav", tone(2000.0, 0.25, 16000, 0.8), 16000);
  const modalkit::RawValue a = decode(*shared, "a.wav"), b = decode(*shared, "b.wav");
  shared->fit({a, a, a, b});
  modalkit::RawValue a2 = a, a3 = a;
  a2.tensor = a.tensor.clone();
  a3.tensor = a.tensor.clone();
  copied->fit({a, a2, a3, b});
  auto stats = [](const modalkit::ModalityPlugin& p) {
    const auto s = p.fitted_state();
    return torch::cat({torch::tensor(s.at("mean").get<std::vector<float>>()), torch::tensor(s.at("std").get<std::vector<float>>())});
  };
  EXPECT_TRUE(stats(*shared).allclose(stats(*copied), 1e-5, 1e-6));
  auto once = make({});
  once->fit({a, b});
  EXPECT_FALSE(stats(*once).allclose(stats(*shared), 1e-3, 1e-3));  // the weighting matters
}

TEST_F(AudioFixture, CollatePadsAndBothEncodersKeepRealFramesIndependentOfPadding) {
  for (const std::string encoder : {"conv", "transformer"}) {
    auto audio = make({{"encoder", encoder}, {"dropout", 0.0}, {"n_mels", 8}, {"channels", 8}, {"layers", 1}});
    write("short.wav", tone(400.0, 0.08, 16000), 16000);  // 1280 samples → 9 frames (odd after one stride)
    write("long.wav", tone(900.0, 0.25, 16000), 16000);   // 4000 samples → 26 frames
    auto a = audio->featurize(decode(*audio, "short.wav"));
    auto b = audio->featurize(decode(*audio, "long.wav"));
    ASSERT_EQ(a.size(0), 9);
    ASSERT_EQ(b.size(0), 26);
    auto both = audio->collate({a, b});
    ASSERT_EQ(both.data.sizes(), (std::vector<int64_t>{2, 26, 8}));
    EXPECT_EQ(both.mask.sum(1)[0].item<int64_t>(), 9);
    EXPECT_TRUE(both.data[0].narrow(0, 9, 17).eq(0).all().item<bool>());

    auto net = audio->make_encoder();
    net->eval();
    torch::NoGradGuard no_grad;
    auto batched = net->forward(both);
    auto alone = net->forward(audio->collate({a}));
    const int64_t stride = encoder == "conv" ? 4 : 2;
    ASSERT_EQ(batched.x.sizes(), (std::vector<int64_t>{2, (26 + stride - 1) / stride, 16})) << encoder;
    const int64_t real = (9 + stride - 1) / stride;
    EXPECT_EQ(batched.mask[0].sum().item<int64_t>(), real) << encoder;
    EXPECT_TRUE(batched.mask[1].all().item<bool>()) << encoder;
    // Padding must not leak into the short clip's real tokens.
    EXPECT_TRUE(batched.x[0].narrow(0, 0, real).allclose(alone.x[0], 1e-4, 1e-5)) << encoder;
  }
}

TEST_F(AudioFixture, ConfigErrorsNameThePointer) {
  auto error = make_error({{"f_max", 9000}});
  EXPECT_NE(error.find("/modalities/audio/config/f_max"), std::string::npos) << error;
  error = make_error({{"encoder", "transformer"}, {"heads", 5}});
  EXPECT_NE(error.find("/modalities/audio/config/heads"), std::string::npos) << error;
}

}  // namespace
