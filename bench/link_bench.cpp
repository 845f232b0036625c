// `modalkit bench`'s dynamic-vs-static figure: the image plugin's code linked into this program
// (a static library built from the same sources) against the same plugin loaded at run time
// from its shared library, the way the host loads it (Boost.DLL, RTLD_NOW | RTLD_LOCAL).
//
//   modalkit-bench-link LIBRARY.so [--batch B] [--steps N] [--rounds R] [--threads T]
//
// A train step: featurize B images and collate them through the plugin, the plugin's encoder
// forward, mean pool, a linear head, cross-entropy, backward, Adam. Each round runs N steps with
// each copy, alternating step by step. Prints one JSON object: mean seconds per step of each,
// each round's ratio (dynamic / static) and their median, the figure.
#include <algorithm>
#include <chrono>
#include <iostream>
#include <memory>
#include <string>
#include <vector>

#include <boost/dll/shared_library.hpp>
#include <nlohmann/json.hpp>
#include <spdlog/spdlog.h>
#include <torch/torch.h>

#include "modalkit/abi.h"
#include "modalkit/component.hpp"
#include "modalkit/context.hpp"
#include "modalkit/modality.hpp"

// The statically linked copy's entry (bench/meson.build links the image plugin's sources in).
extern "C" const modalkit_plugin_descriptor* modalkit_plugin_entry_impl() noexcept;

namespace {

class BenchContext final : public modalkit::Context {
 public:
  spdlog::logger& logger() const override { return *spdlog::default_logger(); }
  uint64_t seed() const override { return 1; }
  c10::Device device() const override { return c10::Device(c10::kCPU); }
  std::filesystem::path run_dir() const override { return {}; }
  std::filesystem::path artifact_path(const std::string& name) const override {
    throw std::runtime_error("no artifact " + name + " in the link bench");
  }
  std::shared_ptr<modalkit::Component> find_component(const std::string&) const override { return nullptr; }
};

/// The plugin's config with every default its manifest declares (what the host's validation fills in).
nlohmann::json default_config(const modalkit_plugin_descriptor& d) {
  nlohmann::json out = nlohmann::json::object();
  const auto manifest = nlohmann::json::parse(d.manifest_json);
  for (const auto& [key, schema] : manifest.at("config_schema").at("properties").items()) {
    if (schema.contains("default")) out[key] = schema.at("default");
  }
  return out;
}

std::shared_ptr<modalkit::ModalityPlugin> create_image(const modalkit_plugin_descriptor& d, modalkit::Context& context) {
  for (uint32_t i = 0; i < d.factory_count; ++i) {
    const modalkit_factory& f = d.factories[i];
    if (f.kind != MODALKIT_KIND_MODALITY) continue;
    modalkit::CreateArgs args;
    args.config = modalkit::Config(default_config(d), "/modalities/image/config");
    args.context = &context;
    args.instance = "image";
    args.d_model = 64;
    args.modalities = {"image"};
    std::shared_ptr<modalkit::Component> out;
    char error[512] = {0};
    if (f.create(&args, &out, error, sizeof error) != 0) throw std::runtime_error(std::string("create: ") + error);
    auto image = std::dynamic_pointer_cast<modalkit::ModalityPlugin>(out);
    if (!image) throw std::runtime_error("the factory did not make a modality");
    return image;
  }
  throw std::runtime_error(std::string(d.name) + ": no modality factory");
}

/// One copy of the plugin with its encoder, head and optimiser, all seeded alike.
struct Trainee {
  std::shared_ptr<modalkit::ModalityPlugin> plugin;
  std::shared_ptr<modalkit::Encoder> encoder;
  torch::nn::Linear head{nullptr};
  std::unique_ptr<torch::optim::Adam> optimizer;

  Trainee(const modalkit_plugin_descriptor& d, modalkit::Context& context, const std::vector<modalkit::RawValue>& raws) {
    plugin = create_image(d, context);
    plugin->fit(raws);
    torch::manual_seed(1);
    encoder = plugin->make_encoder();
    head = torch::nn::Linear(64, 10);
    std::vector<at::Tensor> params = encoder->parameters();
    for (const auto& p : head->parameters()) params.push_back(p);
    optimizer = std::make_unique<torch::optim::Adam>(params, torch::optim::AdamOptions(1e-3));
    encoder->train();
  }

  /// One train step on `batch` samples of `raws` from `at`; returns its seconds.
  double step(const std::vector<modalkit::RawValue>& raws, const at::Tensor& labels, int64_t at, int64_t batch) {
    const auto t0 = std::chrono::steady_clock::now();
    std::vector<at::Tensor> features;
    for (int64_t i = at; i < at + batch; ++i) features.push_back(plugin->featurize(raws[static_cast<size_t>(i)]));
    modalkit::ModalityInput input = plugin->collate(features);
    input.present = torch::ones({batch}, torch::kBool);
    optimizer->zero_grad();
    const modalkit::Sequence seq = encoder->forward(input);
    const at::Tensor loss =
        torch::nn::functional::cross_entropy(head->forward(seq.x.mean(1)), labels.slice(0, at, at + batch));
    (void)loss.item<double>();
    loss.backward();
    optimizer->step();
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  }
};

int usage() {
  std::cerr << "usage: modalkit-bench-link LIBRARY.so [--batch B] [--steps N] [--rounds R] [--threads T]\n";
  return 2;
}

}  // namespace

int main(int argc, char** argv) {
  std::vector<std::string> a(argv + 1, argv + argc);
  if (a.empty() || a[0].rfind("--", 0) == 0) return usage();
  int64_t batch = 32;
  int steps = 30, rounds = 9, threads = 1;
  for (size_t i = 1; i + 1 < a.size(); i += 2) {
    if (a[i] == "--batch") batch = std::stoll(a[i + 1]);
    else if (a[i] == "--steps") steps = std::stoi(a[i + 1]);
    else if (a[i] == "--rounds") rounds = std::stoi(a[i + 1]);
    else if (a[i] == "--threads") threads = std::stoi(a[i + 1]);
    else return usage();
  }
  if (batch < 1 || steps < 1 || rounds < 1 || threads < 1) return usage();
  try {
    at::set_num_threads(threads);
    boost::dll::shared_library lib(boost::dll::fs::path(a[0]),
                                   boost::dll::load_mode::rtld_now | boost::dll::load_mode::rtld_local);
    const modalkit_plugin_descriptor* dynamic = lib.get_alias<const modalkit_plugin_descriptor*()>(MODALKIT_ENTRY_SYMBOL)();
    const modalkit_plugin_descriptor* statik = modalkit_plugin_entry_impl();
    if (std::string(dynamic->name) != statik->name || std::string(dynamic->version) != statik->version) {
      throw std::runtime_error(a[0] + " is plugin " + dynamic->name + " " + dynamic->version + ", this bench links " +
                               statik->name + " " + statik->version);
    }
    if (dynamic == statik) throw std::runtime_error("the shared library resolved to the linked-in copy");

    torch::manual_seed(2);
    std::vector<modalkit::RawValue> raws;
    for (int64_t i = 0; i < 4 * batch; ++i) raws.push_back({torch::randint(256, {1, 28, 28}, torch::kUInt8), {}, 0});
    const at::Tensor labels = torch::randint(10, {4 * batch}, torch::kLong);

    BenchContext context;
    Trainee s(*statik, context, raws), d(*dynamic, context, raws);
    // Steps alternate between the copies (and which goes first), so other load on the machine
    // and its drift fall on both alike; each round's sums give one ratio, the median counts.
    const int64_t positions = static_cast<int64_t>(raws.size()) - batch + 1;
    for (int i = 0; i < 2; ++i) {  // warm-up: first-touch allocations, lazy initialisation
      s.step(raws, labels, 0, batch);
      d.step(raws, labels, 0, batch);
    }
    double total_static = 0, total_dynamic = 0;
    std::vector<double> ratios;
    for (int r = 0; r < rounds; ++r) {
      double round_static = 0, round_dynamic = 0;
      for (int k = 0; k < steps; ++k) {
        const int64_t at = (static_cast<int64_t>(k) * batch) % positions;
        if ((k + r) % 2 == 0) {
          round_static += s.step(raws, labels, at, batch);
          round_dynamic += d.step(raws, labels, at, batch);
        } else {
          round_dynamic += d.step(raws, labels, at, batch);
          round_static += s.step(raws, labels, at, batch);
        }
      }
      total_static += round_static;
      total_dynamic += round_dynamic;
      ratios.push_back(round_dynamic / round_static);
    }
    std::sort(ratios.begin(), ratios.end());
    const double median = ratios.size() % 2 == 1 ? ratios[ratios.size() / 2]
                                                 : 0.5 * (ratios[ratios.size() / 2 - 1] + ratios[ratios.size() / 2]);
    const double mean_static = total_static / (rounds * steps), mean_dynamic = total_dynamic / (rounds * steps);
    nlohmann::json out = {{"plugin", statik->name},
                          {"library", a[0]},
                          {"batch", batch},
                          {"steps_per_round", steps},
                          {"rounds", rounds},
                          {"threads", threads},
                          {"static_seconds_per_step", mean_static},
                          {"dynamic_seconds_per_step", mean_dynamic},
                          {"ratio", median},
                          {"round_ratios", ratios}};
    std::cout << out.dump() << std::endl;
    return 0;
  } catch (const std::exception& e) {
    std::cerr << "modalkit-bench-link: " << e.what() << "\n";
    return 1;
  }
}
