/// \file
/// Evaluation protocols: build episodes or passes over a split and return metrics.
#pragma once

#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "modalkit/component.hpp"
#include "modalkit/strategy.hpp"

namespace modalkit {

/// Evaluates a trained model on a split and returns its metrics as a JSON object (written to
/// the run's metrics files by the host). Held-out classification is one protocol; zero-shot
/// over unseen classes, captioning and few-shot episodes are others.
class EvaluationProtocol : public Component {
 public:
  ~EvaluationProtocol() override;
  /// Runs the protocol on `split` with only `modalities` present.
  virtual nlohmann::json evaluate(TransferStrategy& model, BatchSource& data,
                                  const std::string& split,
                                  const std::vector<std::string>& modalities) = 0;
};

}  // namespace modalkit
