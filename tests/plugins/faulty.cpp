// A fusion plugin that fails on purpose, as its config says: in its constructor
// ("construct") or in forward ("forward"). The host must contain both and name the plugin. Its
// manifest also declares an artifact it never writes, which the host must report after training.
#include "faulty_manifest.hpp"
#include "modalkit/fusion.hpp"
#include "modalkit/plugin.hpp"

namespace {
class FaultyFusion : public modalkit::FusionOperator {
 public:
  explicit FaultyFusion(const modalkit::CreateArgs& args) : width_(args.d_model) {
    fail_ = args.config.get<std::string>("fail");
    if (fail_ == "construct") throw std::runtime_error("constructor failed on purpose");
  }
  modalkit::Sequence forward(const std::map<std::string, modalkit::Sequence>& inputs) override {
    if (fail_ == "forward") throw std::runtime_error("forward failed on purpose");
    return inputs.begin()->second;
  }
  modalkit::FusionOutput output_kind() const override { return modalkit::FusionOutput::kSequence; }
  int64_t output_width() const override { return width_; }

 private:
  std::string fail_;
  int64_t width_;
};
}  // namespace

MODALKIT_PLUGIN("faulty", "0.1.0", kManifest, MODALKIT_FUSION("faulty", FaultyFusion))
