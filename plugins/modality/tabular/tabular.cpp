// The tabular modality: a sample is one row of a CSV file (`file.csv#ROW`). Numeric columns are
// standardised with statistics fitted on train; categorical columns map to indices of a
// vocabulary fitted on train (0 = unseen or missing). The encoder is FT-Transformer's (Gorishniy
// et al. 2021): each column becomes one token (value * w_j + b_j, or an embedding + b_j), then
// Transformer layers mix the columns.
#include <algorithm>
#include <cmath>
#include <limits>
#include <map>
#include <memory>
#include <mutex>
#include <set>

#include <torch/nn/modules/dropout.h>
#include <torch/nn/modules/embedding.h>

#include "modalkit/csv.hpp"
#include "modalkit/layers.hpp"
#include "modalkit/modality.hpp"
#include "modalkit/plugin.hpp"
#include "tabular_manifest.hpp"

namespace {

using modalkit::DataError;
using nlohmann::json;

/// The columns in use, split by kind, in token order: numeric first, then categorical.
struct Layout {
  std::vector<std::string> numeric, categorical;
  bool operator==(const Layout& o) const { return numeric == o.numeric && categorical == o.categorical; }
};

/// One token per column: numeric x_j -> x_j * weight_j + bias_j; categorical c_j ->
/// embedding(offset_j + c_j) + bias_j; then Transformer encoder layers and a LayerNorm.
class FtTransformerEncoder : public modalkit::Encoder {
 public:
  FtTransformerEncoder(int64_t numeric, const std::vector<int64_t>& vocab_sizes,
                       const modalkit::TokenTransformerOptions& options)
      : numeric_(numeric) {
    const int64_t d_model = options.d_model();
    const int64_t columns = numeric + int64_t(vocab_sizes.size());
    weight_ = register_parameter("weight", torch::randn({numeric, d_model}) / std::sqrt(double(d_model)));
    bias_ = register_parameter("bias", torch::randn({columns, d_model}) / std::sqrt(double(d_model)));
    std::vector<int64_t> offsets;
    int64_t total = 0;
    for (int64_t v : vocab_sizes) {
      offsets.push_back(total);
      total += v;
    }
    offsets_ = register_buffer("offsets", torch::tensor(offsets.empty() ? std::vector<int64_t>{0} : offsets));
    if (total > 0) embedding_ = register_module("embedding", torch::nn::Embedding(total, d_model));
    transformer_ = register_module(
        "transformer", modalkit::TokenTransformer(options));
  }

  modalkit::Sequence forward(const modalkit::ModalityInput& input) override {
    std::vector<torch::Tensor> tokens;
    if (numeric_ > 0) tokens.push_back(input.data.narrow(1, 0, numeric_).unsqueeze(-1) * weight_);  // [B, N, D]
    const int64_t cats = input.data.size(1) - numeric_;
    if (cats > 0) {
      auto ids = input.data.narrow(1, numeric_, cats).to(torch::kLong) + offsets_;  // [B, C]
      tokens.push_back(embedding_->forward(ids));
    }
    auto x = transformer_->forward(torch::cat(tokens, 1) + bias_);
    return {x, torch::ones({x.size(0), x.size(1)}, torch::dtype(torch::kBool).device(x.device()))};
  }

 private:
  int64_t numeric_;
  torch::Tensor weight_, bias_, offsets_;
  torch::nn::Embedding embedding_{nullptr};
  modalkit::TokenTransformer transformer_{nullptr};
};

class TabularModality : public modalkit::ModalityPlugin {
 public:
  explicit TabularModality(const modalkit::CreateArgs& args)
      : transformer_(modalkit::token_transformer_options(args.config, args.d_model)) {
    const modalkit::Config& c = args.config;
    columns_ = c.get<std::vector<std::string>>("columns");
    const auto categorical = c.get<std::vector<std::string>>("categorical");
    categorical_ = std::set<std::string>(categorical.begin(), categorical.end());
    for (const auto& name : categorical) {
      if (!columns_.empty() && std::find(columns_.begin(), columns_.end(), name) == columns_.end()) {
        throw modalkit::ConfigError(c.pointer() + "/categorical", "\"" + name + "\" is not one of the columns");
      }
    }
    normalize_ = c.get<bool>("normalize");
    perturbation_ = c.get<std::string>("perturbation");
    if (!columns_.empty()) layout_ = std::make_shared<Layout>(split(columns_));
  }

  void fit(const std::vector<modalkit::RawValue>& train) override {
    const Layout& l = layout();
    const int64_t n = int64_t(l.numeric.size());
    mean_ = std::vector<double>(size_t(n), 0.0);
    std_ = std::vector<double>(size_t(n), 1.0);
    vocab_.assign(l.categorical.size(), {});
    if (train.empty()) return;
    if (normalize_ && n > 0) {
      auto all = torch::stack([&] {
        std::vector<torch::Tensor> rows;
        for (const auto& r : train) rows.push_back(r.tensor);
        return rows;
      }());  // [S, N] double
      auto mean = all.mean(0), std = all.std(0, /*unbiased=*/false).clamp_min(1e-12);
      for (int64_t j = 0; j < n; ++j) {
        mean_[j] = mean[j].item<double>();
        std_[j] = std[j].item<double>();
      }
    }
    for (size_t j = 0; j < l.categorical.size(); ++j) {
      std::set<std::string> seen;
      for (const auto& r : train) seen.insert(cells(r)[j]);
      vocab_[j].assign(seen.begin(), seen.end());
    }
  }

  json fitted_state() const override {
    const Layout& l = layout();
    return {{"numeric", l.numeric}, {"categorical", l.categorical}, {"mean", mean_}, {"std", std_}, {"vocab", vocab_}};
  }
  void load_fitted_state(const json& s) override {
    Layout l{s.at("numeric").get<std::vector<std::string>>(), s.at("categorical").get<std::vector<std::string>>()};
    std::lock_guard<std::mutex> lock(mutex_);
    if (layout_ && !(*layout_ == l)) throw modalkit::Error("tabular: the saved columns differ from the configured ones");
    layout_ = std::make_shared<Layout>(l);
    mean_ = s.at("mean").get<std::vector<double>>();
    std_ = s.at("std").get<std::vector<double>>();
    vocab_ = s.at("vocab").get<std::vector<std::vector<std::string>>>();
  }

  modalkit::RawValue decode(const modalkit::FieldRef& field) const override {
    const std::string ref = field.value.is_string() ? field.value.get<std::string>() : "";
    const auto hash = ref.rfind('#');
    if (hash == std::string::npos) {
      throw DataError(field.origin, "tabular field must be \"file.csv#ROW\", found " + field.value.dump());
    }
    const auto table = open(field.base_dir / ref.substr(0, hash), field.origin);
    int64_t row = -1;
    try {
      size_t used = 0;
      row = std::stoll(ref.substr(hash + 1), &used);
      if (used != ref.size() - hash - 1) row = -1;
    } catch (const std::exception&) {
    }
    if (row < 0 || row >= int64_t(table->csv->rows.size())) {
      throw DataError(field.origin, "row \"" + ref.substr(hash + 1) + "\" is not in " + table->csv->file.string() +
                                        " (" + std::to_string(table->csv->rows.size()) + " data rows)");
    }
    const auto& cells = table->csv->rows[size_t(row)];
    // Line numbers count the header: data row r is on line r + 2.
    const std::string where = table->csv->file.string() + ":" + std::to_string(row + 2);
    auto values = torch::empty({int64_t(table->numeric.size())}, torch::kDouble);
    for (size_t j = 0; j < table->numeric.size(); ++j) {
      const auto& [index, name] = table->numeric[j];
      double v = 0;
      if (!modalkit::parse_number(cells[index], v)) {
        throw DataError(where, "column \"" + name + "\": expected a finite number, found \"" + cells[index] + "\"" +
                                   (categorical_.empty() ? "" : " (list text columns under categorical)"));
      }
      values[int64_t(j)] = v;
    }
    json cats = json::array();
    for (const auto& [index, name] : table->categorical) {
      if (cells[index].empty()) throw DataError(where, "column \"" + name + "\": empty cell");
      cats.push_back(cells[index]);
    }
    return {values, cats.dump(), 0};
  }

  modalkit::RawValue perturb(const modalkit::RawValue& raw, double level, std::mt19937_64& rng) const override {
    if (level <= 0) return raw;
    auto values = raw.tensor.clone();
    auto* v = values.data_ptr<double>();
    const int64_t n = values.numel();
    json cats = json::parse(raw.text);
    std::bernoulli_distribution hit(level);
    if (perturbation_ == "drop") {
      // A missing numeric value is NaN in the raw row; featurize maps it to the train mean.
      for (int64_t j = 0; j < n; ++j) {
        if (hit(rng)) v[j] = std::numeric_limits<double>::quiet_NaN();
      }
      for (auto& c : cats) {
        if (hit(rng)) c = "";
      }
    } else if (n > 1) {
      const auto original = raw.tensor.clone();
      std::uniform_int_distribution<int64_t> other(0, n - 2);
      for (int64_t j = 0; j < n; ++j) {
        if (!hit(rng)) continue;
        int64_t k = other(rng);
        if (k >= j) ++k;
        v[j] = original[k].item<double>();
      }
    }
    return {values, cats.dump(), 0};
  }

  torch::Tensor featurize(const modalkit::RawValue& raw) const override {
    const int64_t n = raw.tensor.numel();
    const json cats = json::parse(raw.text);
    auto out = torch::empty({n + int64_t(cats.size())}, torch::kFloat);
    const auto* v = raw.tensor.data_ptr<double>();
    for (int64_t j = 0; j < n; ++j) {
      out[j] = std::isnan(v[j]) ? 0.0 : normalize_ ? (v[j] - mean_.at(size_t(j))) / std_.at(size_t(j)) : v[j];
    }
    for (size_t j = 0; j < cats.size(); ++j) {
      const auto& vocab = vocab_.at(j);
      const auto it = std::lower_bound(vocab.begin(), vocab.end(), cats[j].get<std::string>());
      const bool known = it != vocab.end() && *it == cats[j].get<std::string>();
      out[n + int64_t(j)] = known ? double(it - vocab.begin() + 1) : 0.0;  // 0: unseen in train, or dropped
    }
    return out;
  }

  std::shared_ptr<modalkit::Encoder> make_encoder() override {
    const Layout& l = layout();
    std::vector<int64_t> sizes;
    for (size_t j = 0; j < l.categorical.size(); ++j) sizes.push_back(int64_t(vocab_.at(j).size()) + 1);
    return std::make_shared<FtTransformerEncoder>(int64_t(l.numeric.size()), sizes, transformer_);
  }

 private:
  /// A CSV file with the configured columns resolved to cell indices.
  struct Table {
    std::shared_ptr<const modalkit::CsvTable> csv;
    std::vector<std::pair<size_t, std::string>> numeric, categorical;
  };

  Layout split(const std::vector<std::string>& columns) const {
    Layout l;
    for (const auto& c : columns) (categorical_.count(c) ? l.categorical : l.numeric).push_back(c);
    return l;
  }

  /// The columns in use: configured, or taken from the first file read.
  const Layout& layout() const {
    std::lock_guard<std::mutex> lock(mutex_);
    if (!layout_) throw modalkit::Error("tabular: the columns are not known yet (no file read, no fitted state)");
    return *layout_;
  }

  std::vector<std::string> cells(const modalkit::RawValue& raw) const {
    return json::parse(raw.text).get<std::vector<std::string>>();
  }

  std::shared_ptr<const Table> open(const std::filesystem::path& path, const std::string& origin) const {
    auto csv = csv_files_.get(path, origin);
    std::lock_guard<std::mutex> lock(mutex_);
    auto& slot = tables_[path.string()];
    if (slot) return slot;
    auto table = std::make_shared<Table>();
    table->csv = csv;
    if (!layout_) {
      for (const auto& name : categorical_) csv->column(name);  // every categorical column exists
      layout_ = std::make_shared<Layout>(split(csv->header));
    }
    for (const auto& name : layout_->numeric) table->numeric.emplace_back(csv->column(name), name);
    for (const auto& name : layout_->categorical) table->categorical.emplace_back(csv->column(name), name);
    slot = table;
    return slot;
  }

  std::vector<std::string> columns_;
  std::set<std::string> categorical_;
  bool normalize_;
  std::string perturbation_;
  modalkit::TokenTransformerOptions transformer_;
  std::vector<double> mean_, std_;
  std::vector<std::vector<std::string>> vocab_;
  mutable std::mutex mutex_;
  mutable std::shared_ptr<const Layout> layout_;  // set once, by the config or the first file
  modalkit::CsvCache csv_files_;
  mutable std::map<std::string, std::shared_ptr<const Table>> tables_;  // with resolved columns
};

}  // namespace

MODALKIT_PLUGIN("tabular", "0.1.0", kManifest, MODALKIT_MODALITY("tabular", TabularModality))
