// modalkit-spm: SentencePiece in its own process. Debian 12's libsentencepiece.so.0 exports the
// protobuf-lite it bundles, and a process that also loads LibTorch's libprotobuf.so.32 crashes
// during start-up; so the text plugin and the text-corpus recipe never link SentencePiece and
// talk to this program instead.
//
//   modalkit-spm train ARGS...     SentencePieceTrainer::Train with ARGS (spm_train's flags)
//   modalkit-spm encode MODEL      reads all of stdin as one text, prints its piece ids
//   modalkit-spm serve MODEL       prints "ready PIECES BOS PAD EOS", then answers requests:
//                                  "N\n" + N bytes of text: one line of piece ids;
//                                  "decode N\n" + N bytes of space-separated ids: "M\n" + the M
//                                  bytes of their text
#include <iostream>
#include <sstream>
#include <string>
#include <vector>

#include <sentencepiece_processor.h>
#include <sentencepiece_trainer.h>

namespace {

int fail(const std::string& message) {
  std::cerr << "modalkit-spm: " << message << "\n";
  return 1;
}

void print_ids(const std::vector<int>& ids) {
  for (size_t i = 0; i < ids.size(); ++i) std::cout << (i ? " " : "") << ids[i];
  std::cout << "\n" << std::flush;
}

}  // namespace

int main(int argc, char** argv) {
  std::ios::sync_with_stdio(false);
  const std::string mode = argc > 1 ? argv[1] : "";
  if (mode == "train") {
    std::string args;
    for (int i = 2; i < argc; ++i) args += (args.empty() ? "" : " ") + std::string(argv[i]);
    const auto status = sentencepiece::SentencePieceTrainer::Train(args);
    return status.ok() ? 0 : fail("training failed: " + status.ToString());
  }
  if ((mode != "encode" && mode != "serve") || argc != 3) {
    return fail("usage: modalkit-spm train ARGS... | encode MODEL | serve MODEL");
  }
  sentencepiece::SentencePieceProcessor sp;
  if (const auto status = sp.Load(argv[2]); !status.ok()) return fail("cannot load " + std::string(argv[2]) + ": " + status.ToString());
  if (mode == "encode") {
    std::string text((std::istreambuf_iterator<char>(std::cin)), {});
    print_ids(sp.EncodeAsIds(text));
    return 0;
  }
  std::cout << "ready " << sp.GetPieceSize() << " " << sp.bos_id() << " " << sp.pad_id() << " " << sp.eos_id() << "\n"
            << std::flush;
  for (std::string header; std::getline(std::cin, header);) {
    const bool decode = header.rfind("decode ", 0) == 0;
    size_t n = 0;
    try {
      n = std::stoul(decode ? header.substr(7) : header);
    } catch (const std::exception&) {
      return fail("bad request header \"" + header + "\"");
    }
    std::string body(n, '\0');
    if (n > 0 && !std::cin.read(body.data(), std::streamsize(n))) return fail("request ended early");
    if (!decode) {
      print_ids(sp.EncodeAsIds(body));
      continue;
    }
    std::vector<int> ids;
    std::istringstream in(body);
    for (int id; in >> id;) {
      if (id < 0 || id >= sp.GetPieceSize()) return fail("decode: id " + std::to_string(id) + " is not a piece");
      ids.push_back(id);
    }
    const std::string text = sp.DecodeIds(ids);
    std::cout << text.size() << "\n" << text << std::flush;
  }
  return 0;
}
