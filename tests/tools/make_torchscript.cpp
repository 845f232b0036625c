// Writes a small TorchScript image encoder, as a user would bring one trained elsewhere:
//   make_torchscript OUT.pt [SEED]
// forward(x: [B, 1, H, W]) -> [B, 32] (flatten, linear, ReLU), for the e2e test of
// `modalities.<m>.torchscript`.
#include <cstdlib>
#include <iostream>

#include <torch/script.h>
#include <torch/torch.h>

int main(int argc, char** argv) {
  if (argc < 2) {
    std::cerr << "usage: make_torchscript OUT.pt [SEED]\n";
    return 2;
  }
  torch::manual_seed(argc > 2 ? std::atoll(argv[2]) : 1);
  torch::jit::Module m("PretrainedImageEncoder");
  m.register_parameter("weight", torch::randn({28 * 28, 32}) * 0.05, /*is_buffer=*/false);
  m.register_parameter("bias", torch::zeros({32}), /*is_buffer=*/false);
  m.define(R"JIT(
def forward(self, x):
    return torch.relu(torch.matmul(x.flatten(1), self.weight) + self.bias)
)JIT");
  m.save(argv[1]);
  std::cout << argv[1] << "\n";
  return 0;
}
