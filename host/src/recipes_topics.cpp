// spoken-topics: an instance-paired speech + transcript set, the offline analogue of the spoken
// language with its transcript that MCTN and co-learning were shown on. Each text is the first
// clause of a WordNet 3.0 noun gloss, labelled by its synset's lexicographer file (its topic:
// animal, artifact, ...), which the words reveal; each text is spoken by espeak-ng or Festival
// voices and passed through a telephone channel (band-limited, noisy, a low-bitrate Opus codec),
// so the speech is the weak modality and the transcript the strong one. Splits are disjoint by
// text and by voice: no sentence and no voice is in two splits.
//
// Rendering is the slow part, so every clean render is cached by (synthesizer, voice, speed,
// pitch, text) under the recipe's cache directory; the channel is applied afresh each time.
#include <sndfile.h>
#include <unistd.h>

#include <array>
#include <cmath>
#include <fstream>
#include <iterator>
#include <optional>
#include <set>
#include <sstream>
#include <thread>

#include <spdlog/spdlog.h>

#include "hashing.hpp"
#include "modalkit/errors.hpp"
#include "recipes.hpp"

namespace fs = std::filesystem;
using nlohmann::json;

namespace modalkit::host::recipes {

namespace {

/// A topic: a WordNet noun lexicographer file (field 2 of data.noun) and its label. The eight
/// largest noun files, so every class has thousands of glosses to draw from.
struct Topic {
  int lexfile;
  const char* label;
};
const Topic kTopics[] = {{4, "act"},          {5, "animal"},    {6, "artifact"}, {10, "communication"},
                         {15, "location"},    {18, "person"},   {20, "plant"},   {26, "state"}};

constexpr size_t kTextsPerTopic = 2000;
constexpr size_t kMinWords = 4, kMaxWords = 12;  // about 1.5 to 4 seconds of speech
constexpr int kRate = 8000;                      // telephone band: stored and cached at 8 kHz
constexpr int kTrainRenders = 2;                 // voices per training text (val and test: 1)
constexpr double kFestivalShare = 0.3;           // share of clips spoken by the split's Festival voice

/// Festival's English voices in Debian: two diphone voices cut from real recordings of two men,
/// one statistical (HTS) voice trained on a woman's recordings. Each split gets one.
const char* kFestivalVoices[] = {"kal_diphone", "ked_diphone", "cmu_us_slt_arctic_hts"};
const double kStretches[] = {0.9, 1.0, 1.15};  // Festival's Duration_Stretch: slower is larger

/// The telephone channel every clip goes through after rendering.
struct Channel {
  double low_hz = 300, high_hz = 3400;      ///< second-order Butterworth band-pass
  double snr_min_db = 5, snr_max_db = 20;   ///< white noise at an SNR drawn per clip
  double opus_compression = 1.0;            ///< libsndfile's Opus compression level: 1 = lowest bitrate
};
constexpr Channel kChannel;

const std::string kFestivalHint =
    "Festival and its English voices are needed: sudo apt-get install festival festvox-kallpc16k festvox-kdlpc16k "
    "festvox-us-slt-hts";

/// A text: what is spoken and its topic.
struct Text {
  std::string spoken;
  std::string label;
  std::string split;
};

/// One clip to render.
struct Clip {
  size_t text;             ///< index into the texts
  std::string synthesizer; ///< "espeak-ng" or "festival"
  std::string voice;       ///< espeak-ng accent+variant, or a Festival voice name
  int speed = 170;         ///< espeak-ng words per minute; Festival: Duration_Stretch in percent
  int pitch = 50;          ///< espeak-ng pitch 0-99 (Festival: unused, 0)
  std::string split;
  std::string file;        ///< relative to the data set directory
  fs::path cached;         ///< the clean 8 kHz render
};

/// A gloss as one short spoken sentence: its first clause (examples follow a ';'), without
/// parenthesised notes, only letters, digits and light punctuation, at most kMaxWords words.
/// Empty when fewer than kMinWords words remain.
std::string spoken_text(const std::string& gloss) {
  std::string clause = gloss.substr(0, gloss.find(';'));
  std::string kept;
  int depth = 0;
  for (char ch : clause) {
    if (ch == '(') ++depth;
    if (depth == 0) {
      const bool plain = std::isalnum(static_cast<unsigned char>(ch)) || ch == '\'' || ch == '-' || ch == ',';
      kept += plain ? ch : ' ';
    }
    if (ch == ')' && depth > 0) --depth;
  }
  std::istringstream words(kept);
  std::vector<std::string> out;
  for (std::string w; words >> w && out.size() < kMaxWords;) {
    // A word is never read as a synthesiser's option: no leading '-'.
    w.erase(0, w.find_first_not_of('-'));
    if (w.empty() || w == ",") continue;
    out.push_back(w);
  }
  if (out.size() < kMinWords) return "";
  while (!out.empty() && (out.back().back() == ',' || out.back().back() == '-')) out.back().pop_back();
  std::string s;
  for (const auto& w : out) s += (s.empty() ? "" : " ") + w;
  return s;
}

/// The noun glosses of the topics' lexicographer files, cleaned, each text once (a text that
/// occurs in two topics is dropped: its label would be ambiguous), in file order.
std::map<std::string, std::vector<std::string>> topic_texts(const fs::path& data_noun) {
  std::map<int, std::string> label_of;
  for (const auto& t : kTopics) label_of[t.lexfile] = t.label;
  std::map<std::string, std::set<std::string>> topics_of;
  std::vector<std::pair<std::string, std::string>> found;  // (text, label) in file order
  std::ifstream in(data_noun);
  if (!in) throw Error("cannot read " + data_noun.string());
  for (std::string line; std::getline(in, line);) {
    if (line.empty() || line[0] == ' ') continue;  // the licence header lines start with spaces
    const auto bar = line.find(" | ");
    if (bar == std::string::npos) continue;
    std::istringstream fields(line.substr(0, bar));
    std::string offset;
    int lexfile = -1;
    fields >> offset >> lexfile;
    const auto it = label_of.find(lexfile);
    if (it == label_of.end()) continue;
    std::string text = spoken_text(line.substr(bar + 3));
    if (text.empty()) continue;
    topics_of[text].insert(it->second);
    found.emplace_back(std::move(text), it->second);
  }
  std::map<std::string, std::vector<std::string>> out;
  std::set<std::string> seen;
  for (auto& [text, label] : found) {
    if (topics_of[text].size() != 1 || !seen.insert(text).second) continue;
    out[label].push_back(std::move(text));
  }
  return out;
}

/// 8 kHz mono samples of an audio file.
std::vector<float> read_audio(const fs::path& file) { return read_mono(file, kRate); }

void set_ogg_serial(const fs::path& file, uint32_t serial);

/// Writes `y` (8 kHz mono) as `format` (a libsndfile major|subtype), through a temporary file of
/// this process and thread renamed into place, so a cache shared by two prepares never holds
/// half a file. `compression` is set when >= 0; an Ogg file gets `ogg_serial` (see set_ogg_serial).
void write_audio(const fs::path& file, std::vector<float> y, int format, double compression = -1,
                 std::optional<uint32_t> ogg_serial = {}) {
  for (float& v : y) v = std::max(-1.0f, std::min(1.0f, v));
  SF_INFO info{};
  info.samplerate = kRate;
  info.channels = 1;
  info.format = format;
  std::ostringstream tmp_name;
  tmp_name << file.string() << ".tmp." << ::getpid() << "." << std::this_thread::get_id();
  const fs::path tmp = tmp_name.str();
  try {
    {
      std::unique_ptr<SNDFILE, int (*)(SNDFILE*)> out(sf_open(tmp.c_str(), SFM_WRITE, &info), sf_close);
      if (!out) throw Error("cannot write " + tmp.string() + ": " + sf_strerror(nullptr));
      if (compression >= 0) sf_command(out.get(), SFC_SET_COMPRESSION_LEVEL, &compression, sizeof compression);
      if (sf_writef_float(out.get(), y.data(), sf_count_t(y.size())) != sf_count_t(y.size())) {
        throw Error("cannot write " + tmp.string() + ": " + sf_strerror(out.get()));
      }
    }
    if (ogg_serial) set_ogg_serial(tmp, *ogg_serial);
    fs::rename(tmp, file);
  } catch (...) {
    std::error_code ignored;
    fs::remove(tmp, ignored);
    throw;
  }
}

/// Ogg's page checksum: CRC-32, polynomial 0x04C11DB7, not reflected, initial value 0.
uint32_t ogg_crc(const unsigned char* p, size_t n) {
  static const std::array<uint32_t, 256> table = [] {
    std::array<uint32_t, 256> t{};
    for (uint32_t i = 0; i < 256; ++i) {
      uint32_t r = i << 24;
      for (int k = 0; k < 8; ++k) r = (r & 0x80000000u) ? (r << 1) ^ 0x04C11DB7u : r << 1;
      t[i] = r;
    }
    return t;
  }();
  uint32_t crc = 0;
  for (size_t i = 0; i < n; ++i) crc = (crc << 8) ^ table[((crc >> 24) ^ p[i]) & 0xFF];
  return crc;
}

/// libsndfile draws each Ogg stream's serial number from the clock, so two renders of one clip
/// would differ in their page headers alone. Every page of `file` gets `serial` instead (and its
/// checksum again): the same seed gives the same bytes, and so the same data set sha256.
void set_ogg_serial(const fs::path& file, uint32_t serial) {
  std::string bytes;
  {
    std::ifstream in(file, std::ios::binary);
    bytes.assign(std::istreambuf_iterator<char>(in), {});
    if (!in.good() && !in.eof()) throw Error("cannot read " + file.string());
  }
  if (bytes.empty()) throw Error(file.string() + ": empty, not an Ogg stream");
  auto* b = reinterpret_cast<unsigned char*>(bytes.data());
  auto put = [&](size_t at, uint32_t v) {
    for (int k = 0; k < 4; ++k) b[at + k] = static_cast<unsigned char>(v >> (8 * k));
  };
  size_t at = 0;
  while (at + 27 <= bytes.size() && bytes.compare(at, 4, "OggS") == 0) {
    const size_t segments = b[at + 26];
    size_t length = 27 + segments;
    for (size_t k = 0; k < segments && at + 27 + k < bytes.size(); ++k) length += b[at + 27 + k];
    if (at + length > bytes.size()) break;
    put(at + 14, serial);
    put(at + 22, 0);
    put(at + 22, ogg_crc(b + at, length));
    at += length;
  }
  if (at != bytes.size()) throw Error(file.string() + ": not a well-formed Ogg stream (page at byte " + std::to_string(at) + ")");
  std::ofstream out(file, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  if (!out.flush()) throw Error("cannot write " + file.string());
}

/// A second-order section (RBJ's audio-EQ cookbook), run in place.
void biquad(std::vector<float>& x, double b0, double b1, double b2, double a0, double a1, double a2) {
  double x1 = 0, x2 = 0, y1 = 0, y2 = 0;
  for (float& v : x) {
    const double y = (b0 * v + b1 * x1 + b2 * x2 - a1 * y1 - a2 * y2) / a0;
    x2 = x1;
    x1 = v;
    y2 = y1;
    y1 = y;
    v = static_cast<float>(y);
  }
}

/// The telephone channel: band-pass, white noise at the clip's SNR, peak-normalised.
void telephone(std::vector<float>& y, std::mt19937_64& rng) {
  const double q = std::sqrt(0.5);
  auto section = [&](double hz, bool high) {
    const double w = 2 * M_PI * hz / kRate, alpha = std::sin(w) / (2 * q), c = std::cos(w);
    if (high) {
      biquad(y, (1 + c) / 2, -(1 + c), (1 + c) / 2, 1 + alpha, -2 * c, 1 - alpha);
    } else {
      biquad(y, (1 - c) / 2, 1 - c, (1 - c) / 2, 1 + alpha, -2 * c, 1 - alpha);
    }
  };
  section(kChannel.low_hz, true);
  section(kChannel.high_hz, false);
  double power = 0;
  for (float v : y) power += double(v) * v;
  power /= double(std::max<size_t>(1, y.size()));
  const double snr = std::uniform_real_distribution<double>(kChannel.snr_min_db, kChannel.snr_max_db)(rng);
  std::normal_distribution<double> noise(0.0, std::sqrt(power / std::pow(10.0, snr / 10.0)));
  float peak = 1e-6f;
  for (float& v : y) {
    v = static_cast<float>(v + noise(rng));
    peak = std::max(peak, std::abs(v));
  }
  for (float& v : y) v *= 0.9f / peak;
}

/// Escapes a text for a Scheme string literal.
std::string scheme_string(const std::string& s) {
  std::string out = "\"";
  for (char ch : s) {
    if (ch == '"' || ch == '\\') out += '\\';
    out += ch;
  }
  return out + "\"";
}

/// Renders the clips not yet in the cache: an espeak-ng process per clip, a Festival process per
/// batch of one voice's clips (Festival's start-up costs ten times a sentence). One worker per
/// core; progress is logged every few seconds.
void render_missing(const std::vector<Clip>& clips, const std::vector<Text>& texts, const fs::path& scratch) {
  std::vector<std::vector<size_t>> jobs;
  std::map<std::string, std::vector<size_t>> festival;  // voice → clips
  for (size_t i = 0; i < clips.size(); ++i) {
    if (fs::exists(clips[i].cached)) continue;
    if (clips[i].synthesizer == "festival") {
      festival[clips[i].voice].push_back(i);
    } else {
      jobs.push_back({i});
    }
  }
  for (const auto& [voice, list] : festival) {
    for (size_t at = 0; at < list.size(); at += 100) {
      jobs.emplace_back(list.begin() + at, list.begin() + std::min(list.size(), at + 100));
    }
  }
  size_t missing = 0;
  for (const auto& j : jobs) missing += j.size();
  if (missing == 0) {
    spdlog::info("spoken-topics: all {} clips are in the render cache", clips.size());
    return;
  }
  spdlog::info("spoken-topics: rendering {} of {} clips ({} cached)", missing, clips.size(), clips.size() - missing);
  fs::create_directories(scratch);
  for_each_job("spoken-topics", jobs.size(), [&](size_t j) { return jobs[j].size(); }, "rendered", [&](size_t j, unsigned worker) {
    // An empty scratch directory per job: a file left by a killed run, or by the job before,
    // must never pass for a render the synthesiser did not write.
    const fs::path dir = scratch / ("worker-" + std::to_string(worker));
    fs::remove_all(dir);
    fs::create_directories(dir);
    const Clip& first = clips[jobs[j].front()];
    if (first.synthesizer == "festival") {
      std::ofstream script(dir / "render.scm");
      script << "(voice_" << first.voice << ")\n";
      for (size_t k = 0; k < jobs[j].size(); ++k) {
        const Clip& c = clips[jobs[j][k]];
        script << "(Parameter.set 'Duration_Stretch " << c.speed / 100.0 << ")\n"
               << "(utt.save.wave (utt.synth (Utterance Text " << scheme_string(texts[c.text].spoken) << ")) "
               << scheme_string((dir / (std::to_string(k) + ".wav")).string()) << " 'riff)\n";
      }
      script.close();
      run_tool({"festival", "-b", (dir / "render.scm").string()}, {}, kFestivalHint);
    } else {
      const Clip& c = first;
      run_tool({"espeak-ng", "-v", c.voice, "-s", std::to_string(c.speed), "-p", std::to_string(c.pitch), "-w",
                (dir / "0.wav").string(), texts[c.text].spoken},
               {}, "espeak-ng is needed: sudo apt-get install espeak-ng");
    }
    for (size_t k = 0; k < jobs[j].size(); ++k) {
      const Clip& c = clips[jobs[j][k]];
      const fs::path wav = dir / (std::to_string(k) + ".wav");
      if (!fs::exists(wav)) {
        throw Error(c.synthesizer + " (voice " + c.voice + ") wrote no audio for \"" + texts[c.text].spoken + "\"");
      }
      write_audio(c.cached, read_audio(wav), SF_FORMAT_FLAC | SF_FORMAT_PCM_16);
    }
    fs::remove_all(dir);
  });
}

}  // namespace

fs::path spoken_topics(const Context& ctx) {
  const uint64_t seed = ctx.options.seed;
  std::vector<SourceFile> sources{debian_file(ctx, "wordnet-base", "/usr/share/wordnet/data.noun")};
  for (auto& s : espeak_sources(ctx)) sources.push_back(std::move(s));
  run_tool({"festival", "--version"}, {}, kFestivalHint);
  const size_t festival_at = sources.size();  // the binary; its voices follow
  try {
    sources.push_back(debian_file(ctx, "festival", "/usr/bin/festival"));
    sources.push_back(debian_file(ctx, "festvox-kallpc16k", "/usr/share/festival/voices/english/kal_diphone/festvox/kal_diphone.scm"));
    sources.push_back(debian_file(ctx, "festvox-kdlpc16k", "/usr/share/festival/voices/english/ked_diphone/festvox/ked_diphone.scm"));
    sources.push_back(debian_file(ctx, "festvox-us-slt-hts",
                                  "/usr/share/festival/voices/us/cmu_us_slt_arctic_hts/festvox/cmu_us_slt_arctic_hts.scm"));
  } catch (const Error& e) {
    throw Error(std::string("spoken-topics: ") + e.what() + "; " + kFestivalHint);
  }

  // Texts: kTextsPerTopic a topic (seeded), split 70/10/20 by text, stratified by topic.
  std::vector<Text> texts;
  std::mt19937_64 rng(seed ^ 0x746f70696373ULL);  // "topics"
  for (auto& [label, list] : topic_texts(sources[0].path)) {
    if (list.size() < kTextsPerTopic) {
      throw Error("spoken-topics: topic " + label + " has only " + std::to_string(list.size()) + " usable glosses");
    }
    std::shuffle(list.begin(), list.end(), rng);
    for (size_t k = 0; k < kTextsPerTopic; ++k) texts.push_back({list[k], label, ""});
  }
  for (const auto& [split, rows] :
       stratified_split(texts.size(), [&](size_t i) { return texts[i].label; }, {{"train", .7}, {"val", .1}, {"test", .2}}, seed)) {
    for (size_t i : rows) texts[i].split = split;
  }
  // Under --subset, the texts of each split are cut (balanced by topic) to the clips asked for.
  std::map<std::string, std::vector<size_t>> by_split;
  for (size_t i = 0; i < texts.size(); ++i) by_split[texts[i].split].push_back(i);
  const size_t all_clips = by_split["train"].size() * kTrainRenders + by_split["val"].size() + by_split["test"].size();

  // Voices: espeak-ng's 96 are split 70/10/20 as spoken-words splits them; Festival's three go one to a split.
  std::map<std::string, std::vector<std::string>> espeak_voices;
  for (const auto& [voice, split] : split_voices(seed)) espeak_voices[split].push_back(voice);
  std::vector<std::string> festival_order(std::begin(kFestivalVoices), std::end(kFestivalVoices));
  std::shuffle(festival_order.begin(), festival_order.end(), rng);
  const std::map<std::string, std::string> festival_voice{
      {"train", festival_order[0]}, {"val", festival_order[1]}, {"test", festival_order[2]}};

  const std::string espeak_sha = sources[1].sha256, festival_sha = sources[festival_at].sha256;
  const fs::path cache = ctx.cache() / "spoken-topics" / "renders";
  fs::create_directories(cache);
  std::vector<Clip> clips;
  uint64_t salt = 0;
  for (const std::string split : {"train", "val", "test"}) {
    const int renders = split == "train" ? kTrainRenders : 1;
    const int64_t limit = subset_share(ctx, split, by_split[split].size() * renders, all_clips);
    const auto chosen = balanced_subset(by_split[split], [&](size_t i) { return texts[i].label; },
                                        limit > 0 ? (limit + renders - 1) / renders : 0, seed + ++salt);
    const auto& pool = espeak_voices[split];
    if (pool.size() < static_cast<size_t>(renders)) {
      throw Error("spoken-topics: split " + split + " has " + std::to_string(pool.size()) + " espeak-ng voices, fewer than the " +
                  std::to_string(renders) + " each of its texts is spoken by");
    }
    for (size_t t : chosen) {
      std::vector<std::string> used;
      for (int r = 0; r < renders; ++r) {
        Clip c;
        c.text = t;
        c.split = split;
        if (std::uniform_real_distribution<double>(0, 1)(rng) < kFestivalShare &&
            std::find(used.begin(), used.end(), festival_voice.at(split)) == used.end()) {
          c.synthesizer = "festival";
          c.voice = festival_voice.at(split);
          c.speed = static_cast<int>(std::lround(100 * kStretches[rng() % std::size(kStretches)]));
          c.pitch = 0;
        } else {
          c.synthesizer = "espeak-ng";
          do {
            c.voice = pool[rng() % pool.size()];
          } while (std::find(used.begin(), used.end(), c.voice) != used.end());
          c.speed = speech_speeds()[rng() % speech_speeds().size()];
          c.pitch = speech_pitches()[rng() % speech_pitches().size()];
        }
        used.push_back(c.voice);
        const std::string key = c.synthesizer + "|" + (c.synthesizer == "festival" ? festival_sha : espeak_sha) + "|" +
                                c.voice + "|" + std::to_string(c.speed) + "|" + std::to_string(c.pitch) + "|" +
                                texts[t].spoken;
        c.cached = cache / (sha256_text(key).substr(0, 24) + ".flac");
        c.file = "audio/" + split + "/" + std::to_string(t) + "-" + std::to_string(r) + ".opus";
        clips.push_back(std::move(c));
      }
    }
  }
  render_missing(clips, texts, ctx.cache() / "spoken-topics" / "scratch");

  json labels = json::array();
  for (const auto& t : kTopics) labels.push_back(t.label);
  char channel[256];
  std::snprintf(channel, sizeof channel,
                "a telephone channel: 8 kHz, band-pass %.0f-%.0f Hz, white noise at %.0f-%.0f dB SNR (uniform per "
                "clip), Ogg Opus at libsndfile's lowest bitrate",
                kChannel.low_hz, kChannel.high_hz, kChannel.snr_min_db, kChannel.snr_max_db);
  DatasetWriter writer(
      ctx, {{"name", "spoken-topics"},
            {"description", std::string("Instance-paired speech and transcript: the first clause of a WordNet 3.0 noun "
                                        "gloss (4-12 words), its topic (the synset's lexicographer file, 8 classes), "
                                        "spoken by espeak-ng (96 voices) or Festival (3 voices) and passed through ") +
                                channel + ". Splits are disjoint by text and by voice."},
            {"version", "1"},
            {"fields",
             {{"audio", {{"type", "audio"}, {"format", "opus"}, {"description", "8 kHz mono Ogg Opus, telephone channel"}}},
              {"text", {{"type", "text"}, {"description", "the transcript: the words spoken"}}},
              {"label", {{"type", "label"}, {"labels", labels}, {"description", "the gloss's topic (WordNet lexicographer file)"}}},
              {"text_id", {{"type", "number"}, {"description", "the text's index: clips of one text share it"}}},
              {"synthesizer", {{"type", "string"}, {"description", "espeak-ng or festival"}}},
              {"voice", {{"type", "string"}, {"description", "espeak-ng accent+variant, or the Festival voice"}}},
              {"speed", {{"type", "number"}, {"description", "espeak-ng words per minute, or Festival's duration stretch in percent"}}},
              {"pitch", {{"type", "number"}, {"description", "espeak-ng pitch 0-99 (0 for Festival)"}}}}}});
  for (const std::string split : {"train", "val", "test"}) fs::create_directories(writer.dir() / "audio" / split);
  // The channel, per clip from its own generator: the result does not depend on the thread count.
  for_each_job("spoken-topics", clips.size(), [](size_t) { return size_t{1}; }, "sent through the channel", [&](size_t i, unsigned) {
    std::mt19937_64 clip_rng(seed ^ (0x9e3779b97f4a7c15ULL * (i + 1)));
    std::vector<float> y = read_audio(clips[i].cached);
    telephone(y, clip_rng);
    const auto serial = static_cast<uint32_t>(clip_rng());
    write_audio(writer.dir() / clips[i].file, std::move(y), SF_FORMAT_OGG | SF_FORMAT_OPUS, kChannel.opus_compression, serial);
  });
  for (const auto& c : clips) {
    writer.add(c.split, {{"audio", c.file},
                         {"text", texts[c.text].spoken},
                         {"label", texts[c.text].label},
                         {"text_id", c.text},
                         {"synthesizer", c.synthesizer},
                         {"voice", c.voice},
                         {"speed", c.speed},
                         {"pitch", c.pitch}});
  }
  return writer.finish("texts: WordNet 3.0 licence (Princeton University); speech: espeak-ng and Festival output, "
                       "unencumbered",
                       std::string("all audio (espeak-ng and Festival speech, ") + channel +
                           "); the texts are real WordNet glosses, cut to their first clause",
                       sources);
}

}  // namespace modalkit::host::recipes
