// Skip-gram with negative sampling (word2vec, Mikolov et al. 2013): each word has a center
// vector and a context vector; a (center, context) pair seen in text should score high, the
// same center against words drawn from the noise distribution low:
//   loss = -log σ(c·o) - Σ_k log σ(-c·n_k)
// The center vectors are the word vectors other pipelines use (artifact word_vectors).
#include <fstream>
#include <iomanip>
#include <random>
#include <unordered_map>

#include <ATen/ATen.h>
#include <spdlog/spdlog.h>
#include <torch/nn/init.h>

#include "modalkit/context.hpp"
#include "modalkit/plugin.hpp"
#include "modalkit/strategy.hpp"
#include "modalkit/stream.hpp"
#include "word_vectors_manifest.hpp"

namespace {

class WordVectors : public modalkit::TransferStrategy {
 public:
  explicit WordVectors(const modalkit::CreateArgs& args)
      : context_(args.context),
        dim_(args.config.get<int64_t>("dim")),
        probes_(args.config.get<std::vector<std::string>>("probe_words")),
        neighbours_(args.config.get<int64_t>("neighbours")) {}

  void build(const modalkit::ModelParts& /*parts*/) override {
    // The vocabulary is the stream's: it fitted it on the train split before the model is built.
    auto stream = std::dynamic_pointer_cast<modalkit::BatchStream>(context_->find_component("stream"));
    TORCH_CHECK(stream, "word_vectors trains on a /data/stream of skip-gram pairs (e.g. plugin skipgram); the pipeline has none");
    const nlohmann::json info = stream->info();
    TORCH_CHECK(info.contains("vocabulary"), "word_vectors: stream ", stream->plugin_name(), " reports no vocabulary in info()");
    words_ = info.at("vocabulary").get<std::vector<std::string>>();
    const auto v = static_cast<int64_t>(words_.size());
    // word2vec's initialisation: small uniform center vectors, zero context vectors.
    center_ = register_parameter("center", at::empty({v, dim_}).uniform_(-0.5 / static_cast<double>(dim_), 0.5 / static_cast<double>(dim_)));
    context_vectors_ = register_parameter("context", at::zeros({v, dim_}));
  }

  modalkit::LossTerms loss(const modalkit::Batch& batch) override {
    const at::Tensor c = center_.index_select(0, batch.input("center", "word_vectors", "stream").data);             // [B, D]
    const at::Tensor o = context_vectors_.index_select(0, batch.input("context", "word_vectors", "stream").data);   // [B, D]
    const at::Tensor& neg = batch.input("negatives", "word_vectors", "stream").data;                                 // [B, K]
    const at::Tensor n = context_vectors_.index_select(0, neg.reshape({-1})).view({neg.size(0), neg.size(1), dim_});
    const at::Tensor positive = at::log_sigmoid((c * o).sum(-1));                              // [B]
    const at::Tensor negative = at::log_sigmoid(-at::bmm(n, c.unsqueeze(-1)).squeeze(-1)).sum(-1);
    return {{"skipgram", -(positive + negative).mean()}};
  }

  modalkit::Predictions predict(const modalkit::Batch& /*batch*/) override { return {}; }
  std::vector<std::string> modalities_at_train() const override { return {}; }
  std::vector<std::string> modalities_at_test() const override { return {}; }

  void finalize(modalkit::BatchSource& /*data*/) override {
    const auto dir = context_->run_dir();
    const at::Tensor vectors = center_.detach().to(at::kCPU).contiguous();
    {
      std::ofstream out(dir / "word_vectors.txt");
      out << vectors.size(0) << ' ' << vectors.size(1) << '\n' << std::setprecision(6);
      const float* p = vectors.data_ptr<float>();
      for (int64_t w = 0; w < vectors.size(0); ++w) {
        out << words_[static_cast<size_t>(w)];
        for (int64_t d = 0; d < dim_; ++d) out << ' ' << p[w * dim_ + d];
        out << '\n';
      }
      TORCH_CHECK(out.good(), "word_vectors: cannot write ", (dir / "word_vectors.txt").string());
    }
    // Nearest neighbours of the probe words by cosine: the first look at what the vectors learned.
    const at::Tensor unit = vectors / vectors.norm(2, 1, true).clamp_min(1e-12);
    nlohmann::json report = nlohmann::json::object();
    for (const auto& word : probes_) {
      const auto it = std::find(words_.begin(), words_.end(), word);
      if (it == words_.end()) {
        report[word] = nullptr;  // not in the vocabulary
        context_->logger().warn("word_vectors: probe word \"{}\" is not in the vocabulary", word);
        continue;
      }
      const int64_t id = it - words_.begin();
      at::Tensor sims = unit.matmul(unit[id]);
      sims[id] = -2;  // not its own neighbour
      const auto top = sims.topk(std::min<int64_t>(neighbours_, sims.size(0) - 1));
      nlohmann::json list = nlohmann::json::array();
      std::string line;
      for (int64_t k = 0; k < std::get<1>(top).size(0); ++k) {
        const auto j = std::get<1>(top)[k].item<int64_t>();
        const double s = std::get<0>(top)[k].item<double>();
        list.push_back({{"word", words_[static_cast<size_t>(j)]}, {"cosine", s}});
        line += (k ? ", " : "") + words_[static_cast<size_t>(j)];
      }
      report[word] = list;
      context_->logger().info("neighbours of {}: {}", word, line);
    }
    std::ofstream(dir / "neighbours.json") << report.dump(2) << '\n';
    similarity_check(unit, dir);
  }

 private:
  /// When the pipeline names a `similarity_pairs` artifact (related word pairs, one "a b" per
  /// line: the text-corpus recipe writes WordNet noun synonyms): the cosine of each pair whose
  /// words are both in the vocabulary against that of the same first word with a word drawn
  /// uniformly from the vocabulary (seeded). Writes similarity.json: the two means and the AUROC
  /// of related over random pairs (0.5 = the vectors know nothing of the relation).
  void similarity_check(const at::Tensor& unit, const std::filesystem::path& dir) const {
    std::filesystem::path file;
    try {
      file = context_->artifact_path("similarity_pairs");
    } catch (const modalkit::Error&) {
      return;  // not declared by the pipeline: no check
    }
    std::unordered_map<std::string, int64_t> index;
    for (size_t i = 0; i < words_.size(); ++i) index.emplace(words_[i], static_cast<int64_t>(i));
    std::ifstream in(file);
    if (!in) throw modalkit::Error("word_vectors: cannot read the similarity pairs " + file.string());
    std::vector<int64_t> first, second;
    int64_t listed = 0;
    for (std::string a, b; in >> a >> b; ++listed) {
      const auto i = index.find(a), j = index.find(b);
      if (i != index.end() && j != index.end()) {
        first.push_back(i->second);
        second.push_back(j->second);
      }
    }
    nlohmann::json out = {{"pairs_file", file.string()}, {"pairs_listed", listed}, {"pairs_in_vocabulary", first.size()}};
    if (first.size() >= 2) {
      std::mt19937_64 rng(context_->seed() ^ 0x73696d696cULL);  // "simil"
      std::uniform_int_distribution<int64_t> any(0, static_cast<int64_t>(words_.size()) - 1);
      std::vector<int64_t> random;
      for (size_t k = 0; k < first.size(); ++k) {
        int64_t r = any(rng);
        while (r == first[k] && words_.size() > 1) r = any(rng);  // never the word itself
        random.push_back(r);
      }
      const at::Tensor a = unit.index_select(0, at::tensor(first, at::kLong));
      const at::Tensor related = (a * unit.index_select(0, at::tensor(second, at::kLong))).sum(1).to(at::kDouble);
      const at::Tensor control = (a * unit.index_select(0, at::tensor(random, at::kLong))).sum(1).to(at::kDouble);
      // AUROC = P(related > random) over all pairs of the two sets, ties counting one half
      // (Mann-Whitney U), by binary search in the sorted random scores.
      const at::Tensor sorted = std::get<0>(control.sort());
      const at::Tensor below = at::searchsorted(sorted, related, /*out_int32=*/false, /*right=*/false).to(at::kDouble);
      const at::Tensor not_above = at::searchsorted(sorted, related, /*out_int32=*/false, /*right=*/true).to(at::kDouble);
      const double auroc = ((below + not_above) / 2).sum().item<double>() / static_cast<double>(related.numel() * control.numel());
      out["mean_cosine_related"] = related.mean().item<double>();
      out["mean_cosine_random"] = control.mean().item<double>();
      out["auroc"] = auroc;
      context_->logger().info("word_vectors: {} synonym pairs in the vocabulary: mean cosine {:.3f} vs {:.3f} for random pairs, AUROC {:.3f}",
                              first.size(), out["mean_cosine_related"].get<double>(), out["mean_cosine_random"].get<double>(), auroc);
    } else {
      context_->logger().warn("word_vectors: fewer than 2 pairs of {} have both words in the vocabulary; no similarity check",
                              file.string());
    }
    std::ofstream(dir / "similarity.json") << out.dump(2) << '\n';
  }

  modalkit::Context* context_;
  int64_t dim_;
  std::vector<std::string> probes_;
  int64_t neighbours_;
  std::vector<std::string> words_;
  at::Tensor center_, context_vectors_;
};

}  // namespace

MODALKIT_PLUGIN("word_vectors", "0.1.0", kManifest, MODALKIT_TRANSFER("word_vectors", WordVectors))
