// av-fashion: a Fashion-MNIST image and a spoken class name (espeak-ng), paired by class — the
// offline analogue of MultiBench's AV-MNIST. Both halves are degraded so that neither modality
// alone is near perfect and fusion has something to add: images get Gaussian pixel noise after
// losing resolution, speech is band-limited to 8 kHz, stored at 8 bits and buried in white noise.
// The degradation is fixed here (see kDegradation) after measuring the band it gives
// (docs/data.md); change it and the band must be measured again.
#include <sndfile.h>

#include <cmath>

#include "modalkit/errors.hpp"
#include "recipes.hpp"

namespace fs = std::filesystem;
using nlohmann::json;

namespace modalkit::host::recipes {

namespace {

struct Degradation {
  int image_pool;       ///< images lose resolution: mean over pool x pool blocks, then blown up again
  double image_noise;   ///< then Gaussian noise with this std (fraction of full scale), clipped
  double audio_snr_db;  ///< white noise at this SNR (dB) against the clip's RMS
};
// Measured on the full set (docs/data.md): image-only 0.680, audio-only 0.647, fusion 0.777.
const Degradation kDegradation{2, 0.9, -15.0};

constexpr int kRate = 8000;  // band-limits the speech to 4 kHz

/// A seed for item `k` of stream `stream` that does not depend on which thread renders it.
uint64_t mix(uint64_t seed, uint64_t stream, uint64_t k) {
  uint64_t z = seed * 0x9e3779b97f4a7c15ULL + stream * 0xbf58476d1ce4e5b9ULL + k * 0x94d049bb133111ebULL;
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
  return z ^ (z >> 31);
}

/// Degrades `rows` of `images` into a new IDX image set.
Idx degrade_images(const Idx& images, const std::vector<size_t>& rows, uint64_t seed, uint64_t stream) {
  const size_t h = images.dims[1], w = images.dims[2], size = h * w;
  const size_t pool = static_cast<size_t>(kDegradation.image_pool);
  Idx out;
  out.dims = {uint32_t(rows.size()), uint32_t(h), uint32_t(w)};
  out.bytes.resize(rows.size() * size);
  std::vector<double> x(size);
  for (size_t k = 0; k < rows.size(); ++k) {
    const auto* src = reinterpret_cast<const unsigned char*>(images.bytes.data() + rows[k] * size);
    for (size_t by = 0; by < h; by += pool) {
      for (size_t bx = 0; bx < w; bx += pool) {
        double sum = 0;
        size_t count = 0;
        for (size_t y = by; y < std::min(h, by + pool); ++y) {
          for (size_t xx = bx; xx < std::min(w, bx + pool); ++xx, ++count) sum += src[y * w + xx];
        }
        for (size_t y = by; y < std::min(h, by + pool); ++y) {
          for (size_t xx = bx; xx < std::min(w, bx + pool); ++xx) x[y * w + xx] = sum / double(count) / 255.0;
        }
      }
    }
    std::mt19937_64 rng(mix(seed, stream, k));
    std::normal_distribution<double> noise(0.0, kDegradation.image_noise);
    for (size_t i = 0; i < size; ++i) {
      const double v = std::clamp(x[i] + noise(rng), 0.0, 1.0);
      out.bytes[k * size + i] = static_cast<char>(static_cast<unsigned char>(std::lround(v * 255.0)));
    }
  }
  return out;
}

}  // namespace

fs::path av_fashion(const Context& ctx) {
  const FashionMnist fashion = load_fashion_mnist(ctx);
  std::vector<SourceFile> sources = fashion.sources;
  for (auto& s : espeak_sources(ctx)) sources.push_back(std::move(s));
  const uint64_t seed = ctx.options.seed;
  const size_t total = fashion.images[0].dims[0] + fashion.images[1].dims[0];
  auto label_in = [&](const std::string& split, size_t row) {
    return std::string(fashion_class(static_cast<unsigned char>(fashion.labels[split == "test" ? 1 : 0].bytes[row])));
  };

  // Images per split (a balanced subset under --subset).
  std::map<std::string, std::vector<size_t>> images;
  uint64_t salt = 0;
  for (const std::string split : {"train", "val", "test"}) {
    const auto& part = fashion.parts.at(split);
    images[split] = balanced_subset(part, [&](size_t i) { return label_in(split, i); },
                                    subset_share(ctx, split, part.size(), total), seed + ++salt);
  }

  // Clips: every class name in every voice, speed and pitch of the split's voices; under
  // --subset about one clip per five images of a class (2 to 3 a class), so each clip is heard
  // several times.
  std::vector<SpeechClip> all;
  for (size_t c = 0; c < 10; ++c) {
    for (const auto& [voice, split] : split_voices(seed)) {
      for (int s : speech_speeds()) {
        for (int p : speech_pitches()) {
          const std::string label = fashion_class(c);
          all.push_back({label, label == "t-shirt/top" ? "t-shirt" : label, voice, s, p, split, ""});
        }
      }
    }
  }
  std::map<std::string, std::vector<size_t>> clip_parts;
  for (size_t i = 0; i < all.size(); ++i) clip_parts[all[i].split].push_back(i);
  std::vector<SpeechClip> clips;
  std::map<std::string, std::map<std::string, std::vector<size_t>>> clips_of;  // split → label → clips
  for (const std::string split : {"train", "val", "test"}) {
    int64_t limit = 0;
    if (ctx.options.subset > 0 || !ctx.options.split_limits.empty()) {
      // Capped at 3 clips a class: the embedded set buys images (what the models learn from)
      // rather than more recordings of the same ten words.
      limit = 10 * std::clamp<int64_t>((static_cast<int64_t>(images[split].size()) / 10 + 4) / 5, 2, 3);
    }
    for (size_t i : balanced_subset(clip_parts[split], [&](size_t k) { return all[k].label; }, limit, seed + ++salt)) {
      SpeechClip c = all[i];
      c.file = "audio/" + split + "/" + file_safe(c.label) + "-" + file_safe(c.voice) + "-s" + std::to_string(c.speed) +
               "-p" + std::to_string(c.pitch) + ".flac";
      clips_of[split][c.label].push_back(clips.size());
      clips.push_back(std::move(c));
    }
  }

  json labels = json::array();
  for (size_t c = 0; c < 10; ++c) labels.push_back(fashion_class(c));
  char degradation[256];
  std::snprintf(degradation, sizeof degradation,
                "images: %dx%d block means, then Gaussian noise (std %.2f of full scale, clipped); speech: 8 kHz, "
                "8-bit FLAC, white noise at %.1f dB SNR against the clip's RMS",
                kDegradation.image_pool, kDegradation.image_pool, kDegradation.image_noise, kDegradation.audio_snr_db);
  DatasetWriter writer(
      ctx, {{"name", "av-fashion"},
            {"description", std::string("A Fashion-MNIST image and an espeak-ng recording of its class name, paired by "
                                        "class (each image gets a clip of its class from its split's voices; test "
                                        "voices are unheard in training), both degraded. ") + degradation},
            {"version", "1"},
            {"fields",
             {{"image", {{"type", "image"}, {"format", "idx"}, {"description", "28x28 uint8 grey image, degraded"}}},
              {"audio", {{"type", "audio"}, {"format", "flac"}, {"description", "8 kHz mono 8-bit FLAC, noisy"}}},
              {"label", {{"type", "label"}, {"labels", labels}, {"description", "clothing class"}}},
              {"voice", {{"type", "string"}, {"description", "espeak-ng voice of the clip"}}},
              {"source", {{"type", "string"}, {"description", "the image's file#index in the official release"}}}}}});

  render_speech("av-fashion", clips, writer.dir(), kRate, SF_FORMAT_PCM_S8, [&](std::vector<float>& y, size_t i) {
    double power = 0;
    for (float v : y) power += double(v) * v;
    power /= double(std::max<size_t>(1, y.size()));
    const double sigma = std::sqrt(power / std::pow(10.0, kDegradation.audio_snr_db / 10.0));
    std::mt19937_64 rng(mix(seed, 99, i));
    std::normal_distribution<double> noise(0.0, sigma);
    // Scale speech + noise into full range so the 8-bit store keeps what is left.
    for (float& v : y) v = static_cast<float>(v + noise(rng));
    float peak = 1e-6f;
    for (float v : y) peak = std::max(peak, std::abs(v));
    for (float& v : y) v *= 0.9f / peak;
  });

  uint64_t stream = 0;
  for (const std::string split : {"train", "val", "test"}) {
    const bool official_test = split == "test";
    const auto& rows = images[split];
    const std::string file = split + "-images.idx.gz";
    write_idx_images(writer.dir() / file, degrade_images(fashion.images[official_test ? 1 : 0], rows, seed, ++stream), [&] {
      std::vector<size_t> all_rows(rows.size());
      for (size_t k = 0; k < rows.size(); ++k) all_rows[k] = k;
      return all_rows;
    }());
    // Pairing: the images of a class take the class's clips in a seeded round robin, so every
    // clip is used about equally often.
    std::map<std::string, std::vector<size_t>> order = clips_of[split];
    std::mt19937_64 rng(mix(seed, 7, stream));
    for (auto& [label, list] : order) std::shuffle(list.begin(), list.end(), rng);
    std::map<std::string, size_t> used;
    const std::string origin = official_test ? "t10k-images-idx3-ubyte.gz#" : "train-images-idx3-ubyte.gz#";
    for (size_t k = 0; k < rows.size(); ++k) {
      const std::string label = label_in(split, rows[k]);
      const auto& list = order.at(label);
      const SpeechClip& clip = clips[list[used[label]++ % list.size()]];
      writer.add(split, {{"image", file + "#" + std::to_string(k)},
                         {"audio", clip.file},
                         {"label", label},
                         {"voice", clip.voice},
                         {"source", origin + std::to_string(rows[k])}});
    }
  }
  return writer.finish("images: MIT (Zalando SE); speech: espeak-ng output, unencumbered",
                       std::string("all audio (espeak-ng speech); the pairing (by class); the degradation: ") + degradation,
                       sources);
}

}  // namespace modalkit::host::recipes
