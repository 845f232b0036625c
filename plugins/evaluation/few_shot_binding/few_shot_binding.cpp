// Few-shot fast binding (Frozen's "this is a dax"): in each episode a few classes are bound to
// nonsense words by interleaving support inputs with captions that use the words; the model
// must then name a query input with the right word. Only the sequence binds the words to the
// classes, so above-chance accuracy means the model binds in context.
#include <map>
#include <numeric>
#include <random>

#include <torch/utils.h>

#include "../common/lm_protocols.hpp"
#include "few_shot_binding_manifest.hpp"
#include "modalkit/context.hpp"
#include "modalkit/evaluation.hpp"
#include "modalkit/plugin.hpp"

namespace {

namespace lp = modalkit::lm_protocols;

class FewShotBinding : public modalkit::EvaluationProtocol {
 public:
  explicit FewShotBinding(const modalkit::CreateArgs& args)
      : task_(args.config.get<std::string>("task")),
        ways_(args.config.get<int64_t>("ways")),
        shots_(args.config.get<int64_t>("shots")),
        episodes_(args.config.get<int64_t>("episodes")),
        words_(args.config.get<std::vector<std::string>>("words")),
        support_(args.config.get<std::string>("support_template")),
        query_(args.config.get<std::string>("query_prompt")),
        seed_((args.context != nullptr ? args.context->seed() : 0) + static_cast<uint64_t>(args.config.get<int64_t>("seed"))),
        words_pointer_(args.config.pointer() + "/words") {
    if (static_cast<int64_t>(words_.size()) < ways_) {
      throw modalkit::ConfigError(words_pointer_, "needs at least ways = " + std::to_string(ways_) + " words");
    }
    if (support_.find("{}") == std::string::npos) {
      throw modalkit::ConfigError(args.config.pointer() + "/support_template", "must contain {} where the word goes");
    }
  }

  nlohmann::json evaluate(modalkit::TransferStrategy& model, modalkit::BatchSource& data, const std::string& split,
                          const std::vector<std::string>& modalities) override {
    auto& c = lp::conditioned(model, plugin_name());
    if (!c.interleavable()) {
      return {{"applicable", false},
              {"why", "transfer plugin " + model.plugin_name() + " conditions the whole sequence on one input (hooks), so inputs cannot be interleaved with text"}};
    }
    torch::NoGradGuard no_grad;
    model.eval();
    // Every sample of the split, by class: (batch, row).
    std::vector<modalkit::Batch> batches;
    std::map<int64_t, std::vector<std::pair<size_t, int64_t>>> by_class;
    data.for_each(split, modalities, [&](const modalkit::Batch& batch) {
      const at::Tensor y = batch.targets.at(task_).to(at::kCPU);
      for (int64_t r = 0; r < y.size(0); ++r) by_class[y[r].item<int64_t>()].emplace_back(batches.size(), r);
      batches.push_back(batch);
    });
    std::vector<int64_t> classes;
    for (const auto& [k, rows] : by_class) {
      if (static_cast<int64_t>(rows.size()) > shots_) classes.push_back(k);
    }
    if (static_cast<int64_t>(classes.size()) < ways_) {
      throw modalkit::Error("few_shot_binding: split " + split + " has " + std::to_string(classes.size()) + " classes with more than " +
                            std::to_string(shots_) + " samples; " + std::to_string(ways_) + " are needed");
    }
    auto& lm = c.language_model();
    const auto device = lp::device_of(batches.front());
    const std::vector<std::string> words = equal_length_words(c.tokenizer());
    auto prefix_of = [&](const std::pair<size_t, int64_t>& at) {
      const modalkit::Batch one = batches[at.first].select(at::tensor({at.second}, at::kLong));
      return c.condition(one).prefix;
    };
    std::mt19937_64 rng(seed_ ^ 0x6461785f66657773ULL);  // "dax_fews"
    int64_t right = 0;
    for (int64_t e = 0; e < episodes_; ++e) {
      std::vector<int64_t> pick = classes;
      std::shuffle(pick.begin(), pick.end(), rng);
      pick.resize(static_cast<size_t>(ways_));
      std::vector<std::string> drawn = words;
      std::shuffle(drawn.begin(), drawn.end(), rng);
      // Supports: shots per class, interleaved in a random order; the query is another sample.
      std::vector<std::pair<int64_t, std::pair<size_t, int64_t>>> supports;  // (way, sample)
      std::pair<size_t, int64_t> query;
      const int64_t query_way = std::uniform_int_distribution<int64_t>(0, ways_ - 1)(rng);
      for (int64_t w = 0; w < ways_; ++w) {
        auto rows = by_class.at(pick[static_cast<size_t>(w)]);
        std::shuffle(rows.begin(), rows.end(), rng);
        for (int64_t s = 0; s < shots_; ++s) supports.emplace_back(w, rows[static_cast<size_t>(s)]);
        if (w == query_way) query = rows[static_cast<size_t>(shots_)];
      }
      std::shuffle(supports.begin(), supports.end(), rng);
      // Each input as the model was tuned on it: its prefix, then BOS and the text.
      std::vector<at::Tensor> parts;
      for (const auto& [w, at] : supports) {
        parts.push_back(prefix_of(at));
        parts.push_back(lp::embed_text(c, modalkit::fill_template(support_, drawn[static_cast<size_t>(w)]), true, device));
      }
      parts.push_back(prefix_of(query));
      parts.push_back(lp::embed_text(c, query_, true, device));
      const at::Tensor sequence = at::cat(parts, 1);
      // Score each word of the episode as the continuation.
      std::vector<std::string> candidates;
      for (int64_t w = 0; w < ways_; ++w) candidates.push_back(drawn[static_cast<size_t>(w)] + ".");
      const auto rows = modalkit::encode_rows(c.tokenizer(), candidates, /*eos=*/false);
      const at::Tensor scores = modalkit::continuation_log_probs(lm, sequence.expand({ways_, -1, -1}), {}, rows.ids.to(device),
                                                                 rows.mask.to(device))
                                    .sum(1);
      right += scores.argmax().item<int64_t>() == query_way ? 1 : 0;
    }
    nlohmann::json out = lp::accuracy_figures(right, episodes_);
    out["applicable"] = true;
    out["chance"] = 1.0 / static_cast<double>(ways_);
    out["p_value"] = lp::binomial_p_at_least(right, episodes_, 1.0 / static_cast<double>(ways_));
    out["ways"] = ways_;
    out["shots"] = shots_;
    out["words"] = words;
    return out;
  }

 private:
  /// The configured words that take the same number of pieces as a continuation ("dax." vs
  /// "blicket."): summed log-probabilities favour shorter ones, which would add noise to every
  /// episode. The largest such group (ties: the one whose first word is listed first).
  std::vector<std::string> equal_length_words(const modalkit::Tokenizer& tokenizer) const {
    std::map<size_t, std::vector<std::string>> by_pieces;
    std::vector<size_t> order;  // piece counts, in the order of their first listed word
    for (const auto& word : words_) {
      const size_t n = tokenizer.encode(word + ".").size();
      auto& group = by_pieces[n];
      if (group.empty()) order.push_back(n);
      group.push_back(word);
    }
    const std::vector<std::string>* best = &by_pieces.at(order.front());
    std::string counts;
    for (const size_t n : order) {
      const auto& group = by_pieces.at(n);
      counts += (counts.empty() ? "" : ", ") + std::to_string(group.size()) + " of " + std::to_string(n);
      if (group.size() > best->size()) best = &group;  // strictly: a tie keeps the earlier listed
    }
    if (static_cast<int64_t>(best->size()) < ways_) {
      throw modalkit::ConfigError(words_pointer_, "needs ways = " + std::to_string(ways_) +
                                                      " words of the same length in pieces (word + \".\"); the tokenizer gives " +
                                                      counts + " pieces");
    }
    return *best;
  }

  std::string task_;
  int64_t ways_, shots_, episodes_;
  std::vector<std::string> words_;
  std::string support_, query_;
  uint64_t seed_;
  std::string words_pointer_;
};

}  // namespace

MODALKIT_PLUGIN("few_shot_binding", "0.1.0", kManifest, MODALKIT_EVALUATION("few_shot_binding", FewShotBinding))
