// The baseline of `modalkit bench`'s train-step figure: the loop a LibTorch user would write by
// hand over the same graph the host trains, linking LibTorch only (no modalkit SDK, no plugin).
//
//   modalkit-bench-bare write-module OUT.pt [SEED]
//       writes the TorchScript image encoder both sides train: x [B,1,28,28] -> tokens [B,49,64]
//       (two stride-2 3x3 convolutions with ReLU; one token per 4x4 region).
//   modalkit-bench-bare run MODULE.pt --samples N --batch B --classes C --lr LR --epochs E --threads T
//       trains MODULE + mean pool + linear head with Adam and cross-entropy on N random images
//       held in memory, shuffled each epoch, and prints one JSON line per epoch:
//       {"epoch":1,"steps":S,"seconds":X,"seconds_per_step":X/S}.
//
// The host's side of the comparison is the same module as `modalities.image.torchscript`, the
// concat fusion (one modality, no embeddings) and the standard linear head: the difference
// between the two is the host's plumbing (batches from its cache, presence masks, strategy,
// loss terms, bookkeeping), which is what the figure measures.
#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <iostream>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include <torch/script.h>
#include <torch/torch.h>

namespace {

int usage() {
  std::cerr << "usage: modalkit-bench-bare write-module OUT.pt [SEED]\n"
               "       modalkit-bench-bare run MODULE.pt --samples N --batch B --classes C --lr LR --epochs E "
               "--threads T\n";
  return 2;
}

int write_module(const std::string& out, uint64_t seed) {
  torch::manual_seed(seed);
  torch::jit::Module m("BenchImageEncoder");
  // Kaiming-uniform-like scales, as torch::nn::Conv2d would initialise them.
  m.register_parameter("w1", (torch::rand({32, 1, 3, 3}) * 2 - 1) / 3.0, false);
  m.register_parameter("b1", torch::zeros({32}), false);
  m.register_parameter("w2", (torch::rand({64, 32, 3, 3}) * 2 - 1) / std::sqrt(32.0 * 9), false);
  m.register_parameter("b2", torch::zeros({64}), false);
  m.define(R"JIT(
def forward(self, x):
    h = torch.relu(torch.conv2d(x, self.w1, self.b1, [2, 2], [1, 1]))
    h = torch.relu(torch.conv2d(h, self.w2, self.b2, [2, 2], [1, 1]))
    return h.flatten(2).transpose(1, 2)
)JIT");
  m.save(out);
  std::cout << out << "\n";
  return 0;
}

int run(const std::string& path, int64_t samples, int64_t batch, int64_t classes, double lr, int epochs,
        int threads) {
  at::set_num_threads(threads);
  torch::manual_seed(1);
  torch::jit::Module encoder = torch::jit::load(path);
  torch::nn::Linear head(64, classes);
  std::vector<at::Tensor> params;
  for (const auto& p : encoder.parameters()) {
    p.set_requires_grad(true);
    params.push_back(p);
  }
  for (const auto& p : head->parameters()) params.push_back(p);
  torch::optim::Adam optimizer(params, torch::optim::AdamOptions(lr));

  const at::Tensor images = torch::randn({samples, 1, 28, 28});
  const at::Tensor labels = torch::randint(classes, {samples}, torch::kLong);
  std::mt19937_64 rng(1);
  std::vector<int64_t> order(static_cast<size_t>(samples));
  std::iota(order.begin(), order.end(), 0);
  encoder.train();
  head->train();
  for (int epoch = 1; epoch <= epochs; ++epoch) {
    std::shuffle(order.begin(), order.end(), rng);
    const auto t0 = std::chrono::steady_clock::now();
    int64_t steps = 0;
    double loss_sum = 0;
    for (int64_t at = 0; at < samples; at += batch) {
      const int64_t end = std::min(samples, at + batch);
      const at::Tensor rows = torch::tensor(std::vector<int64_t>(order.begin() + at, order.begin() + end));
      const at::Tensor x = images.index_select(0, rows), y = labels.index_select(0, rows);
      optimizer.zero_grad();
      const at::Tensor tokens = encoder.forward({x}).toTensor();
      const at::Tensor loss = torch::nn::functional::cross_entropy(head->forward(tokens.mean(1)), y);
      loss_sum += loss.item<double>();  // a real loop logs its loss, which syncs as the host's does
      loss.backward();
      optimizer.step();
      ++steps;
    }
    const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    std::cout << "{\"epoch\":" << epoch << ",\"steps\":" << steps << ",\"seconds\":" << seconds
              << ",\"seconds_per_step\":" << seconds / static_cast<double>(steps)
              << ",\"train_loss\":" << loss_sum / static_cast<double>(steps) << "}" << std::endl;
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  std::vector<std::string> a(argv + 1, argv + argc);
  try {
    if (a.size() >= 2 && a[0] == "write-module") return write_module(a[1], a.size() > 2 ? std::stoull(a[2]) : 1);
    if (a.size() >= 2 && a[0] == "run") {
      int64_t samples = 0, batch = 0, classes = 0;
      double lr = 0;
      int epochs = 0, threads = 1;
      for (size_t i = 2; i + 1 < a.size(); i += 2) {
        const std::string& k = a[i];
        const std::string& v = a[i + 1];
        if (k == "--samples") samples = std::stoll(v);
        else if (k == "--batch") batch = std::stoll(v);
        else if (k == "--classes") classes = std::stoll(v);
        else if (k == "--lr") lr = std::stod(v);
        else if (k == "--epochs") epochs = std::stoi(v);
        else if (k == "--threads") threads = std::stoi(v);
        else return usage();
      }
      if (samples < 1 || batch < 1 || classes < 2 || lr <= 0 || epochs < 1 || threads < 1) return usage();
      return run(a[1], samples, batch, classes, lr, epochs, threads);
    }
  } catch (const std::exception& e) {
    std::cerr << "modalkit-bench-bare: " << e.what() << "\n";
    return 1;
  }
  return usage();
}
