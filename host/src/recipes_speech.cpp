// spoken-words: the ten Fashion-MNIST class names and the digits zero to nine spoken by espeak-ng
// in 96 voices (8 English accents x 12 voice variants) at 3 speeds and 3 pitches, resampled to
// 16 kHz (libsamplerate) and stored as FLAC (libsndfile). Whole voices are held out: the test
// split's voices are never heard in training, so accuracy measures generalisation to new speakers.
#include <samplerate.h>
#include <sndfile.h>
#include <unistd.h>

#include <functional>

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
constexpr int kRate = 16000;


}  // namespace

std::vector<float> read_mono(const fs::path& file, int rate) {
  SF_INFO info{};
  std::unique_ptr<SNDFILE, int (*)(SNDFILE*)> in(sf_open(file.c_str(), SFM_READ, &info), sf_close);
  if (!in || info.channels != 1 || info.frames <= 0) throw Error("no usable audio in " + file.string());
  std::vector<float> x(static_cast<size_t>(info.frames));
  sf_readf_float(in.get(), x.data(), info.frames);
  if (info.samplerate == rate) return x;
  const double ratio = double(rate) / info.samplerate;
  std::vector<float> y(static_cast<size_t>(x.size() * ratio) + 16);
  SRC_DATA d{};
  d.data_in = x.data();
  d.input_frames = long(x.size());
  d.data_out = y.data();
  d.output_frames = long(y.size());
  d.src_ratio = ratio;
  d.end_of_input = 1;
  if (int err = src_simple(&d, SRC_SINC_BEST_QUALITY, 1)) throw Error(std::string("resampling: ") + src_strerror(err));
  y.resize(static_cast<size_t>(d.output_frames_gen));
  return y;
}

namespace {

/// espeak-ng's WAV (22.05 kHz) → `rate` (libsamplerate) → `degrade` → FLAC.
void convert(const fs::path& wav, const fs::path& flac, int rate, int pcm,
             const std::function<void(std::vector<float>&)>& degrade) {
  std::vector<float> y;
  try {
    y = read_mono(wav, rate);
  } catch (const Error&) {
    throw Error("espeak-ng wrote no usable audio to " + wav.string());
  }
  if (degrade) degrade(y);
  SF_INFO out_info{};
  out_info.samplerate = rate;
  out_info.channels = 1;
  out_info.format = SF_FORMAT_FLAC | pcm;
  std::unique_ptr<SNDFILE, int (*)(SNDFILE*)> out(sf_open(flac.c_str(), SFM_WRITE, &out_info), sf_close);
  if (!out) throw Error("cannot write " + flac.string() + ": " + sf_strerror(nullptr));
  // Clipping guard: resampling (and added noise) can overshoot full scale.
  for (float& v : y) v = std::max(-1.0f, std::min(1.0f, v));
  sf_writef_float(out.get(), y.data(), sf_count_t(y.size()));
}

const std::string kHint = "espeak-ng is needed: sudo apt-get install espeak-ng";

}  // namespace

std::vector<std::pair<std::string, std::string>> split_voices(uint64_t seed) {
  std::vector<std::string> voices;
  for (const char* a : kAccents) {
    for (const char* v : kVariants) voices.push_back(std::string(a) + "+" + v);
  }
  std::mt19937_64 rng(seed);
  std::shuffle(voices.begin(), voices.end(), rng);
  const size_t n_test = voices.size() / 5, n_val = voices.size() / 10;
  std::vector<std::pair<std::string, std::string>> out;
  for (size_t i = 0; i < voices.size(); ++i) {
    out.emplace_back(voices[i], i < n_test ? "test" : i < n_test + n_val ? "val" : "train");
  }
  return out;
}

const std::vector<int>& speech_speeds() {
  static const std::vector<int> v{130, 170, 210};  // words per minute (espeak-ng -s)
  return v;
}

const std::vector<int>& speech_pitches() {
  static const std::vector<int> v{30, 50, 70};  // 0-99 (espeak-ng -p)
  return v;
}

std::vector<SourceFile> espeak_sources(const Context& ctx) {
  const std::string banner = run_tool({"espeak-ng", "--version"}, {}, kHint);
  std::string binary = run_tool({"sh", "-c", "command -v espeak-ng"}, {}, kHint);
  binary.erase(binary.find_last_not_of(" \n") + 1);
  SourceFile espeak{binary, "espeak-ng", "", binary, ""};
  try {
    espeak = debian_file(ctx, "espeak-ng", binary);  // the version and hash of the installed package
  } catch (const Error&) {
    espeak.version = banner.substr(0, banner.find("  Data"));  // not from Debian: record what it says
  }
  std::vector<SourceFile> sources{espeak};
  // espeak-ng's voice data decide the sound: hash them too.
  if (const auto at = banner.find("Data at: "); at != std::string::npos) {
    std::string data = banner.substr(at + 9);
    data.erase(data.find_last_not_of(" \n") + 1);
    try {
      sources.push_back(debian_file(ctx, "espeak-ng-data", data + "/phondata"));
    } catch (const Error&) {
      // espeak-ng not from Debian: its version above is all we know
    }
  }
  return sources;
}

void render_speech(const std::string& name, const std::vector<SpeechClip>& clips, const fs::path& dir, int rate, int pcm,
                   const std::function<void(std::vector<float>&, size_t)>& degrade) {
  for (const auto& c : clips) fs::create_directories((dir / c.file).parent_path());
  // Rendering dominates (about 25 ms a clip): one worker per core, each with its own scratch WAV.
  for_each_job(name, clips.size(), [](size_t) { return size_t{1}; }, "rendered", [&](size_t i, unsigned worker) {
    const SpeechClip& c = clips[i];
    const fs::path wav = dir / ("scratch-" + std::to_string(worker) + ".wav");
    run_tool({"espeak-ng", "-v", c.voice, "-s", std::to_string(c.speed), "-p", std::to_string(c.pitch), "-w", wav.string(),
              c.spoken},
             {}, kHint);
    std::function<void(std::vector<float>&)> one;
    if (degrade) one = [&](std::vector<float>& y) { degrade(y, i); };
    convert(wav, dir / c.file, rate, pcm, one);
    fs::remove(wav);
  });
}

std::string file_safe(std::string s) {
  for (char& ch : s) {
    if (ch == '/' || ch == ' ' || ch == '+') ch = '_';
  }
  return s;
}

fs::path spoken_words(const Context& ctx) {
  const std::vector<SourceFile> sources = espeak_sources(ctx);
  std::vector<SpeechClip> all;
  for (size_t w = 0; w < std::size(kWords); ++w) {
    for (const auto& [voice, split] : split_voices(ctx.options.seed)) {
      for (int s : speech_speeds()) {
        for (int p : speech_pitches()) all.push_back({kWords[w].label, kWords[w].spoken, voice, s, p, split, ""});
      }
    }
  }
  std::map<std::string, std::vector<size_t>> parts;
  for (size_t i = 0; i < all.size(); ++i) parts[all[i].split].push_back(i);
  std::vector<SpeechClip> clips;
  uint64_t salt = 0;
  for (const std::string split : {"train", "val", "test"}) {
    for (size_t i : balanced_subset(parts[split], [&](size_t k) { return all[k].label; },
                                    subset_share(ctx, split, parts[split].size(), all.size()), ctx.options.seed + ++salt)) {
      clips.push_back(all[i]);
    }
  }
  for (auto& c : clips) {
    c.file = "audio/" + c.split + "/" + file_safe(c.label) + "-" + file_safe(c.voice) + "-s" + std::to_string(c.speed) +
             "-p" + std::to_string(c.pitch) + ".flac";
  }

  json labels = json::array();
  std::map<std::string, std::string> group;
  for (const auto& w : kWords) {
    labels.push_back(w.label);
    group[w.label] = w.group;
  }
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
  render_speech("spoken-words", clips, writer.dir(), kRate, SF_FORMAT_PCM_16);
  for (const auto& c : clips) {
    writer.add(c.split, {{"audio", c.file},
                         {"label", c.label},
                         {"group", group[c.label]},
                         {"voice", c.voice},
                         {"speed", c.speed},
                         {"pitch", c.pitch}});
  }
  return writer.finish("espeak-ng is GPL-3.0-or-later; its output is not covered by it (synthesised speech, "
                       "unencumbered)",
                       "all audio: speech synthesised by espeak-ng (formant synthesis, no human voices)", sources);
}

}  // namespace modalkit::host::recipes
