// The tokenizer client: one modalkit-spm helper process per Tokenizer, spoken to over a socket
// pair (see tokenizer.hpp for why SentencePiece lives in its own process).
#include "modalkit/tokenizer.hpp"

#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <mutex>
#include <sstream>

#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <nlohmann/json.hpp>

#include "modalkit/errors.hpp"

namespace modalkit {

std::filesystem::path spm_helper_path() {
  if (const char* env = std::getenv("MODALKIT_SPM_HELPER"); env != nullptr && *env != '\0') return env;
  if (const char* path = std::getenv("PATH"); path != nullptr) {
    std::istringstream dirs(path);
    for (std::string dir; std::getline(dirs, dir, ':');) {
      const auto candidate = std::filesystem::path(dir.empty() ? "." : dir) / "modalkit-spm";
      if (::access(candidate.c_str(), X_OK) == 0) return candidate;
    }
  }
  return {};
}

struct Tokenizer::State {
  std::filesystem::path model;
  std::string sha256;
  pid_t pid = -1;
  int fd = -1;
  int64_t pieces = 0, bos = -1, eos = -1, pad = -1;
  std::mutex mutex;

  ~State() {
    if (fd >= 0) ::close(fd);  // EOF: the helper exits
    if (pid > 0) ::waitpid(pid, nullptr, 0);
  }

  void send(const std::string& request) {
    for (size_t sent = 0; sent < request.size();) {
      const ssize_t n = ::send(fd, request.data() + sent, request.size() - sent, MSG_NOSIGNAL);
      if (n <= 0) throw Error("tokenizer " + model.string() + ": the modalkit-spm helper has stopped");
      sent += size_t(n);
    }
  }
  std::string read_exactly(size_t n) {
    std::string out(n, '\0');
    for (size_t got = 0; got < n;) {
      const ssize_t r = ::recv(fd, out.data() + got, n - got, 0);
      if (r <= 0) throw Error("tokenizer " + model.string() + ": the modalkit-spm helper has stopped");
      got += size_t(r);
    }
    return out;
  }
  std::string read_line() {
    std::string line;
    for (char c = 0;;) {
      const ssize_t n = ::recv(fd, &c, 1, 0);
      if (n <= 0) throw Error("tokenizer " + model.string() + ": the modalkit-spm helper has stopped");
      if (c == '\n') return line;
      line += c;
    }
  }
};

Tokenizer::Tokenizer(const std::filesystem::path& model) : state_(std::make_unique<State>()) {
  State& s = *state_;
  s.model = model;
  const std::filesystem::path helper = spm_helper_path();
  if (helper.empty()) {
    throw Error("tokenizer " + model.string() +
                ": the modalkit-spm helper was not found (set MODALKIT_SPM_HELPER to its path; it is installed beside the text plugin)");
  }
  {
    std::ifstream sidecar(model.string() + ".artifact.json");
    const auto doc = nlohmann::json::parse(sidecar, nullptr, /*allow_exceptions=*/false);
    if (doc.is_object() && doc.contains("sha256") && doc.at("sha256").is_string()) s.sha256 = doc.at("sha256");
  }
  const std::string helper_path = helper.string(), model_path = model.string();
  int fds[2];
  if (::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, fds) != 0) throw Error("tokenizer: socketpair failed");
  const char* args[] = {helper_path.c_str(), "serve", model_path.c_str(), nullptr};
  s.pid = ::fork();
  if (s.pid == 0) {  // only async-signal-safe calls from here to exec
    ::dup2(fds[1], 0);
    ::dup2(fds[1], 1);
    ::execv(args[0], const_cast<char* const*>(args));
    ::_exit(127);
  }
  ::close(fds[1]);
  s.fd = fds[0];
  if (s.pid < 0) throw Error("tokenizer: cannot start " + helper_path);
  std::string ready;
  try {
    ready = s.read_line();
  } catch (const Error&) {  // the helper exited: say which files are involved below
  }
  long long pieces = 0, bos = 0, pad = 0, eos = 0;
  if (std::sscanf(ready.c_str(), "ready %lld %lld %lld %lld", &pieces, &bos, &pad, &eos) != 4) {
    throw Error("tokenizer: helper " + helper_path + " did not start with " + model_path +
                " (is the model a SentencePiece model, and the helper the one built with this SDK?)");
  }
  s.pieces = pieces;
  s.bos = bos;
  s.pad = pad;
  s.eos = eos;
}

Tokenizer::~Tokenizer() = default;

std::vector<int64_t> Tokenizer::encode(const std::string& text) const {
  State& s = *state_;
  std::lock_guard<std::mutex> lock(s.mutex);
  s.send(std::to_string(text.size()) + "\n" + text);
  std::istringstream line(s.read_line());
  std::vector<int64_t> ids;
  for (int64_t id; line >> id;) ids.push_back(id);
  return ids;
}

std::string Tokenizer::decode(const std::vector<int64_t>& ids) const {
  State& s = *state_;
  std::string body;
  for (const int64_t id : ids) {
    if (id < 0 || id >= s.pieces) throw Error("tokenizer " + s.model.string() + ": id " + std::to_string(id) + " is not a piece (0.." + std::to_string(s.pieces - 1) + ")");
    if (id == s.bos || id == s.eos || id == s.pad) continue;
    body += (body.empty() ? "" : " ") + std::to_string(id);
  }
  std::lock_guard<std::mutex> lock(s.mutex);
  s.send("decode " + std::to_string(body.size()) + "\n" + body);
  const std::string header = s.read_line();
  size_t n = 0;
  try {
    n = std::stoul(header);
  } catch (const std::exception&) {
    throw Error("tokenizer " + s.model.string() + ": the helper answered \"" + header + "\" to a decode request");
  }
  return s.read_exactly(n);
}

int64_t Tokenizer::pieces() const { return state_->pieces; }
int64_t Tokenizer::bos() const { return state_->bos; }
int64_t Tokenizer::eos() const { return state_->eos; }
int64_t Tokenizer::pad() const { return state_->pad; }
const std::string& Tokenizer::sha256() const { return state_->sha256; }
const std::filesystem::path& Tokenizer::model() const { return state_->model; }

}  // namespace modalkit
