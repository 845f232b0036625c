// What `modalkit --version` reports about the machine and the libraries in use.
#pragma once

#include <string>

namespace modalkit::host {

/// The BLAS library LibTorch will call, found among the loaded objects, e.g.
/// "OpenBLAS (/usr/lib/x86_64-linux-gnu/openblas-pthread/libblas.so.3)".
std::string active_blas();
/// True when the active BLAS is the slow reference implementation (Debian's default).
bool blas_is_reference(const std::string& blas);
/// The lines of `modalkit --version`.
std::string version_text();
/// The git commit of the checkout holding `dir`: "abc1234567" or "abc1234567-dirty"; "unknown"
/// outside a git checkout. What run.json and experiment tables record as a run's source.
std::string source_commit(const std::string& dir);

}  // namespace modalkit::host
