// What tests of transfer strategies and streams need beside the plugin: a context with a silent
// logger, a run directory, artifacts and components, and batches held in memory.
#pragma once

#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include <spdlog/sinks/null_sink.h>
#include <spdlog/spdlog.h>

#include "modality_fixture.hpp"
#include "modalkit/strategy.hpp"

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
};
