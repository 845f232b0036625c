/// \file
/// The base of everything a plugin makes, and what its factory receives.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "modalkit/config.hpp"
#include "modalkit/context.hpp"

namespace modalkit {

/// What a factory receives to construct a component. Every component class has a constructor
/// `explicit T(const CreateArgs&)`.
struct CreateArgs {
  /// The component's validated config, defaults filled in.
  Config config;
  /// The host's services; outlives the component.
  Context* context = nullptr;
  /// The instance's name in the pipeline: the modality name ("image"), "fusion" or "transfer".
  std::string instance;
  /// The pipeline's width D of standardized sequences.
  int64_t d_model = 64;
  /// The pipeline's modality names, in pipeline order.
  std::vector<std::string> modalities;
  /// Fusion only: each input modality's name → its sequence width (D).
  std::map<std::string, int64_t> input_widths;
};

/// Base of every plugin-made object. Its destructor is defined in libmodalkit_sdk.so, which
/// anchors RTTI there so `dynamic_pointer_cast` works across libraries.
class Component {
 public:
  virtual ~Component();

  /// The plugin that made this object (set by the host after construction).
  const std::string& plugin_name() const noexcept { return plugin_name_; }

  /// Host only: records the plugin's name and a handle that keeps its library loaded for as
  /// long as this object lives.
  void attach_library(std::string plugin_name, std::shared_ptr<const void> library);

 private:
  std::string plugin_name_;
  std::shared_ptr<const void> library_;
};

}  // namespace modalkit
