/// \file
/// The build tag of the translation unit that includes this header. The host and every plugin
/// compute it the same way, so comparing two tags compares two builds.
#pragma once

#include <cstddef>  // defines _GLIBCXX_USE_CXX11_ABI with libstdc++

#include <torch/version.h>

#include "modalkit/abi.h"

// Test hooks: the test suite builds deliberately mismatched plugins with these. Never set them
// in a real build; the handshake exists to refuse exactly such a library.
#ifndef MODALKIT_OVERRIDE_ABI_MAJOR
#define MODALKIT_OVERRIDE_ABI_MAJOR MODALKIT_SDK_ABI_MAJOR
#endif
#ifndef MODALKIT_OVERRIDE_ABI_MINOR
#define MODALKIT_OVERRIDE_ABI_MINOR MODALKIT_SDK_ABI_MINOR
#endif
#ifndef MODALKIT_OVERRIDE_TORCH_MINOR
#define MODALKIT_OVERRIDE_TORCH_MINOR TORCH_VERSION_MINOR
#endif

#if defined(__clang__)
#define MODALKIT_COMPILER_FAMILY "clang"
#define MODALKIT_COMPILER_MAJOR __clang_major__
#define MODALKIT_COMPILER_MINOR __clang_minor__
#elif defined(__GNUC__)
#define MODALKIT_COMPILER_FAMILY "gcc"
#define MODALKIT_COMPILER_MAJOR __GNUC__
#define MODALKIT_COMPILER_MINOR __GNUC_MINOR__
#else
#error "modalkit supports GCC and Clang"
#endif

#ifdef _GLIBCXX_USE_CXX11_ABI
#define MODALKIT_CXX11_ABI _GLIBCXX_USE_CXX11_ABI
#else
#define MODALKIT_CXX11_ABI (-1)  // not libstdc++: recorded, and compared like any other value
#endif

namespace modalkit {

/// The build tag of the code being compiled right now (inline so each library gets its own).
inline constexpr modalkit_build_tag current_build_tag() {
  return modalkit_build_tag{MODALKIT_COMPILER_FAMILY,
                            MODALKIT_COMPILER_MAJOR,
                            MODALKIT_COMPILER_MINOR,
                            MODALKIT_CXX11_ABI,
                            TORCH_VERSION_MAJOR,
                            MODALKIT_OVERRIDE_TORCH_MINOR,
                            TORCH_VERSION_PATCH,
                            MODALKIT_SDK_VERSION};
}

}  // namespace modalkit
