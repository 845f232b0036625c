// `modalkit launch -n N -- train ...`: starts N local ranks of a distributed run and supervises
// them, as torchrun does for Python.
#pragma once

#include <string>
#include <vector>

namespace modalkit::host {

struct LaunchOptions {
  int ranks = 1;                          ///< -n
  int master_port = 0;                    ///< 0: a free port on 127.0.0.1
  int timeout_s = 1800;                   ///< passed to every rank (--timeout)
  std::vector<std::string> global_args;   ///< modalkit's own options (--plugin-path, -v/-q), before the command
  std::vector<std::string> command;       ///< "train" and its arguments
};

/// Starts the ranks (this executable, `train ... --rank R --world-size N --master 127.0.0.1:PORT`)
/// and waits for them. When one fails, the others are stopped (SIGTERM, then SIGKILL after 10 s)
/// and an Error names it; SIGINT or SIGTERM to the launcher is passed on to the ranks as one
/// SIGINT (they stop at the same step, rank 0 checkpoints) and 130 is returned. Returns 0 when
/// every rank succeeded.
int launch(const LaunchOptions& options);

/// A TCP port on 127.0.0.1 free at the time of the call.
int free_local_port();

}  // namespace modalkit::host
