#include "torchscript_encoder.hpp"

#include <algorithm>

#include <torch/script.h>

#include "modalkit/errors.hpp"
#include "modalkit/layers.hpp"

namespace modalkit::host {

namespace {

class TorchScriptEncoder : public Encoder {
 public:
  TorchScriptEncoder(torch::jit::Module module, std::string origin, int64_t width, int64_t d_model, bool trainable)
      : module_(std::move(module)), origin_(std::move(origin)), width_(width) {
    for (const auto& p : module_.named_parameters(/*recurse=*/true)) {
      std::string name = p.name;
      std::replace(name.begin(), name.end(), '.', '_');
      at::Tensor t = p.value;
      t.set_requires_grad(trainable);
      // The same tensor, not a copy: the optimiser's updates reach the scripted module.
      register_parameter("script_" + name, t, /*requires_grad=*/trainable);
    }
    if (width != d_model) projection_ = register_module("projection", Projection(ProjectionOptions(width, d_model)));
  }

  Sequence forward(const ModalityInput& input) override {
    module_.train(is_training());
    at::Tensor y = module_.forward({input.data}).toTensor();
    if (y.dim() == 2) y = y.unsqueeze(1);
    if (y.dim() != 3 || y.size(0) != input.data.size(0)) {
      throw Error(origin_ + ": a TorchScript encoder must return [B, T, W] or [B, W] for a batch of " +
                  std::to_string(input.data.size(0)) + ", got " + c10::str(y.sizes()));
    }
    if (y.size(2) != width_) {
      throw Error(origin_ + ": the TorchScript encoder returned width " + std::to_string(y.size(2)) +
                  ", the pipeline declares torchscript.width " + std::to_string(width_));
    }
    if (projection_) y = projection_->forward(y);
    at::Tensor mask = input.mask.defined() && input.mask.dim() == 2 && input.mask.size(1) == y.size(1)
                          ? input.mask.to(at::kBool)
                          : at::ones({y.size(0), y.size(1)}, at::TensorOptions().dtype(at::kBool).device(y.device()));
    return {y, mask};
  }

 private:
  torch::jit::Module module_;
  std::string origin_;
  int64_t width_;
  Projection projection_{nullptr};
};

}  // namespace

std::shared_ptr<Encoder> load_torchscript_encoder(const std::filesystem::path& path, int64_t width, int64_t d_model,
                                                  bool trainable) {
  if (!std::filesystem::exists(path)) throw Error(path.string() + ": no such TorchScript file");
  torch::jit::Module module;
  try {
    module = torch::jit::load(path.string());
  } catch (const c10::Error& e) {
    throw Error(path.string() + ": not a loadable TorchScript module: " + e.what_without_backtrace());
  }
  if (!module.find_method("forward")) throw Error(path.string() + ": the TorchScript module has no forward method");
  return std::make_shared<TorchScriptEncoder>(std::move(module), path.string(), width, d_model, trainable);
}

}  // namespace modalkit::host
