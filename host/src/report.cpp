#include "report.hpp"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <map>
#include <sstream>

#include "engine.hpp"
#include "modalkit/errors.hpp"

namespace modalkit::host {

namespace fs = std::filesystem;
using json = nlohmann::json;

namespace {

json read_optional(const fs::path& p) {
  if (!fs::exists(p)) return nullptr;
  std::ifstream in(p);
  json j = json::parse(in, nullptr, false);
  if (j.is_discarded()) throw Error(p.string() + ": not valid JSON");
  return j;
}

std::string escape(const std::string& text) {
  std::string out;
  for (char c : text) {
    switch (c) {
      case '&': out += "&amp;"; break;
      case '<': out += "&lt;"; break;
      case '>': out += "&gt;"; break;
      case '"': out += "&quot;"; break;
      case '\'': out += "&#39;"; break;
      default: out += c;
    }
  }
  return out;
}

std::string num(double v, const char* f = "%.4g") {
  char buf[32];
  std::snprintf(buf, sizeof buf, f, v);
  return buf;
}

struct Series {
  std::string name;
  std::vector<double> x, y;
};

const char* kColours[] = {"#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf"};

/// A line chart as inline SVG: axes with five ticks each, one polyline and marker per series, a
/// legend. Non-finite points are left out.
std::string line_chart(const std::string& title, const std::string& xlabel, const std::string& ylabel,
                       const std::vector<Series>& series) {
  const double w = 560, h = 320, left = 60, right = 150, top = 30, bottom = 45;
  double x0 = INFINITY, x1 = -INFINITY, y0 = INFINITY, y1 = -INFINITY;
  for (const auto& s : series) {
    for (size_t i = 0; i < s.x.size(); ++i) {
      if (!std::isfinite(s.y[i])) continue;
      x0 = std::min(x0, s.x[i]);
      x1 = std::max(x1, s.x[i]);
      y0 = std::min(y0, s.y[i]);
      y1 = std::max(y1, s.y[i]);
    }
  }
  if (!std::isfinite(x0)) return "<p>" + escape(title) + ": no data</p>";
  if (x1 == x0) x1 = x0 + 1;
  if (y1 == y0) {
    y0 -= 0.5;
    y1 += 0.5;
  }
  const double pad = (y1 - y0) * 0.05;
  y0 -= pad;
  y1 += pad;
  auto px = [&](double x) { return left + (x - x0) / (x1 - x0) * (w - left - right); };
  auto py = [&](double y) { return h - bottom - (y - y0) / (y1 - y0) * (h - top - bottom); };
  std::ostringstream o;
  o << "<svg width='" << w << "' height='" << h << "' viewBox='0 0 " << w << " " << h
    << "' role='img' aria-label='" << escape(title) << "'>\n";
  o << "<text x='" << left << "' y='18' font-size='14' font-weight='bold'>" << escape(title) << "</text>\n";
  o << "<line x1='" << left << "' y1='" << h - bottom << "' x2='" << w - right << "' y2='" << h - bottom
    << "' stroke='#333'/><line x1='" << left << "' y1='" << top << "' x2='" << left << "' y2='" << h - bottom
    << "' stroke='#333'/>\n";
  for (int k = 0; k <= 4; ++k) {
    const double xv = x0 + (x1 - x0) * k / 4, yv = y0 + (y1 - y0) * k / 4;
    o << "<text x='" << px(xv) << "' y='" << h - bottom + 16 << "' font-size='11' text-anchor='middle'>" << num(xv)
      << "</text>";
    o << "<line x1='" << left << "' y1='" << py(yv) << "' x2='" << w - right << "' y2='" << py(yv)
      << "' stroke='#eee'/><text x='" << left - 6 << "' y='" << py(yv) + 4
      << "' font-size='11' text-anchor='end'>" << num(yv, "%.3g") << "</text>\n";
  }
  o << "<text x='" << (left + w - right) / 2 << "' y='" << h - 8 << "' font-size='12' text-anchor='middle'>"
    << escape(xlabel) << "</text>";
  o << "<text x='14' y='" << (top + h - bottom) / 2 << "' font-size='12' text-anchor='middle' transform='rotate(-90 14 "
    << (top + h - bottom) / 2 << ")'>" << escape(ylabel) << "</text>\n";
  for (size_t k = 0; k < series.size(); ++k) {
    const char* colour = kColours[k % (sizeof kColours / sizeof *kColours)];
    std::ostringstream points;
    for (size_t i = 0; i < series[k].x.size(); ++i) {
      if (!std::isfinite(series[k].y[i])) continue;
      points << px(series[k].x[i]) << "," << py(series[k].y[i]) << " ";
      o << "<circle cx='" << px(series[k].x[i]) << "' cy='" << py(series[k].y[i]) << "' r='2.5' fill='" << colour
        << "'><title>" << escape(series[k].name) << ": " << num(series[k].y[i]) << "</title></circle>";
    }
    o << "<polyline fill='none' stroke='" << colour << "' stroke-width='2' points='" << points.str() << "'/>\n";
    o << "<rect x='" << w - right + 12 << "' y='" << top + 18 * k << "' width='12' height='12' fill='" << colour
      << "'/><text x='" << w - right + 30 << "' y='" << top + 18 * k + 10 << "' font-size='12'>"
      << escape(series[k].name) << "</text>\n";
  }
  o << "</svg>\n";
  return o.str();
}

/// A confusion matrix as an HTML table, cells shaded by their share of the true class's row.
std::string confusion_table(const std::string& task, const json& c) {
  const auto labels = c.at("labels").get<std::vector<std::string>>();
  const auto m = c.at("matrix").get<std::vector<std::vector<int64_t>>>();
  std::ostringstream o;
  o << "<table class='confusion'><caption>" << escape(task) << ": rows true class, columns predicted</caption><tr><th></th>";
  for (const auto& l : labels) o << "<th>" << escape(l) << "</th>";
  o << "</tr>\n";
  for (size_t i = 0; i < m.size(); ++i) {
    int64_t row = 0;
    for (auto v : m[i]) row += v;
    o << "<tr><th>" << escape(labels[i]) << "</th>";
    for (size_t j = 0; j < m[i].size(); ++j) {
      const double share = row > 0 ? static_cast<double>(m[i][j]) / static_cast<double>(row) : 0.0;
      const int shade = static_cast<int>(std::lround(255 - 180 * share));
      o << "<td style='background:rgb(" << shade << "," << shade << ",255)'" << (i == j ? " class='diag'" : "") << ">"
        << m[i][j] << "</td>";
    }
    o << "</tr>\n";
  }
  o << "</table>\n";
  return o.str();
}

}  // namespace

fs::path write_report(const fs::path& run_dir) {
  const json run = read_optional(run_dir / "run.json");
  if (run.is_null()) throw Error(run_dir.string() + ": not a run directory (no run.json)");
  const json pipeline = read_optional(run_dir / "pipeline.json");
  const json results = read_optional(run_dir / "results.json");
  const json robustness = read_optional(run_dir / "robustness.json");
  std::vector<json> epochs;
  {
    std::ifstream in(run_dir / "metrics.jsonl");
    for (std::string line; std::getline(in, line);) {
      json j = json::parse(line, nullptr, false);
      if (!j.is_discarded()) epochs.push_back(std::move(j));
    }
  }

  std::ostringstream h;
  const std::string name = run.value("pipeline", std::string("run"));
  h << "<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'><title>modalkit report: " << escape(name)
    << "</title>\n<style>body{font-family:sans-serif;max-width:1200px;margin:2em auto;color:#222}"
       "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}"
       "caption{font-weight:bold;text-align:left}pre{background:#f6f6f6;padding:1em;overflow:auto;font-size:12px}"
       ".diag{font-weight:bold}.charts{display:flex;flex-wrap:wrap;gap:1em}</style></head><body>\n";
  h << "<h1>" << escape(name) << "</h1>\n<p>Run <code>" << escape(fs::absolute(run_dir).lexically_normal().string())
    << "</code>; seed " << run.value("seed", uint64_t{0}) << "; data set sha256 <code>"
    << escape(run.value("dataset_sha256", std::string()).substr(0, 16)) << "…</code>; pipeline hash <code>"
    << escape(run.value("pipeline_hash", std::string()).substr(0, 16)) << "…</code>.</p>\n";

  h << "<h2>Result</h2>\n";
  if (results.is_null()) {
    h << "<p>No <code>results.json</code>: the run has not finished (resume it with <code>modalkit train "
         "--resume</code>).</p>\n";
  } else {
    h << "<table><tr><th>task</th><th>metric</th><th>value</th></tr>\n";
    if (results.at("tasks").empty() && results.contains("loss")) {  // a task-less (pretraining) run
      const json& loss = results.at("loss");  // NaN is stored as null
      h << "<tr><td>(none)</td><td>loss</td><td>" << (loss.is_number() ? num(loss.get<double>()) : "n/a") << "</td></tr>\n";
    }
    for (const auto& [task, metrics] : results.at("tasks").items()) {
      for (const auto& [metric, v] : metrics.items()) {
        h << "<tr><td>" << escape(task) << "</td><td>" << escape(metric) << "</td><td>"
          << (v.is_number() ? num(v.get<double>()) : "n/a") << "</td></tr>\n";
      }
    }
    h << "</table>\n<p>" << escape(results.value("split", std::string())) << " split, " << results.value("samples", 0)
      << " samples, modalities " << escape(results.value("modalities", json::array()).dump()) << "; kept epoch "
      << results.value("best_epoch", 0) << " (" << escape(results.value("kept", std::string("best")))
      << " on validation), " << results.value("steps", 0) << " steps.</p>\n";
    const json task_data = results.value("task_data", json::object());  // a multitask run: each task's data
    if (!task_data.empty()) {
      h << "<table><caption>Tasks</caption><tr><th>task</th><th>data set</th><th>train samples</th><th>label fraction</th>"
           "<th>loss weight</th><th>test samples</th><th>stopped after epoch</th></tr>\n";
      const json counts = results.value("task_samples", json::object());
      for (const auto& [task, d] : task_data.items()) {
        const json stopped = d.value("stopped_after_epoch", json());
        h << "<tr><td>" << escape(task) << "</td><td><code>" << escape(d.value("dataset", std::string())) << "</code></td><td>"
          << d.value("train_samples", 0) << "</td><td>" << num(d.value("label_fraction", 1.0)) << "</td><td>"
          << num(d.value("weight", 1.0)) << "</td><td>" << counts.value(task, 0) << "</td><td>"
          << (stopped.is_number() ? std::to_string(stopped.get<int>()) : "-") << "</td></tr>\n";
      }
      h << "</table>\n";
    }
    const json artifacts = results.value("artifacts", json::object());
    for (const auto& [artifact, a] : artifacts.items()) {
      h << "<p>Artifact <code>" << escape(artifact) << "</code> (" << escape(a.value("type", std::string())) << "): <code>"
        << escape(a.value("file", std::string())) << "</code>, sha256 <code>"
        << escape(a.value("sha256", std::string()).substr(0, 16)) << "…</code></p>\n";
    }
  }

  if (!epochs.empty()) {
    h << "<h2>Training</h2>\n<div class='charts'>\n";
    Series loss{"train loss", {}, {}}, val_loss{"val loss", {}, {}};
    std::map<std::string, Series> val;
    std::map<std::string, Series> terms;
    for (const auto& e : epochs) {
      const double ep = e.value("epoch", 0);
      loss.x.push_back(ep);
      loss.y.push_back(e.value("train_loss", NAN));
      if (e.contains("val_loss")) {  // selection on validation loss (task-less runs)
        val_loss.x.push_back(ep);
        val_loss.y.push_back(e.at("val_loss").is_number() ? e.at("val_loss").get<double>() : NAN);
      }
      const json loss_terms = e.value("loss_terms", json::object());  // named: items() would outlive a temporary
      for (const auto& [name2, v] : loss_terms.items()) {
        terms[name2].name = name2;
        terms[name2].x.push_back(ep);
        terms[name2].y.push_back(v.is_number() ? v.get<double>() : NAN);
      }
      const json val_metrics = e.value("val", json::object());
      for (const auto& [task, metrics] : val_metrics.items()) {
        for (const auto& [metric, v] : metrics.items()) {
          Series& s = val[task + "/" + metric];
          s.name = task + "/" + metric;
          s.x.push_back(ep);
          s.y.push_back(v.is_number() ? v.get<double>() : NAN);
        }
      }
    }
    std::vector<Series> loss_series{loss};
    if (!val_loss.x.empty()) loss_series.push_back(val_loss);
    if (terms.size() > 1) {
      for (auto& [n2, s] : terms) loss_series.push_back(s);
    }
    h << line_chart("Loss", "epoch", "loss", loss_series);
    std::vector<Series> vs;
    for (auto& [n2, s] : val) vs.push_back(s);
    h << line_chart("Validation metrics", "epoch", "value", vs);
    h << "</div>\n";
  }

  if (!results.is_null() && results.contains("confusion")) {
    h << "<h2>Confusion</h2>\n";
    for (const auto& [task, c] : results.at("confusion").items()) h << confusion_table(task, c);
  }

  if (!robustness.is_null()) {
    h << "<h2>Robustness</h2>\n<div class='charts'>\n";
    std::vector<Series> curves;
    const auto levels = robustness.at("levels").get<std::vector<double>>();
    for (const auto& [m, c] : robustness.at("perturbation").items()) {
      std::vector<double> ys;
      for (const auto& v : c.at("curve")) ys.push_back(v.is_number() ? v.get<double>() : NAN);  // NaN is stored as null
      curves.push_back({m + " perturbed", levels, ys});
    }
    h << line_chart("Robustness (" + robustness.value("metric", std::string()) + ")", "perturbation level",
                    robustness.value("metric", std::string()), curves);
    h << "</div>\n<table><tr><th>modality</th><th>relative robustness</th><th>effective robustness</th>"
         "<th>when missing</th></tr>\n";
    for (const auto& [m, c] : robustness.at("perturbation").items()) {
      const json& missing = robustness.at("missing");
      auto cell = [](const json& v) { return v.is_number() ? num(v.get<double>()) : std::string("n/a"); };
      h << "<tr><td>" << escape(m) << "</td><td>" << cell(c.at("relative_robustness")) << "</td><td>"
        << cell(c.at("effective_robustness")) << "</td><td>" << (missing.contains(m) ? cell(missing.at(m)) : "—")
        << "</td></tr>\n";
    }
    h << "</table>\n<p>Relative robustness: area under the curve over levels 0–1; effective robustness: summed gap "
         "to a "
      << (!robustness.at("perturbation").empty() &&
                  robustness.at("perturbation").begin()->value("reference", std::string("flat")) == "run"
              ? "reference run's"
              : "flat")
      << " curve shifted to this run's clean value (MultiBench).</p>\n";
  }

  h << "<h2>Plugins</h2>\n<table><tr><th>plugin</th><th>version</th><th>ABI</th><th>library sha256</th></tr>\n";
  const json plugins = run.value("plugins", json::object());
  for (const auto& [p, info] : plugins.items()) {
    h << "<tr><td>" << escape(p) << "</td><td>" << escape(info.value("version", std::string())) << "</td><td>"
      << escape(info.value("abi", std::string())) << "</td><td><code>"
      << escape(info.value("sha256", std::string()).substr(0, 16)) << "…</code></td></tr>\n";
  }
  h << "</table>\n<h2>Resolved pipeline</h2>\n<pre>" << escape(pipeline.is_null() ? "(missing)" : pipeline.dump(2))
    << "</pre>\n</body></html>\n";
  const fs::path out = run_dir / "report.html";
  write_text_atomically(out, h.str());
  return out;
}

}  // namespace modalkit::host
