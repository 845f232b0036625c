// An evaluation protocol that stands for a user pressing Ctrl-C while a protocol runs: with
// MODALKIT_TEST_RAISE_SIGINT set it raises SIGINT in the middle of evaluate() and still returns
// its figures. The host must finish this protocol, run no further one, and exit 130 with a run
// that --resume evaluates again.
#include <csignal>
#include <cstdlib>

#include "interrupter_manifest.hpp"
#include "modalkit/evaluation.hpp"
#include "modalkit/plugin.hpp"

namespace {
class Interrupter : public modalkit::EvaluationProtocol {
 public:
  explicit Interrupter(const modalkit::CreateArgs& /*args*/) {}
  nlohmann::json evaluate(modalkit::TransferStrategy& /*model*/, modalkit::BatchSource& /*data*/,
                          const std::string& split, const std::vector<std::string>& /*modalities*/) override {
    const bool interrupt = std::getenv("MODALKIT_TEST_RAISE_SIGINT") != nullptr;
    if (interrupt) std::raise(SIGINT);
    return {{"split", split}, {"interrupted", interrupt}};
  }
};
}  // namespace

MODALKIT_PLUGIN("interrupter", "0.1.0", kManifest, MODALKIT_EVALUATION("interrupter", Interrupter))
