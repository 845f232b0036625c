#include "registry.hpp"

#include <grp.h>
#include <pwd.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cstdlib>
#include <fstream>
#include <sstream>

#include <boost/dll/library_info.hpp>
#include <boost/dll/shared_library.hpp>

#include "handshake.hpp"
#include "hashing.hpp"
#include "modalkit/build_tag.hpp"
#include "modalkit/errors.hpp"
#include "paths.hpp"
#include "schema/json_file.hpp"
#include "schema/json_schema.hpp"

namespace modalkit::host {

namespace fs = std::filesystem;

const char* kind_name(int32_t kind) {
  switch (kind) {
    case MODALKIT_KIND_MODALITY: return "modality";
    case MODALKIT_KIND_FUSION: return "fusion";
    case MODALKIT_KIND_TRANSFER: return "transfer";
    case MODALKIT_KIND_EVALUATION: return "evaluation";
    case MODALKIT_KIND_LANGUAGE_MODEL: return "language_model";
    case MODALKIT_KIND_STREAM: return "stream";
    default: return "unknown";
  }
}

int32_t kind_value(const std::string& name) {
  for (int32_t k = MODALKIT_KIND_MODALITY; k <= MODALKIT_KIND_STREAM; ++k) {
    if (name == kind_name(k)) return k;
  }
  return 0;
}

std::vector<fs::path> plugin_search_path(const std::vector<std::string>& cli_paths) {
  std::vector<fs::path> out;
  for (const auto& p : cli_paths) out.emplace_back(p);
  if (const char* env = std::getenv("MODALKIT_PLUGIN_PATH")) {
    std::stringstream ss(env);
    std::string item;
    while (std::getline(ss, item, ':')) {
      if (!item.empty()) out.emplace_back(item);
    }
  }
  out.push_back(installed_plugin_dir());
  return out;
}

void check_trusted_location(const fs::path& path, const std::string& what) {
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0) throw Error(what + " " + path.string() + " does not exist");
  const uid_t me = ::geteuid();
  if (st.st_uid != me && st.st_uid != 0) {
    throw Error(what + " " + path.string() + " belongs to uid " + std::to_string(st.st_uid) +
                ", not to you (uid " + std::to_string(me) + ") or root; refusing to load code from it");
  }
  // Group-writable is accepted only for a user-private group (the owner's own primary group),
  // the usual umask-002 layout; anything others can write to could swap the code we run.
  bool group_ok = (st.st_mode & S_IWGRP) == 0;
  if (!group_ok) {
    const struct passwd* pw = ::getpwuid(st.st_uid);
    const struct group* gr = ::getgrgid(st.st_gid);
    group_ok = pw != nullptr && gr != nullptr && pw->pw_gid == st.st_gid &&
               std::string(pw->pw_name) == gr->gr_name;
  }
  if ((st.st_mode & S_IWOTH) != 0 || !group_ok) {
    throw Error(what + " " + path.string() +
                " is writable by other users; refusing to load code from it (fix: chmod go-w '" +
                path.string() + "', or move the plugin into a directory only you can write to)");
  }
}

PluginRegistry::PluginRegistry(const std::vector<fs::path>& search_path) : search_path_(search_path) {
  for (const auto& dir : search_path_) {
    std::error_code ec;
    if (!fs::is_directory(dir, ec)) continue;  // absent entries (say, no install) are not errors
    scan(dir, 0);
  }
}

void PluginRegistry::scan(const fs::path& dir, int depth) {
  std::vector<fs::path> entries;
  std::error_code ec;
  for (fs::directory_iterator it(dir, ec), end; !ec && it != end; it.increment(ec)) {
    entries.push_back(it->path());
  }
  if (ec) {
    problems_.push_back({dir, "cannot list directory: " + ec.message()});
    return;
  }
  std::sort(entries.begin(), entries.end());  // deterministic "first wins"
  for (const auto& p : entries) {
    const std::string fname = p.filename().string();
    if (fs::is_directory(p, ec)) {
      if (depth < 4 && fname[0] != '.') scan(p, depth + 1);
      continue;
    }
    const std::string suffix = ".plugin.json";
    if (fname.size() <= suffix.size() || fname.compare(fname.size() - suffix.size(), suffix.size(), suffix) != 0) {
      continue;
    }
    try {
      schema::Manifest m = schema::load_manifest(p);
      const std::string stem = fname.substr(0, fname.size() - suffix.size());
      if (stem != m.name) {
        problems_.push_back({p, "file is named for plugin \"" + stem + "\" but its manifest says \"" + m.name + "\""});
        continue;
      }
      auto [it, inserted] = manifests_.emplace(m.name, m);
      if (!inserted) {
        problems_.push_back({p, "plugin \"" + m.name + "\" is shadowed by " + it->second.file.string() +
                                    " (earlier on the search path)"});
      }
    } catch (const std::exception& e) {
      problems_.push_back({p, e.what()});
    }
  }
}

std::string PluginRegistry::skipped_reason(const std::string& name) const {
  std::string out;
  for (const auto& p : problems_) {
    if (p.file.filename() == name + ".plugin.json") {
      out += (out.empty() ? "" : "; ") + p.file.string() + " was skipped: " + p.message;
    }
  }
  return out;
}

const schema::Manifest* PluginRegistry::find(const std::string& name) const {
  auto it = manifests_.find(name);
  return it == manifests_.end() ? nullptr : &it->second;
}

std::vector<std::string> PluginRegistry::names() const {
  std::vector<std::string> out;
  for (const auto& [name, m] : manifests_) out.push_back(name);
  return out;
}

namespace {

/// Every loaded library, intentionally leaked: unloading code while objects it made may still
/// run destructors (or static destructors run in an unknown order) is how plugin hosts crash at
/// exit. The OS unmaps everything when the process ends.
std::vector<std::shared_ptr<boost::dll::shared_library>>& library_store() {
  static auto* store = new std::vector<std::shared_ptr<boost::dll::shared_library>>();
  return *store;
}

}  // namespace

const LoadedPlugin& PluginRegistry::load(const std::string& name, const std::optional<std::string>& pin) {
  if (auto it = loaded_.find(name); it != loaded_.end()) {
    if (pin && *pin != it->second.sha256) {
      throw PluginError(name, "library sha256 is " + it->second.sha256 + ", the pipeline pins " + *pin);
    }
    return it->second;
  }
  const schema::Manifest* m = find(name);
  if (m == nullptr) {
    const std::string why = skipped_reason(name);
    throw PluginError(name, "no manifest found (known plugins: " + schema::join_names(names()) + ")" +
                                (why.empty() ? "" : "; " + why));
  }
  auto fail = [&](const std::string& what) -> PluginError { return PluginError(name, what); };

  // Location and permission rules, before anything of the library is mapped.
  const fs::path manifest_dir = fs::weakly_canonical(m->file).parent_path();
  const fs::path lib_path = m->library_path();
  std::error_code ec;
  if (!fs::exists(lib_path, ec)) {
    throw fail("library " + lib_path.string() + " named by " + m->file.string() + " does not exist");
  }
  const fs::path real_lib = fs::canonical(lib_path, ec);
  if (ec || real_lib.parent_path() != manifest_dir) {
    throw fail("library " + lib_path.string() + " resolves to " + real_lib.string() +
               ", outside the manifest's own directory " + manifest_dir.string());
  }
  try {
    check_trusted_location(manifest_dir, "plugin directory");
    check_trusted_location(real_lib, "plugin library");
  } catch (const Error& e) {
    throw fail(e.what());
  }
  LoadedPlugin loaded;
  loaded.manifest = *m;
  loaded.sha256 = sha256_file(real_lib);
  if (pin && *pin != loaded.sha256) {
    throw fail("library " + real_lib.string() + " has sha256 " + loaded.sha256 + ", the pipeline pins " + *pin);
  }

  // The entry must be a Boost.DLL alias: a pointer stored in the library's "boostdll"
  // section. Read from the file, before anything is mapped, so that a plain function that
  // merely has the entry's name is never dereferenced as that pointer.
  try {
    boost::dll::library_info info(boost::dll::fs::path(real_lib.string()));
    const auto aliases = info.symbols("boostdll");
    if (std::find(aliases.begin(), aliases.end(), MODALKIT_ENTRY_SYMBOL) == aliases.end()) {
      const auto all = info.symbols();
      const bool plain = std::find(all.begin(), all.end(), MODALKIT_ENTRY_SYMBOL) != all.end();
      throw fail(real_lib.string() + (plain ? " exports \"" MODALKIT_ENTRY_SYMBOL "\" but not as a Boost.DLL alias"
                                            : " has no entry symbol \"" MODALKIT_ENTRY_SYMBOL "\"") +
                 " (expected a library built with MODALKIT_PLUGIN from the modalkit SDK)");
    }
  } catch (const PluginError&) {
    throw;
  } catch (const std::exception& e) {
    throw fail("cannot read the symbol table of " + real_lib.string() + ": " + e.what());
  }

  std::shared_ptr<boost::dll::shared_library> lib;
  try {
    // rtld_now: an unresolved symbol (a plugin linked against another SDK or LibTorch build)
    // fails here, with the loader's message, instead of at the first call deep in training.
    lib = std::make_shared<boost::dll::shared_library>(
        boost::dll::fs::path(real_lib.string()),
        boost::dll::load_mode::rtld_now | boost::dll::load_mode::rtld_local);
  } catch (const std::exception& e) {
    throw fail("cannot load " + real_lib.string() + ": " + e.what());
  }
  library_store().push_back(lib);  // never unloaded, even when a check below refuses it
  const modalkit_plugin_descriptor* d = lib->get_alias<const modalkit_plugin_descriptor*()>(MODALKIT_ENTRY_SYMBOL)();
  if (d == nullptr) throw fail("entry returned no descriptor");

  const modalkit_build_tag host_tag = current_build_tag();
  if (auto why = check_handshake(*d, host_tag, MODALKIT_SDK_ABI_MAJOR, MODALKIT_SDK_ABI_MINOR)) {
    throw fail("refused by the handshake: " + *why);
  }
  // The handshake passed: C++ types from the plugin are now safe to use.
  const std::string bin_name = d->name ? d->name : "";
  const std::string bin_version = d->version ? d->version : "";
  if (bin_name != m->name) {
    throw fail("the library calls itself \"" + bin_name + "\" but its manifest " + m->file.string() +
               " says \"" + m->name + "\"");
  }
  if (bin_version != m->version) {
    throw fail("the library is version " + bin_version + " but its manifest says " + m->version);
  }
  if (d->abi_major != static_cast<uint32_t>(m->abi_major) || d->abi_minor != static_cast<uint32_t>(m->abi_minor)) {
    throw fail("the library was built for SDK ABI " + std::to_string(d->abi_major) + "." +
               std::to_string(d->abi_minor) + " but its manifest declares " + std::to_string(m->abi_major) +
               "." + std::to_string(m->abi_minor));
  }
  try {
    if (d->manifest_json == nullptr ||
        schema::parse_json_text(d->manifest_json, "embedded manifest") != m->raw) {
      throw fail("the manifest embedded in the library differs from " + m->file.string() +
                 " (rebuild the plugin, or reinstall the manifest that came with it)");
    }
  } catch (const PluginError&) {
    throw;
  } catch (const std::exception& e) {
    throw fail(std::string("embedded manifest: ") + e.what());
  }
  bool has_main = false;
  for (uint32_t i = 0; i < d->factory_count; ++i) {
    const modalkit_factory& f = d->factories[i];
    if (f.name != nullptr && m->name == f.name && kind_name(f.kind) == m->kind && f.create != nullptr) {
      has_main = true;
    }
  }
  if (!has_main) {
    throw fail("the library has no factory for a " + m->kind + " named \"" + m->name + "\"");
  }
  loaded.descriptor = d;
  loaded.library = lib;
  return loaded_.emplace(name, std::move(loaded)).first->second;
}

std::shared_ptr<Component> PluginRegistry::create_component(const std::string& plugin, int32_t kind,
                                                            const CreateArgs& args,
                                                            const std::optional<std::string>& pin) {
  const LoadedPlugin& lp = load(plugin, pin);
  const modalkit_factory* factory = nullptr;
  for (uint32_t i = 0; i < lp.descriptor->factory_count; ++i) {
    const modalkit_factory& f = lp.descriptor->factories[i];
    if (f.kind == kind && f.name != nullptr && plugin == f.name) factory = &f;
  }
  if (factory == nullptr) {
    throw PluginError(plugin, std::string("is not a ") + kind_name(kind) + " plugin (its manifest says " +
                                  lp.manifest.kind + ")");
  }
  std::shared_ptr<Component> out;
  std::array<char, 2048> error{};
  const int32_t rc = factory->create(&args, &out, error.data(), error.size());
  if (rc != 0 || !out) {
    throw PluginError(plugin, std::string("could not create its ") + kind_name(kind) + " for " + args.instance +
                                  ": " + (error[0] ? error.data() : "factory returned nothing"));
  }
  out->attach_library(plugin, lp.library);
  return out;
}

void PluginRegistry::throw_wrong_type(const std::string& plugin, int32_t kind) {
  throw PluginError(plugin, std::string("made an object that does not implement the ") + kind_name(kind) +
                                " interface");
}

}  // namespace modalkit::host
