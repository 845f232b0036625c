// `modalkit report DIR`: one self-contained report.html (inline SVG and CSS, no scripts, nothing
// fetched) from what a run directory holds.
#pragma once

#include <filesystem>

namespace modalkit::host {

/// Writes RUN/report.html: the result, loss and validation curves per epoch, confusion matrices,
/// robustness curves and figures (when `eval --robustness` wrote robustness.json), the plugins
/// and the resolved pipeline. Returns its path; throws modalkit::Error when `run_dir` is not a run.
std::filesystem::path write_report(const std::filesystem::path& run_dir);

}  // namespace modalkit::host
