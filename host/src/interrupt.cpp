#include "interrupt.hpp"

#include <unistd.h>

#include <csignal>

namespace modalkit::host {

namespace {
volatile std::sig_atomic_t g_interrupted = 0;

extern "C" void on_sigint(int /*signal*/) {
  g_interrupted = 1;
  // Said at once, because the next boundary may be minutes away (a protocol's evaluation).
  // write() is async-signal-safe; spdlog is not.
  static const char kSaid[] =
      "\nmodalkit: interrupt received; stopping at the next training step or evaluation protocol "
      "(Ctrl-C again to kill at once)\n";
  [[maybe_unused]] const ssize_t n = write(STDERR_FILENO, kSaid, sizeof kSaid - 1);
  std::signal(SIGINT, SIG_DFL);  // a second Ctrl-C ends the process at once
}
}  // namespace

void install_interrupt_handler() { std::signal(SIGINT, on_sigint); }

bool interrupt_requested() { return g_interrupted != 0; }

}  // namespace modalkit::host
