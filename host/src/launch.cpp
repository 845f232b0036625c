#include "launch.hpp"

#include <netinet/in.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <map>
#include <thread>

#include <spdlog/spdlog.h>

#include "modalkit/errors.hpp"

namespace modalkit::host {

namespace {

volatile sig_atomic_t g_signals = 0;  // SIGINT/SIGTERM received
void on_signal(int /*sig*/) { g_signals = g_signals + 1; }

std::string describe(int status) {
  if (WIFEXITED(status)) return "exited with code " + std::to_string(WEXITSTATUS(status));
  if (WIFSIGNALED(status)) return std::string("was killed by signal ") + ::strsignal(WTERMSIG(status));
  return "stopped";
}

int code_of(int status) {
  if (WIFEXITED(status)) return WEXITSTATUS(status);
  if (WIFSIGNALED(status)) return 128 + WTERMSIG(status);
  return 1;
}

}  // namespace

int free_local_port() {
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0) throw Error(std::string("launch: cannot open a socket: ") + std::strerror(errno));
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = 0;
  socklen_t len = sizeof(addr);
  if (::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0 ||
      ::getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len) != 0) {
    const std::string why = std::strerror(errno);
    ::close(fd);
    throw Error("launch: cannot find a free port on 127.0.0.1: " + why);
  }
  ::close(fd);
  return ntohs(addr.sin_port);
}

int launch(const LaunchOptions& o) {
  if (o.ranks < 1) throw Error("launch -n " + std::to_string(o.ranks) + ": expected at least 1 rank");
  if (o.command.empty() || o.command[0] != "train") {
    throw Error("launch runs `train`: modalkit launch -n N -- train PIPELINE.json --out DIR");
  }
  const std::string exe = std::filesystem::read_symlink("/proc/self/exe").string();
  const int port = o.master_port > 0 ? o.master_port : free_local_port();
  const std::string master = "127.0.0.1:" + std::to_string(port);
  spdlog::info("launch: {} ranks, rendezvous at {}", o.ranks, master);

  struct sigaction sa {};
  sa.sa_handler = on_signal;  // no SA_RESTART: the wait below polls anyway
  sigemptyset(&sa.sa_mask);
  struct sigaction old_int {}, old_term {};
  ::sigaction(SIGINT, &sa, &old_int);
  ::sigaction(SIGTERM, &sa, &old_term);

  // Every rank's argv is built before the first fork: between fork and exec a child may only
  // make async-signal-safe calls.
  std::vector<std::vector<std::string>> args(static_cast<size_t>(o.ranks));
  std::vector<std::vector<char*>> argvs(static_cast<size_t>(o.ranks));
  for (int r = 0; r < o.ranks; ++r) {
    auto& a = args[static_cast<size_t>(r)];
    a.push_back(exe);
    a.insert(a.end(), o.global_args.begin(), o.global_args.end());
    a.insert(a.end(), o.command.begin(), o.command.end());
    a.insert(a.end(), {"--rank", std::to_string(r), "--world-size", std::to_string(o.ranks), "--master", master,
                       "--timeout", std::to_string(o.timeout_s)});
    for (auto& s : a) argvs[static_cast<size_t>(r)].push_back(s.data());
    argvs[static_cast<size_t>(r)].push_back(nullptr);
  }
  const pid_t launcher = ::getpid();
  std::map<pid_t, int> rank_of;
  for (int r = 0; r < o.ranks; ++r) {
    const pid_t pid = ::fork();
    if (pid < 0) {
      const std::string why = std::strerror(errno);
      for (const auto& [p, other] : rank_of) ::kill(p, SIGKILL);
      for (const auto& [p, other] : rank_of) ::waitpid(p, nullptr, 0);
      throw Error("launch: cannot start rank " + std::to_string(r) + ": fork failed: " + why);
    }
    if (pid == 0) {
      // A process group of its own: a Ctrl-C at the terminal reaches the launcher alone, which
      // passes it on once (a second SIGINT would kill a rank before it checkpoints). A launcher
      // that dies (killed, so it cannot stop them) takes its ranks with it.
      ::setpgid(0, 0);
      ::prctl(PR_SET_PDEATHSIG, SIGTERM);
      if (::getppid() != launcher) ::_exit(1);
      ::sigaction(SIGINT, &old_int, nullptr);
      ::sigaction(SIGTERM, &old_term, nullptr);
      ::execv(exe.c_str(), argvs[static_cast<size_t>(r)].data());
      ::_exit(127);
    }
    rank_of[pid] = r;
  }

  int result = 0;
  int failed = -1;  // the first rank that failed
  bool forwarded = false;
  std::chrono::steady_clock::time_point kill_at{};
  while (!rank_of.empty()) {
    if (g_signals > 0 && !forwarded) {
      for (const auto& [pid, r] : rank_of) ::kill(pid, SIGINT);
      forwarded = true;
    } else if (g_signals > 1) {  // asked twice: stop now, as a second Ctrl-C stops `train`
      for (const auto& [pid, r] : rank_of) ::kill(pid, SIGKILL);
    }
    int status = 0;
    const pid_t pid = ::waitpid(-1, &status, WNOHANG);
    if (pid < 0 && errno != EINTR) break;
    if (pid <= 0) {
      if (failed >= 0 && std::chrono::steady_clock::now() > kill_at) {
        for (const auto& [p, r] : rank_of) ::kill(p, SIGKILL);
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
      continue;
    }
    const int r = rank_of.at(pid);
    rank_of.erase(pid);
    const int code = code_of(status);
    if (code == 0) continue;
    // The first failure is the one reported, but a real failure outranks an interrupt (rank 0
    // failing to write its checkpoint after the others stopped at the interrupt).
    if (failed < 0 || (result == 130 && code != 130)) {
      failed = r;
      result = code;
      if (code == 130) {
        // Every rank stops at the same step (the interrupt is all-reduced); rank 0 may still be
        // writing its checkpoint, so it gets time before anything is killed.
        spdlog::warn("launch: rank {} was interrupted", r);
        kill_at = std::chrono::steady_clock::now() + std::chrono::seconds(120);
      } else {
        spdlog::error("launch: rank {} {}; stopping the other {} rank(s)", r, describe(status), rank_of.size());
        for (const auto& [p, other] : rank_of) ::kill(p, SIGTERM);
        kill_at = std::chrono::steady_clock::now() + std::chrono::seconds(10);
      }
    }
  }
  ::sigaction(SIGINT, &old_int, nullptr);
  ::sigaction(SIGTERM, &old_term, nullptr);
  if (failed >= 0 && result != 130) {
    throw Error("launch: rank " + std::to_string(failed) + " failed (exit code " + std::to_string(result) +
                "; its error is above); the other ranks were stopped");
  }
  return result;
}

}  // namespace modalkit::host
