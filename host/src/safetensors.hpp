// Writing tensors in the safetensors format (https://github.com/huggingface/safetensors), so a
// run's weights can be read by other tools without LibTorch's archive format.
#pragma once

#include <filesystem>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include <ATen/core/Tensor.h>

namespace modalkit::host {

/// Writes `tensors` (name → tensor; names unique) with string `metadata` to `path`, atomically.
/// Layout per the format: an 8-byte little-endian header length, a JSON header mapping each
/// name to dtype, shape and [begin, end) byte offsets (padded with spaces to a multiple of 8),
/// then the tensors' bytes, contiguous, row-major, little-endian, in name order with no holes.
/// Throws modalkit::Error on a dtype the format lacks or a duplicate name.
void write_safetensors(const std::filesystem::path& path, const std::vector<std::pair<std::string, at::Tensor>>& tensors,
                       const std::map<std::string, std::string>& metadata);

}  // namespace modalkit::host
