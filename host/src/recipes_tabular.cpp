// Tabular recipes: sklearn's wine and breast-cancer tables (from Debian's python3-sklearn, only
// unpacked), vega-datasets' penguins and Seattle weather (npm). Each split is a CSV file with a
// header; a sample is `{"features": "train.csv#ROW", "label": NAME}`.
#include <zlib.h>

#include <cmath>
#include <cstdio>
#include <fstream>
#include <memory>

#include "modalkit/csv.hpp"
#include "modalkit/errors.hpp"
#include "recipes.hpp"

namespace fs = std::filesystem;
using nlohmann::json;

namespace modalkit::host::recipes {

namespace {

const char* kSklearnData = "/usr/lib/python3/dist-packages/sklearn/datasets/data/";

/// A table in memory: feature columns, rows of cells, one label per row.
struct Table {
  std::vector<std::string> columns;
  std::vector<std::vector<std::string>> rows;
  std::vector<std::string> labels;       ///< per row
  std::vector<std::string> label_names;  ///< the label set, in index order
  nlohmann::json extra_fields = nlohmann::json::object();  ///< more fields of dataset.json (name → spec)
  std::vector<nlohmann::json> extra;     ///< per row: those fields' values (empty when there are none)
};

/// Writes `table` split by `parts` (split → row indices), each split cut to its share of --subset.
fs::path write_table(const Context& ctx, const Table& table, const std::map<std::string, std::vector<size_t>>& parts,
                     const std::vector<std::string>& split_order, json doc, const std::string& license,
                     const std::vector<SourceFile>& sources) {
  std::string columns;
  for (const auto& c : table.columns) columns += (columns.empty() ? "" : ", ") + c;
  doc["fields"] = {
      {"features", {{"type", "tabular"}, {"format", "csv-row"}, {"description", "CSV row (SPLIT.csv#ROW); columns: " + columns}}},
      {"label", {{"type", "label"}, {"labels", table.label_names}}}};
  doc["fields"].update(table.extra_fields);
  DatasetWriter writer(ctx, std::move(doc));
  uint64_t salt = 0;
  for (const auto& split : split_order) {
    const auto rows = balanced_subset(parts.at(split), [&](size_t i) { return table.labels[i]; },
                                      subset_share(ctx, split, parts.at(split).size(), table.rows.size()),
                                      ctx.options.seed + ++salt);
    std::ofstream csv(writer.dir() / (split + ".csv"));
    csv << csv_line(table.columns) << '\n';
    for (size_t k = 0; k < rows.size(); ++k) {
      csv << csv_line(table.rows[rows[k]]) << '\n';
      json sample = {{"features", split + ".csv#" + std::to_string(k)}, {"label", table.labels[rows[k]]}};
      if (!table.extra.empty()) sample.update(table.extra[rows[k]]);
      writer.add(split, sample);
    }
  }
  return writer.finish(license, "nothing", sources);
}

/// sklearn's bundled CSVs: a first line `N,F,label0,label1,...` (shorter than the rows), then N
/// rows of F features and an integer target. The two parts are parsed separately.
Table read_sklearn_file(const SourceFile& src, const std::vector<std::string>& columns) {
  std::ifstream in(src.path);
  std::string first, rest, line;
  std::getline(in, first);
  while (std::getline(in, line)) rest += line + "\n";
  CsvTable head = parse_csv(first + "\n", src.path.string(), false);
  CsvTable body = parse_csv(rest, src.path.string(), false);
  CsvTable all;
  all.rows.push_back(head.rows.at(0));
  all.rows.insert(all.rows.end(), body.rows.begin(), body.rows.end());
  Table t;
  t.columns = columns;
  const size_t f = std::stoul(all.rows[0][1]);
  t.label_names.assign(all.rows[0].begin() + 2, all.rows[0].end());
  if (f != columns.size() || std::stoul(all.rows[0][0]) + 1 != all.rows.size()) {
    throw DataError(src.path.string(), "header says " + all.rows[0][0] + " rows of " + all.rows[0][1] +
                                           " features; found " + std::to_string(all.rows.size() - 1) + " rows, expected " +
                                           std::to_string(columns.size()) + " features");
  }
  for (size_t r = 1; r < all.rows.size(); ++r) {
    const auto& row = all.rows[r];
    if (row.size() != f + 1) throw DataError(src.path.string() + ":" + std::to_string(r + 1), "wrong cell count");
    t.rows.emplace_back(row.begin(), row.begin() + long(f));
    t.labels.push_back(t.label_names.at(std::stoul(row[f])));
  }
  return t;
}

const std::vector<std::pair<std::string, double>> kSixtyTwentyTwenty = {{"train", 0.6}, {"val", 0.2}, {"test", 0.2}};

fs::path sklearn_recipe(const Context& ctx, const std::string& file, const std::vector<std::string>& columns,
                        const std::string& name, const std::string& description) {
  const SourceFile src = debian_file(ctx, "python3-sklearn", kSklearnData + file);
  const Table t = read_sklearn_file(src, columns);
  const auto parts = stratified_split(t.rows.size(), [&](size_t i) { return t.labels[i]; }, kSixtyTwentyTwenty,
                                      ctx.options.seed);
  return write_table(ctx, t, parts, {"train", "val", "test"},
                     {{"name", name}, {"description", description}, {"version", "1"}},
                     "BSD-3-Clause (scikit-learn); the data are from the UCI Machine Learning Repository", {src});
}

}  // namespace

fs::path wine(const Context& ctx) {
  return sklearn_recipe(ctx, "wine_data.csv",
                        {"alcohol", "malic_acid", "ash", "alcalinity_of_ash", "magnesium", "total_phenols",
                         "flavanoids", "nonflavanoid_phenols", "proanthocyanins", "color_intensity", "hue",
                         "od280/od315_of_diluted_wines", "proline"},
                        "wine",
                        "Chemical analysis of 178 Italian wines from 3 cultivars (Forina et al., UCI wine), as "
                        "bundled with scikit-learn. Real measurements, nothing synthetic.");
}

fs::path breast_cancer(const Context& ctx) {
  std::vector<std::string> columns;
  for (const std::string kind : {"mean", "error", "worst"}) {
    for (const std::string base : {"radius", "texture", "perimeter", "area", "smoothness", "compactness", "concavity",
                                   "concave points", "symmetry", "fractal dimension"}) {
      columns.push_back(kind == "error" ? base + " error" : kind + " " + base);
    }
  }
  return sklearn_recipe(ctx, "breast_cancer.csv", columns, "breast-cancer",
                        "Wisconsin Diagnostic Breast Cancer (Street, Wolberg and Mangasarian 1993): 30 features of "
                        "cell nuclei in 569 biopsies, malignant or benign, as bundled with scikit-learn. Real "
                        "measurements, nothing synthetic.");
}

fs::path penguins(const Context& ctx) {
  const SourceFile src = npm_file(ctx, "vega-datasets", "data/penguins.json");
  std::ifstream in(src.path);
  const json rows = json::parse(in, nullptr, false);
  if (!rows.is_array()) throw DataError(src.path.string(), "expected a JSON array of penguins");
  Table t;
  t.columns = {"island", "beak_length_mm", "beak_depth_mm", "flipper_length_mm", "body_mass_g", "sex"};
  const std::vector<std::string> keys = {"Island", "Beak Length (mm)", "Beak Depth (mm)", "Flipper Length (mm)",
                                         "Body Mass (g)", "Sex"};
  t.label_names = {"Adelie", "Chinstrap", "Gentoo"};
  for (const auto& r : rows) {
    std::vector<std::string> cells;
    for (const auto& k : keys) {
      const auto& v = r.value(k, json());
      if (v.is_string() && v.get<std::string>() != ".") cells.push_back(v.get<std::string>());
      if (v.is_number()) cells.push_back(v.dump());
    }
    // Incomplete records (missing measurements or sex: 11 of 344) are dropped, as is usual.
    if (cells.size() != keys.size()) continue;
    t.rows.push_back(cells);
    t.labels.push_back(r.at("Species").get<std::string>());
  }
  const auto parts = stratified_split(t.rows.size(), [&](size_t i) { return t.labels[i]; }, kSixtyTwentyTwenty,
                                      ctx.options.seed);
  return write_table(ctx, t, parts, {"train", "val", "test"},
                     {{"name", "penguins"},
                      {"description", "Palmer Archipelago penguins (Gorman, Williams and Fraser 2014): island, beak, "
                                      "flipper, mass and sex of " + std::to_string(t.rows.size()) +
                                          " complete records; task: species. island and sex are categorical. Real "
                                          "measurements, nothing synthetic."},
                      {"version", "1"}},
                     "CC0-1.0 (palmerpenguins); vega-datasets is BSD-3-Clause", {src});
}

fs::path seattle_weather(const Context& ctx) {
  const SourceFile src = npm_file(ctx, "vega-datasets", "data/seattle-weather.csv");
  const CsvTable csv = read_csv(src.path);
  Table t;
  t.columns = {"precipitation", "temp_max", "temp_min", "wind"};
  std::vector<size_t> cols;
  for (const auto& c : t.columns) cols.push_back(csv.column(c));
  const size_t date = csv.column("date"), weather = csv.column("weather");
  t.label_names = {"drizzle", "fog", "rain", "snow", "sun"};
  // A multilabel task on the same days: what tomorrow brings, from today's measurements.
  // Thresholds are fixed, not fitted: rain = any precipitation, warm = a maximum of 20 °C or
  // more, windy = a mean wind of 4 m/s or more (about the windiest quarter of days).
  t.extra_fields = {{"next_day",
                     {{"type", "label_set"},
                      {"labels", {"rain", "warm", "windy"}},
                      {"description", "the next day's conditions: rain (precipitation > 0 mm), warm (max >= 20 C), "
                                      "windy (mean wind >= 4 m/s); any subset, possibly empty"}}}};
  std::map<std::string, std::vector<size_t>> parts;
  auto number = [&](const std::vector<std::string>& row, size_t c, size_t line) {
    double v = 0;
    if (!parse_number(row[c], v)) {
      throw DataError(src.path.string() + ":" + std::to_string(line + 2), csv.header[c] + " is not a number: " + row[c]);
    }
    return v;
  };
  // Days since 1970-01-01 of a YYYY-MM-DD cell (the civil-from-days inverse, Howard Hinnant's).
  auto day_number = [&](const std::string& ymd, size_t line) {
    int y = 0, m = 0, d = 0;
    if (std::sscanf(ymd.c_str(), "%d-%d-%d", &y, &m, &d) != 3) {
      throw DataError(src.path.string() + ":" + std::to_string(line + 2), "date is not YYYY-MM-DD: " + ymd);
    }
    y -= m <= 2;
    const int era = (y >= 0 ? y : y - 399) / 400;
    const int yoe = y - era * 400, doy = (153 * (m + (m > 2 ? -3 : 9)) + 2) / 5 + d - 1;
    return era * 146097 + yoe * 365 + yoe / 4 - yoe / 100 + doy - 719468;
  };
  // The last day has no next day, so it is left out. 2013-12-31's target is 2014-01-01, a
  // validation day: one day's weather seen across the split boundary, as in any forecast.
  for (size_t r = 0; r + 1 < csv.rows.size(); ++r) {
    const auto& row = csv.rows[r];
    const auto& next = csv.rows[r + 1];
    if (day_number(next[date], r + 1) != day_number(row[date], r) + 1) {
      throw DataError(src.path.string() + ":" + std::to_string(r + 3),
                      "expected the day after " + row[date] + ", found " + next[date] + " (next_day needs consecutive days)");
    }
    std::vector<std::string> cells;
    for (size_t c : cols) cells.push_back(row[c]);
    const std::string year = row[date].substr(0, 4);
    // Blocked by time: a model is judged on later days than it saw, never on interleaved ones.
    parts[year <= "2013" ? "train" : year == "2014" ? "val" : "test"].push_back(t.rows.size());
    t.rows.push_back(cells);
    t.labels.push_back(row[weather]);
    json tomorrow = json::array();
    if (number(next, cols[0], r + 1) > 0) tomorrow.push_back("rain");
    if (number(next, cols[1], r + 1) >= 20) tomorrow.push_back("warm");
    if (number(next, cols[3], r + 1) >= 4) tomorrow.push_back("windy");
    t.extra.push_back({{"next_day", tomorrow}});
  }
  return write_table(ctx, t, parts, {"train", "val", "test"},
                     {{"name", "seattle-weather"},
                      {"description", "Daily weather in Seattle 2012-2015 (NOAA, via vega-datasets): precipitation, "
                                      "max/min temperature and wind; tasks: the day's weather (multiclass) and the "
                                      "next day's rain/warm/windy (multilabel; the last day, which has no next day, "
                                      "is left out). Splits by year: 2012-2013 train, 2014 val, 2015 test. Real "
                                      "observations; the next-day thresholds are this recipe's."},
                      {"version", "2"}},
                     "BSD-3-Clause (vega-datasets); NOAA data are public domain", {src});
}

fs::path digits(const Context& ctx) {
  const SourceFile src = debian_file(ctx, "python3-sklearn", std::string(kSklearnData) + "digits.csv.gz");
  std::string text;
  {
    std::unique_ptr<gzFile_s, int (*)(gzFile)> gz(gzopen(src.path.c_str(), "rb"), gzclose);
    if (!gz) throw DataError(src.path.string(), "cannot open");
    char buf[65536];
    for (int n; (n = gzread(gz.get(), buf, sizeof buf)) > 0;) text.append(buf, size_t(n));
  }
  // 1,797 rows of 64 pixel counts (0-16: how many of a 4x4 block's 32x32 bitmap pixels were
  // set) and the digit; stored as 8x8 uint8 images scaled to 0-255.
  const CsvTable csv = parse_csv(text, src.path.string(), false);
  Idx images;
  images.dims = {uint32_t(csv.rows.size()), 8, 8};
  std::vector<std::string> labels;
  for (size_t r = 0; r < csv.rows.size(); ++r) {
    const auto& row = csv.rows[r];
    const std::string where = src.path.string() + ":" + std::to_string(r + 1);
    if (row.size() != 65) throw DataError(where, "expected 64 pixels and a digit, found " + std::to_string(row.size()) + " cells");
    for (size_t i = 0; i < 64; ++i) {
      double v = -1;
      if (!parse_number(row[i], v) || v < 0 || v > 16) throw DataError(where, "pixel " + std::to_string(i) + " is " + row[i] + ", expected 0-16");
      images.bytes.push_back(static_cast<char>(static_cast<unsigned char>(std::lround(v * 255.0 / 16.0))));
    }
    double d = -1;
    if (!parse_number(row[64], d) || d < 0 || d > 9 || d != std::floor(d)) throw DataError(where, "digit " + row[64] + " is not 0-9");
    labels.push_back(std::to_string(int(d)));
  }
  const auto parts = stratified_split(labels.size(), [&](size_t i) { return labels[i]; }, kSixtyTwentyTwenty,
                                      ctx.options.seed);
  json names = json::array();
  for (int d = 0; d < 10; ++d) names.push_back(std::to_string(d));
  DatasetWriter writer(
      ctx, {{"name", "digits"},
            {"description", "UCI optical recognition of handwritten digits (Alpaydin and Kaynak 1998) as bundled with "
                            "scikit-learn: 1,797 8x8 images (4x4-block pixel counts 0-16, scaled to 0-255); "
                            "stratified 60/20/20. Real handwriting, nothing synthetic."},
            {"version", "1"},
            {"fields",
             {{"image", {{"type", "image"}, {"format", "idx"}, {"description", "8x8 uint8 grey image"}}},
              {"label", {{"type", "label"}, {"labels", names}, {"description", "the digit"}}}}}});
  uint64_t salt = 0;
  for (const std::string split : {"train", "val", "test"}) {
    const auto rows = balanced_subset(parts.at(split), [&](size_t i) { return labels[i]; },
                                      subset_share(ctx, split, parts.at(split).size(), labels.size()),
                                      ctx.options.seed + ++salt);
    const std::string file = split + "-images.idx.gz";
    write_idx_images(writer.dir() / file, images, rows);
    for (size_t k = 0; k < rows.size(); ++k) {
      writer.add(split, {{"image", file + "#" + std::to_string(k)}, {"label", labels[rows[k]]}});
    }
  }
  return writer.finish("BSD-3-Clause (scikit-learn); the data are from the UCI Machine Learning Repository (CC BY 4.0)",
                       "nothing", {src});
}

}  // namespace modalkit::host::recipes
