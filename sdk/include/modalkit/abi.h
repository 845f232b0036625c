/// \file
/// The C boundary between the host and a plugin library. Plain C on purpose: the host reads
/// this descriptor *before* it touches any C++ type from the plugin, so a plugin built against
/// another SDK, compiler or LibTorch is refused with a message instead of crashing.
#ifndef MODALKIT_ABI_H
#define MODALKIT_ABI_H

#include <stddef.h>
#include <stdint.h>

/// SDK ABI major: bumped on any change that breaks a built plugin (a virtual added, removed or
/// reordered in an interface, a changed public struct layout). The host refuses any other major.
#define MODALKIT_SDK_ABI_MAJOR 1
/// SDK ABI minor: bumped on additions a built plugin cannot notice (new free functions, new
/// classes, new factory kinds). The host loads plugins whose minor is <= its own.
#define MODALKIT_SDK_ABI_MINOR 3
/// The SDK release, as in `modalkit --version` and `modalkit-sdk.pc`.
#define MODALKIT_SDK_VERSION "0.1.0"
/// The name of the one exported entry (a Boost.DLL alias) every plugin library carries.
#define MODALKIT_ENTRY_SYMBOL "modalkit_plugin_entry"

#ifdef __cplusplus
extern "C" {
#endif

/// Component kinds a factory can make. Values are part of the ABI.
enum modalkit_kind {
  MODALKIT_KIND_MODALITY = 1,        ///< modalkit::ModalityPlugin
  MODALKIT_KIND_FUSION = 2,          ///< modalkit::FusionOperator
  MODALKIT_KIND_TRANSFER = 3,        ///< modalkit::TransferStrategy
  MODALKIT_KIND_EVALUATION = 4,      ///< modalkit::EvaluationProtocol
  MODALKIT_KIND_LANGUAGE_MODEL = 5,  ///< reserved for the language-model interface
  MODALKIT_KIND_STREAM = 6,          ///< modalkit::BatchStream (since ABI 1.2)
};

/// What a library was compiled with; every field is compared by the handshake policy
/// (docs/architecture.md).
typedef struct modalkit_build_tag {
  const char* compiler_family;  ///< "gcc" or "clang"
  int32_t compiler_major;       ///< e.g. 12 for GCC 12.2
  int32_t compiler_minor;       ///< e.g. 2 for GCC 12.2 (informative only)
  int32_t cxx11_abi;            ///< value of _GLIBCXX_USE_CXX11_ABI
  int32_t torch_major;          ///< TORCH_VERSION_MAJOR of the headers compiled against
  int32_t torch_minor;          ///< TORCH_VERSION_MINOR
  int32_t torch_patch;          ///< TORCH_VERSION_PATCH (informative only)
  const char* sdk_version;      ///< MODALKIT_SDK_VERSION compiled against
} modalkit_build_tag;

/// Makes one component. `args` is a `const modalkit::CreateArgs*` and `out` a
/// `std::shared_ptr<modalkit::Component>*`; both are C++ types, which is why the host only
/// calls this after the handshake passed. Returns 0 on success; otherwise writes a
/// NUL-terminated message into `error` (at most `error_size` bytes) and returns non-zero.
/// Never throws.
typedef int32_t (*modalkit_create_fn)(const void* args, void* out, char* error, size_t error_size);

/// One entry of a plugin's factory table.
typedef struct modalkit_factory {
  const char* name;           ///< component name; the plugin's own name for its main component
  int32_t kind;               ///< a modalkit_kind value
  modalkit_create_fn create;  ///< the factory
} modalkit_factory;

/// The descriptor a plugin's entry returns. Fields are only ever appended; `struct_size`
/// tells the host how many it may read.
typedef struct modalkit_plugin_descriptor {
  uint32_t struct_size;              ///< sizeof(modalkit_plugin_descriptor) in the plugin
  uint32_t abi_major;                ///< MODALKIT_SDK_ABI_MAJOR compiled against
  uint32_t abi_minor;                ///< MODALKIT_SDK_ABI_MINOR compiled against
  modalkit_build_tag build;          ///< compiler, standard library ABI, LibTorch, SDK version
  const char* name;                  ///< plugin name; must equal the manifest's "name"
  const char* version;               ///< plugin version; must equal the manifest's "version"
  const char* manifest_json;         ///< the manifest compiled in from the same file
  uint32_t factory_count;            ///< number of entries in `factories`
  const modalkit_factory* factories; ///< the factory table
} modalkit_plugin_descriptor;

/// Signature of the entry point. Never throws; returns a pointer to static storage.
typedef const modalkit_plugin_descriptor* (*modalkit_entry_fn)(void);

#ifdef __cplusplus
}
#endif

#endif  // MODALKIT_ABI_H
