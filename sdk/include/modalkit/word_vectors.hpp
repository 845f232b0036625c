/// \file
/// Word vectors in word2vec's text format: the `word_vectors` artifact the word_vectors plugin
/// writes (a line `V D`, then per word the word and its D values), read by plugins that embed
/// class names or words (zero-shot coordination). Since SDK ABI 1.2.
#pragma once

#include <cstdint>
#include <filesystem>
#include <string>
#include <unordered_map>
#include <vector>

#include <ATen/core/Tensor.h>

namespace modalkit {

/// A vocabulary and its vectors.
struct WordVectors {
  std::vector<std::string> words;                   ///< in file order
  at::Tensor vectors;                               ///< `[V, D]` float32, row i = words[i]
  std::unordered_map<std::string, int64_t> index;   ///< word → row
  std::filesystem::path file;                       ///< where they were read, for messages

  /// Row of `word`, or -1 when it is not in the vocabulary.
  int64_t find(const std::string& word) const;
  /// The vector of `word`; throws DataError naming the file when it is not in the vocabulary.
  at::Tensor at(const std::string& word) const;
};

/// Reads a word2vec text file. Throws DataError naming the file and line on a malformed header, a
/// line with another number of values than the header's D, a value that is not a finite number,
/// a repeated word, or fewer or more words than the header's V.
WordVectors read_word_vectors(const std::filesystem::path& file);

}  // namespace modalkit
