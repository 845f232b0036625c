// Data-parallel training on LibTorch's own distributed engine: c10d's TCPStore for the
// rendezvous and ProcessGroupGloo for the collectives (what `torch.distributed` uses on CPUs).
// The c10d headers stay in distributed.cpp: they need libgloo-dev and -DUSE_C10D_GLOO.
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include <ATen/core/Tensor.h>
#include <torch/nn/module.h>

#include "modalkit/batch.hpp"

namespace modalkit::host {

/// Where a rank is in a run: `modalkit train --rank R --world-size N --master HOST:PORT`.
struct DistributedOptions {
  int rank = 0;
  int world_size = 1;
  std::string master_host = "127.0.0.1";
  uint16_t master_port = 29500;
  /// How long a rank waits for the others (rendezvous, every collective) before it fails.
  std::chrono::seconds timeout{1800};
};

/// "HOST:PORT" → (host, port); a UsageError-worthy message names `flag` when it is not that.
std::pair<std::string, uint16_t> parse_master(const std::string& text, const std::string& flag);

/// One rank's membership of the process group. Every call is a collective: all ranks make the
/// same calls in the same order. A failure (a rank died, the timeout passed) throws an Error
/// naming what was being done.
class ProcessGroup {
 public:
  /// Rendezvous through the master's TCPStore (rank 0 hosts it), then checks that every rank
  /// was started with the same world size and that no rank index is taken twice.
  static std::unique_ptr<ProcessGroup> join(const DistributedOptions& options);
  ~ProcessGroup();
  ProcessGroup(const ProcessGroup&) = delete;
  ProcessGroup& operator=(const ProcessGroup&) = delete;

  int rank() const { return rank_; }
  int size() const { return size_; }
  bool leader() const { return rank_ == 0; }

  /// Rank 0's `text` on every rank (other ranks' argument is ignored).
  std::string broadcast_text(const std::string& text, const std::string& what);
  /// Rank 0's values of `tensors` copied into every rank's (same shapes and types).
  void broadcast(std::vector<at::Tensor>& tensors, const std::string& what);
  /// Every rank's `t` summed, in place (float64 or float32, contiguous).
  void allreduce_sum(at::Tensor& t, const std::string& what);
  /// Waits for every rank.
  void barrier(const std::string& what);

 private:
  ProcessGroup() = default;
  struct Impl;
  std::unique_ptr<Impl> impl_;
  int rank_ = 0;
  int size_ = 1;
  std::chrono::seconds timeout_{1800};
};

/// Rank `rank`'s share of a global batch of `world` shards: its contiguous rows
/// [⌊n·rank/world⌋, ⌊n·(rank+1)/world⌋), so shards differ by at most one row and may be empty
/// when the batch has fewer rows than there are ranks.
Batch shard_batch(const Batch& global, int rank, int world);

/// What the training loop all-reduces after each backward pass: the gradients of the trainable
/// parameters, flattened into buckets of about `bucket_bytes` (one collective per bucket, as
/// DistributedDataParallel does), plus a few scalars in the last bucket. Each rank's gradients
/// are of its mean loss over its `rows`; the reduced gradient is the mean over the global batch
/// (Σ rows_r · grad_r / Σ rows_r), so shards of unequal size still give one rank's result.
/// A parameter without a gradient on a rank (a head another task uses, a branch the batch did
/// not take) counts as zero there. Frozen parameters are not given to it.
class GradientReducer {
 public:
  GradientReducer(ProcessGroup& group, std::vector<at::Tensor> parameters, int64_t bucket_bytes = 25 << 20);
  /// Reduces the gradients as above; returns `scalars` summed over the ranks.
  std::vector<double> reduce(int64_t rows, const std::vector<double>& scalars);
  /// Rank 0's parameters and buffers copied into every rank's `module`, after checking that
  /// the names and shapes agree (an Error names the first that differs).
  static void broadcast_module(ProcessGroup& group, torch::nn::Module& module);

 private:
  ProcessGroup& group_;
  std::vector<at::Tensor> parameters_;
  std::vector<std::vector<size_t>> buckets_;  ///< indices into parameters_
};

}  // namespace modalkit::host
