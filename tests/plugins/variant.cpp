// Deliberately mismatched plugin libraries for the loader tests. One source, built several
// times with different defines (tests/plugins/meson.build), each refused by the host before
// any C++ type of it is used, so the component itself is a bare Component.
#include "modalkit/plugin.hpp"
#include VARIANT_MANIFEST_HEADER

namespace {
class Inert : public modalkit::Component {
 public:
  explicit Inert(const modalkit::CreateArgs& /*args*/) {}
};
}  // namespace

#if defined(VARIANT_PLAIN_ENTRY)
// An ordinary exported function that happens to carry the entry's name. Boost.DLL's alias is
// a pointer in the "boostdll" section; dereferencing this function's code as that pointer
// would crash, so the host must refuse it from the section table alone.
extern "C" __attribute__((visibility("default"))) int modalkit_plugin_entry() { return 42; }
#elif !defined(VARIANT_NO_ENTRY)
MODALKIT_PLUGIN(VARIANT_BINARY_NAME, "0.1.0", kManifest, MODALKIT_FUSION(VARIANT_BINARY_NAME, Inert))
#else
// A library without the entry symbol: what a random .so next to a manifest looks like.
extern "C" __attribute__((visibility("default"))) int not_a_modalkit_plugin() { return 42; }
#endif
