/// \file
/// Streaming data sets: a plugin that turns a split into whole batches itself. Pretraining
/// corpora need this (millions of skip-gram pairs or LM windows cannot come from a per-sample
/// decode); the host trains on its batches like on any other. Since SDK ABI 1.2.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "modalkit/batch.hpp"
#include "modalkit/component.hpp"
#include "modalkit/modality.hpp"

namespace modalkit {

/// Mixes a seed with a purpose (splitmix64's finaliser), so that generators seeded for different
/// purposes (split, epoch, batch index) differ: what a stream's batch() seeds its generators
/// with. Inline: no new SDK symbol.
inline uint64_t mix_seed(uint64_t x) {
  x += 0x9e3779b97f4a7c15ULL;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
  return x ^ (x >> 31);
}

/// FNV-1a of `s`: stable across builds and runs, unlike std::hash (a split's name in a seed).
inline uint64_t stable_hash(const std::string& s) {
  uint64_t h = 1469598103934665603ULL;
  for (const unsigned char c : s) h = (h ^ c) * 1099511628211ULL;
  return h;
}

/// A data set split into batches by its plugin (pipeline `/data/stream`). The host calls fit
/// (or load_fitted_state) once, then open for each split it uses, then batches and batch.
///
/// batch() must be a pure function of (the pipeline's seed, split, epoch, index, batch size): the host may
/// ask for batches in any order, from several threads, and a resumed run asks again for the
/// batches it had reached and must get the same bits. Keep per-epoch randomness seeded from
/// Context::seed() and the epoch; never from a generator that advances between calls.
class BatchStream : public Component {
 public:
  ~BatchStream() override;

  /// Learns what the stream needs from the train split's values of its field (a vocabulary).
  /// `train` holds every training sample's field, in data set order.
  virtual void fit(const std::vector<FieldRef>& train) = 0;
  /// The state fit() learned, saved with the run.
  virtual nlohmann::json fitted_state() const = 0;
  /// Restores what fitted_state() returned.
  virtual void load_fitted_state(const nlohmann::json& state) = 0;
  /// Prepares `split` (its values, after fit or load_fitted_state); the stream copies what it keeps.
  virtual void open(const std::string& split, const std::vector<FieldRef>& values) = 0;
  /// Batches per epoch of the opened `split` at `batch_size`; the same for every epoch, so that
  /// schedules and progress know the run's length.
  virtual int64_t batches(const std::string& split, int64_t batch_size) const = 0;
  /// Batch `index` (0-based, < batches()) of `epoch` (1-based; 0 = the fixed order used for
  /// validation and evaluation) of `split`. Inputs are named by the stream (documented in its
  /// manifest); `index` holds the batch's example numbers within the epoch.
  virtual Batch batch(const std::string& split, int64_t epoch, int64_t index, int64_t batch_size) const = 0;
  /// What a model built on the stream must know, e.g. `{"vocabulary": [...]}`; the transfer
  /// strategy reads it through Context::find_component("stream"). Default: `{}`.
  virtual nlohmann::json info() const;
};

}  // namespace modalkit
