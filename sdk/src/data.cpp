// Batches and the default behaviour of modality plugins.
#include <ATen/ATen.h>

#include "modalkit/batch.hpp"
#include "modalkit/errors.hpp"
#include "modalkit/modality.hpp"
#include "modalkit/stream.hpp"

namespace modalkit {

namespace {
at::Tensor moved(const at::Tensor& t, const c10::Device& device) {
  return t.defined() ? t.to(device, /*non_blocking=*/true) : t;
}
}  // namespace

ModalityInput ModalityInput::to(const c10::Device& device) const {
  return ModalityInput{moved(data, device), moved(mask, device), moved(present, device)};
}

int64_t Batch::size() const {
  if (index.defined()) return index.size(0);
  for (const auto& [name, input] : inputs) {
    if (input.data.defined()) return input.data.size(0);
  }
  for (const auto& [name, target] : targets) return target.size(0);
  return 0;
}

Batch Batch::to(const c10::Device& device) const {
  Batch out;
  for (const auto& [name, input] : inputs) out.inputs.emplace(name, input.to(device));
  for (const auto& [name, target] : targets) out.targets.emplace(name, moved(target, device));
  out.task_id = task_id;
  out.index = moved(index, device);
  return out;
}

const ModalityInput& Batch::input(const std::string& name, const std::string& who, const std::string& role) const {
  const auto it = inputs.find(name);
  if (it != inputs.end()) return it->second;
  std::string present;
  for (const auto& [m, in] : inputs) present += (present.empty() ? "" : ", ") + m;
  throw Error(who + ": the batch lacks the " + (role.empty() ? "" : role + " ") + "modality \"" + name + "\" (it has: " +
              (present.empty() ? "none" : present) + ")");
}

Batch Batch::select(const at::Tensor& rows) const {
  const at::Tensor r = rows.to(at::kLong);
  auto pick = [&](const at::Tensor& t) { return t.defined() ? t.index_select(0, r.to(t.device())) : t; };
  Batch out;
  for (const auto& [name, in] : inputs) out.inputs.emplace(name, ModalityInput{pick(in.data), pick(in.mask), pick(in.present)});
  for (const auto& [name, y] : targets) out.targets.emplace(name, pick(y));
  out.task_id = task_id;
  out.index = pick(index);
  return out;
}

Encoder::~Encoder() = default;
ModalityPlugin::~ModalityPlugin() = default;

void ModalityPlugin::fit(const std::vector<RawValue>& /*train*/) {}

nlohmann::json ModalityPlugin::fitted_state() const { return nullptr; }

void ModalityPlugin::load_fitted_state(const nlohmann::json& /*state*/) {}

RawValue ModalityPlugin::perturb(const RawValue& raw, double /*level*/,
                                 std::mt19937_64& /*rng*/) const {
  return raw;
}

ModalityInput ModalityPlugin::collate(const std::vector<at::Tensor>& features) const {
  if (features.empty()) throw Error("collate: empty batch");
  for (size_t i = 1; i < features.size(); ++i) {
    if (features[i].sizes() != features[0].sizes()) {
      throw Error("collate: features of different shapes in one batch (" +
                  c10::str(features[0].sizes()) + " vs " + c10::str(features[i].sizes()) +
                  "); a variable-length modality must override collate()");
    }
  }
  ModalityInput input;
  input.data = at::stack(features);
  return input;
}

ModalityInput collate_padded(const std::vector<at::Tensor>& features, double pad_value) {
  if (features.empty()) throw Error("collate: empty batch");
  int64_t longest = 0;
  for (const auto& f : features) {
    if (f.dim() < 1 || f.sizes().slice(1) != features[0].sizes().slice(1)) {
      throw Error("collate: variable-length features must agree past their first axis (" +
                  c10::str(features[0].sizes()) + " vs " + c10::str(f.sizes()) + ")");
    }
    longest = std::max(longest, f.size(0));
  }
  std::vector<int64_t> shape{static_cast<int64_t>(features.size()), longest};
  for (int64_t d : features[0].sizes().slice(1)) shape.push_back(d);
  ModalityInput input;
  input.data = at::full(shape, pad_value, features[0].options());
  input.mask = at::zeros({shape[0], longest}, at::kBool);
  for (size_t i = 0; i < features.size(); ++i) {
    const int64_t n = features[i].size(0);
    input.data[static_cast<int64_t>(i)].narrow(0, 0, n).copy_(features[i]);
    input.mask[static_cast<int64_t>(i)].narrow(0, 0, n).fill_(true);
  }
  return input;
}

BatchStream::~BatchStream() = default;

nlohmann::json BatchStream::info() const { return nlohmann::json::object(); }

}  // namespace modalkit
