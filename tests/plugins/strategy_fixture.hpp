// What tests of transfer strategies and streams need beside the plugin: a context with a silent
// logger, a run directory, artifacts and components, and batches held in memory.
#pragma once

#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include <ATen/ATen.h>
#include <spdlog/sinks/null_sink.h>
#include <torch/nn/modules/linear.h>
#include <spdlog/spdlog.h>

#include "modality_fixture.hpp"
#include "modalkit/strategy.hpp"

/// What the host gives plugin `plugin` when it creates it: `config` with the manifest's defaults
/// filled in (as validate does), its JSON pointer, `context` and the instance name.
inline modalkit::CreateArgs plugin_args(modalkit::host::PluginRegistry& registry, const std::string& plugin,
                                        nlohmann::json config, const std::string& pointer, modalkit::Context* context) {
  if (config.is_null()) config = nlohmann::json::object();
  registry.find(plugin)->config_validator->fill_defaults(config);
  modalkit::CreateArgs a;
  a.config = modalkit::Config(config, pointer);
  a.context = context;
  a.instance = plugin;
  return a;
}

/// A context with a silent logger, a run directory, artifacts and named components.
class LoggingContext : public TestContext {
 public:
  std::shared_ptr<spdlog::logger> log = std::make_shared<spdlog::logger>("test", std::make_shared<spdlog::sinks::null_sink_mt>());
  std::filesystem::path run;
  std::map<std::string, std::shared_ptr<modalkit::Component>> components;
  spdlog::logger& logger() const override { return *log; }
  std::filesystem::path run_dir() const override { return run; }
  std::shared_ptr<modalkit::Component> find_component(const std::string& name) const override {
    const auto it = components.find(name);
    return it == components.end() ? nullptr : it->second;
  }
};

/// Batches held in memory, per split.
class MemorySource : public modalkit::BatchSource {
 public:
  std::map<std::string, std::vector<modalkit::Batch>> splits;
  void for_each(const std::string& split, const std::vector<std::string>& modalities,
                const std::function<void(const modalkit::Batch&)>& fn) override {
    for (const auto& b : splits.at(split)) {
      modalkit::Batch only = b;
      if (!modalities.empty()) {
        only.inputs.clear();
        for (const auto& m : modalities) only.inputs.emplace(m, b.inputs.at(m));
      }
      fn(only);
    }
  }
  bool has_split(const std::string& split) const override { return splits.count(split) != 0; }
};

/// An encoder for vector features `[B, F]`: one token, a linear map to d_model (16 by default).
class LinearEncoder : public modalkit::Encoder {
 public:
  explicit LinearEncoder(int64_t in, int64_t out = 16) : linear_(register_module("linear", torch::nn::Linear(in, out))) {}
  modalkit::Sequence forward(const modalkit::ModalityInput& input) override {
    const at::Tensor x = at::tanh(linear_->forward(input.data)).unsqueeze(1);
    return {x, at::ones({x.size(0), 1}, at::kBool)};
  }

 private:
  torch::nn::Linear linear_;
};

/// A batch of vector modalities `inputs` (name → [B, F]) and class targets for task "label";
/// rows are numbered from `first_row`.
inline modalkit::Batch make_batch(const std::map<std::string, at::Tensor>& inputs, const at::Tensor& y, int64_t first_row) {
  modalkit::Batch b;
  for (const auto& [m, x] : inputs) b.inputs.emplace(m, modalkit::ModalityInput{x, {}, {}});
  b.targets.emplace("label", y);
  b.targets.emplace("caption", y);  // a generation task over the same classes reads the same targets
  b.index = at::arange(first_row, first_row + y.size(0), at::kLong);
  return b;
}

