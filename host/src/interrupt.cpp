#include "interrupt.hpp"

#include <csignal>

namespace modalkit::host {

namespace {
volatile std::sig_atomic_t g_interrupted = 0;

extern "C" void on_sigint(int /*signal*/) {
  g_interrupted = 1;
  std::signal(SIGINT, SIG_DFL);  // a second Ctrl-C ends the process at once
}
}  // namespace

void install_interrupt_handler() { std::signal(SIGINT, on_sigint); }

bool interrupt_requested() { return g_interrupted != 0; }

}  // namespace modalkit::host
