// Cyclic translation (MCTN, Pham et al. 2019): see ../translation/translation.hpp, shared with
// the bimodal translation plugin.
#include "../translation/translation.hpp"
#include "cyclic_translation_manifest.hpp"
#include "modalkit/plugin.hpp"

namespace {

class CyclicTranslation : public modalkit::colearning::Translation {
 public:
  explicit CyclicTranslation(const modalkit::CreateArgs& args) : Translation(args, /*cyclic=*/true) {}
};

}  // namespace

MODALKIT_PLUGIN("cyclic_translation", "0.1.0", kManifest, MODALKIT_TRANSFER("cyclic_translation", CyclicTranslation))
