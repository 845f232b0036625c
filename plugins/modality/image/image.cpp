// The image modality: IDX (`file#index`) and PNG/JPEG (stb_image) decoding, noise and occlusion
// perturbations, pixel standardisation fitted on the train split, and two encoders: a small conv
// net emitting one token per 4x4 patch, or a ViT-style patch embedding with Transformer layers.
#include <fstream>
#include <map>
#include <memory>
#include <mutex>

#include <zlib.h>

#include <torch/nn/modules/conv.h>
#include <torch/nn/modules/dropout.h>
#include <torch/nn/modules/pooling.h>
#include <torch/nn/modules/linear.h>
#include <torch/nn/modules/normalization.h>

#define STB_IMAGE_IMPLEMENTATION
#define STBI_ONLY_PNG
#define STBI_ONLY_JPEG
#define STBI_NO_STDIO
#define STBI_MAX_DIMENSIONS 8192  // bounds memory on absurd headers
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wunused-function"
#pragma GCC diagnostic ignored "-Wmissing-field-initializers"
#pragma GCC diagnostic ignored "-Wsign-compare"
#include <stb/stb_image.h>
#pragma GCC diagnostic pop

#include "image_manifest.hpp"
#include "modalkit/layers.hpp"
#include "modalkit/modality.hpp"
#include "modalkit/plugin.hpp"

namespace {

using modalkit::DataError;

std::string read_file(const std::filesystem::path& path, const std::string& origin) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw DataError(origin, "cannot open image file " + path.string());
  return std::string(std::istreambuf_iterator<char>(in), {});
}

uint32_t big_endian(const unsigned char* p) {
  return (uint32_t(p[0]) << 24) | (uint32_t(p[1]) << 16) | (uint32_t(p[2]) << 8) | uint32_t(p[3]);
}

/// An IDX image file (as in MNIST and Fashion-MNIST), read once and shared by loader threads.
struct IdxImages {
  std::string bytes;
  int64_t count = 0, rows = 0, cols = 0;

  static std::shared_ptr<const IdxImages> open(const std::filesystem::path& path,
                                               const std::string& origin) {
    // Plain or gzipped (as Fashion-MNIST ships). The header is checked before the pixels are
    // read, so an absurd header cannot make us allocate gigabytes.
    std::unique_ptr<gzFile_s, int (*)(gzFile)> gz(gzopen(path.c_str(), "rb"), gzclose);
    if (!gz) throw DataError(origin, "cannot open IDX file " + path.string());
    unsigned char header[16];
    if (gzread(gz.get(), header, sizeof header) != static_cast<int>(sizeof header) ||
        big_endian(header) != 0x00000803) {
      throw DataError(path.string(), "not an IDX file of uint8 images (expected magic 0x00000803)");
    }
    auto idx = std::make_shared<IdxImages>();
    idx->count = big_endian(header + 4);
    idx->rows = big_endian(header + 8);
    idx->cols = big_endian(header + 12);
    const uint64_t payload = uint64_t(idx->count) * uint64_t(idx->rows) * uint64_t(idx->cols);
    if (idx->rows > 8192 || idx->cols > 8192 || payload > (uint64_t(1) << 32)) {
      throw DataError(path.string(), "IDX header claims " + std::to_string(idx->count) + " images of " +
                                         std::to_string(idx->rows) + "x" + std::to_string(idx->cols) +
                                         ", beyond this reader's 4 GiB limit");
    }
    idx->bytes.resize(payload);
    uint64_t got = 0;
    while (got < payload) {
      const unsigned chunk = static_cast<unsigned>(std::min<uint64_t>(payload - got, 1u << 30));
      const int n = gzread(gz.get(), idx->bytes.data() + got, chunk);
      if (n <= 0) break;
      got += static_cast<uint64_t>(n);
    }
    if (got != payload || gzgetc(gz.get()) != -1) {
      throw DataError(path.string(), "IDX header says " + std::to_string(idx->count) + " images of " +
                                         std::to_string(idx->rows) + "x" + std::to_string(idx->cols) + " (" +
                                         std::to_string(payload) + " pixel bytes) but the file holds " +
                                         (got != payload ? std::to_string(got) : "more"));
    }
    return idx;
  }
};

struct ImageOptions {
  int64_t height, width, channels, c1, c2;
  double dropout;
  bool normalize;
  std::string perturbation;
  std::string encoder;  // "conv" or "patch"
  int64_t patch_size, layers, heads;
};

/// Two conv blocks (each halves the resolution), then one token per remaining position,
/// projected to d_model, tagged with a learned position embedding and passed through a
/// residual token MLP. The MLP matters: heads mean-pool tokens, and a mean of linear features
/// of 7x7 positions discards most of what a classifier needs; a mean of position-aware
/// nonlinear features does not.
class ConvImageEncoder : public modalkit::Encoder {
 public:
  ConvImageEncoder(const ImageOptions& o, int64_t d_model) {
    conv1_ = register_module("conv1", torch::nn::Conv2d(torch::nn::Conv2dOptions(o.channels, o.c1, 3).padding(1)));
    conv2_ = register_module("conv2", torch::nn::Conv2d(torch::nn::Conv2dOptions(o.c1, o.c2, 3).padding(1)));
    dropout_ = register_module("dropout", torch::nn::Dropout(o.dropout));
    proj_ = register_module("proj", modalkit::Projection(modalkit::ProjectionOptions(o.c2, d_model)));
    const int64_t tokens = (o.height / 4) * (o.width / 4);
    position_ = register_parameter("position", torch::randn({tokens, d_model}) * 0.02);
    fc1_ = register_module("fc1", torch::nn::Linear(d_model, 2 * d_model));
    fc2_ = register_module("fc2", torch::nn::Linear(2 * d_model, d_model));
    norm_ = register_module("norm", torch::nn::LayerNorm(torch::nn::LayerNormOptions({d_model})));
  }

  modalkit::Sequence forward(const modalkit::ModalityInput& input) override {
    namespace F = torch::nn::functional;
    auto h = F::max_pool2d(torch::relu(conv1_->forward(input.data)), F::MaxPool2dFuncOptions(2));
    h = F::max_pool2d(torch::relu(conv2_->forward(h)), F::MaxPool2dFuncOptions(2));
    h = h.flatten(2).transpose(1, 2);  // [B, T, c2]
    auto x = proj_->forward(h) + position_;
    // LayerNorm keeps token scales comparable across modalities and gives the head a usable
    // signal from the first step (conv features at default init are tiny).
    x = dropout_->forward(norm_->forward(x + fc2_->forward(torch::gelu(fc1_->forward(x)))));
    auto mask = torch::ones({x.size(0), x.size(1)}, torch::dtype(torch::kBool).device(x.device()));
    return {x, mask};
  }

 private:
  torch::nn::Conv2d conv1_{nullptr}, conv2_{nullptr};
  torch::nn::Dropout dropout_{nullptr};
  modalkit::Projection proj_{nullptr};
  torch::nn::Linear fc1_{nullptr}, fc2_{nullptr};
  torch::nn::LayerNorm norm_{nullptr};
  torch::Tensor position_;
};

/// ViT-style (Dosovitskiy et al. 2021): non-overlapping patch_size x patch_size patches, each
/// linearly embedded (a strided convolution is exactly that), a learned position embedding, then
/// `layers` Transformer encoder layers and a LayerNorm. One token per patch.
class PatchImageEncoder : public modalkit::Encoder {
 public:
  PatchImageEncoder(const ImageOptions& o, int64_t d_model) {
    embed_ = register_module("embed", torch::nn::Conv2d(torch::nn::Conv2dOptions(o.channels, d_model, o.patch_size)
                                                            .stride(o.patch_size)));
    const int64_t tokens = (o.height / o.patch_size) * (o.width / o.patch_size);
    position_ = register_parameter("position", torch::randn({tokens, d_model}) * 0.02);
    transformer_ = register_module(
        "transformer", modalkit::TokenTransformer(modalkit::TokenTransformerOptions(d_model, o.layers, o.heads).dropout(o.dropout)));
  }

  modalkit::Sequence forward(const modalkit::ModalityInput& input) override {
    auto x = embed_->forward(input.data).flatten(2).transpose(1, 2) + position_;  // [B, T, D]
    x = transformer_->forward(x);
    auto mask = torch::ones({x.size(0), x.size(1)}, torch::dtype(torch::kBool).device(x.device()));
    return {x, mask};
  }

 private:
  torch::nn::Conv2d embed_{nullptr};
  modalkit::TokenTransformer transformer_{nullptr};
  torch::Tensor position_;
};

class ImageModality : public modalkit::ModalityPlugin {
 public:
  explicit ImageModality(const modalkit::CreateArgs& args) : d_model_(args.d_model) {
    const modalkit::Config& c = args.config;
    auto conv = c.json().at("conv_channels");
    opt_ = ImageOptions{c.get<int64_t>("height"), c.get<int64_t>("width"), c.get<int64_t>("channels"),
                        conv.at(0).get<int64_t>(), conv.at(1).get<int64_t>(), c.get<double>("dropout"),
                        c.get<bool>("normalize"), c.get<std::string>("perturbation"),
                        c.get<std::string>("encoder"), c.get<int64_t>("patch_size"), c.get<int64_t>("layers"),
                        c.get<int64_t>("heads")};
    if (opt_.encoder == "conv" && (opt_.height % 4 != 0 || opt_.width % 4 != 0)) {
      throw modalkit::ConfigError(c.pointer() + "/height",
                                  "height and width must be multiples of 4 (two 2x poolings)");
    }
    if (opt_.encoder == "patch") {
      if (opt_.height % opt_.patch_size != 0 || opt_.width % opt_.patch_size != 0) {
        throw modalkit::ConfigError(c.pointer() + "/patch_size",
                                    "height " + std::to_string(opt_.height) + " and width " +
                                        std::to_string(opt_.width) + " must be multiples of patch_size " +
                                        std::to_string(opt_.patch_size));
      }
      modalkit::token_transformer_options(c, d_model_);  // checks heads
    }
  }

  void fit(const std::vector<modalkit::RawValue>& train) override {
    if (!opt_.normalize || train.empty()) return;
    double sum = 0, sq = 0, n = 0;
    for (const auto& raw : train) {
      auto x = raw.tensor.to(torch::kDouble) / 255.0;
      sum += x.sum().item<double>();
      sq += (x * x).sum().item<double>();
      n += static_cast<double>(x.numel());
    }
    mean_ = sum / n;
    std_ = std::sqrt(std::max(sq / n - mean_ * mean_, 1e-12));
  }

  nlohmann::json fitted_state() const override { return {{"mean", mean_}, {"std", std_}}; }
  void load_fitted_state(const nlohmann::json& s) override {
    mean_ = s.at("mean").get<double>();
    std_ = s.at("std").get<double>();
  }

  modalkit::RawValue decode(const modalkit::FieldRef& field) const override {
    if (!field.value.is_string()) {
      throw DataError(field.origin, "image field must be a path string, found " + field.value.dump());
    }
    const std::string ref = field.value.get<std::string>();
    const auto hash = ref.rfind('#');
    torch::Tensor img = hash == std::string::npos
                            ? decode_file(field.base_dir / ref, field.origin)
                            : decode_idx(field.base_dir / ref.substr(0, hash), ref.substr(hash + 1), field.origin);
    if (img.size(1) != opt_.height || img.size(2) != opt_.width) {
      throw DataError(field.origin + " (" + ref + ")",
                      "image is " + std::to_string(img.size(1)) + "x" + std::to_string(img.size(2)) +
                          ", the image plugin is configured for " + std::to_string(opt_.height) + "x" +
                          std::to_string(opt_.width));
    }
    return {img, {}, 0};
  }

  modalkit::RawValue perturb(const modalkit::RawValue& raw, double level, std::mt19937_64& rng) const override {
    if (level <= 0) return raw;
    auto x = raw.tensor.to(torch::kFloat) / 255.0;
    if (opt_.perturbation == "noise") {
      // Box-Muller from our own RNG, so a sweep does not depend on LibTorch's global generator.
      std::normal_distribution<float> normal(0.0f, static_cast<float>(level));
      auto acc = x.accessor<float, 3>();
      for (int64_t c = 0; c < x.size(0); ++c)
        for (int64_t i = 0; i < x.size(1); ++i)
          for (int64_t j = 0; j < x.size(2); ++j) acc[c][i][j] += normal(rng);
    } else {
      const int64_t side_h = std::llround(level * x.size(1)), side_w = std::llround(level * x.size(2));
      std::uniform_int_distribution<int64_t> top(0, x.size(1) - side_h), left(0, x.size(2) - side_w);
      const int64_t t = top(rng), l = left(rng);
      x.slice(1, t, t + side_h).slice(2, l, l + side_w).zero_();
    }
    return {(x.clamp(0, 1) * 255.0).round().to(torch::kUInt8), {}, 0};
  }

  torch::Tensor featurize(const modalkit::RawValue& raw) const override {
    auto x = raw.tensor.to(torch::kFloat) / 255.0f;
    return opt_.normalize ? (x - mean_) / std_ : x;
  }

  std::shared_ptr<modalkit::Encoder> make_encoder() override {
    if (opt_.encoder == "patch") return std::make_shared<PatchImageEncoder>(opt_, d_model_);
    return std::make_shared<ConvImageEncoder>(opt_, d_model_);
  }

 private:
  torch::Tensor decode_file(const std::filesystem::path& path, const std::string& origin) const {
    const std::string bytes = read_file(path, origin);
    const auto* data = reinterpret_cast<const stbi_uc*>(bytes.data());
    const int len = static_cast<int>(bytes.size());
    int w = 0, h = 0, n = 0;
    if (!stbi_info_from_memory(data, len, &w, &h, &n)) {
      throw DataError(path.string(), std::string("not a readable PNG or JPEG (") + stbi_failure_reason() + ")");
    }
    if (w != opt_.width || h != opt_.height) {  // checked before decoding: bounded memory
      throw DataError(path.string(), "image is " + std::to_string(h) + "x" + std::to_string(w) +
                                         ", the image plugin is configured for " + std::to_string(opt_.height) +
                                         "x" + std::to_string(opt_.width));
    }
    const int want = static_cast<int>(opt_.channels);
    std::unique_ptr<stbi_uc, void (*)(void*)> pixels(stbi_load_from_memory(data, len, &w, &h, &n, want),
                                                     stbi_image_free);
    if (!pixels) {
      throw DataError(path.string(), std::string("corrupt image data (") + stbi_failure_reason() + ")");
    }
    return torch::from_blob(pixels.get(), {h, w, want}, torch::kUInt8).permute({2, 0, 1}).clone();
  }

  torch::Tensor decode_idx(const std::filesystem::path& path, const std::string& index_text,
                           const std::string& origin) const {
    int64_t index = -1;
    try {
      size_t used = 0;
      index = std::stoll(index_text, &used);
      if (used != index_text.size()) index = -1;
    } catch (const std::exception&) {
    }
    if (index < 0) throw DataError(origin, "bad IDX index \"" + index_text + "\" in image reference");
    std::shared_ptr<const IdxImages> idx;
    {
      std::lock_guard<std::mutex> lock(idx_mutex_);
      auto& slot = idx_files_[path.string()];
      if (!slot) slot = IdxImages::open(path, origin);
      idx = slot;
    }
    if (index >= idx->count) {
      throw DataError(origin, "index " + std::to_string(index) + " is past the end of " + path.string() + " (" +
                                  std::to_string(idx->count) + " images)");
    }
    if (opt_.channels != 1) throw DataError(origin, "IDX images are grey; configure channels: 1");
    const int64_t size = idx->rows * idx->cols;
    auto* start = const_cast<char*>(idx->bytes.data()) + index * size;
    return torch::from_blob(start, {1, idx->rows, idx->cols}, torch::kUInt8).clone();
  }

  ImageOptions opt_;
  int64_t d_model_;
  double mean_ = 0.0, std_ = 1.0;
  mutable std::mutex idx_mutex_;
  mutable std::map<std::string, std::shared_ptr<const IdxImages>> idx_files_;
};

}  // namespace

MODALKIT_PLUGIN("image", "0.1.0", kManifest, MODALKIT_MODALITY("image", ImageModality))
