// Reading word2vec text files (the word_vectors artifact).
#include "modalkit/word_vectors.hpp"

#include <cmath>
#include <cstdlib>
#include <fstream>
#include <sstream>

#include <ATen/ATen.h>

#include "modalkit/errors.hpp"

namespace modalkit {

int64_t WordVectors::find(const std::string& word) const {
  const auto it = index.find(word);
  return it == index.end() ? -1 : it->second;
}

at::Tensor WordVectors::at(const std::string& word) const {
  const int64_t row = find(word);
  if (row < 0) throw DataError(file.string(), "no vector for \"" + word + "\" (" + std::to_string(words.size()) + " words)");
  return vectors[row];
}

WordVectors read_word_vectors(const std::filesystem::path& file) {
  std::ifstream in(file);
  if (!in) throw DataError(file.string(), "cannot read word vectors");
  WordVectors out;
  out.file = file;
  std::string line;
  int64_t v = 0, d = 0;
  {
    std::getline(in, line);
    std::istringstream header(line);
    std::string rest;
    if (!(header >> v >> d) || (header >> rest) || v < 1 || d < 1) {
      throw DataError(file.string() + ":1", "expected the word2vec header \"WORDS DIMENSIONS\", found \"" + line.substr(0, 80) + "\"");
    }
  }
  std::vector<float> values;
  values.reserve(static_cast<size_t>(v * d));
  int64_t lineno = 1;
  while (std::getline(in, line)) {
    ++lineno;
    if (line.empty()) continue;
    const std::string where = file.string() + ":" + std::to_string(lineno);
    if (static_cast<int64_t>(out.words.size()) == v) throw DataError(where, "more words than the header's " + std::to_string(v));
    const char* p = line.c_str();
    const char* word_end = p;
    while (*word_end != '\0' && *word_end != ' ') ++word_end;
    std::string word(p, word_end);
    if (!out.index.emplace(word, static_cast<int64_t>(out.words.size())).second) {
      throw DataError(where, "the word \"" + word + "\" appears twice");
    }
    out.words.push_back(std::move(word));
    p = word_end;
    int64_t n = 0;
    for (;;) {
      while (*p == ' ') ++p;
      if (*p == '\0' || *p == '\r') break;
      char* end = nullptr;
      const float x = std::strtof(p, &end);
      if (end == p || !std::isfinite(x)) throw DataError(where, "value " + std::to_string(n + 1) + " is not a finite number");
      values.push_back(x);
      ++n;
      p = end;
    }
    if (n != d) throw DataError(where, "\"" + out.words.back() + "\" has " + std::to_string(n) + " values, the header says " + std::to_string(d));
  }
  if (static_cast<int64_t>(out.words.size()) != v) {
    throw DataError(file.string(), std::to_string(out.words.size()) + " words, the header says " + std::to_string(v));
  }
  out.vectors = at::from_blob(values.data(), {v, d}, at::kFloat).clone();
  return out;
}

}  // namespace modalkit
