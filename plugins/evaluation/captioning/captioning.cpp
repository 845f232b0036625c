// 0-shot captioning (Frozen, Tsimpoukelli et al. 2021): the model's language model continues a
// prompt conditioned on each held-out sample, greedily; the caption is right when the class it
// names is the sample's.
#include <torch/utils.h>

#include "../common/lm_protocols.hpp"
#include "captioning_manifest.hpp"
#include "modalkit/evaluation.hpp"
#include "modalkit/plugin.hpp"

namespace {

namespace lp = modalkit::lm_protocols;

class Captioning : public modalkit::EvaluationProtocol {
 public:
  explicit Captioning(const modalkit::CreateArgs& args)
      : config_(args.config),
        prompt_(args.config.get<std::string>("prompt")),
        max_tokens_(args.config.get<int64_t>("max_tokens")),
        examples_(args.config.get<int64_t>("examples")) {}

  nlohmann::json evaluate(modalkit::TransferStrategy& model, modalkit::BatchSource& data, const std::string& split,
                          const std::vector<std::string>& modalities) override {
    auto& c = lp::conditioned(model, plugin_name());
    torch::NoGradGuard no_grad;
    model.eval();
    const auto& names = c.class_names();
    std::vector<int64_t> right(names.size(), 0), seen(names.size(), 0);
    nlohmann::json examples = nlohmann::json::array();
    modalkit::GenerateOptions options;
    options.max_tokens = max_tokens_;
    options.eos = c.tokenizer().eos();
    data.for_each(split, modalities, [&](const modalkit::Batch& batch) {
      const auto out = lp::generate_rows(c, batch, config_, prompt_, options);
      const at::Tensor y = batch.targets.at(config_.task).to(at::kCPU);
      for (size_t r = 0; r < out.size(); ++r) {
        const int64_t truth = y[static_cast<int64_t>(r)].item<int64_t>();
        const std::string text = c.tokenizer().decode(out[r]);
        const bool ok = modalkit::mentioned_class(text, names) == truth;
        right[static_cast<size_t>(truth)] += ok ? 1 : 0;
        seen[static_cast<size_t>(truth)] += 1;
        if (static_cast<int64_t>(examples.size()) < examples_) {
          examples.push_back({{"class", names[static_cast<size_t>(truth)]}, {"caption", text}, {"right", ok}});
        }
      }
    });
    int64_t k = 0, n = 0;
    nlohmann::json per_class = nlohmann::json::object();
    for (size_t i = 0; i < names.size(); ++i) {
      k += right[i];
      n += seen[i];
      if (seen[i] > 0) per_class[names[i]] = static_cast<double>(right[i]) / static_cast<double>(seen[i]);
    }
    nlohmann::json out = lp::accuracy_figures(k, n);
    out["per_class"] = per_class;
    out["examples"] = examples;
    return out;
  }

 private:
  lp::PromptConfig config_;
  std::string prompt_;
  int64_t max_tokens_, examples_;
};

}  // namespace

MODALKIT_PLUGIN("captioning", "0.1.0", kManifest, MODALKIT_EVALUATION("captioning", Captioning))
