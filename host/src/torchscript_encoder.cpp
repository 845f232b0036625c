#include "torchscript_encoder.hpp"

#include <set>

#include <torch/script.h>

#include "modalkit/errors.hpp"
#include "modalkit/layers.hpp"

namespace modalkit::host {

namespace {

class TorchScriptEncoder : public Encoder {
 public:
  TorchScriptEncoder(torch::jit::Module module, std::string origin, int64_t width, int64_t d_model, bool trainable)
      : module_(std::move(module)), origin_(std::move(origin)), width_(width), trainable_(trainable) {
    // The same tensors, not copies: the optimiser's updates, device moves and checkpoint loads
    // reach the scripted module. Frozen parameters are registered as buffers, so no parameter
    // group (the strategy's default "all" included) can hand them to the optimiser; the
    // module's own buffers (running statistics) are saved and moved with it.
    for (const auto& p : module_.named_parameters(/*recurse=*/true)) {
      at::Tensor t = p.value;
      t.set_requires_grad(trainable);
      if (trainable) {
        register_parameter(script_name(p.name), t, /*requires_grad=*/true);
      } else {
        register_buffer(script_name(p.name), t);
      }
    }
    for (const auto& b : module_.named_buffers(/*recurse=*/true)) register_buffer(script_name(b.name), b.value);
    if (width != d_model) projection_ = register_module("projection", Projection(ProjectionOptions(width, d_model)));
  }

  Sequence forward(const ModalityInput& input) override {
    module_.train(is_training() && trainable_);  // a frozen encoder keeps its statistics too
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
  /// `script_<name>` with the dots of nested names as `__` (a plain `_` could merge two names).
  std::string script_name(const std::string& name) {
    std::string out = "script_";
    for (char c : name) out += c == '.' ? std::string("__") : std::string(1, c);
    if (used_.count(out)) throw Error(origin_ + ": two tensors of the TorchScript module map to the name " + out);
    used_.insert(out);
    return out;
  }

  int64_t width_;
  bool trainable_;
  std::set<std::string> used_;
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
