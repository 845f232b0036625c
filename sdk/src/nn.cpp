// Task heads, shared layers and the guarded references strategies call plugins through.
#include <torch/nn/functional/loss.h>
#include <torch/nn/modules/linear.h>
#include <torch/nn/modules/transformerlayer.h>

#include "modalkit/errors.hpp"
#include "modalkit/evaluation.hpp"
#include "modalkit/layers.hpp"
#include "modalkit/strategy.hpp"
#include "modalkit/task.hpp"

namespace modalkit {

namespace F = torch::nn::functional;

TaskType parse_task_type(const std::string& name) {
  if (name == "multiclass") return TaskType::kMulticlass;
  if (name == "binary") return TaskType::kBinary;
  if (name == "multilabel") return TaskType::kMultilabel;
  if (name == "regression") return TaskType::kRegression;
  if (name == "generation") return TaskType::kGeneration;
  throw Error("unknown task type \"" + name +
              "\" (expected multiclass, binary, multilabel, regression or generation)");
}

const char* to_string(TaskType type) {
  switch (type) {
    case TaskType::kMulticlass: return "multiclass";
    case TaskType::kBinary: return "binary";
    case TaskType::kMultilabel: return "multilabel";
    case TaskType::kRegression: return "regression";
    case TaskType::kGeneration: return "generation";
  }
  return "unknown";
}

at::Tensor apply_presence(const at::Tensor& mask, const at::Tensor& present) {
  if (!present.defined()) return mask;
  return mask.logical_and(present.to(torch::kBool).unsqueeze(1));
}

at::Tensor strided_mask(const at::Tensor& mask, int64_t stride) {
  TORCH_CHECK(mask.dim() == 2 && stride >= 1, "strided_mask: expected [B,L] and stride >= 1");
  return mask.slice(1, 0, mask.size(1), stride);
}

at::Tensor masked_mean_pool(const Sequence& seq) {
  TORCH_CHECK(seq.x.dim() == 3, "masked_mean_pool: expected [B,T,D], got ", seq.x.sizes());
  at::Tensor weights = seq.mask.to(seq.x.scalar_type()).unsqueeze(-1);  // [B,T,1]
  at::Tensor count = weights.sum(1).clamp_min(1.0);                     // [B,1]
  return (seq.x * weights).sum(1) / count;
}

ProjectionImpl::ProjectionImpl(const ProjectionOptions& options) {
  if (options.in() != options.out()) {
    linear_ = register_module("linear", torch::nn::Linear(options.in(), options.out()));
  }
}

at::Tensor ProjectionImpl::forward(const at::Tensor& x) { return linear_ ? linear_->forward(x) : x; }

TemporalConvImpl::TemporalConvImpl(const TemporalConvOptions& o) {
  conv_ = register_module("conv", torch::nn::Conv2d(torch::nn::Conv2dOptions(o.in(), o.out(), {1, o.kernel()})
                                                        .stride({1, o.stride()})
                                                        .padding({0, o.padding()})));
}

at::Tensor TemporalConvImpl::forward(const at::Tensor& x) { return conv_->forward(x.unsqueeze(2)).squeeze(2); }

TokenTransformerImpl::TokenTransformerImpl(const TokenTransformerOptions& o) {
  if (o.layers() > 0) {
    auto layer = torch::nn::TransformerEncoderLayerOptions(o.d_model(), o.heads())
                     .dim_feedforward(2 * o.d_model())
                     .dropout(o.dropout())
                     .activation(torch::kGELU);
    blocks_ = register_module("blocks", torch::nn::TransformerEncoder(
                                            torch::nn::TransformerEncoderOptions(layer, o.layers())));
  }
  norm_ = register_module("norm", torch::nn::LayerNorm(torch::nn::LayerNormOptions({o.d_model()})));
}

at::Tensor TokenTransformerImpl::forward(const at::Tensor& x, const at::Tensor& mask) {
  at::Tensor h = x;
  if (!blocks_.is_empty()) {
    const at::Tensor padding = mask.defined() ? mask.logical_not() : at::Tensor();
    h = blocks_->forward(h.transpose(0, 1), {}, padding).transpose(0, 1);
  }
  return norm_->forward(h);
}

TaskHead::~TaskHead() = default;

namespace {

/// The standard head: mean-pool, then one linear layer; the loss follows the task type.
class LinearTaskHead final : public TaskHead {
 public:
  LinearTaskHead(TaskSpec spec, int64_t in_width) : spec_(std::move(spec)) {
    TORCH_CHECK(spec_.num_outputs >= 1, "task ", spec_.name, ": needs at least one output");
    linear_ = register_module("linear", torch::nn::Linear(in_width, spec_.num_outputs));
  }

  at::Tensor forward(const Sequence& fused) override {
    at::Tensor out = linear_->forward(masked_mean_pool(fused));
    if (spec_.type == TaskType::kBinary ||
        (spec_.type == TaskType::kRegression && spec_.num_outputs == 1)) {
      out = out.squeeze(-1);
    }
    return out;
  }

  at::Tensor loss(const at::Tensor& outputs, const at::Tensor& targets) const override {
    // Rows without a label (kept for a strategy's auxiliary losses: class index -1, values NaN)
    // add nothing: the loss is the one over the labelled rows, 0 (with a graph) when there are none.
    const at::Tensor labelled = targets.is_floating_point()
                                    ? (targets.dim() > 1 ? targets.isnan().logical_not().all(1) : targets.isnan().logical_not())
                                    : targets >= 0;
    if (!labelled.all().item<bool>()) {
      if (!labelled.any().item<bool>()) return outputs.narrow(0, 0, 0).sum();  // 0 even if an output is not finite
      const at::Tensor rows = labelled.nonzero().squeeze(1);
      return loss(outputs.index_select(0, rows), targets.index_select(0, rows));
    }
    switch (spec_.type) {
      case TaskType::kMulticlass: return F::cross_entropy(outputs, targets.to(torch::kLong));
      case TaskType::kBinary:
      case TaskType::kMultilabel:
        return F::binary_cross_entropy_with_logits(outputs, targets.to(outputs.scalar_type()));
      case TaskType::kRegression: return F::mse_loss(outputs, targets.to(outputs.scalar_type()));
      case TaskType::kGeneration: break;
    }
    throw Error("task " + spec_.name + ": the linear head cannot train a generation task");
  }

  const TaskSpec& spec() const override { return spec_; }

 private:
  TaskSpec spec_;
  torch::nn::Linear linear_{nullptr};
};

}  // namespace

std::shared_ptr<TaskHead> make_task_head(const TaskSpec& spec, int64_t in_width) {
  if (spec.type == TaskType::kGeneration) {
    throw Error("task " + spec.name + ": generation tasks need a language-model head");
  }
  return std::make_shared<LinearTaskHead>(spec, in_width);
}

EncoderRef::EncoderRef(std::shared_ptr<Encoder> module, std::string plugin)
    : module_(std::move(module)), plugin_(std::move(plugin)) {}

Sequence EncoderRef::operator()(const ModalityInput& input) const {
  Sequence out = guard(plugin_, [&] { return module_->forward(input); });
  if (out.x.dim() != 3 || !out.mask.defined() || out.mask.dim() != 2 ||
      out.mask.size(0) != out.x.size(0) || out.mask.size(1) != out.x.size(1)) {
    throw PluginError(plugin_, "encoder must return x [B,T,D] and mask [B,T]; got x " +
                                   c10::str(out.x.sizes()) + ", mask " +
                                   (out.mask.defined() ? c10::str(out.mask.sizes()) : "undefined"));
  }
  out.mask = apply_presence(out.mask.to(torch::kBool), input.present);
  return out;
}

FusionRef::FusionRef(std::shared_ptr<FusionOperator> module, std::string plugin)
    : module_(std::move(module)), plugin_(std::move(plugin)) {}

Sequence FusionRef::operator()(const std::map<std::string, Sequence>& inputs) const {
  return guard(plugin_, [&] { return module_->forward(inputs); });
}

void register_parts(torch::nn::Module& owner, const ModelParts& parts,
                    const std::vector<std::string>& modalities) {
  auto encoders = owner.register_module("encoders", std::make_shared<torch::nn::Module>("Encoders"));
  for (const auto& [name, ref] : parts.encoders) {
    if (modalities.empty() || std::find(modalities.begin(), modalities.end(), name) != modalities.end()) {
      encoders->register_module(name, ref.module());
    }
  }
  // A strategy with its own backbone (manifest uses_fusion: false) gets no fusion operator.
  if (parts.fusion.module()) owner.register_module("fusion", parts.fusion.module());
  auto heads = owner.register_module("heads", std::make_shared<torch::nn::Module>("TaskHeads"));
  for (const auto& [name, head] : parts.heads) heads->register_module(name, head);
}

FusionOperator::~FusionOperator() = default;
BatchSource::~BatchSource() = default;
bool BatchSource::has_split(const std::string& /*split*/) const { return true; }
TransferStrategy::~TransferStrategy() = default;
EvaluationProtocol::~EvaluationProtocol() = default;

std::vector<ParameterGroup> TransferStrategy::parameter_groups() {
  return {ParameterGroup{"all", parameters(/*recurse=*/true), std::nullopt, false}};
}

void TransferStrategy::prepare(BatchSource& /*data*/) {}
void TransferStrategy::finalize(BatchSource& /*data*/) {}

}  // namespace modalkit
