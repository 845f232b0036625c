// The handshake policy (docs/architecture.md): which plugin builds this host loads.
#pragma once

#include <cstddef>
#include <optional>
#include <string>

#include "modalkit/abi.h"

namespace modalkit::host {

/// "gcc 12.2, cxx11-abi 1, LibTorch 1.13.0, SDK 0.1.0 (ABI 1.0)" — for messages and --version.
std::string describe_build(const modalkit_build_tag& tag, uint32_t abi_major, uint32_t abi_minor);

/// Checks a plugin's descriptor against the host's own build. Returns nullopt when the plugin
/// may be used, otherwise why not, naming what the plugin has and what the host expected.
/// Nothing but the descriptor's plain C fields is read.
std::optional<std::string> check_handshake(const modalkit_plugin_descriptor& plugin,
                                           const modalkit_build_tag& host, uint32_t host_abi_major,
                                           uint32_t host_abi_minor);

}  // namespace modalkit::host
