// Skip-gram pairs with negative sampling as a stream (word2vec, Mikolov et al. 2013). Per-sample
// decoding cannot feed millions of pairs an epoch, so this plugin cuts whole batches itself.
//
// An epoch's pairs are a pure function of (seed, split, epoch): the words kept by subsampling,
// each center's window and the pairs' order all come from a generator seeded with those three,
// and a batch's negatives from one seeded with its index too. A resumed run therefore gets the
// same batches, and batches can be asked for in any order.
#include <algorithm>
#include <cctype>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <memory>
#include <mutex>
#include <numeric>
#include <random>
#include <sstream>
#include <unordered_map>

#include <ATen/ATen.h>

#include "modalkit/context.hpp"
#include "modalkit/errors.hpp"
#include "modalkit/plugin.hpp"
#include "modalkit/stream.hpp"
#include "skipgram_manifest.hpp"

namespace {

/// Lower-cased words: runs of ASCII letters and digits, joined across a single inner '-' or '\''
/// ("t-shirt", "don't"); everything else (punctuation, '_', other bytes) separates words.
std::vector<std::string> words_of(const std::string& text) {
  std::vector<std::string> out;
  std::string cur;
  auto alnum = [](unsigned char c) { return std::isalnum(c) != 0 && c < 128; };
  for (size_t i = 0; i < text.size(); ++i) {
    const auto c = static_cast<unsigned char>(text[i]);
    if (alnum(c)) {
      cur.push_back(static_cast<char>(std::tolower(c)));
    } else if ((c == '-' || c == '\'') && !cur.empty() && i + 1 < text.size() &&
               alnum(static_cast<unsigned char>(text[i + 1]))) {
      cur.push_back(static_cast<char>(c));
    } else if (!cur.empty()) {
      out.push_back(std::move(cur));
      cur.clear();
    }
  }
  if (!cur.empty()) out.push_back(std::move(cur));
  return out;
}

/// One split's words as vocabulary ids, documents back to back.
struct SplitText {
  std::vector<int32_t> ids;
  std::vector<int64_t> doc_end;  // one past each document's last word
  int64_t epoch_pairs = 0;       // pairs per epoch (epoch 0's count; every epoch has as many)
};

/// One epoch's (center, context) pairs in training order.
struct EpochPairs {
  std::vector<int32_t> center, context;
};

class SkipGramStream : public modalkit::BatchStream {
 public:
  explicit SkipGramStream(const modalkit::CreateArgs& args)
      : seed_(args.context->seed()),
        min_count_(args.config.get<int64_t>("min_count")),
        max_vocab_(args.config.get<int64_t>("max_vocab")),
        window_(args.config.get<int64_t>("window")),
        negatives_(args.config.get<int64_t>("negatives")),
        subsample_(args.config.get<double>("subsample")),
        from_file_(args.config.get<std::string>("source") == "file") {}

  void fit(const std::vector<modalkit::FieldRef>& train) override {
    std::unordered_map<std::string, int64_t> counts;
    for (const auto& f : train) {
      for (auto& w : words_of(text_of(f))) ++counts[w];
    }
    std::vector<std::pair<std::string, int64_t>> kept;
    for (auto& [w, n] : counts) {
      if (n >= min_count_) kept.emplace_back(w, n);
    }
    // By count, ties by spelling: the vocabulary must not depend on hash-map order.
    std::sort(kept.begin(), kept.end(), [](const auto& a, const auto& b) {
      return a.second != b.second ? a.second > b.second : a.first < b.first;
    });
    if (static_cast<int64_t>(kept.size()) > max_vocab_) kept.resize(static_cast<size_t>(max_vocab_));
    if (kept.size() < 2) {
      throw modalkit::DataError("skipgram", "the train split has " + std::to_string(kept.size()) + " word(s) seen at least " +
                                                std::to_string(min_count_) + " times; lower config min_count or use more text");
    }
    words_.clear();
    counts_.clear();
    for (auto& [w, n] : kept) {
      words_.push_back(w);
      counts_.push_back(n);
    }
    index_vocabulary();
  }

  nlohmann::json fitted_state() const override { return {{"words", words_}, {"counts", counts_}}; }

  void load_fitted_state(const nlohmann::json& state) override {
    words_ = state.at("words").get<std::vector<std::string>>();
    counts_ = state.at("counts").get<std::vector<int64_t>>();
    if (words_.size() != counts_.size() || words_.size() < 2) {
      throw modalkit::Error("skipgram: fitted state holds " + std::to_string(words_.size()) + " words and " +
                            std::to_string(counts_.size()) + " counts");
    }
    index_vocabulary();
  }

  void open(const std::string& split, const std::vector<modalkit::FieldRef>& values) override {
    if (words_.empty()) throw modalkit::Error("skipgram: open() before fit() or load_fitted_state()");
    SplitText text;
    for (const auto& f : values) {
      for (const auto& w : words_of(text_of(f))) {
        const auto it = id_of_.find(w);
        if (it != id_of_.end()) text.ids.push_back(it->second);  // unknown words are dropped, as word2vec does
      }
      text.doc_end.push_back(static_cast<int64_t>(text.ids.size()));
    }
    text.epoch_pairs = static_cast<int64_t>(make_pairs(split, text, 0).center.size());
    if (text.epoch_pairs == 0) {
      throw modalkit::DataError("skipgram", "split \"" + split + "\" yields no pairs (no two known words are left in one sample; "
                                                "on a small corpus subsampling drops most words: lower config subsample)");
    }
    std::lock_guard<std::mutex> lock(mutex_);
    splits_[split] = std::make_shared<const SplitText>(std::move(text));
    cache_.erase(split);
  }

  int64_t batches(const std::string& split, int64_t batch_size) const override {
    return (text(split)->epoch_pairs + batch_size - 1) / batch_size;
  }

  modalkit::Batch batch(const std::string& split, int64_t epoch, int64_t index, int64_t batch_size) const override {
    const auto t = text(split);  // one snapshot: a concurrent open() of the split cannot mix two
    const auto pairs = pairs_of(split, *t, epoch);
    const int64_t first = index * batch_size, last = std::min(t->epoch_pairs, first + batch_size);
    if (index < 0 || first >= last) throw modalkit::Error("skipgram: batch " + std::to_string(index) + " out of range");
    const int64_t b = last - first, have = static_cast<int64_t>(pairs->center.size());
    if (have == 0) {  // subsampling and windows are redrawn each epoch; a tiny split can draw nothing
      throw modalkit::DataError("skipgram", "epoch " + std::to_string(epoch) + " of split \"" + split +
                                                "\" drew no pairs; lower config subsample or use more text");
    }
    auto center = at::empty({b}, at::kLong), context = at::empty({b}, at::kLong), order = at::empty({b}, at::kLong);
    auto* c = center.data_ptr<int64_t>();
    auto* o = context.data_ptr<int64_t>();
    auto* n = order.data_ptr<int64_t>();
    for (int64_t i = 0; i < b; ++i) {
      // An epoch with fewer pairs than epoch 0 wraps around; one with more is cut short.
      const auto k = static_cast<size_t>((first + i) % have);
      c[i] = pairs->center[k];
      o[i] = pairs->context[k];
      n[i] = first + i;
    }
    std::mt19937_64 rng(modalkit::mix_seed(modalkit::mix_seed(modalkit::mix_seed(seed_ ^ modalkit::stable_hash(split)) + static_cast<uint64_t>(epoch)) + static_cast<uint64_t>(index)));
    std::uniform_real_distribution<double> u(0.0, 1.0);
    auto negatives = at::empty({b, negatives_}, at::kLong);
    auto* g = negatives.data_ptr<int64_t>();
    for (int64_t i = 0; i < b * negatives_; ++i) {
      const double r = u(rng) * noise_cdf_.back();
      g[i] = std::upper_bound(noise_cdf_.begin(), noise_cdf_.end(), r) - noise_cdf_.begin();
      g[i] = std::min<int64_t>(g[i], static_cast<int64_t>(noise_cdf_.size()) - 1);
    }
    modalkit::Batch out;
    const auto present = at::ones({b}, at::kBool);
    out.inputs["center"] = modalkit::ModalityInput{center, {}, present};
    out.inputs["context"] = modalkit::ModalityInput{context, {}, present};
    out.inputs["negatives"] = modalkit::ModalityInput{negatives, {}, present};
    out.index = order;
    return out;
  }

  nlohmann::json info() const override { return {{"vocabulary", words_}, {"counts", counts_}}; }

 private:
  std::string text_of(const modalkit::FieldRef& f) const {
    if (!f.value.is_string()) throw modalkit::DataError(f.origin, "skipgram reads text, found " + std::string(f.value.type_name()));
    if (!from_file_) return f.value.get<std::string>();
    const std::filesystem::path file = f.base_dir / f.value.get<std::string>();
    std::ifstream in(file, std::ios::binary);
    if (!in) throw modalkit::DataError(f.origin, "cannot read " + file.string() + " (config source is \"file\")");
    std::ostringstream text;
    text << in.rdbuf();
    return text.str();
  }

  void index_vocabulary() {
    id_of_.clear();
    for (size_t i = 0; i < words_.size(); ++i) id_of_[words_[i]] = static_cast<int32_t>(i);
    total_ = std::accumulate(counts_.begin(), counts_.end(), int64_t{0});
    // Negatives follow the unigram distribution raised to 3/4 (word2vec's noise distribution).
    noise_cdf_.resize(counts_.size());
    double acc = 0;
    for (size_t i = 0; i < counts_.size(); ++i) noise_cdf_[i] = acc += std::pow(static_cast<double>(counts_[i]), 0.75);
    // Opened splits hold ids of the old vocabulary: they must be opened again.
    std::lock_guard<std::mutex> lock(mutex_);
    splits_.clear();
    cache_.clear();
  }

  std::shared_ptr<const SplitText> text(const std::string& split) const {
    std::lock_guard<std::mutex> lock(mutex_);
    const auto it = splits_.find(split);
    if (it == splits_.end()) throw modalkit::Error("skipgram: split \"" + split + "\" was not opened");
    return it->second;
  }

  /// The pairs of `epoch` of `t` (split `split`), made once and kept for two epochs of each
  /// split; the lowest epoch number goes first (results do not depend on what is cached).
  std::shared_ptr<const EpochPairs> pairs_of(const std::string& split, const SplitText& t, int64_t epoch) const {
    std::lock_guard<std::mutex> lock(mutex_);
    auto& per_split = cache_[split];
    if (const auto it = per_split.find(epoch); it != per_split.end() && it->second.first == &t) return it->second.second;
    auto made = std::make_shared<const EpochPairs>(make_pairs(split, t, epoch));
    per_split.erase(epoch);
    while (per_split.size() >= 2) per_split.erase(per_split.begin());
    per_split[epoch] = {&t, made};
    return made;
  }

  /// Subsamples frequent words, draws each center's window, pairs it with the kept words around
  /// it in the same document, and shuffles: all from one generator for (seed, split, epoch).
  EpochPairs make_pairs(const std::string& split, const SplitText& t, int64_t epoch) const {
    std::mt19937_64 rng(modalkit::mix_seed(modalkit::mix_seed(seed_ ^ modalkit::stable_hash(split)) + static_cast<uint64_t>(epoch) * 0x100000001b3ULL));
    std::uniform_real_distribution<double> u(0.0, 1.0);
    std::uniform_int_distribution<int64_t> span(1, window_);
    std::vector<double> keep(counts_.size(), 1.0);
    if (subsample_ > 0) {
      for (size_t i = 0; i < counts_.size(); ++i) {
        const double f = static_cast<double>(counts_[i]) / static_cast<double>(total_);
        keep[i] = std::min(1.0, (std::sqrt(f / subsample_) + 1) * subsample_ / f);
      }
    }
    EpochPairs out;
    std::vector<int32_t> doc;
    int64_t begin = 0;
    for (const int64_t end : t.doc_end) {
      doc.clear();
      for (int64_t i = begin; i < end; ++i) {
        if (u(rng) < keep[static_cast<size_t>(t.ids[static_cast<size_t>(i)])]) doc.push_back(t.ids[static_cast<size_t>(i)]);
      }
      begin = end;
      const auto n = static_cast<int64_t>(doc.size());
      for (int64_t i = 0; i < n; ++i) {
        const int64_t w = span(rng);
        for (int64_t j = std::max<int64_t>(0, i - w); j <= std::min(n - 1, i + w); ++j) {
          if (j == i) continue;
          out.center.push_back(doc[static_cast<size_t>(i)]);
          out.context.push_back(doc[static_cast<size_t>(j)]);
        }
      }
    }
    // Shuffle both columns with one permutation.
    for (size_t i = out.center.size(); i > 1; --i) {
      const size_t j = std::uniform_int_distribution<size_t>(0, i - 1)(rng);
      std::swap(out.center[i - 1], out.center[j]);
      std::swap(out.context[i - 1], out.context[j]);
    }
    return out;
  }

  uint64_t seed_;
  int64_t min_count_, max_vocab_, window_, negatives_;
  double subsample_;
  std::vector<std::string> words_;
  std::vector<int64_t> counts_;
  std::unordered_map<std::string, int32_t> id_of_;
  int64_t total_ = 0;
  std::vector<double> noise_cdf_;
  mutable std::mutex mutex_;
  bool from_file_;
  std::map<std::string, std::shared_ptr<const SplitText>> splits_;
  // Per split and epoch: the SplitText the pairs were made from (a reopened split makes new ones).
  mutable std::map<std::string, std::map<int64_t, std::pair<const SplitText*, std::shared_ptr<const EpochPairs>>>> cache_;
};

}  // namespace

MODALKIT_PLUGIN("skipgram", "0.1.0", kManifest, MODALKIT_STREAM("skipgram", SkipGramStream))
