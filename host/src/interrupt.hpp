// SIGINT during a run: the first one asks the run to stop at the next step boundary, or before
// the next protocol of an evaluation (exit code 130 after what the run directory holds is
// consistent); a second one kills the process the default way, for a run stuck inside a plugin
// call.
#pragma once

#include "modalkit/errors.hpp"

namespace modalkit::host {

/// Thrown at a step or protocol boundary after SIGINT; main() turns it into exit code 130.
class Interrupted : public Error {
 public:
  using Error::Error;
};

/// Installs the SIGINT handler (idempotent).
void install_interrupt_handler();

/// Whether SIGINT arrived since install_interrupt_handler().
bool interrupt_requested();

}  // namespace modalkit::host
