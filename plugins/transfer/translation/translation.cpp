// Bimodal translation (co-learning via generation): see translation.hpp, shared with
// cyclic_translation.
#include "modalkit/plugin.hpp"
#include "translation.hpp"
#include "translation_manifest.hpp"

namespace {

class BimodalTranslation : public modalkit::colearning::Translation {
 public:
  explicit BimodalTranslation(const modalkit::CreateArgs& args) : Translation(args, /*cyclic=*/false) {}
};

}  // namespace

MODALKIT_PLUGIN("translation", "0.1.0", kManifest, MODALKIT_TRANSFER("translation", BimodalTranslation))
