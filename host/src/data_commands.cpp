#include "data_commands.hpp"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <functional>
#include <limits>
#include <mutex>
#include <set>
#include <sstream>

#include <ATen/ATen.h>
#include <spdlog/spdlog.h>

#include "dataset.hpp"
#include "engine.hpp"
#include "loader.hpp"
#include "modalkit/errors.hpp"
#include "modalkit/modality.hpp"
#include "schema/json_schema.hpp"

namespace modalkit::host {

namespace {

using nlohmann::json;

bool is_media(const std::string& type) {
  return type == "image" || type == "audio" || type == "tabular" || type == "sensor" || type == "text";
}

/// The modality plugin that reads fields of `type`: the first, by name, whose manifest lists it.
const schema::Manifest* reader_for(const PluginRegistry& registry, const std::string& type) {
  for (const auto& [name, m] : registry.manifests()) {
    if (m.kind == "modality" && std::find(m.field_types.begin(), m.field_types.end(), type) != m.field_types.end()) {
      return &m;
    }
  }
  return nullptr;
}

/// Running statistics of numbers, merged across threads under a lock.
struct Stats {
  int64_t count = 0;
  double sum = 0, sumsq = 0;
  double min = std::numeric_limits<double>::infinity(), max = -std::numeric_limits<double>::infinity();
  void add(double v) {
    ++count;
    sum += v;
    sumsq += v * v;
    min = std::min(min, v);
    max = std::max(max, v);
  }
  void merge(const Stats& o) {
    count += o.count;
    sum += o.sum;
    sumsq += o.sumsq;
    min = std::min(min, o.min);
    max = std::max(max, o.max);
  }
  json to_json() const {
    if (count == 0) return {{"count", 0}};
    const double mean = sum / static_cast<double>(count);
    const double var = std::max(0.0, sumsq / static_cast<double>(count) - mean * mean);
    return {{"count", count}, {"mean", mean}, {"std", std::sqrt(var)}, {"min", min}, {"max", max}};
  }
};

std::string shape_of(const at::Tensor& t) {
  std::string out;
  for (int64_t d : t.sizes()) out += (out.empty() ? "" : "x") + std::to_string(d);
  return out.empty() ? "scalar" : out;
}

/// Walks every sample of every split, field by field, calling `visit(split, field, type, value,
/// raw)`: for label and number fields `value` is what read_target made of it (the class index,
/// the number), for string fields the value itself; `raw` is the decoded value for media fields
/// (nullptr otherwise). Errors of one sample do not stop the walk; they are collected.
class Walker {
 public:
  Walker(const std::filesystem::path& file, PluginRegistry& registry, const DataCheckOptions& options)
      : dataset_(Dataset::open(file)),
        options_(options),
        context_(spdlog::default_logger(), 0, c10::Device(c10::kCPU), {}) {
    const json& fields = dataset_.doc().at("fields");
    for (const auto& [name, spec] : fields.items()) {
      const std::string type = spec.at("type");
      if (!is_media(type)) continue;
      const schema::Manifest* m = reader_for(registry, type);
      if (m == nullptr) {
        readers_[name] = {nullptr, "no modality plugin reads fields of type " + type + " (plugins searched: " +
                                       schema::join_names(registry.names()) + ")"};
        continue;
      }
      json config = json::object();
      if (auto it = options.field_configs.find(name); it != options.field_configs.end()) config = it->second;
      auto errors = m->config_validator->validate(config);
      if (!errors.empty()) {
        throw schema::ValidationFailed("--config " + name, std::move(errors));
      }
      m->config_validator->fill_defaults(config);
      CreateArgs args;
      args.config = Config(config, "--config " + name);
      args.context = &context_;
      args.instance = name;
      readers_[name] = {registry.create<ModalityPlugin>(m->name, MODALKIT_KIND_MODALITY, args), ""};
    }
  }

  Dataset& dataset() { return dataset_; }

  /// The plugin that decodes `field` (nullptr for non-media fields or when none was found) and
  /// why none was found.
  std::pair<ModalityPlugin*, std::string> reader(const std::string& field) const {
    auto it = readers_.find(field);
    if (it == readers_.end()) return {nullptr, ""};
    return {it->second.plugin.get(), it->second.missing};
  }

  using Visit = std::function<void(const std::string& split, const std::string& field, const std::string& type,
                                   const json& value, const RawValue* raw)>;

  /// Returns per split {samples, fields: {field: {checked, failed}}}.
  json walk(const Visit& visit) {
    json out = json::object();
    const json& fields = dataset_.doc().at("fields");
    for (const auto& [split, spec] : dataset_.doc().at("splits").items()) {
      const std::vector<Sample>* samples = nullptr;
      try {
        samples = &dataset_.samples(split);
      } catch (const std::exception& e) {
        record(e.what());
        out[split] = {{"samples", nullptr}, {"error", e.what()}};
        continue;
      }
      json split_out = {{"samples", samples->size()}, {"fields", json::object()}};
      for (const auto& [field, fspec] : fields.items()) {
        const std::string type = fspec.at("type");
        const auto [plugin, missing] = reader(field);
        if (is_media(type) && plugin == nullptr) {
          if (unreadable_.insert(field).second) {  // said once, not once per split
            record(dataset_.file().string() + ": field \"" + field + "\": " + missing);
          }
          split_out["fields"][field] = {{"checked", 0}, {"failed", samples->size()}};
          continue;
        }
        const TaskType as = type == "label" ? TaskType::kMulticlass
                            : type == "label_set" ? TaskType::kMultilabel
                                                  : TaskType::kRegression;
        const std::vector<std::string> names =
            type == "label" || type == "label_set" ? dataset_.labels(field) : std::vector<std::string>{};
        TaskSpec as_target{field, as, field, names, std::max<int64_t>(1, static_cast<int64_t>(names.size())), {}};
        // Errors are listed in file order, whichever thread found them.
        std::vector<std::string> failures(samples->size());
        parallel_for(samples->size(), options_.threads, [&](size_t i) {
          const Sample& s = (*samples)[i];
          try {
            auto it = s.fields.find(field);
            if (it == s.fields.end()) throw DataError(s.origin, "sample has no field \"" + field + "\"");
            if (type == "label" || type == "number") {
              visit(split, field, type, json(read_target(s, as_target)), nullptr);
            } else if (type == "label_set") {
              visit(split, field, type, json(read_label_set(s, as_target)), nullptr);
            } else if (type == "string") {
              if (!it->is_string()) throw DataError(s.origin, "field \"" + field + "\" must be a string, found " + it->dump());
              visit(split, field, type, *it, nullptr);
            } else {
              RawValue raw = guard(plugin->plugin_name(),
                                   [&] { return plugin->decode(FieldRef{*it, dataset_.base_dir(), s.origin}); });
              if (raw.tensor.defined() && raw.tensor.is_floating_point() && !raw.tensor.isfinite().all().item<bool>()) {
                throw DataError(s.origin, "field \"" + field + "\" decodes to NaN or Inf");
              }
              visit(split, field, type, *it, &raw);
            }
          } catch (const std::exception& e) {
            failures[i] = e.what();
          }
        });
        int64_t failed = 0;
        for (const auto& f : failures) {
          if (f.empty()) continue;
          ++failed;
          record(f);
        }
        split_out["fields"][field] = {{"checked", samples->size()}, {"failed", failed}};
        if (plugin != nullptr) split_out["fields"][field]["plugin"] = plugin->plugin_name();
      }
      out[split] = std::move(split_out);
    }
    return out;
  }

  int64_t error_count() const { return error_count_; }
  const std::vector<std::string>& errors() const { return errors_; }

 private:
  void record(const std::string& message) {
    std::lock_guard<std::mutex> lock(mutex_);
    ++error_count_;
    if (static_cast<int>(errors_.size()) < options_.max_errors) errors_.push_back(message);
  }

  struct Reader {
    std::shared_ptr<ModalityPlugin> plugin;
    std::string missing;
  };
  Dataset dataset_;
  DataCheckOptions options_;
  HostContext context_;
  std::map<std::string, Reader> readers_;
  std::set<std::string> unreadable_;  // media fields no plugin reads
  std::mutex mutex_;
  int64_t error_count_ = 0;
  std::vector<std::string> errors_;
};

}  // namespace

nlohmann::json validate_dataset(const std::filesystem::path& file, PluginRegistry& registry,
                                const DataCheckOptions& options) {
  Walker walker(file, registry, options);
  json splits = walker.walk([](auto&&...) {});
  // Errors come in file order (split by split, field by field, sample by sample).
  const std::vector<std::string>& errors = walker.errors();
  return {{"dataset", file.string()},
          {"name", walker.dataset().doc().at("name")},
          {"valid", walker.error_count() == 0},
          {"error_count", walker.error_count()},
          {"errors", errors},
          {"splits", splits}};
}

nlohmann::json inspect_dataset(const std::filesystem::path& file, PluginRegistry& registry,
                               const DataCheckOptions& options) {
  Walker walker(file, registry, options);
  std::mutex mutex;
  // split → field → statistics
  std::map<std::string, std::map<std::string, Stats>> numbers;
  std::map<std::string, std::map<std::string, std::map<std::string, int64_t>>> labels, shapes;
  const json& fields = walker.dataset().doc().at("fields");
  json splits = walker.walk([&](const std::string& split, const std::string& field, const std::string& type,
                                const json& value, const RawValue* raw) {
    if (type == "label") {
      const std::string name = fields.at(field).at("labels").at(static_cast<size_t>(value.get<double>()));
      std::lock_guard<std::mutex> lock(mutex);
      ++labels[split][field][name];
    } else if (type == "label_set") {  // how many samples carry each label
      std::lock_guard<std::mutex> lock(mutex);
      for (size_t k = 0; k < value.size(); ++k) {
        if (value[k].get<double>() != 0) ++labels[split][field][fields.at(field).at("labels").at(k).get<std::string>()];
      }
    } else if (type == "number") {
      std::lock_guard<std::mutex> lock(mutex);
      numbers[split][field].add(value.get<double>());
    } else if (raw != nullptr && raw->tensor.defined()) {
      Stats local;
      const at::Tensor flat = raw->tensor.to(at::kDouble).flatten().contiguous();
      const double* p = flat.data_ptr<double>();
      for (int64_t i = 0; i < flat.numel(); ++i) local.add(p[i]);
      std::lock_guard<std::mutex> lock(mutex);
      numbers[split][field].merge(local);
      ++shapes[split][field][shape_of(raw->tensor)];
    } else if (raw != nullptr) {
      std::lock_guard<std::mutex> lock(mutex);
      numbers[split][field].add(static_cast<double>(raw->text.size()));
    }
  });
  for (auto& [split, out] : splits.items()) {
    if (!out.contains("fields")) continue;
    for (auto& [field, f] : out["fields"].items()) {
      const std::string type = fields.at(field).at("type");
      f["type"] = type;
      if (type == "label" || type == "label_set") {
        json counts = json::object();
        for (const auto& name : fields.at(field).at("labels")) {
          counts[name.get<std::string>()] = labels[split][field][name.get<std::string>()];
        }
        f["labels"] = counts;
      } else if (type == "number" || is_media(type)) {
        f[type == "number" ? "values" : "decoded_values"] = numbers[split][field].to_json();
        if (!shapes[split][field].empty()) f["shapes"] = shapes[split][field];
      }
    }
  }
  return {{"dataset", file.string()},
          {"name", walker.dataset().doc().at("name")},
          {"provenance", walker.dataset().doc().at("provenance")},
          {"error_count", walker.error_count()},
          {"errors", walker.errors()},
          {"splits", splits}};
}

std::string format_validation(const json& r) {
  std::ostringstream out;
  out << r.at("dataset").get<std::string>() << ": " << (r.at("valid").get<bool>() ? "valid" : "INVALID") << " (data set \""
      << r.at("name").get<std::string>() << "\")\n";
  for (const auto& [split, s] : r.at("splits").items()) {
    if (s.contains("error")) {
      out << "  " << split << ": cannot be read\n";
      continue;
    }
    out << "  " << split << ": " << s.at("samples").get<int64_t>() << " samples";
    for (const auto& [field, f] : s.at("fields").items()) {
      out << "; " << field << " " << (f.at("checked").get<int64_t>() - f.at("failed").get<int64_t>()) << "/"
          << s.at("samples").get<int64_t>() << " ok";
      if (f.contains("plugin")) out << " (decoded by " << f.at("plugin").get<std::string>() << ")";
    }
    out << "\n";
  }
  const int64_t n = r.at("error_count");
  if (n > 0) {
    out << n << " error" << (n == 1 ? "" : "s");
    if (static_cast<int64_t>(r.at("errors").size()) < n) out << " (the first " << r.at("errors").size() << " listed)";
    out << ":\n";
    for (const auto& e : r.at("errors")) out << "  " << e.get<std::string>() << "\n";
  }
  return out.str();
}

std::string format_inspection(const json& r) {
  std::ostringstream out;
  out << r.at("dataset").get<std::string>() << " (data set \"" << r.at("name").get<std::string>() << "\")\n";
  char buf[256];
  for (const auto& [split, s] : r.at("splits").items()) {
    if (s.contains("error")) {
      out << split << ": cannot be read: " << s.at("error").get<std::string>() << "\n";
      continue;
    }
    out << split << ": " << s.at("samples").get<int64_t>() << " samples\n";
    for (const auto& [field, f] : s.at("fields").items()) {
      out << "  " << field << " (" << f.at("type").get<std::string>() << ")";
      if (f.contains("labels")) {
        out << ":";
        for (const auto& [name, count] : f.at("labels").items()) out << " " << name << "=" << count.get<int64_t>();
      }
      for (const char* key : {"values", "decoded_values"}) {
        if (!f.contains(key) || f.at(key).at("count").get<int64_t>() == 0) continue;
        const json& v = f.at(key);
        std::snprintf(buf, sizeof(buf), ": %s mean %.4g, std %.4g, min %.4g, max %.4g", key, v.at("mean").get<double>(),
                      v.at("std").get<double>(), v.at("min").get<double>(), v.at("max").get<double>());
        out << buf;
      }
      if (f.contains("shapes")) {
        out << "; shapes";
        for (const auto& [shape, count] : f.at("shapes").items()) out << " " << shape << " (" << count.get<int64_t>() << ")";
      }
      out << "\n";
    }
  }
  if (r.at("error_count").get<int64_t>() > 0) {
    out << r.at("error_count").get<int64_t>() << " samples could not be read; run `modalkit data validate` for details\n";
  }
  return out.str();
}

}  // namespace modalkit::host
