// The audio modality: clips decoded by libsndfile (WAV, FLAC, Ogg), resampled by libsamplerate,
// turned into log-mel frames (torch::stft + an HTK mel filterbank), standardised per mel band on
// the train split; white-noise and dropout perturbations; a strided conv encoder or a Transformer
// over frames. Clips vary in length: collate pads and masks, encoders carry the mask along.
#include <cmath>
#include <map>
#include <memory>

#include <samplerate.h>
#include <sndfile.h>

#include <torch/nn/modules/dropout.h>
#include <torch/nn/modules/linear.h>
#include <torch/nn/modules/normalization.h>

#include "audio_manifest.hpp"
#include "modalkit/layers.hpp"
#include "modalkit/modality.hpp"
#include "modalkit/plugin.hpp"

namespace {

using modalkit::DataError;

struct AudioOptions {
  int64_t sample_rate;
  bool resample, downmix;
  double max_seconds;
  int64_t n_fft, hop, n_mels;
  double f_min, f_max;
  bool normalize;
  std::string perturbation, encoder;
  int64_t channels, layers, heads;
  double dropout;

  /// Most samples a clip keeps, and so most frames (the STFT is centred: 1 + samples / hop).
  int64_t max_samples() const { return static_cast<int64_t>(std::ceil(max_seconds * sample_rate)); }
  int64_t max_frames() const { return 1 + max_samples() / hop; }
};

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

double hz_to_mel(double hz) { return 2595.0 * std::log10(1.0 + hz / 700.0); }
double mel_to_hz(double mel) { return 700.0 * (std::pow(10.0, mel / 2595.0) - 1.0); }

/// Triangular filters on the HTK mel scale (as torchaudio's melscale_fbanks with
/// mel_scale="htk", norm=None): `[n_fft / 2 + 1, n_mels]`, filter m rising from mel point m to
/// m + 1 and falling to m + 2, over n_mels + 2 points equally spaced in mel.
torch::Tensor mel_filterbank(int64_t n_fft, int64_t sample_rate, int64_t n_mels, double f_min, double f_max) {
  const int64_t bins = n_fft / 2 + 1;
  std::vector<double> edges(static_cast<size_t>(n_mels + 2));
  const double lo = hz_to_mel(f_min), hi = hz_to_mel(f_max);
  for (int64_t i = 0; i < n_mels + 2; ++i) edges[i] = mel_to_hz(lo + (hi - lo) * double(i) / double(n_mels + 1));
  auto fb = torch::zeros({bins, n_mels}, torch::kDouble);
  auto a = fb.accessor<double, 2>();
  for (int64_t k = 0; k < bins; ++k) {
    const double f = double(k) * double(sample_rate) / double(n_fft);
    for (int64_t m = 0; m < n_mels; ++m) {
      const double up = (f - edges[m]) / (edges[m + 1] - edges[m]);
      const double down = (edges[m + 2] - f) / (edges[m + 2] - edges[m + 1]);
      a[k][m] = std::max(0.0, std::min(up, down));
    }
  }
  return fb.to(torch::kFloat);
}

/// `data` `[B, L, F]` with its padded positions (mask false) set to zero.
torch::Tensor zero_padding(const torch::Tensor& data, const torch::Tensor& mask) {
  return data * mask.unsqueeze(-1).to(data.scalar_type());
}

/// Two stride-2 convolutions over frames (one token per 4 frames), projected to d_model with a
/// learned position embedding and a residual token MLP (as the image plugin's conv encoder).
class ConvAudioEncoder : public modalkit::Encoder {
 public:
  ConvAudioEncoder(const AudioOptions& o, int64_t d_model) {
    using modalkit::TemporalConvOptions;
    conv1_ = register_module("conv1", modalkit::TemporalConv(TemporalConvOptions(o.n_mels, o.channels, 3).stride(2).padding(1)));
    conv2_ = register_module("conv2", modalkit::TemporalConv(TemporalConvOptions(o.channels, o.channels, 3).stride(2).padding(1)));
    proj_ = register_module("proj", modalkit::Projection(modalkit::ProjectionOptions(o.channels, d_model)));
    position_ = register_parameter("position", torch::randn({ceil_div(ceil_div(o.max_frames(), 2), 2), d_model}) * 0.02);
    fc1_ = register_module("fc1", torch::nn::Linear(d_model, 2 * d_model));
    fc2_ = register_module("fc2", torch::nn::Linear(2 * d_model, d_model));
    norm_ = register_module("norm", torch::nn::LayerNorm(torch::nn::LayerNormOptions({d_model})));
    dropout_ = register_module("dropout", torch::nn::Dropout(o.dropout));
  }

  modalkit::Sequence forward(const modalkit::ModalityInput& input) override {
    // Padded positions are zeroed before each convolution, so a clip's real tokens are the same
    // whatever it is batched with (padding = the convolution's own zero padding).
    auto mask1 = modalkit::strided_mask(input.mask, 2), mask2 = modalkit::strided_mask(mask1, 2);
    auto h = torch::gelu(conv1_->forward(zero_padding(input.data, input.mask).transpose(1, 2)));  // [B, C, L/2]
    h = torch::gelu(conv2_->forward(h * mask1.unsqueeze(1))).transpose(1, 2);                  // [B, L/4, C]
    auto x = proj_->forward(h) + position_.narrow(0, 0, h.size(1));
    x = dropout_->forward(norm_->forward(x + fc2_->forward(torch::gelu(fc1_->forward(x)))));
    return {x, mask2};
  }

 private:
  modalkit::TemporalConv conv1_{nullptr}, conv2_{nullptr};
  modalkit::Projection proj_{nullptr};
  torch::nn::Linear fc1_{nullptr}, fc2_{nullptr};
  torch::nn::LayerNorm norm_{nullptr};
  torch::nn::Dropout dropout_{nullptr};
  torch::Tensor position_;
};

/// A stride-2 convolution (halves the frame rate, as Whisper's front end), a learned position
/// embedding, then Transformer encoder layers that attend over real frames only.
class TransformerAudioEncoder : public modalkit::Encoder {
 public:
  TransformerAudioEncoder(const AudioOptions& o, int64_t d_model) {
    using modalkit::TemporalConvOptions;
    embed_ = register_module("embed", modalkit::TemporalConv(TemporalConvOptions(o.n_mels, d_model, 3).stride(2).padding(1)));
    position_ = register_parameter("position", torch::randn({ceil_div(o.max_frames(), 2), d_model}) * 0.02);
    transformer_ = register_module(
        "transformer", modalkit::TokenTransformer(modalkit::TokenTransformerOptions(d_model, o.layers, o.heads).dropout(o.dropout)));
  }

  modalkit::Sequence forward(const modalkit::ModalityInput& input) override {
    auto x = torch::gelu(embed_->forward(zero_padding(input.data, input.mask).transpose(1, 2))).transpose(1, 2);
    x = x + position_.narrow(0, 0, x.size(1));
    auto mask = modalkit::strided_mask(input.mask, 2);
    return {transformer_->forward(x, mask), mask};
  }

 private:
  modalkit::TemporalConv embed_{nullptr};
  modalkit::TokenTransformer transformer_{nullptr};
  torch::Tensor position_;
};

class AudioModality : public modalkit::ModalityPlugin {
 public:
  explicit AudioModality(const modalkit::CreateArgs& args) : d_model_(args.d_model) {
    const modalkit::Config& c = args.config;
    o_ = AudioOptions{c.get<int64_t>("sample_rate"), c.get<bool>("resample"),  c.get<bool>("downmix"),
                      c.get<double>("max_seconds"),  c.get<int64_t>("n_fft"),  c.get<int64_t>("hop"),
                      c.get<int64_t>("n_mels"),      c.get<double>("f_min"),   c.get<double>("f_max"),
                      c.get<bool>("normalize"),      c.get<std::string>("perturbation"),
                      c.get<std::string>("encoder"), c.get<int64_t>("channels"), c.get<int64_t>("layers"),
                      c.get<int64_t>("heads"),       c.get<double>("dropout")};
    const double nyquist = o_.sample_rate / 2.0;
    if (o_.f_max == 0) o_.f_max = nyquist;
    if (o_.f_max > nyquist || o_.f_min >= o_.f_max) {
      throw modalkit::ConfigError(c.pointer() + "/f_max", "need f_min < f_max <= sample_rate / 2 = " +
                                                              std::to_string(nyquist) + " Hz");
    }
    if (o_.hop > o_.n_fft) throw modalkit::ConfigError(c.pointer() + "/hop", "hop must not exceed n_fft");
    if (o_.encoder == "transformer") modalkit::token_transformer_options(c, d_model_);  // checks heads
    window_ = torch::hann_window(o_.n_fft, torch::kFloat);  // periodic, as torch.stft expects
    filterbank_ = mel_filterbank(o_.n_fft, o_.sample_rate, o_.n_mels, o_.f_min, o_.f_max);
    mean_ = torch::zeros({o_.n_mels});
    std_ = torch::ones({o_.n_mels});
  }

  void fit(const std::vector<modalkit::RawValue>& train) override {
    if (!o_.normalize || train.empty()) return;
    auto sum = torch::zeros({o_.n_mels}, torch::kDouble), sq = torch::zeros({o_.n_mels}, torch::kDouble);
    // The host hands samples that share a clip (a data set paired by class) the same tensor:
    // each distinct clip is transformed once and weighted by how often it occurs.
    // Kept in first-occurrence order so the sums, and so the fitted bits, do not depend on
    // where the allocator put the clips.
    std::map<std::pair<const void*, int64_t>, size_t> index;
    std::vector<std::pair<const torch::Tensor*, int64_t>> clips;
    for (const auto& raw : train) {
      auto [it, inserted] = index.emplace(std::make_pair(raw.tensor.data_ptr(), raw.tensor.numel()), clips.size());
      if (inserted) clips.emplace_back(&raw.tensor, 0);
      ++clips[it->second].second;
    }
    int64_t frames = 0;
    for (const auto& clip : clips) {
      auto lm = log_mel(*clip.first).to(torch::kDouble);
      sum += double(clip.second) * lm.sum(0);
      sq += double(clip.second) * (lm * lm).sum(0);
      frames += clip.second * lm.size(0);
    }
    auto mean = sum / double(frames);
    mean_ = mean.to(torch::kFloat);
    std_ = (sq / double(frames) - mean * mean).clamp_min(1e-12).sqrt().to(torch::kFloat);
  }

  nlohmann::json fitted_state() const override {
    auto list = [](const torch::Tensor& t) { return std::vector<float>(t.data_ptr<float>(), t.data_ptr<float>() + t.numel()); };
    return {{"mean", list(mean_)}, {"std", list(std_)}};
  }
  void load_fitted_state(const nlohmann::json& s) override {
    auto mean = s.at("mean").get<std::vector<float>>(), std = s.at("std").get<std::vector<float>>();
    if (mean.size() != size_t(o_.n_mels) || std.size() != size_t(o_.n_mels)) {
      throw modalkit::Error("audio: fitted state has " + std::to_string(mean.size()) + " mel bands, the config " +
                            std::to_string(o_.n_mels));
    }
    mean_ = torch::tensor(mean);
    std_ = torch::tensor(std);
  }

  modalkit::RawValue decode(const modalkit::FieldRef& field) const override {
    if (!field.value.is_string()) {
      throw DataError(field.origin, "audio field must be a path string, found " + field.value.dump());
    }
    const std::filesystem::path path = field.base_dir / field.value.get<std::string>();
    const std::string where = field.origin + " (" + path.string() + ")";
    SF_INFO info{};
    std::unique_ptr<SNDFILE, int (*)(SNDFILE*)> file(sf_open(path.c_str(), SFM_READ, &info), sf_close);
    if (!file) {
      throw DataError(where, std::string("cannot read audio: ") + sf_strerror(nullptr));
    }
    // Header values are checked before anything is allocated from them.
    if (info.channels < 1 || info.channels > 64) {
      throw DataError(where, "header claims " + std::to_string(info.channels) + " channels (expected 1 to 64)");
    }
    if (info.samplerate < 1000 || info.samplerate > 768000) {
      throw DataError(where, "header claims a sample rate of " + std::to_string(info.samplerate) + " Hz");
    }
    if (info.frames <= 0) throw DataError(where, "holds no audio frames");
    if (info.channels != 1 && !o_.downmix) {
      throw DataError(where, "has " + std::to_string(info.channels) +
                                 " channels; the audio plugin reads mono (set downmix: true to average them)");
    }
    if (info.samplerate != o_.sample_rate && !o_.resample) {
      throw DataError(where, "is sampled at " + std::to_string(info.samplerate) + " Hz, the plugin is configured for " +
                                 std::to_string(o_.sample_rate) + " Hz (set resample: true to convert)");
    }
    const sf_count_t want = std::min<sf_count_t>(
        info.frames, static_cast<sf_count_t>(std::ceil(o_.max_seconds * info.samplerate)));
    std::vector<float> interleaved(static_cast<size_t>(want * info.channels));
    const sf_count_t got = sf_readf_float(file.get(), interleaved.data(), want);
    if (got != want) {
      throw DataError(where, "truncated or corrupt: read " + std::to_string(got) + " of the " +
                                 std::to_string(want) + " frames the header promises (" + sf_strerror(file.get()) + ")");
    }
    auto wave = torch::from_blob(interleaved.data(), {want, info.channels}, torch::kFloat).mean(1);
    if (!wave.isfinite().all().item<bool>()) throw DataError(where, "holds NaN or infinite samples");
    if (info.samplerate != o_.sample_rate) wave = resample(wave, info.samplerate, where);
    if (wave.size(0) > o_.max_samples()) wave = wave.narrow(0, 0, o_.max_samples());
    return {wave.contiguous(), {}, o_.sample_rate};
  }

  modalkit::RawValue perturb(const modalkit::RawValue& raw, double level, std::mt19937_64& rng) const override {
    if (level <= 0) return raw;
    auto x = raw.tensor.clone();
    float* p = x.data_ptr<float>();
    const int64_t n = x.numel();
    if (o_.perturbation == "noise") {
      const double power = std::max(x.pow(2).mean().item<double>(), 1e-8);
      const double snr_db = 40.0 - 50.0 * level;
      std::normal_distribution<float> normal(0.0f, static_cast<float>(std::sqrt(power / std::pow(10.0, snr_db / 10.0))));
      for (int64_t i = 0; i < n; ++i) p[i] += normal(rng);
    } else {
      const int64_t block = std::max<int64_t>(1, o_.sample_rate / 100);
      std::bernoulli_distribution drop(level);
      for (int64_t start = 0; start < n; start += block) {
        if (drop(rng)) std::fill(p + start, p + std::min(n, start + block), 0.0f);
      }
    }
    return {x, {}, raw.sample_rate};
  }

  torch::Tensor featurize(const modalkit::RawValue& raw) const override {
    auto lm = log_mel(raw.tensor);
    return o_.normalize ? (lm - mean_) / std_ : lm;
  }

  modalkit::ModalityInput collate(const std::vector<torch::Tensor>& features) const override {
    return modalkit::collate_padded(features);
  }

  std::shared_ptr<modalkit::Encoder> make_encoder() override {
    if (o_.encoder == "transformer") return std::make_shared<TransformerAudioEncoder>(o_, d_model_);
    return std::make_shared<ConvAudioEncoder>(o_, d_model_);
  }

 private:
  /// `[N]` waveform → `[1 + N / hop, n_mels]` natural-log mel power. The STFT is centred with
  /// zero padding (frame t covers samples t*hop - n_fft/2 ...), so even a clip shorter than one
  /// window has a frame.
  torch::Tensor log_mel(const torch::Tensor& wave) const {
    auto spec = torch::stft(wave, o_.n_fft, o_.hop, o_.n_fft, window_, /*center=*/true, "constant",
                            /*normalized=*/false, /*onesided=*/true, /*return_complex=*/true);  // [F, T]
    auto power = torch::view_as_real(spec).pow(2).sum(-1);
    return torch::log(torch::matmul(power.t(), filterbank_) + 1e-6);
  }

  torch::Tensor resample(const torch::Tensor& wave, int64_t from, const std::string& where) const {
    const double ratio = double(o_.sample_rate) / double(from);
    std::vector<float> out(static_cast<size_t>(std::ceil(wave.numel() * ratio)) + 16);
    SRC_DATA d{};
    d.data_in = wave.data_ptr<float>();
    d.input_frames = wave.numel();
    d.data_out = out.data();
    d.output_frames = static_cast<long>(out.size());
    d.src_ratio = ratio;
    d.end_of_input = 1;
    if (int err = src_simple(&d, SRC_SINC_MEDIUM_QUALITY, 1)) {
      throw DataError(where, std::string("resampling failed: ") + src_strerror(err));
    }
    return torch::from_blob(out.data(), {d.output_frames_gen}, torch::kFloat).clone();
  }

  AudioOptions o_;
  int64_t d_model_;
  torch::Tensor window_, filterbank_, mean_, std_;
};

}  // namespace

MODALKIT_PLUGIN("audio", "0.1.0", kManifest, MODALKIT_MODALITY("audio", AudioModality))
