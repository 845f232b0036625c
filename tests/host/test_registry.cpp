// Plugin discovery and loading: the handshake policy, and every deliberately broken plugin of
// tests/plugins refused or contained with a message naming the plugin and both sides.
#include <sys/stat.h>

#include <cstdlib>
#include <fstream>

#include <gtest/gtest.h>

#include "error_of.hpp"
#include "handshake.hpp"
#include "modalkit/build_tag.hpp"
#include "modalkit/fusion.hpp"
#include "registry.hpp"

namespace fs = std::filesystem;
using modalkit::host::PluginRegistry;

namespace {

fs::path test_plugin_dir() {
  const char* d = std::getenv("MODALKIT_TEST_PLUGIN_DIR");
  return d ? fs::path(d) : fs::path();
}

std::string load_error(PluginRegistry& reg, const std::string& name) {
  try {
    reg.load(name);
  } catch (const modalkit::PluginError& e) {
    EXPECT_EQ(e.plugin(), name);
    return e.what();
  } catch (const std::exception& e) {
    ADD_FAILURE() << "not a PluginError: " << e.what();
    return e.what();
  }
  return "";
}

bool contains(const std::string& text, const std::string& part) { return text.find(part) != std::string::npos; }

modalkit_plugin_descriptor good_descriptor() {
  modalkit_plugin_descriptor d{};
  d.struct_size = sizeof d;
  d.abi_major = MODALKIT_SDK_ABI_MAJOR;
  d.abi_minor = MODALKIT_SDK_ABI_MINOR;
  d.build = modalkit::current_build_tag();
  return d;
}

/// A fresh directory under the build tree (not /tmp: world-writable parents are the point of
/// another test), removed at the end.
struct TempDir {
  fs::path path;
  explicit TempDir(const std::string& name) {
    path = fs::current_path() / ("tmp-" + name + "-" + std::to_string(::getpid()));
    fs::remove_all(path);
    fs::create_directories(path);
    fs::permissions(path, fs::perms::owner_all | fs::perms::group_read | fs::perms::group_exec |
                              fs::perms::others_read | fs::perms::others_exec);
  }
  ~TempDir() { fs::remove_all(path); }
};

void copy_plugin(const std::string& name, const fs::path& to) {
  fs::copy_file(test_plugin_dir() / (name + ".plugin.json"), to / (name + ".plugin.json"));
  fs::copy_file(test_plugin_dir() / ("libmodalkit_" + name + ".so"), to / ("libmodalkit_" + name + ".so"));
}

}  // namespace

TEST(Handshake, AcceptsItsOwnBuildAndOlderMinor) {
  const auto host = modalkit::current_build_tag();
  auto d = good_descriptor();
  EXPECT_FALSE(modalkit::host::check_handshake(d, host, MODALKIT_SDK_ABI_MAJOR, MODALKIT_SDK_ABI_MINOR));
  EXPECT_FALSE(modalkit::host::check_handshake(d, host, MODALKIT_SDK_ABI_MAJOR, MODALKIT_SDK_ABI_MINOR + 3));
}

TEST(Handshake, RefusesEachMismatchNamingBothSides) {
  const auto host = modalkit::current_build_tag();
  auto check = [&](modalkit_plugin_descriptor d) {
    auto why = modalkit::host::check_handshake(d, host, MODALKIT_SDK_ABI_MAJOR, MODALKIT_SDK_ABI_MINOR);
    return why ? *why : std::string();
  };
  auto d = good_descriptor();
  d.abi_major = 2;
  // Another major may lay out everything after the fixed prefix differently: its build tag
  // must not be read at all (these pointers would crash if dereferenced).
  d.build.compiler_family = reinterpret_cast<const char*>(0x1);
  d.build.sdk_version = reinterpret_cast<const char*>(0x1);
  auto msg = check(d);
  EXPECT_TRUE(contains(msg, "SDK ABI major 2 does not match the host's 1")) << msg;
  EXPECT_TRUE(contains(msg, "rebuild the plugin against SDK " MODALKIT_SDK_VERSION)) << msg;

  d = good_descriptor();
  d.abi_minor = 5;
  msg = check(d);
  EXPECT_TRUE(contains(msg, "plugin built with")) << msg;
  EXPECT_TRUE(contains(msg, "host built with")) << msg;

  d = good_descriptor();
  d.abi_minor = 5;
  EXPECT_TRUE(contains(check(d), "SDK ABI minor 5 is newer than the host's " + std::to_string(MODALKIT_SDK_ABI_MINOR)));

  d = good_descriptor();
  d.build.torch_minor = 12;
  msg = check(d);
  EXPECT_TRUE(contains(msg, "LibTorch 1.12 does not match the host's LibTorch 1.13")) << msg;

  d = good_descriptor();
  d.build.cxx11_abi = 0;
  EXPECT_TRUE(contains(check(d), "_GLIBCXX_USE_CXX11_ABI=0 does not match the host's 1"));

  d = good_descriptor();
  d.build.compiler_family = "clang";
  EXPECT_TRUE(contains(check(d), "compiler clang"));

  d = good_descriptor();
  d.build.compiler_major += 1;
  EXPECT_TRUE(contains(check(d), "does not match the host's gcc"));

  d = good_descriptor();
  d.struct_size = 8;
  EXPECT_TRUE(contains(check(d), "descriptor is 8 bytes"));
}

TEST(Registry, DiscoveryRefusesBrokenManifestsWithoutLoadingAnything) {
  PluginRegistry reg({test_plugin_dir()});
  EXPECT_NE(reg.find("faulty"), nullptr);
  EXPECT_NE(reg.find("badabi"), nullptr);
  EXPECT_EQ(reg.find("brokenjson"), nullptr);
  EXPECT_EQ(reg.find("badschema"), nullptr);
  EXPECT_EQ(reg.find("escape"), nullptr);
  std::map<std::string, std::string> problems;
  for (const auto& p : reg.problems()) problems[p.file.filename().string()] = p.message;
  ASSERT_TRUE(problems.count("brokenjson.plugin.json"));
  EXPECT_TRUE(contains(problems["brokenjson.plugin.json"], "brokenjson.plugin.json:2:")) << problems["brokenjson.plugin.json"];
  ASSERT_TRUE(problems.count("badschema.plugin.json"));
  EXPECT_TRUE(contains(problems["badschema.plugin.json"], "/kind")) << problems["badschema.plugin.json"];
  EXPECT_TRUE(contains(problems["badschema.plugin.json"], "/version")) << problems["badschema.plugin.json"];
  ASSERT_TRUE(problems.count("escape.plugin.json"));
  EXPECT_TRUE(contains(problems["escape.plugin.json"], "/library")) << problems["escape.plugin.json"];

  // Asking for a skipped plugin by name says why it is unknown, not only that it is.
  auto msg = load_error(reg, "brokenjson");
  EXPECT_TRUE(contains(msg, "plugin brokenjson: no manifest found")) << msg;
  EXPECT_TRUE(contains(msg, "brokenjson.plugin.json was skipped: ")) << msg;
  EXPECT_TRUE(contains(msg, "brokenjson.plugin.json:2:")) << msg;
}

TEST(Registry, RefusesWrongAbiMajorNamingBothVersions) {
  PluginRegistry reg({test_plugin_dir()});
  auto msg = load_error(reg, "badabi");
  EXPECT_TRUE(contains(msg, "plugin badabi: refused by the handshake: SDK ABI major 99 does not match the host's 1"))
      << msg;
}

TEST(Registry, RefusesAnotherLibTorch) {
  PluginRegistry reg({test_plugin_dir()});
  auto msg = load_error(reg, "badtorch");
  EXPECT_TRUE(contains(msg, "LibTorch 1.12 does not match the host's LibTorch 1.13")) << msg;
}

TEST(Registry, RefusesMissingEntrySymbol) {
  PluginRegistry reg({test_plugin_dir()});
  auto msg = load_error(reg, "noentry");
  EXPECT_TRUE(contains(msg, "has no entry symbol \"modalkit_plugin_entry\"")) << msg;
}

TEST(Registry, RefusesPlainFunctionNamedLikeTheEntry) {
  PluginRegistry reg({test_plugin_dir()});
  auto msg = load_error(reg, "plainentry");
  EXPECT_TRUE(contains(msg, "plugin plainentry:")) << msg;
  EXPECT_TRUE(contains(msg, "exports \"modalkit_plugin_entry\" but not as a Boost.DLL alias")) << msg;
}

TEST(Registry, RefusesBinaryNameDifferentFromManifest) {
  PluginRegistry reg({test_plugin_dir()});
  auto msg = load_error(reg, "misnamed");
  EXPECT_TRUE(contains(msg, "the library calls itself \"other\" but its manifest")) << msg;
}

TEST(Registry, RefusesEmbeddedManifestThatDrifted) {
  PluginRegistry reg({test_plugin_dir()});
  auto msg = load_error(reg, "drift");
  EXPECT_TRUE(contains(msg, "embedded in the library differs from")) << msg;
}

TEST(Registry, RefusesMissingLibraryAndUnknownPlugin) {
  PluginRegistry reg({test_plugin_dir()});
  EXPECT_TRUE(contains(load_error(reg, "nolib"), "does not exist"));
  auto msg = load_error(reg, "nosuchplugin");
  EXPECT_TRUE(contains(msg, "plugin nosuchplugin: no manifest found (known plugins: ")) << msg;
}

TEST(Registry, RefusesDirectoryOthersCanWrite) {
  TempDir dir("writable");
  copy_plugin("faulty", dir.path);
  fs::permissions(dir.path, fs::perms::all);  // 0777
  PluginRegistry reg({dir.path});
  auto msg = load_error(reg, "faulty");
  EXPECT_TRUE(contains(msg, "is writable by other users")) << msg;
  EXPECT_TRUE(contains(msg, "chmod go-w")) << msg;
}

TEST(Registry, RefusesLibraryOthersCanWrite) {
  TempDir dir("writable-lib");
  copy_plugin("faulty", dir.path);
  fs::permissions(dir.path / "libmodalkit_faulty.so", fs::perms::others_write, fs::perm_options::add);
  PluginRegistry reg({dir.path});
  EXPECT_TRUE(contains(load_error(reg, "faulty"), "plugin library"));
}

TEST(Registry, RefusesPluginDroppedIntoTmp) {
  // /tmp is world-writable: code there could be swapped by anyone.
  struct stat st {};
  ASSERT_EQ(::stat("/tmp", &st), 0);
  ASSERT_TRUE(st.st_mode & S_IWOTH);
  auto msg = modalkit::testing::error_of([] { modalkit::host::check_trusted_location("/tmp", "plugin directory"); });
  EXPECT_TRUE(contains(msg, "plugin directory /tmp is writable by other users")) << msg;
  // The whole path, with a directory like /tmp (sticky, world-writable) of our own: scanning
  // /tmp itself would also find every other plugin tree below it.
  char tmpl[] = "/tmp/modalkit-test-XXXXXX";
  ASSERT_NE(::mkdtemp(tmpl), nullptr);
  const fs::path dir = tmpl;
  copy_plugin("faulty", dir);
  ASSERT_EQ(::chmod(dir.c_str(), 01777), 0);
  PluginRegistry reg({dir});
  msg = load_error(reg, "faulty");
  fs::remove_all(dir);
  EXPECT_TRUE(contains(msg, "plugin directory " + dir.string() + " is writable by other users")) << msg;
}

TEST(Registry, RefusesLibrarySymlinkedOutsideItsDirectory) {
  TempDir outside("outside");
  TempDir dir("symlinked");
  fs::copy_file(test_plugin_dir() / "libmodalkit_faulty.so", outside.path / "libmodalkit_faulty.so");
  fs::copy_file(test_plugin_dir() / "faulty.plugin.json", dir.path / "faulty.plugin.json");
  fs::create_symlink(outside.path / "libmodalkit_faulty.so", dir.path / "libmodalkit_faulty.so");
  PluginRegistry reg({dir.path});
  auto msg = load_error(reg, "faulty");
  EXPECT_TRUE(contains(msg, "outside the manifest's own directory")) << msg;
}

TEST(Registry, Sha256PinIsEnforced) {
  PluginRegistry reg({test_plugin_dir()});
  const std::string actual = modalkit::host::sha256_file(test_plugin_dir() / "libmodalkit_faulty.so");
  EXPECT_EQ(actual.size(), 64u);
  try {
    reg.load("faulty", std::string(64, '0'));
    FAIL() << "a wrong pin was accepted";
  } catch (const modalkit::PluginError& e) {
    EXPECT_TRUE(contains(e.what(), "has sha256 " + actual + ", the pipeline pins 000")) << e.what();
  }
  EXPECT_EQ(reg.load("faulty", actual).sha256, actual);
}

TEST(Registry, ThrowingConstructorIsContained) {
  PluginRegistry reg({test_plugin_dir()});
  modalkit::CreateArgs args;
  args.config = modalkit::Config(nlohmann::json{{"fail", "construct"}}, "/fusion/config");
  args.instance = "fusion";
  try {
    reg.create<modalkit::FusionOperator>("faulty", MODALKIT_KIND_FUSION, args);
    FAIL() << "no error";
  } catch (const modalkit::PluginError& e) {
    EXPECT_EQ(std::string(e.what()),
              "plugin faulty: could not create its fusion for fusion: constructor failed on purpose");
  }
}

TEST(Registry, WrongKindIsRefusedAndObjectsWork) {
  PluginRegistry reg({test_plugin_dir()});
  modalkit::CreateArgs args;
  args.config = modalkit::Config(nlohmann::json{{"fail", "none"}}, "/fusion/config");
  args.d_model = 8;
  try {
    reg.create<modalkit::FusionOperator>("faulty", MODALKIT_KIND_MODALITY, args);
    FAIL() << "no error";
  } catch (const modalkit::PluginError& e) {
    EXPECT_TRUE(contains(e.what(), "is not a modality plugin (its manifest says fusion)")) << e.what();
  }
  auto fusion = reg.create<modalkit::FusionOperator>("faulty", MODALKIT_KIND_FUSION, args);
  EXPECT_EQ(fusion->plugin_name(), "faulty");
  EXPECT_EQ(fusion->output_width(), 8);  // a virtual call into the plugin, via the SDK's RTTI
}
