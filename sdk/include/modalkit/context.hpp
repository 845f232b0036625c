/// \file
/// What the host gives a plugin: logger, seed, device, paths, and lookup of other components.
#pragma once

#include <cstdint>
#include <filesystem>
#include <memory>
#include <string>

#include <c10/core/Device.h>

namespace spdlog {
class logger;
}

namespace modalkit {

class Component;

/// The host's services, valid for the lifetime of the run. Implemented by the host; plugins
/// only call it. Adding a virtual here is an ABI-major change (see docs/architecture.md).
class Context {
 public:
  virtual ~Context();
  /// The run's logger; plugins log through it so output respects the CLI's verbosity.
  virtual spdlog::logger& logger() const = 0;
  /// The pipeline's seed; derive per-purpose seeds from it, never from the clock.
  virtual uint64_t seed() const = 0;
  /// The device the model runs on (CPU here; a CUDA build of LibTorch needs no other SDK).
  virtual c10::Device device() const = 0;
  /// The run directory (checkpoints, metrics, artifacts); empty when there is no run yet.
  virtual std::filesystem::path run_dir() const = 0;
  /// The path of the artifact `name` declared in the manifest or pipeline; throws when unknown.
  virtual std::filesystem::path artifact_path(const std::string& name) const = 0;
  /// Another component of this pipeline by instance name (a modality's name, "fusion",
  /// "transfer"); nullptr when there is none.
  virtual std::shared_ptr<Component> find_component(const std::string& name) const = 0;
};

}  // namespace modalkit
