// spoken-words: the ten Fashion-MNIST class names and the digits zero to nine spoken by espeak-ng
// in 96 voices (8 English accents x 12 voice variants) at 3 speeds and 3 pitches, resampled to
// 16 kHz (libsamplerate) and stored as FLAC (libsndfile). Whole voices are held out: the test
// split's voices are never heard in training, so accuracy measures generalisation to new speakers.
#include <samplerate.h>
#include <sndfile.h>
#include <unistd.h>

#include <atomic>
#include <mutex>
#include <thread>

#include "modalkit/errors.hpp"
#include "recipes.hpp"

namespace fs = std::filesystem;
using nlohmann::json;

namespace modalkit::host::recipes {

namespace {

struct Word {
  const char* label;   ///< the label (Fashion-MNIST's class name, or the digit's name)
  const char* spoken;  ///< what espeak-ng says
  const char* group;   ///< "fashion" or "digit"
};

const Word kWords[] = {
    {"t-shirt/top", "t-shirt", "fashion"}, {"trouser", "trouser", "fashion"}, {"pullover", "pullover", "fashion"},
    {"dress", "dress", "fashion"},         {"coat", "coat", "fashion"},       {"sandal", "sandal", "fashion"},
    {"shirt", "shirt", "fashion"},         {"sneaker", "sneaker", "fashion"}, {"bag", "bag", "fashion"},
    {"ankle boot", "ankle boot", "fashion"},
    {"zero", "zero", "digit"},   {"one", "one", "digit"},   {"two", "two", "digit"}, {"three", "three", "digit"},
    {"four", "four", "digit"},   {"five", "five", "digit"}, {"six", "six", "digit"}, {"seven", "seven", "digit"},
    {"eight", "eight", "digit"}, {"nine", "nine", "digit"},
};
const char* kAccents[] = {"en-us", "en-gb", "en-gb-scotland", "en-gb-x-rp", "en-gb-x-gbclan", "en-gb-x-gbcwmd",
                          "en-029", "en-us-nyc"};
const char* kVariants[] = {"m1", "m2", "m3", "m4", "m5", "m6", "m7", "f1", "f2", "f3", "f4", "f5"};
const int kSpeeds[] = {130, 170, 210};  // words per minute (espeak-ng -s)
const int kPitches[] = {30, 50, 70};    // 0-99 (espeak-ng -p)
constexpr int kRate = 16000;

struct Clip {
  size_t word;
  std::string voice;
  int speed, pitch;
  std::string split, file;
};

/// espeak-ng's WAV (22.05 kHz) → 16 kHz FLAC.
void convert(const fs::path& wav, const fs::path& flac) {
  SF_INFO in_info{};
  std::unique_ptr<SNDFILE, int (*)(SNDFILE*)> in(sf_open(wav.c_str(), SFM_READ, &in_info), sf_close);
  if (!in || in_info.channels != 1 || in_info.frames <= 0) {
    throw Error("espeak-ng wrote no usable audio to " + wav.string());
  }
  std::vector<float> x(static_cast<size_t>(in_info.frames));
  sf_readf_float(in.get(), x.data(), in_info.frames);
  const double ratio = double(kRate) / in_info.samplerate;
  std::vector<float> y(static_cast<size_t>(x.size() * ratio) + 16);
  SRC_DATA d{};
  d.data_in = x.data();
  d.input_frames = long(x.size());
  d.data_out = y.data();
  d.output_frames = long(y.size());
  d.src_ratio = ratio;
  d.end_of_input = 1;
  if (int err = src_simple(&d, SRC_SINC_BEST_QUALITY, 1)) throw Error(std::string("resampling: ") + src_strerror(err));
  SF_INFO out_info{};
  out_info.samplerate = kRate;
  out_info.channels = 1;
  out_info.format = SF_FORMAT_FLAC | SF_FORMAT_PCM_16;
  std::unique_ptr<SNDFILE, int (*)(SNDFILE*)> out(sf_open(flac.c_str(), SFM_WRITE, &out_info), sf_close);
  if (!out) throw Error("cannot write " + flac.string() + ": " + sf_strerror(nullptr));
  // Clipping guard: resampling can overshoot full scale by a hair.
  for (long i = 0; i < d.output_frames_gen; ++i) y[i] = std::max(-1.0f, std::min(1.0f, y[i]));
  sf_writef_float(out.get(), y.data(), d.output_frames_gen);
}

}  // namespace

fs::path spoken_words(const Context& ctx) {
  const std::string hint = "spoken-words needs espeak-ng: sudo apt-get install espeak-ng";
  const std::string banner = run_tool({"espeak-ng", "--version"}, {}, hint);
  std::string binary = run_tool({"sh", "-c", "command -v espeak-ng"}, {}, hint);
  binary.erase(binary.find_last_not_of(" \n") + 1);
  SourceFile espeak{binary, "espeak-ng", "", binary, ""};
  try {
    espeak = debian_file(ctx, "espeak-ng", binary);  // the version and hash of the installed package
  } catch (const Error&) {
    espeak.version = banner.substr(0, banner.find("  Data"));  // not from Debian: record what it says
  }
  // espeak-ng's voice data decide the sound: hash them too.
  SourceFile phonemes;
  if (const auto at = banner.find("Data at: "); at != std::string::npos) {
    std::string data = banner.substr(at + 9);
    data.erase(data.find_last_not_of(" \n") + 1);
    try {
      phonemes = debian_file(ctx, "espeak-ng-data", data + "/phondata");
    } catch (const Error&) {
      phonemes = SourceFile{};  // espeak-ng not from Debian: its version above is all we know
    }
  }

  // Voices are split, not clips: a voice is in exactly one split.
  std::vector<std::string> voices;
  for (const char* a : kAccents) {
    for (const char* v : kVariants) voices.push_back(std::string(a) + "+" + v);
  }
  std::mt19937_64 rng(ctx.options.seed);
  std::shuffle(voices.begin(), voices.end(), rng);
  const size_t n_test = voices.size() / 5, n_val = voices.size() / 10;
  std::map<std::string, std::string> split_of;
  for (size_t i = 0; i < voices.size(); ++i) split_of[voices[i]] = i < n_test ? "test" : i < n_test + n_val ? "val" : "train";

  std::vector<Clip> all;
  for (size_t w = 0; w < std::size(kWords); ++w) {
    for (const auto& voice : voices) {
      for (int s : kSpeeds) {
        for (int p : kPitches) all.push_back({w, voice, s, p, split_of[voice], ""});
      }
    }
  }
  std::map<std::string, std::vector<size_t>> parts;
  for (size_t i = 0; i < all.size(); ++i) parts[all[i].split].push_back(i);
  std::vector<Clip> clips;
  uint64_t salt = 0;
  for (const std::string split : {"train", "val", "test"}) {
    for (size_t i : balanced_subset(parts[split], [&](size_t k) { return std::string(kWords[all[k].word].label); },
                                    subset_share(ctx, split, parts[split].size(), all.size()), ctx.options.seed + ++salt)) {
      clips.push_back(all[i]);
    }
  }

  json labels = json::array();
  for (const auto& w : kWords) labels.push_back(w.label);
  DatasetWriter writer(
      ctx, {{"name", "spoken-words"},
            {"description", "Synthetic speech: the 10 Fashion-MNIST class names and the digits zero-nine spoken by "
                            "espeak-ng in 96 voices (8 accents x 12 variants), 3 speeds, 3 pitches; 16 kHz FLAC. "
                            "Voices are split (67 train, 10 val, 19 test): test voices are unheard in training."},
            {"version", "1"},
            {"fields",
             {{"audio", {{"type", "audio"}, {"format", "flac"}, {"description", "16 kHz mono FLAC"}}},
              {"label", {{"type", "label"}, {"labels", labels}, {"description", "the word spoken"}}},
              {"group", {{"type", "string"}, {"description", "fashion (a Fashion-MNIST class name) or digit"}}},
              {"voice", {{"type", "string"}, {"description", "espeak-ng voice: accent+variant"}}},
              {"speed", {{"type", "number"}, {"description", "words per minute"}}},
              {"pitch", {{"type", "number"}, {"description", "espeak-ng pitch, 0-99"}}}}}});

  for (const std::string split : {"train", "val", "test"}) fs::create_directories(writer.dir() / "audio" / split);
  for (auto& c : clips) {
    std::string word = kWords[c.word].label;
    for (char& ch : word) {
      if (ch == '/' || ch == ' ') ch = '_';
    }
    std::string voice = c.voice;
    for (char& ch : voice) {
      if (ch == '+') ch = '_';
    }
    c.file = "audio/" + c.split + "/" + word + "-" + voice + "-s" + std::to_string(c.speed) + "-p" +
             std::to_string(c.pitch) + ".flac";
  }
  // Rendering dominates (about 25 ms a clip): one worker per core, each with its own scratch WAV.
  std::atomic<size_t> next{0};
  std::mutex error_mutex;
  std::string error;
  auto worker = [&](unsigned id) {
    const fs::path wav = writer.dir() / ("scratch-" + std::to_string(id) + ".wav");
    for (size_t i = next++; i < clips.size(); i = next++) {
      const Clip& c = clips[i];
      try {
        run_tool({"espeak-ng", "-v", c.voice, "-s", std::to_string(c.speed), "-p", std::to_string(c.pitch), "-w",
                  wav.string(), kWords[c.word].spoken},
                 {}, hint);
        convert(wav, writer.dir() / c.file);
      } catch (const std::exception& e) {
        std::lock_guard<std::mutex> lock(error_mutex);
        if (error.empty()) error = e.what();
        next = clips.size();
      }
    }
    fs::remove(wav);
  };
  std::vector<std::thread> threads;
  for (unsigned t = 0; t < std::max(1u, std::thread::hardware_concurrency()); ++t) threads.emplace_back(worker, t);
  for (auto& t : threads) t.join();
  if (!error.empty()) throw Error("spoken-words: " + error);

  for (const auto& c : clips) {
    writer.add(c.split, {{"audio", c.file},
                         {"label", kWords[c.word].label},
                         {"group", kWords[c.word].group},
                         {"voice", c.voice},
                         {"speed", c.speed},
                         {"pitch", c.pitch}});
  }
  std::vector<SourceFile> sources{espeak};
  if (!phonemes.sha256.empty()) sources.push_back(phonemes);
  return writer.finish("espeak-ng is GPL-3.0-or-later; its output is not covered by it (synthesised speech, "
                       "unencumbered)",
                       "all audio: speech synthesised by espeak-ng (formant synthesis, no human voices)", sources);
}

}  // namespace modalkit::host::recipes
