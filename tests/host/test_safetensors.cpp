// The safetensors writer, read back by a reader written here from the format's description
// (https://github.com/huggingface/safetensors#format), independent of the writer's code.
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>
#include <torch/torch.h>

#include "error_of.hpp"
#include "safetensors.hpp"

namespace fs = std::filesystem;

namespace {

struct Read {
  nlohmann::json header;
  std::string data;  // the byte buffer after the header
  uint64_t header_bytes = 0;
};

Read read_safetensors(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  const std::string bytes = ss.str();
  EXPECT_GE(bytes.size(), 8u);
  uint64_t n = 0;
  for (int i = 7; i >= 0; --i) n = (n << 8) | static_cast<unsigned char>(bytes[static_cast<size_t>(i)]);
  Read r;
  r.header = nlohmann::json::parse(bytes.substr(8, n));
  r.data = bytes.substr(8 + n);
  r.header_bytes = n;
  return r;
}

size_t dtype_size(const std::string& d) {
  if (d == "F64" || d == "I64") return 8;
  if (d == "F32" || d == "I32") return 4;
  if (d == "F16" || d == "BF16" || d == "I16") return 2;
  return 1;  // I8, U8, BOOL
}

}  // namespace

TEST(Safetensors, RoundTripsNamesShapesAndBytesPerTheSpec) {
  torch::manual_seed(3);
  const auto w = torch::randn({3, 5});
  const auto b = torch::arange(7, torch::kLong);
  const auto m = torch::tensor({true, false, true});
  const auto t = torch::randn({4, 6}).t();  // not contiguous: stored row-major all the same
  const fs::path file = fs::temp_directory_path() / ("st-" + std::to_string(::getpid()) + ".safetensors");
  modalkit::host::write_safetensors(file, {{"z.weight", w}, {"a.bias", b}, {"mask", m}, {"t", t}},
                                    {{"format", "pt"}, {"note", "test"}});
  const Read r = read_safetensors(file);
  EXPECT_EQ(r.header["__metadata__"]["note"], "test");
  EXPECT_EQ((r.header.size() - 1), 4u);
  // Offsets cover the buffer exactly, without holes or overlaps.
  std::vector<std::pair<uint64_t, uint64_t>> spans;
  for (const auto& [name, info] : r.header.items()) {
    if (name == "__metadata__") continue;
    uint64_t numel = 1;
    for (auto d : info["shape"]) numel *= d.get<uint64_t>();
    const uint64_t begin = info["data_offsets"][0], end = info["data_offsets"][1];
    EXPECT_EQ(end - begin, numel * dtype_size(info["dtype"])) << name;
    spans.emplace_back(begin, end);
  }
  std::sort(spans.begin(), spans.end());
  uint64_t at = 0;
  for (const auto& [begin, end] : spans) {
    EXPECT_EQ(begin, at);
    at = end;
  }
  EXPECT_EQ(at, r.data.size());
  EXPECT_EQ(r.header_bytes % 8, 0u);  // the data start 8-aligned

  auto tensor_of = [&](const std::string& name, torch::Dtype dtype) {
    const auto& info = r.header[name];
    std::vector<int64_t> shape = info["shape"].get<std::vector<int64_t>>();
    const uint64_t begin = info["data_offsets"][0], end = info["data_offsets"][1];
    auto out = torch::empty(shape, dtype);
    std::memcpy(out.data_ptr(), r.data.data() + begin, end - begin);
    return out;
  };
  EXPECT_EQ(r.header["z.weight"]["dtype"], "F32");
  EXPECT_EQ(r.header["a.bias"]["dtype"], "I64");
  EXPECT_EQ(r.header["mask"]["dtype"], "BOOL");
  EXPECT_TRUE(torch::equal(tensor_of("z.weight", torch::kFloat), w));
  EXPECT_TRUE(torch::equal(tensor_of("a.bias", torch::kLong), b));
  EXPECT_TRUE(torch::equal(tensor_of("mask", torch::kBool), m));
  EXPECT_TRUE(torch::equal(tensor_of("t", torch::kFloat), t));
  EXPECT_EQ(r.header["t"]["shape"], nlohmann::json({6, 4}));
  fs::remove(file);
}

TEST(Safetensors, RefusesWhatTheFormatCannotHold) {
  const fs::path file = fs::temp_directory_path() / ("st-bad-" + std::to_string(::getpid()) + ".safetensors");
  const std::string dup = modalkit::testing::error_of([&] {
    modalkit::host::write_safetensors(file, {{"x", torch::zeros({1})}, {"x", torch::zeros({2})}}, {});
  });
  EXPECT_NE(dup.find("tensor name \"x\" appears twice"), std::string::npos) << dup;
  const std::string complex = modalkit::testing::error_of([&] {
    modalkit::host::write_safetensors(file, {{"c", torch::zeros({2}, torch::kComplexFloat)}}, {});
  });
  EXPECT_NE(complex.find("tensor \"c\" has dtype"), std::string::npos) << complex;
  EXPECT_FALSE(fs::exists(file));
}
