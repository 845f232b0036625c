#include "distributed.hpp"

#include <torch/torch.h>

#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>

#include <arpa/inet.h>
#include <netdb.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <map>
#include <sstream>
#include <thread>

#include <nlohmann/json.hpp>

#include "modalkit/errors.hpp"
#include "pipeline.hpp"  // UsageError

namespace modalkit::host {

namespace {

std::string what_of(const std::exception& e) {
  if (const auto* c = dynamic_cast<const c10::Error*>(&e)) return c->what_without_backtrace();
  return e.what();
}

/// Runs a c10d call; its failure becomes an Error saying what this rank was doing and what
/// usually causes it.
template <typename F>
auto collective(int rank, const std::string& what, std::chrono::seconds timeout, F&& f) -> decltype(f()) {
  try {
    return f();
  } catch (const Error& e) {  // this program's own finding (a mismatch), already explained
    throw Error("distributed (rank " + std::to_string(rank) + "): " + e.what());
  } catch (const std::exception& e) {
    throw Error("distributed (rank " + std::to_string(rank) + "): " + what + " failed: " + what_of(e) +
                " — another rank has died or stopped answering (waited at most " + std::to_string(timeout.count()) +
                " s, --timeout)");
  }
}

/// This machine's address on the route to `host`: the source address the kernel picks for a
/// (connectionless, nothing sent) UDP socket connected there.
std::string address_towards(const std::string& host, uint16_t port) {
  addrinfo hints{};
  hints.ai_family = AF_INET;
  hints.ai_socktype = SOCK_DGRAM;
  addrinfo* found = nullptr;
  if (::getaddrinfo(host.c_str(), std::to_string(port).c_str(), &hints, &found) != 0 || found == nullptr) {
    throw Error("distributed: cannot resolve the master host \"" + host + "\" (--master)");
  }
  const int fd = ::socket(AF_INET, SOCK_DGRAM, 0);
  sockaddr_in local{};
  socklen_t len = sizeof(local);
  const bool ok = fd >= 0 && ::connect(fd, found->ai_addr, found->ai_addrlen) == 0 &&
                  ::getsockname(fd, reinterpret_cast<sockaddr*>(&local), &len) == 0;
  ::freeaddrinfo(found);
  if (fd >= 0) ::close(fd);
  if (!ok) throw Error("distributed: no route from this machine to the master host \"" + host + "\" (--master)");
  char text[INET_ADDRSTRLEN] = {};
  ::inet_ntop(AF_INET, &local.sin_addr, text, sizeof(text));
  return text;
}

}  // namespace

struct ProcessGroup::Impl {
  c10::intrusive_ptr<c10d::TCPStore> store;
  c10::intrusive_ptr<c10d::ProcessGroupGloo> group;
};

std::pair<std::string, uint16_t> parse_master(const std::string& text, const std::string& flag) {
  const auto colon = text.rfind(':');
  const std::string expected = flag + " " + text + ": expected HOST:PORT (e.g. 10.0.0.1:29500), a port in 1-65535";
  if (colon == std::string::npos || colon == 0 || colon + 1 == text.size()) throw UsageError(expected);
  const std::string port_text = text.substr(colon + 1);
  if (!std::all_of(port_text.begin(), port_text.end(), [](char c) { return c >= '0' && c <= '9'; }) || port_text.size() > 5) {
    throw UsageError(expected);
  }
  const long port = std::stol(port_text);
  if (port < 1 || port > 65535) throw UsageError(expected);
  return {text.substr(0, colon), static_cast<uint16_t>(port)};
}

std::unique_ptr<ProcessGroup> ProcessGroup::join(const DistributedOptions& o) {
  if (o.world_size < 1) throw UsageError("--world-size " + std::to_string(o.world_size) + ": expected at least 1");
  if (o.rank < 0 || o.rank >= o.world_size) {
    throw UsageError("--rank " + std::to_string(o.rank) + ": expected 0 to " + std::to_string(o.world_size - 1) +
                     " (--world-size " + std::to_string(o.world_size) + ")");
  }
  std::unique_ptr<ProcessGroup> pg(new ProcessGroup());
  pg->impl_ = std::make_unique<Impl>();
  pg->rank_ = o.rank;
  pg->size_ = o.world_size;
  pg->timeout_ = o.timeout;
  const std::string master = o.master_host + ":" + std::to_string(o.master_port);

  c10d::TCPStoreOptions so;
  so.port = o.master_port;
  so.isServer = o.rank == 0;
  // Not waiting for the workers here: the world-size check below must be able to name a rank
  // started with another size, which a store waiting for N connections never lets happen.
  so.waitWorkers = false;
  so.timeout = o.timeout;
  try {
    pg->impl_->store = c10::make_intrusive<c10d::TCPStore>(o.master_host, so);
  } catch (const std::exception& e) {
    if (o.rank == 0) {
      throw Error("distributed (rank 0): cannot serve the rendezvous on " + master + ": " + what_of(e) +
                  " (is the port in use? choose another with --master HOST:PORT)");
    }
    throw Error("distributed (rank " + std::to_string(o.rank) + "): cannot reach the master " + master +
                " within " + std::to_string(o.timeout.count()) + " s: " + what_of(e) +
                " (is rank 0 running, and the address and port reachable from here?)");
  }
  auto& store = *pg->impl_->store;
  const auto timeout = o.timeout;
  collective(o.rank, "the rendezvous at " + master, timeout, [&] {
    // Every rank says who it is and what world it was told; rank 0's size is the run's.
    const std::string me = std::to_string(o.rank);
    if (store.add("modalkit/rank/" + me, 1) != 1) {
      throw Error("another process already joined as rank " + me + " (each rank index once)");
    }
    if (o.rank == 0) {
      const std::string n = std::to_string(o.world_size);
      store.set("modalkit/world_size", std::vector<uint8_t>(n.begin(), n.end()));
    }
    const auto got = store.get("modalkit/world_size");  // waits for rank 0, up to the timeout
    const int n0 = std::stoi(std::string(got.begin(), got.end()));
    if (n0 != o.world_size) {
      const std::string msg = "rank " + me + " was started with --world-size " + std::to_string(o.world_size) +
                              ", rank 0 with " + std::to_string(n0);
      const std::string key = "modalkit/mismatch";
      store.set(key, std::vector<uint8_t>(msg.begin(), msg.end()));
      throw Error(msg);
    }
    store.add("modalkit/joined", 1);
    // Wait until all have joined, or one of them has reported a mismatch.
    const auto deadline = std::chrono::steady_clock::now() + timeout;
    while (store.add("modalkit/joined", 0) < o.world_size) {
      if (store.check({"modalkit/mismatch"})) {
        const auto m = store.get("modalkit/mismatch");
        throw Error(std::string(m.begin(), m.end()));
      }
      if (std::chrono::steady_clock::now() > deadline) {
        throw Error("only " + std::to_string(store.add("modalkit/joined", 0)) + " of " + std::to_string(o.world_size) +
                    " ranks joined within " + std::to_string(timeout.count()) + " s");
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    return 0;
  });

  auto options = c10d::ProcessGroupGloo::Options::create(std::chrono::duration_cast<std::chrono::milliseconds>(timeout));
  // Gloo listens on one address per rank, which the other ranks connect to: the address this
  // machine uses to reach the master (loopback for a local run). The hostname's address, Gloo's
  // default, is 127.0.1.1 on a stock Debian, which no other machine reaches.
  options->devices.push_back(c10d::ProcessGroupGloo::createDeviceForHostname(address_towards(o.master_host, o.master_port)));
  options->threads = 1;  // one collective at a time; the cores are for the model
  pg->impl_->group = collective(o.rank, "connecting the ranks (Gloo)", timeout, [&] {
    return c10::make_intrusive<c10d::ProcessGroupGloo>(pg->impl_->store, o.rank, o.world_size, options);
  });
  return pg;
}

ProcessGroup::~ProcessGroup() = default;

std::string ProcessGroup::broadcast_text(const std::string& text, const std::string& what) {
  at::Tensor size = torch::tensor({static_cast<int64_t>(leader() ? text.size() : 0)}, torch::kLong);
  std::vector<at::Tensor> ts{size};
  broadcast(ts, what + " (size)");
  at::Tensor bytes = torch::empty({size.item<int64_t>()}, torch::kUInt8);
  if (leader()) std::memcpy(bytes.data_ptr<uint8_t>(), text.data(), text.size());
  std::vector<at::Tensor> bs{bytes};
  if (bytes.numel() > 0) broadcast(bs, what);
  return std::string(reinterpret_cast<const char*>(bytes.data_ptr<uint8_t>()), static_cast<size_t>(bytes.numel()));
}

void ProcessGroup::broadcast(std::vector<at::Tensor>& tensors, const std::string& what) {
  if (size_ == 1 || tensors.empty()) return;
  // Gloo broadcasts one tensor per call (a list means one tensor per device), so the tensors
  // travel flattened, one flat tensor per dtype.
  std::map<at::ScalarType, std::vector<size_t>> by_type;
  for (size_t i = 0; i < tensors.size(); ++i) by_type[tensors[i].scalar_type()].push_back(i);
  torch::NoGradGuard no_grad;
  for (const auto& [type, indices] : by_type) {
    std::vector<at::Tensor> group;
    for (size_t i : indices) group.push_back(tensors[i]);
    std::vector<at::Tensor> flat{at::flatten_dense_tensors(group)};
    collective(rank_, what, timeout_, [&] {
      impl_->group->broadcast(flat)->wait();
      return 0;
    });
    const auto views = at::unflatten_dense_tensors(flat[0], group);
    for (size_t j = 0; j < group.size(); ++j) group[j].copy_(views[j]);
  }
}

void ProcessGroup::allreduce_sum(at::Tensor& t, const std::string& what) {
  if (size_ == 1) return;
  std::vector<at::Tensor> ts{t};
  collective(rank_, what, timeout_, [&] {
    impl_->group->allreduce(ts)->wait();
    return 0;
  });
}

void ProcessGroup::barrier(const std::string& what) {
  if (size_ == 1) return;
  collective(rank_, what, timeout_, [&] {
    impl_->group->barrier()->wait();
    return 0;
  });
}

Batch shard_batch(const Batch& global, int rank, int world) {
  if (world == 1) return global;
  const int64_t n = global.size();
  const int64_t begin = n * rank / world, end = n * (rank + 1) / world;
  return global.select(torch::arange(begin, end, torch::kLong));
}

GradientReducer::GradientReducer(ProcessGroup& group, std::vector<at::Tensor> parameters, int64_t bucket_bytes)
    : group_(group), parameters_(std::move(parameters)) {
  // Buckets in registration order, split where a bucket would pass bucket_bytes; a dtype change
  // starts a new bucket too (a bucket is one flat tensor).
  int64_t bytes = 0;
  for (size_t i = 0; i < parameters_.size(); ++i) {
    const auto& p = parameters_[i];
    const int64_t b = p.numel() * static_cast<int64_t>(p.element_size());
    const bool new_bucket = buckets_.empty() || (bytes + b > bucket_bytes && !buckets_.back().empty()) ||
                            parameters_[buckets_.back().front()].scalar_type() != p.scalar_type();
    if (new_bucket) {
      buckets_.emplace_back();
      bytes = 0;
    }
    buckets_.back().push_back(i);
    bytes += b;
  }
}

std::vector<double> GradientReducer::reduce(int64_t rows, const std::vector<double>& scalars) {
  // One small float64 collective first: the rows (so the total weight is known before the
  // gradients are scaled by it), the scalars, and for each parameter whether this rank has a
  // gradient for it.
  const auto n = static_cast<int64_t>(scalars.size()), np = static_cast<int64_t>(parameters_.size());
  at::Tensor extra = torch::zeros({1 + n + np}, torch::kDouble);
  auto e = extra.accessor<double, 1>();
  e[0] = static_cast<double>(rows);
  for (int64_t i = 0; i < n; ++i) e[1 + i] = scalars[static_cast<size_t>(i)];
  for (int64_t i = 0; i < np; ++i) e[1 + n + i] = parameters_[static_cast<size_t>(i)].grad().defined() ? 1.0 : 0.0;
  group_.allreduce_sum(extra, "summing the step's rows and losses");
  const double total_rows = e[0];
  std::vector<double> out(scalars.size());
  for (int64_t i = 0; i < n; ++i) out[static_cast<size_t>(i)] = e[1 + i];
  if (group_.size() == 1) return out;
  const double weight = total_rows > 0 ? static_cast<double>(rows) / total_rows : 0.0;
  for (size_t k = 0; k < buckets_.size(); ++k) {
    // A parameter no rank has a gradient for keeps none, as with one process (the optimiser
    // skips it: no weight decay, no momentum, no step counted); one that some rank lacks gets
    // zeros there. Every rank reads the same flags, so the buckets stay the same everywhere.
    std::vector<at::Tensor> grads;
    for (size_t i : buckets_[k]) {
      auto& p = parameters_[i];
      if (e[1 + n + static_cast<int64_t>(i)] == 0) continue;
      if (!p.grad().defined()) p.mutable_grad() = torch::zeros_like(p);
      grads.push_back(p.grad());
    }
    if (grads.empty()) continue;
    at::Tensor flat = at::flatten_dense_tensors(grads).mul_(weight);
    group_.allreduce_sum(flat, "all-reducing gradient bucket " + std::to_string(k + 1) + " of " +
                                   std::to_string(buckets_.size()));
    const auto views = at::unflatten_dense_tensors(flat, grads);
    for (size_t j = 0; j < grads.size(); ++j) grads[j].copy_(views[j]);
  }
  return out;
}

void GradientReducer::broadcast_module(ProcessGroup& group, torch::nn::Module& module) {
  if (group.size() == 1) return;
  std::vector<at::Tensor> tensors;
  std::vector<std::string> names;
  std::string signature;  // names and dtypes: what must agree; sizes may not yet (below)
  for (const auto& item : module.named_parameters(/*recurse=*/true)) {
    names.push_back(item.key());
    tensors.push_back(item.value());
  }
  for (const auto& item : module.named_buffers(/*recurse=*/true)) {
    names.push_back(item.key());
    tensors.push_back(item.value());
  }
  nlohmann::json sizes = nlohmann::json::array();
  for (size_t i = 0; i < tensors.size(); ++i) {
    signature += names[i] + " " + c10::toString(tensors[i].scalar_type()) + "\n";
    sizes.push_back(tensors[i].sizes().vec());
  }
  const std::string theirs = group.broadcast_text(signature, "comparing the model with rank 0's");
  if (theirs != signature) {
    // The first line that differs names the tensor.
    std::istringstream a(signature), b(theirs);
    std::string la, lb;
    while (std::getline(a, la) && std::getline(b, lb) && la == lb) {
    }
    throw Error("distributed (rank " + std::to_string(group.rank()) + "): this rank's model differs from rank 0's: " +
                (la.empty() ? "(none)" : la) + " here, " + (lb.empty() ? "(none)" : lb) +
                " on rank 0 (the same pipeline and plugin builds on every rank?)");
  }
  // A strategy's prepare stage (run on rank 0 alone) may have sized tensors from the data (a
  // translator's layers, coordination's class vectors): the other ranks take rank 0's sizes,
  // in place, so every reference to the tensor (the optimiser's) stays valid.
  const nlohmann::json leader_sizes = nlohmann::json::parse(group.broadcast_text(sizes.dump(), "sending rank 0's tensor sizes"));
  torch::NoGradGuard no_grad;
  for (size_t i = 0; i < tensors.size(); ++i) {
    const auto want = leader_sizes.at(i).get<std::vector<int64_t>>();
    if (tensors[i].sizes().vec() != want) tensors[i].set_(torch::empty(want, tensors[i].options()));
  }
  group.broadcast(tensors, "copying rank 0's parameters and buffers");
}

}  // namespace modalkit::host
