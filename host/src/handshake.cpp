#include "handshake.hpp"

#include <cstring>

namespace modalkit::host {

namespace {
std::string str_or(const char* s) { return s == nullptr ? std::string("(null)") : std::string(s); }
}  // namespace

std::string describe_build(const modalkit_build_tag& t, uint32_t abi_major, uint32_t abi_minor) {
  return str_or(t.compiler_family) + " " + std::to_string(t.compiler_major) + "." +
         std::to_string(t.compiler_minor) + ", cxx11-abi " + std::to_string(t.cxx11_abi) +
         ", LibTorch " + std::to_string(t.torch_major) + "." + std::to_string(t.torch_minor) + "." +
         std::to_string(t.torch_patch) + ", SDK " + str_or(t.sdk_version) + " (ABI " +
         std::to_string(abi_major) + "." + std::to_string(abi_minor) + ")";
}

std::optional<std::string> check_handshake(const modalkit_plugin_descriptor& p,
                                           const modalkit_build_tag& host, uint32_t host_major,
                                           uint32_t host_minor) {
  // {struct_size, abi_major, abi_minor} is the prefix every ABI major keeps; nothing past it
  // (the build tag's strings included) is read until the major is known to match.
  if (p.abi_major != host_major) {
    return "SDK ABI major " + std::to_string(p.abi_major) + " does not match the host's " +
           std::to_string(host_major) + " (rebuild the plugin against SDK " MODALKIT_SDK_VERSION ")";
  }
  // Within a major the descriptor only grows at its end: a smaller struct comes from an SDK
  // too old to know the fields this host reads.
  if (p.struct_size < sizeof(modalkit_plugin_descriptor)) {
    return "descriptor is " + std::to_string(p.struct_size) + " bytes, the host needs at least " +
           std::to_string(sizeof(modalkit_plugin_descriptor)) + " (built against an older SDK)";
  }
  const std::string both = "; plugin built with " + describe_build(p.build, p.abi_major, p.abi_minor) +
                           ", host built with " + describe_build(host, host_major, host_minor);
  if (p.abi_minor > host_minor) {
    return "SDK ABI minor " + std::to_string(p.abi_minor) + " is newer than the host's " +
           std::to_string(host_minor) + " (update modalkit)" + both;
  }
  if (p.build.torch_major != host.torch_major || p.build.torch_minor != host.torch_minor) {
    return "LibTorch " + std::to_string(p.build.torch_major) + "." + std::to_string(p.build.torch_minor) +
           " does not match the host's LibTorch " + std::to_string(host.torch_major) + "." +
           std::to_string(host.torch_minor) + both;
  }
  if (p.build.cxx11_abi != host.cxx11_abi) {
    return "_GLIBCXX_USE_CXX11_ABI=" + std::to_string(p.build.cxx11_abi) + " does not match the host's " +
           std::to_string(host.cxx11_abi) + both;
  }
  if (p.build.compiler_family == nullptr || host.compiler_family == nullptr ||
      std::strcmp(p.build.compiler_family, host.compiler_family) != 0 ||
      p.build.compiler_major != host.compiler_major) {
    return "compiler " + str_or(p.build.compiler_family) + " " + std::to_string(p.build.compiler_major) +
           " does not match the host's " + str_or(host.compiler_family) + " " +
           std::to_string(host.compiler_major) + both;
  }
  return std::nullopt;
}

}  // namespace modalkit::host
