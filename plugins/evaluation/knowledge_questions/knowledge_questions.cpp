// Outside-knowledge questions (as Frozen's OKVQA): each held-out sample is asked the questions
// of its class, whose answers are in the language model's pretraining text and never in the
// captions it was tuned on; right when the first generated word is the answer.
#include <fstream>
#include <map>

#include <torch/utils.h>

#include "../common/lm_protocols.hpp"
#include "knowledge_questions_manifest.hpp"
#include "modalkit/context.hpp"
#include "modalkit/evaluation.hpp"
#include "modalkit/plugin.hpp"

namespace {

namespace lp = modalkit::lm_protocols;

struct Question {
  std::string cls, question, answer;
  int line;  // in the questions file, for messages
};

class KnowledgeQuestions : public modalkit::EvaluationProtocol {
 public:
  explicit KnowledgeQuestions(const modalkit::CreateArgs& args)
      : config_(args.config),
        template_(args.config.get<std::string>("template")),
        max_tokens_(args.config.get<int64_t>("max_tokens")) {
    if (template_.find("{}") == std::string::npos) {
      throw modalkit::ConfigError(args.config.pointer() + "/template", "must contain {} where the question goes");
    }
    if (args.context != nullptr) read_questions(args.context->artifact_path("questions"));
  }

  nlohmann::json evaluate(modalkit::TransferStrategy& model, modalkit::BatchSource& data, const std::string& split,
                          const std::vector<std::string>& modalities) override {
    auto& c = lp::conditioned(model, plugin_name());
    torch::NoGradGuard no_grad;
    model.eval();
    const auto& names = c.class_names();
    std::map<int64_t, std::vector<size_t>> of_class;  // class index → its questions
    std::vector<std::pair<std::string, std::vector<std::string>>> captions;  // each class's, with its words
    for (size_t k = 0; k < names.size(); ++k) {
      const std::string caption = c.caption(static_cast<int64_t>(k));
      captions.emplace_back(caption, modalkit::caption_words(caption));
    }
    for (size_t q = 0; q < questions_.size(); ++q) {
      const auto it = std::find(names.begin(), names.end(), questions_[q].cls);
      if (it == names.end()) {
        throw modalkit::DataError(file_ + ":" + std::to_string(questions_[q].line), "class \"" + questions_[q].cls +
                                                                            "\" is not one of the model's class names");
      }
      of_class[it - names.begin()].push_back(q);
      // An answer a caption says could be right for the wrong reason (a T-shirt taken for a
      // shirt answers "shirt"): the protocol measures what only the language model knows.
      for (const auto& [caption, words] : captions) {
        if (std::find(words.begin(), words.end(), questions_[q].answer) != words.end()) {
          throw modalkit::DataError(file_ + ":" + std::to_string(questions_[q].line),
                                    "the answer \"" + questions_[q].answer + "\" is a word of the caption \"" + caption +
                                        "\" the model is tuned on; answers must come from the language model's text only");
        }
      }
    }
    std::vector<int64_t> right(questions_.size(), 0), asked(questions_.size(), 0);
    std::vector<std::string> example(questions_.size());  // the first answer given to each question
    modalkit::GenerateOptions options;
    options.max_tokens = max_tokens_;
    options.eos = c.tokenizer().eos();
    data.for_each(split, modalities, [&](const modalkit::Batch& batch) {
      // Every (sample, question of its class) pair of the batch in one generate call: per class
      // and question the calls would be a few rows each, and a step costs about the same for
      // 5 rows as for 100.
      const at::Tensor y = batch.targets.at(config_.task).to(at::kCPU);
      std::vector<int64_t> rows;
      std::vector<std::string> texts;
      std::vector<size_t> which;
      for (int64_t r = 0; r < y.size(0); ++r) {
        const auto it = of_class.find(y[r].item<int64_t>());
        if (it == of_class.end()) continue;
        for (const size_t q : it->second) {
          rows.push_back(r);
          texts.push_back(modalkit::fill_template(template_, questions_[q].question));
          which.push_back(q);
        }
      }
      if (rows.empty()) return;
      const auto out = lp::generate_rows(c, batch.select(at::tensor(rows, at::kLong)), config_, texts, options);
      for (size_t i = 0; i < out.size(); ++i) {
        const size_t q = which[i];
        const std::string text = c.tokenizer().decode(out[i]);
        const auto words = modalkit::caption_words(text);
        right[q] += !words.empty() && words.front() == questions_[q].answer ? 1 : 0;
        if (asked[q]++ == 0) example[q] = text;
      }
    });
    int64_t k = 0, n = 0;
    nlohmann::json per_question = nlohmann::json::array();
    for (size_t q = 0; q < questions_.size(); ++q) {
      k += right[q];
      n += asked[q];
      per_question.push_back({{"class", questions_[q].cls}, {"question", questions_[q].question}, {"answer", questions_[q].answer},
                              {"asked", asked[q]}, {"example", example[q]}, {"accuracy", asked[q] ? static_cast<double>(right[q]) / static_cast<double>(asked[q]) : 0.0}});
    }
    nlohmann::json out = lp::accuracy_figures(k, n);
    out["questions"] = questions_.size();
    out["per_question"] = per_question;
    return out;
  }

 private:
  void read_questions(const std::filesystem::path& file) {
    file_ = file.string();
    std::ifstream in(file);
    if (!in) throw modalkit::DataError(file_, "cannot read the questions file");
    int line_no = 0;
    for (std::string line; std::getline(in, line);) {
      ++line_no;
      if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
      const auto doc = nlohmann::json::parse(line, nullptr, false);
      const std::string where = file_ + ":" + std::to_string(line_no);
      if (!doc.is_object()) throw modalkit::DataError(where, "not a JSON object");
      for (const char* key : {"class", "question", "answer"}) {
        if (!doc.contains(key) || !doc.at(key).is_string() || doc.at(key).get<std::string>().empty()) {
          throw modalkit::DataError(where, std::string("needs a non-empty string \"") + key + "\"");
        }
      }
      const auto answer = modalkit::caption_words(doc.at("answer").get<std::string>());
      if (answer.size() != 1) throw modalkit::DataError(where, "the answer must be one word (the first generated word is scored)");
      questions_.push_back({doc.at("class"), doc.at("question"), answer.front(), line_no});
    }
    if (questions_.empty()) throw modalkit::DataError(file_, "holds no questions");
  }

  lp::PromptConfig config_;
  std::string template_;
  int64_t max_tokens_;
  std::string file_;
  std::vector<Question> questions_;
};

}  // namespace

MODALKIT_PLUGIN("knowledge_questions", "0.1.0", kManifest, MODALKIT_EVALUATION("knowledge_questions", KnowledgeQuestions))
