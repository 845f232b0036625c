#include "system_info.hpp"

#include <link.h>

#include <climits>
#include <cstdio>
#include <cstdlib>
#include <vector>

#include <ATen/Parallel.h>
#include <torch/version.h>

#include "handshake.hpp"
#include "modalkit/build_tag.hpp"

namespace modalkit::host {

namespace {
int collect(struct dl_phdr_info* info, size_t /*size*/, void* data) {
  auto* names = static_cast<std::vector<std::string>*>(data);
  if (info->dlpi_name != nullptr && info->dlpi_name[0] != '\0') names->emplace_back(info->dlpi_name);
  return 0;
}
}  // namespace

std::string active_blas() {
  std::vector<std::string> loaded;
  dl_iterate_phdr(collect, &loaded);
  for (const auto& name : loaded) {
    const std::string base = name.substr(name.find_last_of('/') + 1);
    if (base.rfind("libblas", 0) == 0 || base.rfind("libopenblas", 0) == 0 || base.rfind("libmkl", 0) == 0 ||
        base.rfind("libblis", 0) == 0) {
      char resolved[PATH_MAX];
      const std::string real = realpath(name.c_str(), resolved) != nullptr ? resolved : name;
      std::string kind = "unknown BLAS";
      if (real.find("openblas") != std::string::npos) {
        kind = "OpenBLAS";
      } else if (real.find("mkl") != std::string::npos) {
        kind = "MKL";
      } else if (real.find("blis") != std::string::npos) {
        kind = "BLIS";
      } else if (real.find("atlas") != std::string::npos) {
        kind = "ATLAS";
      } else if (real.find("/blas/") != std::string::npos) {
        kind = "reference BLAS";
      }
      return kind + " (" + real + ")";
    }
  }
  return "none found among loaded libraries";
}

bool blas_is_reference(const std::string& blas) { return blas.rfind("reference BLAS", 0) == 0; }

std::string version_text() {
  const std::string blas = active_blas();
  std::string out = "modalkit " MODALKIT_SDK_VERSION "\n";
  out += "build: " + describe_build(current_build_tag(), MODALKIT_SDK_ABI_MAJOR, MODALKIT_SDK_ABI_MINOR) + "\n";
  out += "LibTorch: " TORCH_VERSION "\n";
  out += "threads: " + std::to_string(at::get_num_threads()) + " intra-op, " +
         std::to_string(at::get_num_interop_threads()) + " inter-op\n";
  out += "BLAS: " + blas + "\n";
  if (blas_is_reference(blas)) {
    out += "warning: the reference BLAS is ~35x slower than OpenBLAS for matmuls here; "
           "install libopenblas0-pthread\n";
  }
  return out;
}

std::string source_commit(const std::string& dir) {
  const std::string cmd = "git -C '" + dir + "' describe --always --dirty --abbrev=10 2>/dev/null";
  FILE* pipe = ::popen(cmd.c_str(), "r");
  if (pipe == nullptr) return "unknown";
  char buf[128] = {0};
  std::string out = std::fgets(buf, sizeof buf, pipe) != nullptr ? buf : "";
  ::pclose(pipe);
  while (!out.empty() && (out.back() == '\n' || out.back() == ' ')) out.pop_back();
  return out.empty() ? "unknown" : out;
}

}  // namespace modalkit::host
