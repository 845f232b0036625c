// Skip-gram with negative sampling (word2vec, Mikolov et al. 2013): each word has a center
// vector and a context vector; a (center, context) pair seen in text should score high, the
// same center against words drawn from the noise distribution low:
//   loss = -log σ(c·o) - Σ_k log σ(-c·n_k)
// The center vectors are the word vectors other pipelines use (artifact word_vectors).
#include <fstream>
#include <iomanip>

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
    const at::Tensor c = center_.index_select(0, batch.inputs.at("center").data);             // [B, D]
    const at::Tensor o = context_vectors_.index_select(0, batch.inputs.at("context").data);   // [B, D]
    const at::Tensor& neg = batch.inputs.at("negatives").data;                                 // [B, K]
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
  }

 private:
  modalkit::Context* context_;
  int64_t dim_;
  std::vector<std::string> probes_;
  int64_t neighbours_;
  std::vector<std::string> words_;
  at::Tensor center_, context_vectors_;
};

}  // namespace

MODALKIT_PLUGIN("word_vectors", "0.1.0", kManifest, MODALKIT_TRANSFER("word_vectors", WordVectors))
