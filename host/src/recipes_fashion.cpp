// fashion-mnist: Debian's dataset-fashion-mnist (the official IDX release), 60k train images split
// into train/val (90/10, stratified, seeded) and the official 10k test images, each split
// rewritten as its own gzipped IDX file; every class mapped to a WordNet noun, checked against
// WordNet's index (wordnet-base) so later methods can look the class up in word space.
#include <zlib.h>

#include <cstring>
#include <fstream>
#include <memory>
#include <set>

#include "modalkit/errors.hpp"
#include "recipes.hpp"

namespace fs = std::filesystem;
using nlohmann::json;

namespace modalkit::host::recipes {

namespace {

const char* kDir = "/usr/share/datasets/fashion-mnist/";

/// Fashion-MNIST's class names, in label order, and the WordNet noun each stands for. Not every
/// name is a lemma as written: "ankle boot" is not (→ boot), "t-shirt/top" is spelt tee_shirt.
const std::pair<const char*, const char*> kClasses[] = {
    {"t-shirt/top", "tee_shirt"}, {"trouser", "trouser"}, {"pullover", "pullover"}, {"dress", "dress"},
    {"coat", "coat"},             {"sandal", "sandal"},   {"shirt", "shirt"},       {"sneaker", "sneaker"},
    {"bag", "bag"},               {"ankle boot", "boot"}};

uint32_t big_endian(const unsigned char* p) {
  return (uint32_t(p[0]) << 24) | (uint32_t(p[1]) << 16) | (uint32_t(p[2]) << 8) | uint32_t(p[3]);
}

}  // namespace

Idx read_idx(const fs::path& path, uint32_t magic) {
  std::unique_ptr<gzFile_s, int (*)(gzFile)> gz(gzopen(path.c_str(), "rb"), gzclose);
  if (!gz) throw DataError(path.string(), "cannot open");
  unsigned char head[4];
  if (gzread(gz.get(), head, 4) != 4 || big_endian(head) != magic) {
    throw DataError(path.string(), "not an IDX file of uint8 data with " + std::to_string(magic & 0xff) + " dimensions");
  }
  Idx idx;
  uint64_t size = 1;
  for (uint32_t d = 0; d < (magic & 0xff); ++d) {
    if (gzread(gz.get(), head, 4) != 4) throw DataError(path.string(), "truncated IDX header");
    idx.dims.push_back(big_endian(head));
    size *= idx.dims.back();
  }
  if (size > (uint64_t(1) << 32)) throw DataError(path.string(), "IDX header claims more than 4 GiB");
  idx.bytes.resize(size);
  if (size > 0 && gzread(gz.get(), idx.bytes.data(), unsigned(size)) != int(size)) {
    throw DataError(path.string(), "IDX file holds fewer bytes than its header says");
  }
  return idx;
}

void write_idx_images(const fs::path& path, const Idx& images, const std::vector<size_t>& rows) {
  std::unique_ptr<gzFile_s, int (*)(gzFile)> gz(gzopen(path.c_str(), "wb9"), gzclose);
  if (!gz) throw Error("cannot write " + path.string());
  const uint32_t header[4] = {0x00000803, uint32_t(rows.size()), images.dims[1], images.dims[2]};
  for (uint32_t v : header) {
    const unsigned char be[4] = {uint8_t(v >> 24), uint8_t(v >> 16), uint8_t(v >> 8), uint8_t(v)};
    gzwrite(gz.get(), be, 4);
  }
  const size_t size = size_t(images.dims[1]) * images.dims[2];
  for (size_t r : rows) gzwrite(gz.get(), images.bytes.data() + r * size, unsigned(size));
}

const char* fashion_class(size_t label) { return label < std::size(kClasses) ? kClasses[label].first : nullptr; }

FashionMnist load_fashion_mnist(const Context& ctx) {
  FashionMnist f;
  std::vector<SourceFile>& sources = f.sources;
  for (const char* file : {"train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz", "t10k-images-idx3-ubyte.gz",
                        "t10k-labels-idx1-ubyte.gz"}) {
    sources.push_back(debian_file(ctx, "dataset-fashion-mnist", std::string(kDir) + file));
  }
  // The noun map is only useful if WordNet has every noun: check it against the index.
  const SourceFile index = debian_file(ctx, "wordnet-base", "/usr/share/wordnet/index.noun");
  {
    std::ifstream in(index.path);
    std::set<std::string> wanted;
    for (const auto& c : kClasses) wanted.insert(c.second);
    for (std::string line; std::getline(in, line) && !wanted.empty();) wanted.erase(line.substr(0, line.find(' ')));
    if (!wanted.empty()) throw Error("WordNet's index.noun lacks the noun \"" + *wanted.begin() + "\"");
  }
  sources.push_back(index);

  f.images[0] = read_idx(sources[0].path, 0x00000803);
  f.labels[0] = read_idx(sources[1].path, 0x00000801);
  f.images[1] = read_idx(sources[2].path, 0x00000803);
  f.labels[1] = read_idx(sources[3].path, 0x00000801);
  for (int k : {0, 1}) {
    if (f.images[k].dims[0] != f.labels[k].dims[0]) throw DataError(sources[2 * k].path.string(), "image and label counts differ");
    for (char v : f.labels[k].bytes) {
      if (static_cast<unsigned char>(v) >= std::size(kClasses)) {
        throw DataError(sources[2 * k + 1].path.string(), "label " + std::to_string(static_cast<unsigned char>(v)) + " out of range");
      }
    }
  }
  f.parts = stratified_split(f.images[0].dims[0], [&](size_t i) { return std::string(kClasses[static_cast<unsigned char>(f.labels[0].bytes[i])].first); },
                             {{"train", 0.9}, {"val", 0.1}}, ctx.options.seed);
  for (size_t i = 0; i < f.images[1].dims[0]; ++i) f.parts["test"].push_back(i);
  return f;
}

fs::path fashion_mnist(const Context& ctx) {
  const FashionMnist f = load_fashion_mnist(ctx);
  auto parts = f.parts;
  const size_t total = f.images[0].dims[0] + f.images[1].dims[0];
  auto label_of = [](const Idx& labels, size_t i) { return std::string(kClasses[static_cast<unsigned char>(labels.bytes[i])].first); };

  json labels = json::array();
  std::string map;
  for (const auto& c : kClasses) {
    labels.push_back(c.first);
    map += (map.empty() ? "" : ", ") + std::string(c.first) + " -> " + c.second;
  }
  DatasetWriter writer(
      ctx, {{"name", "fashion-mnist"},
            {"description", "Fashion-MNIST (Xiao, Rasul and Vollgraf 2017): 28x28 grey images of 10 clothing classes. "
                            "train/val: the official training set split 90/10 (stratified, seeded); test: the "
                            "official test set. Real images, nothing synthetic."},
            {"version", "1"},
            {"fields",
             {{"image", {{"type", "image"}, {"format", "idx"}, {"description", "28x28 uint8 grey image"}}},
              {"label", {{"type", "label"}, {"labels", labels}, {"description", "clothing class"}}},
              {"noun", {{"type", "string"}, {"description", "the class's WordNet noun: " + map}}},
              {"source", {{"type", "string"}, {"description", "file#index in the official release"}}}}}});
  uint64_t salt = 0;
  for (const std::string split : {"train", "val", "test"}) {
    const bool official_test = split == "test";
    const Idx& images = f.images[official_test ? 1 : 0];
    const Idx& labels_idx = f.labels[official_test ? 1 : 0];
    const auto rows = balanced_subset(parts[split], [&](size_t i) { return label_of(labels_idx, i); },
                                      subset_share(ctx, split, parts[split].size(), total), ctx.options.seed + ++salt);
    const std::string file = split + "-images.idx.gz";
    write_idx_images(writer.dir() / file, images, rows);
    const std::string origin = official_test ? "t10k-images-idx3-ubyte.gz#" : "train-images-idx3-ubyte.gz#";
    for (size_t k = 0; k < rows.size(); ++k) {
      const auto v = static_cast<unsigned char>(labels_idx.bytes[rows[k]]);
      writer.add(split, {{"image", file + "#" + std::to_string(k)},
                         {"label", kClasses[v].first},
                         {"noun", kClasses[v].second},
                         {"source", origin + std::to_string(rows[k])}});
    }
  }
  return writer.finish("MIT (Zalando SE); see data/embedded/LICENSES.md", "nothing", f.sources);
}

}  // namespace modalkit::host::recipes
