// A test fixture for a modality plugin loaded through the host like any plugin: a scratch
// directory, the plugin created with the manifest's defaults filled in (as the host does), and
// decode helpers that return the value or the error message.
#pragma once

#include <unistd.h>

#include <filesystem>
#include <map>
#include <memory>
#include <string>

#include <gtest/gtest.h>

#include "modalkit/context.hpp"
#include "modalkit/errors.hpp"
#include "modalkit/modality.hpp"
#include "registry.hpp"

/// A Context for plugins created outside a run: artifacts by name, no logger, components or run.
class TestContext : public modalkit::Context {
 public:
  std::map<std::string, std::filesystem::path> artifacts;
  spdlog::logger& logger() const override { throw modalkit::Error("TestContext has no logger"); }
  uint64_t seed() const override { return 1; }
  c10::Device device() const override { return c10::Device(c10::kCPU); }
  std::filesystem::path run_dir() const override { return {}; }
  std::filesystem::path artifact_path(const std::string& name) const override {
    auto it = artifacts.find(name);
    if (it == artifacts.end()) throw modalkit::Error("no artifact \"" + name + "\"");
    return it->second;
  }
  std::shared_ptr<modalkit::Component> find_component(const std::string&) const override { return nullptr; }
};

class ModalityFixture : public ::testing::Test {
 protected:
  /// `plugin` names the modality plugin under test; its scratch directory is tmp-PLUGIN-PID.
  explicit ModalityFixture(std::string plugin) : plugin_(std::move(plugin)) {}

  std::filesystem::path dir;
  std::unique_ptr<modalkit::host::PluginRegistry> registry;

  void SetUp() override {
    dir = std::filesystem::current_path() / ("tmp-" + plugin_ + "-" + std::to_string(::getpid()));
    std::filesystem::remove_all(dir);
    std::filesystem::create_directories(dir);
    registry = std::make_unique<modalkit::host::PluginRegistry>(
        std::vector<std::filesystem::path>{std::getenv("MODALKIT_PLUGIN_BUILD_DIR")});
  }
  void TearDown() override { std::filesystem::remove_all(dir); }

  /// A fresh plugin instance with `config` (defaults filled in), d_model 16 and `context`.
  std::shared_ptr<modalkit::ModalityPlugin> make(const nlohmann::json& config, modalkit::Context* context = nullptr) {
    nlohmann::json filled = config.is_null() ? nlohmann::json::object() : config;  // make({}) gives null
    registry->find(plugin_)->config_validator->fill_defaults(filled);
    modalkit::CreateArgs args;
    args.config = modalkit::Config(filled, "/modalities/" + plugin_ + "/config");
    args.instance = plugin_;
    args.d_model = 16;
    args.context = context;
    return registry->create<modalkit::ModalityPlugin>(plugin_, MODALKIT_KIND_MODALITY, args);
  }

  /// The message of the PluginError make(config) throws; fails the test if it throws none.
  std::string make_error(const nlohmann::json& config) {
    try {
      make(config);
    } catch (const modalkit::PluginError& e) {
      return e.what();
    }
    ADD_FAILURE() << "no PluginError for config " << config.dump();
    return "";
  }

  /// `plugin` decodes `value` as sample line 1 of a samples file in `dir`.
  static modalkit::RawValue decode_with(const modalkit::ModalityPlugin& plugin, const nlohmann::json& value,
                                        const std::filesystem::path& base) {
    const std::string origin = "samples.jsonl:1";
    return plugin.decode(modalkit::FieldRef{value, base, origin});
  }

  /// The message decoding `value` throws, or "" when it decodes.
  static std::string decode_error_with(const modalkit::ModalityPlugin& plugin, const nlohmann::json& value,
                                       const std::filesystem::path& base) {
    try {
      decode_with(plugin, value, base);
    } catch (const std::exception& e) {
      return e.what();
    }
    return "";
  }

 private:
  std::string plugin_;
};
