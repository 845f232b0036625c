// Tests of the JSON Schema layer (host/schema): the three built-in schemas, error messages and
// pointers, default filling, manifests, pipeline validation against plugin manifests, JSON file
// reading, and agreement with valijson (the reference implementation).
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>
#include <string>
#include <thread>
#include <vector>

#include "embedded_schemas.hpp"
#include "schema/builtin_schemas.hpp"
#include "schema/internal/compiled_schema.hpp"
#include "schema/json_file.hpp"
#include "schema/json_schema.hpp"
#include "schema/manifest.hpp"
#include "schema/pipeline.hpp"

#ifndef MODALKIT_SOURCE_DIR
#error "define MODALKIT_SOURCE_DIR as the repository root"
#endif

namespace fs = std::filesystem;
using nlohmann::json;
using namespace modalkit::schema;

namespace {

const fs::path kSource = MODALKIT_SOURCE_DIR;

/// A directory of its own for a test, removed afterwards.
class TempDir {
 public:
  TempDir() {
    path_ = fs::temp_directory_path() /
            ("modalkit_test_schema_" + std::to_string(::testing::UnitTest::GetInstance()->random_seed()) + "_" +
             ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::remove_all(path_);
    fs::create_directories(path_);
  }
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(path_, ec);
  }
  fs::path write(const std::string& name, const std::string& text) const {
    const fs::path p = path_ / name;
    std::ofstream(p, std::ios::binary) << text;
    return p;
  }
  const fs::path& path() const { return path_; }

 private:
  fs::path path_;
};

/// "pointer: message" lines, for readable assertion failures.
std::vector<std::string> lines(const std::vector<SchemaError>& errors) {
  std::vector<std::string> out;
  for (const auto& e : errors) out.push_back((e.pointer.empty() ? "/" : e.pointer) + ": " + e.message);
  return out;
}

bool has_error(const std::vector<SchemaError>& errors, const std::string& pointer, const std::string& message) {
  return std::any_of(errors.begin(), errors.end(),
                     [&](const SchemaError& e) { return e.pointer == pointer && e.message == message; });
}

#define EXPECT_ERROR(errors, pointer, message)                                                   \
  EXPECT_TRUE(has_error((errors), (pointer), (message)))                                         \
      << "expected " << (pointer) << ": " << (message) << "\nin:\n"                              \
      << format_errors((errors), "")

json manifest_json(const std::string& name, const std::string& kind, const json& config_schema) {
  return json{{"name", name},
              {"kind", kind},
              {"version", "0.1.0"},
              {"abi", {{"major", 1}, {"minor", 0}}},
              {"library", "libmodalkit_" + name + ".so"},
              {"description", "test plugin"},
              {"config_schema", config_schema}};
}

/// Manifests of fake plugins: two modalities, a fusion and a transfer strategy.
class FakePlugins {
 public:
  FakePlugins() {
    add(manifest_json("image", "modality", json::parse(R"({
      "type": "object", "additionalProperties": false,
      "properties": {
        "d_model": {"type": "integer", "minimum": 1, "default": 64},
        "channels": {"type": "integer", "enum": [1, 3], "default": 1},
        "augment": {"type": "object", "default": {},
                    "properties": {"flip": {"type": "boolean", "default": false}}}
      }})")));
    add(manifest_json("audio", "modality", json::parse(R"({
      "type": "object",
      "properties": {"n_mels": {"type": "integer", "minimum": 1, "default": 40}}})")));
    add(manifest_json("concat", "fusion", json{{"type", "object"}}));
    add(manifest_json("supervised", "transfer", json{{"type", "object"}}));
    add(manifest_json("skipgram", "stream", json{{"type", "object"}}));
    json translation = manifest_json("translation", "transfer", json{{"type", "object"}});
    translation["learns_from_unlabelled"] = true;
    add(translation);
    json multitask = manifest_json("multitask", "transfer", json{{"type", "object"}});
    multitask["uses_fusion"] = false;
    add(multitask);
  }
  ManifestLookup lookup() const {
    return [this](const std::string& name) -> const Manifest* {
      auto it = manifests_.find(name);
      return it == manifests_.end() ? nullptr : &it->second;
    };
  }
  std::vector<std::string> names() const {
    std::vector<std::string> out;
    for (const auto& [name, m] : manifests_) out.push_back(name);
    return out;
  }

 private:
  void add(const json& doc) {
    Manifest m = parse_manifest(doc, "/plugins/" + doc.at("name").get<std::string>() + ".plugin.json");
    manifests_.emplace(m.name, std::move(m));
  }
  std::map<std::string, Manifest> manifests_;
};

json minimal_pipeline() {
  return json::parse(R"({
    "name": "test",
    "data": {"dataset": "data/set/dataset.json"},
    "modalities": {"image": {"plugin": "image", "field": "image"}},
    "fusion": {"plugin": "concat"},
    "transfer": {"plugin": "supervised"},
    "tasks": {"label": {"type": "multiclass", "target": "label"}}
  })");
}

std::vector<SchemaError> pipeline_errors(json doc) {
  return builtin_schema("pipeline").validate(doc);
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// The built-in schemas

TEST(BuiltinSchemas, CompileAndMatchTheFilesInSchemasDir) {
  const std::map<std::string, std::pair<const char*, const char*>> files = {
      {"plugin", {"schemas/plugin.schema.json", kPluginSchema}},
      {"pipeline", {"schemas/pipeline.schema.json", kPipelineSchema}},
      {"dataset", {"schemas/dataset.schema.json", kDatasetSchema}}};
  for (const auto& [name, file] : files) {
    const JsonSchema& schema = builtin_schema(name);
    EXPECT_EQ(schema.document(), read_json_file(kSource / file.first)) << name;
    EXPECT_EQ(schema.document(), json::parse(file.second)) << name;
    EXPECT_EQ(schema.document().at("$schema"), "http://json-schema.org/draft-07/schema#");
  }
  EXPECT_THROW(builtin_schema("run"), std::out_of_range);
}

TEST(BuiltinSchemas, EveryDefaultIsValidAgainstItsOwnSubschema) {
  // compile() refuses invalid defaults; check it independently by walking the documents.
  for (const char* name : {"plugin", "pipeline", "dataset"}) {
    const json& doc = builtin_schema(name).document();
    int defaults = 0;
    std::vector<std::pair<std::string, const json*>> stack{{"", &doc}};
    while (!stack.empty()) {
      auto [pointer, node] = stack.back();
      stack.pop_back();
      if (!node->is_structured()) continue;
      if (node->is_object() && node->contains("default") && node->contains("type")) {
        const JsonSchema sub = JsonSchema::compile(*node, std::string(name) + pointer);
        EXPECT_TRUE(sub.validate(node->at("default")).empty()) << name << pointer;
        EXPECT_TRUE(reference_validate(sub, node->at("default")).empty()) << name << pointer;
        ++defaults;
      }
      if (node->is_object()) {
        for (const auto& [key, child] : node->items()) {
          if (key != "default" && key != "enum" && key != "const") stack.emplace_back(append_pointer(pointer, key), &child);
        }
      } else {
        for (std::size_t i = 0; i < node->size(); ++i) stack.emplace_back(pointer + "/" + std::to_string(i), &(*node)[i]);
      }
    }
    if (std::string(name) == "pipeline") {
      EXPECT_GE(defaults, 15);
    }
  }
}

TEST(BuiltinSchemas, SharedAcrossThreads) {
  std::vector<const JsonSchema*> seen(4);
  std::vector<std::thread> threads;
  for (std::size_t i = 0; i < seen.size(); ++i) {
    threads.emplace_back([&seen, i] {
      seen[i] = &builtin_schema("pipeline");
      EXPECT_TRUE(seen[i]->validate(minimal_pipeline()).empty());
    });
  }
  for (auto& t : threads) t.join();
  for (const JsonSchema* s : seen) EXPECT_EQ(s, seen[0]);
}

TEST(BuiltinSchemas, RepositoryManifestsAndDatasetsAreValid) {
  int manifests = 0;
  for (const auto& entry : fs::recursive_directory_iterator(kSource / "plugins")) {
    const std::string fname = entry.path().filename().string();
    if (fname.size() > 12 && fname.substr(fname.size() - 12) == ".plugin.json") {
      const Manifest m = load_manifest(entry.path());
      EXPECT_EQ(m.name + ".plugin.json", fname);
      ++manifests;
    }
  }
  EXPECT_GE(manifests, 3);
  const fs::path dataset = kSource / "data/embedded/fashion-mnist/dataset.json";
  if (fs::exists(dataset)) {
    EXPECT_TRUE(builtin_schema("dataset").validate(read_json_file(dataset)).empty());
  }
}

// ---------------------------------------------------------------------------------------------
// Messages and pointers

TEST(Validation, ValidPipelinePassesAndGetsDefaults) {
  FakePlugins plugins;
  json doc = minimal_pipeline();
  const auto errors = validate_pipeline(doc, plugins.lookup(), plugins.names());
  ASSERT_TRUE(errors.empty()) << format_errors(errors, "pipeline");
  EXPECT_EQ(doc.at(json::json_pointer("/train/epochs")), 5);
  EXPECT_EQ(doc.at(json::json_pointer("/train/batch_size")), 64);
  EXPECT_DOUBLE_EQ(doc.at(json::json_pointer("/train/optimizer/lr")).get<double>(), 0.001);
  EXPECT_EQ(doc.at(json::json_pointer("/train/optimizer/name")), "adam");
  EXPECT_EQ(doc.at(json::json_pointer("/train/device")), "cpu");
  EXPECT_EQ(doc.at(json::json_pointer("/train/deterministic")), true);
  EXPECT_EQ(doc.at(json::json_pointer("/seed")), 0);
  EXPECT_EQ(doc.at(json::json_pointer("/d_model")), 64);
  EXPECT_EQ(doc.at(json::json_pointer("/data/label_fraction")), 1);
  EXPECT_EQ(doc.at(json::json_pointer("/data/splits/val")), "val");
  EXPECT_EQ(doc.at(json::json_pointer("/tasks/label/metrics")), json::array({"accuracy"}));
  EXPECT_EQ(doc.at(json::json_pointer("/evaluate/split")), "test");
  EXPECT_FALSE(doc.at("evaluate").contains("modalities"));  // no default: all modalities
  EXPECT_EQ(doc.at(json::json_pointer("/fusion/config")), json::object());
}

TEST(Validation, DefaultsNeverOverwriteAndFillInsideFilledDefaults) {
  json doc = minimal_pipeline();
  doc["train"] = {{"epochs", 9}, {"optimizer", {{"name", "sgd"}}}};
  builtin_schema("pipeline").fill_defaults(doc);
  EXPECT_EQ(doc.at(json::json_pointer("/train/epochs")), 9);
  EXPECT_EQ(doc.at(json::json_pointer("/train/optimizer/name")), "sgd");
  EXPECT_DOUBLE_EQ(doc.at(json::json_pointer("/train/optimizer/momentum")).get<double>(), 0.9);
  EXPECT_EQ(doc.at(json::json_pointer("/train/threads")), 2);
}

TEST(Validation, WrongTypeGivesPointerAndValueFound) {
  json doc = minimal_pipeline();
  doc["train"] = {{"epochs", "5"}};
  doc["seed"] = 1.5;
  const auto errors = pipeline_errors(doc);
  EXPECT_EQ(lines(errors), (std::vector<std::string>{"/seed: must be an integer (got 1.5)",
                                                     "/train/epochs: must be an integer (got \"5\")"}));
}

TEST(Validation, BoundsEnumsPatterns) {
  json doc = minimal_pipeline();
  doc["train"] = {{"epochs", 0}, {"optimizer", {{"lr", 0}}}, {"device", "gpu"}};
  doc["tasks"]["label"]["type"] = "multi";
  doc["data"]["label_fraction"] = 1.5;
  const auto errors = pipeline_errors(doc);
  EXPECT_ERROR(errors, "/train/epochs", "must be >= 1 (got 0)");
  EXPECT_ERROR(errors, "/train/optimizer/lr", "must be > 0 (got 0)");
  EXPECT_ERROR(errors, "/train/device", "must match the pattern ^(cpu|cuda(:[0-9]+)?)$ (got \"gpu\")");
  EXPECT_ERROR(errors, "/data/label_fraction", "must be <= 1 (got 1.5)");
  EXPECT_ERROR(errors, "/tasks/label/type",
               "must be one of \"multiclass\", \"binary\", \"multilabel\", \"regression\", \"generation\" "
               "(got \"multi\")");
  EXPECT_EQ(errors.size(), 5u) << format_errors(errors, "");
}

TEST(Validation, UnknownKeyListsTheAllowedOnes) {
  json doc = minimal_pipeline();
  doc["train"] = {{"epoch", 3}};
  const auto errors = pipeline_errors(doc);
  ASSERT_EQ(errors.size(), 1u) << format_errors(errors, "");
  EXPECT_EQ(errors[0].pointer, "/train");
  EXPECT_EQ(errors[0].message,
            "unknown key \"epoch\" (allowed: \"batch_size\", \"checkpoint_every\", \"deterministic\", \"device\", \"early_stopping\", \"epochs\", "
            "\"grad_clip\", \"loader_threads\", \"max_steps\", \"optimizer\", \"parameter_groups\", \"progress\", \"schedule\", \"select\", "
            "\"task_sampling\", \"threads\")");
}

TEST(Validation, MissingRequiredFieldAtTheRoot) {
  json doc = minimal_pipeline();
  doc.erase("transfer");
  const auto errors = pipeline_errors(doc);
  ASSERT_EQ(errors.size(), 1u);
  EXPECT_EQ(errors[0].pointer, "");
  EXPECT_EQ(errors[0].message, "missing required field \"transfer\"");
  EXPECT_EQ(format_errors(errors, "p.json"), "p.json: /: missing required field \"transfer\"\n");
  EXPECT_EQ(format_errors(errors, ""), "/: missing required field \"transfer\"\n");
}

TEST(Validation, ReportsEveryErrorAtOnce) {
  json doc = minimal_pipeline();
  doc.erase("transfer");                                  // 1
  doc["d_model"] = 0;                                     // 2
  doc["modalities"]["image"]["plugin"] = 7;               // 3
  doc["train"] = {{"batch_size", -1}, {"shuffle", true}};  // 4, 5
  doc["evaluate"] = {{"split", "train"}};                 // 6
  const auto errors = pipeline_errors(doc);
  EXPECT_EQ(lines(errors), (std::vector<std::string>{
                               "/: missing required field \"transfer\"",
                               "/d_model: must be >= 1 (got 0)",
                               "/evaluate/split: must be one of \"val\", \"test\" (got \"train\")",
                               "/modalities/image/plugin: must be a string (got 7)",
                               "/train/batch_size: must be >= 1 (got -1)",
                               "/train: unknown key \"shuffle\" (allowed: \"batch_size\", \"checkpoint_every\", \"deterministic\", \"device\", \"early_stopping\", \"epochs\", "
                               "\"grad_clip\", \"loader_threads\", \"max_steps\", \"optimizer\", \"parameter_groups\", \"progress\", \"schedule\", \"select\", "
                               "\"task_sampling\", \"threads\")",
                           }));
  // valijson finds the same six problems.
  EXPECT_EQ(reference_validate(builtin_schema("pipeline"), doc).size(), 6u);
}

TEST(Validation, CascadesAreFolded) {
  json doc = minimal_pipeline();
  doc["tasks"]["label"]["metrics"] = {"accuracy", "precision"};
  doc["modalities"]["image"]["sha256"] = "abc";
  const JsonSchema& schema = builtin_schema("pipeline");
  const auto ours = schema.validate(doc);
  const auto reference = reference_validate(schema, doc);
  EXPECT_EQ(lines(ours), (std::vector<std::string>{
                             "/modalities/image/sha256: must match the pattern ^[0-9a-f]{64}$ (got \"abc\")",
                             "/tasks/label/metrics/1: must be one of \"accuracy\", \"subset_accuracy\", "
                             "\"micro_f1\", \"macro_f1\", \"auroc\", \"auprc\", \"mae\", \"pearson_r\", \"exact_match\" "
                             "(got \"precision\")"}));
  ASSERT_EQ(reference.size(), 2u) << format_errors(reference, "");
  EXPECT_EQ(reference[0].pointer, "/modalities/image/sha256");
  EXPECT_EQ(reference[1].pointer, "/tasks/label/metrics/1");
  for (const auto& e : ours) EXPECT_EQ(e.message.find("Failed to validate"), std::string::npos) << e.message;
  for (const auto& e : reference) EXPECT_EQ(e.message.find("Failed to validate"), std::string::npos) << e.message;
}

TEST(Validation, FoldsValijsonCascadeLinesKeepingTheLeaf) {
  const json doc = json::parse(R"({"a": {"b/c": [1, "x"]}})");
  const std::vector<internal::ReferenceError> raw = {
      {{"<root>", "[a]", "[b/c]", "[1]"}, "Value type not permitted by 'type' constraint."},
      {{"<root>", "[a]", "[b/c]"}, "Failed to validate item #1 in array."},
      {{"<root>", "[a]"}, "Failed to validate against schema associated with property name 'b/c'."},
      {{"<root>"}, "Failed to validate against schema associated with property name 'a'."},
  };
  const auto folded = internal::fold_reference_errors(raw, doc);
  ASSERT_EQ(folded.size(), 1u);
  EXPECT_EQ(folded[0].pointer, "/a/b~1c/1");
  EXPECT_EQ(folded[0].message, "Value type not permitted by 'type' constraint (got \"x\")");
}

TEST(Validation, PointersEscapeSlashAndTilde) {
  EXPECT_EQ(append_pointer("/fields", "a/b~c"), "/fields/a~1b~0c");
  const json doc = json::parse(R"({
    "name": "d", "fields": {"a/b~c": {"type": "picture"}},
    "splits": {"train": {"samples": "train.jsonl", "count": 1}},
    "provenance": {"recipe": "r", "license": "MIT"}})");
  const auto errors = builtin_schema("dataset").validate(doc);
  ASSERT_EQ(errors.size(), 1u) << format_errors(errors, "");
  EXPECT_EQ(errors[0].pointer, "/fields/a~1b~0c/type");
  EXPECT_EQ(doc.at(json::json_pointer(errors[0].pointer)), "picture");  // the pointer resolves
}

TEST(Validation, PropertyNamesAreChecked) {
  json doc = minimal_pipeline();
  doc["modalities"]["bad name"] = {{"plugin", "image"}, {"field", "image"}};
  const auto errors = pipeline_errors(doc);
  ASSERT_EQ(errors.size(), 1u);
  EXPECT_EQ(errors[0].pointer, "/modalities");
  EXPECT_EQ(errors[0].message, "invalid key \"bad name\": must match the pattern ^[A-Za-z_][A-Za-z0-9_-]*$");
}

TEST(Validation, LongValuesAreTruncated) {
  json doc = minimal_pipeline();
  doc["train"] = {{"device", std::string(200, 'x')}};
  const auto errors = pipeline_errors(doc);
  ASSERT_EQ(errors.size(), 1u);
  EXPECT_EQ(errors[0].message, "must match the pattern ^(cpu|cuda(:[0-9]+)?)$ (got \"" + std::string(56, 'x') + "...)");
}

TEST(Validation, ConditionalRequirementInDatasets) {
  const json doc = json::parse(R"({
    "name": "d", "fields": {"label": {"type": "label"}, "image": {"type": "image", "format": "idx"}},
    "splits": {"train": {"samples": "train.jsonl", "count": -1}},
    "provenance": {"recipe": "r", "license": "MIT", "sources": [{"sha256": "00"}]}})");
  const auto errors = builtin_schema("dataset").validate(doc);
  EXPECT_EQ(lines(errors), (std::vector<std::string>{
                               "/fields/label: missing required field \"labels\"",
                               "/provenance/sources/0/sha256: must match the pattern ^[0-9a-f]{64}$ (got \"00\")",
                               "/splits/train/count: must be >= 0 (got -1)"}));
}

TEST(Validation, AlternativesReportTheIntendedOne) {
  json m = manifest_json("image", "modality", json{{"type", "object"}});
  m["output"] = {{"kind", "sequence"}, {"width", 0}};
  EXPECT_EQ(lines(builtin_schema("plugin").validate(m)),
            std::vector<std::string>{"/output/width: must be >= 1 (got 0)"});
  m["output"]["width"] = "d_mode";
  EXPECT_EQ(lines(builtin_schema("plugin").validate(m)),
            std::vector<std::string>{"/output/width: must be one of \"d_model\", \"sum_of_inputs\" (got \"d_mode\")"});
  m["output"]["width"] = true;
  EXPECT_EQ(lines(builtin_schema("plugin").validate(m)),
            std::vector<std::string>{"/output/width: must be a string or an integer (got true)"});

  const JsonSchema any = JsonSchema::compile(json::parse(R"({"anyOf": [
      {"type": "integer", "minimum": 1},
      {"type": "object", "required": ["size"], "properties": {"size": {"type": "integer"}}}]})"),
                                             "anyOf");
  EXPECT_EQ(lines(any.validate(0)), std::vector<std::string>{"/: must be >= 1 (got 0)"});
  EXPECT_EQ(lines(any.validate(json{{"size", "x"}})), std::vector<std::string>{"/size: must be an integer (got \"x\")"});
  EXPECT_EQ(lines(any.validate("x")), std::vector<std::string>{"/: must be an integer, or must be an object (got \"x\")"});
  EXPECT_TRUE(any.validate(3).empty());

  const JsonSchema either = JsonSchema::compile(json::parse(R"({"anyOf": [{"required": ["n"]}, {"required": ["name"]}]})"),
                                                "either");
  EXPECT_EQ(lines(either.validate(json::object())),
            std::vector<std::string>{"/: missing required field \"n\", or missing required field \"name\""});

  const JsonSchema one = JsonSchema::compile(json::parse(R"({"oneOf": [{"minimum": 0}, {"maximum": 10}]})"), "oneOf");
  EXPECT_EQ(lines(one.validate(5)),
            std::vector<std::string>{"/: must match exactly one of the oneOf alternatives, but matches #0 and #1 (got 5)"});
  EXPECT_TRUE(one.validate(20).empty());
}

TEST(Validation, LongStringsUnderAPatternAreRefusedNotCrashing) {
  // std::regex would overflow the stack on this (see kMaxPatternSubject).
  json m = manifest_json("image", "modality", json{{"type", "object"}});
  m["name"] = std::string(200000, 'a');
  const auto errors = builtin_schema("plugin").validate(m);
  EXPECT_ERROR(errors, "/name",
               "is too long to match against the pattern ^[a-z][a-z0-9_]*$ (200000 bytes; the limit is 4096)");
  // ... even where a combinator would otherwise hide the failure.
  const JsonSchema hidden = JsonSchema::compile(json::parse(R"({"not": {"pattern": "^a+$"}})"), "not");
  EXPECT_FALSE(hidden.validate(std::string(10000, 'a')).empty());
  EXPECT_TRUE(hidden.validate("b").empty());
}

TEST(Validation, DeepDocumentsAreRefused) {
  json deep = json::array();
  for (int i = 0; i < 200; ++i) deep = json::array({deep});
  const JsonSchema any = JsonSchema::compile(json::object(), "{}");
  const auto errors = any.validate(deep);
  ASSERT_EQ(errors.size(), 1u);
  EXPECT_EQ(errors[0].message, "nests arrays/objects deeper than 128 levels");
}

TEST(Validation, RecursiveSchemasWork) {
  const JsonSchema tree = JsonSchema::compile(json::parse(R"({
      "type": "object", "additionalProperties": false,
      "properties": {"value": {"type": "integer", "default": 0},
                     "children": {"type": "array", "items": {"$ref": "#"}}}})"),
                                              "tree");
  json doc = json::parse(R"({"children": [{"children": [{"value": "x"}]}]})");
  EXPECT_EQ(lines(tree.validate(doc)), std::vector<std::string>{"/children/0/children/0/value: must be an integer (got \"x\")"});
  doc["children"][0]["children"][0]["value"] = 2;
  ASSERT_TRUE(tree.validate(doc).empty());
  tree.fill_defaults(doc);
  EXPECT_EQ(doc.at(json::json_pointer("/value")), 0);
  EXPECT_EQ(doc.at(json::json_pointer("/children/0/value")), 0);
  EXPECT_EQ(doc.at(json::json_pointer("/children/0/children/0/value")), 2);
}

TEST(Validation, AgreesWithValijsonOnValidity) {
  const JsonSchema& schema = builtin_schema("pipeline");
  std::vector<json> docs;
  docs.push_back(minimal_pipeline());
  for (const char* patch : {R"({"seed": -1})", R"({"train": {"grad_clip": -0.5}})", R"({"train": {"device": "cuda:1"}})",
                            R"({"data": {"dataset": ""}})", R"({"modalities": {}})", R"({"tasks": {"t": {"type": "binary", "target": "y", "metrics": ["auroc", "auroc"]}}})",
                            R"({"evaluate": {"modalities": ["image"]}})", R"({"name": null})", R"({"extra": 1})"}) {
    json doc = minimal_pipeline();
    doc.merge_patch(json::parse(patch));
    docs.push_back(doc);
  }
  for (const json& doc : docs) {
    EXPECT_EQ(schema.validate(doc).empty(), reference_validate(schema, doc).empty()) << doc.dump();
  }
}

// ---------------------------------------------------------------------------------------------
// Compiling schemas

TEST(Compile, RefusesUnusableSchemas) {
  auto compile_error = [](const std::string& text) -> std::string {
    try {
      JsonSchema::compile(json::parse(text), "s.json");
    } catch (const SchemaCompileError& e) {
      return e.what();
    }
    return "(compiled)";
  };
  EXPECT_EQ(compile_error(R"({"type": "objekt"})"),
            "s.json: /type: must be one of \"null\", \"boolean\", \"object\", \"array\", \"number\", \"string\", "
            "\"integer\" (got \"objekt\")");
  EXPECT_EQ(compile_error(R"({"properties": {"a": {"minimun": 1}}})"),
            "s.json: /properties/a/minimun: unknown keyword \"minimun\" (JSON Schema draft-07; a vendor extension "
            "must start with \"x-\")");
  EXPECT_EQ(compile_error(R"({"properties": {"a": {"type": "integer", "minimum": 1, "default": 0}}})"),
            "s.json: /properties/a/default: is not valid against its own schema: /: must be >= 1 (got 0)");
  EXPECT_EQ(compile_error(R"({"$ref": "#"})"),
            "s.json: /: refers back to itself (through $ref, allOf, anyOf, oneOf, not, if/then/else or "
            "dependencies) without descending into the document; validation would never end");
  EXPECT_NE(compile_error(R"({"allOf": [{"$ref": "#/definitions/a"}], "definitions": {"a": {"anyOf": [{"$ref": "#"}]}}})"),
            "(compiled)");
  EXPECT_EQ(compile_error(R"({"$ref": "http://example.com/s.json"})"),
            "s.json: /$ref: only references inside this schema (\"#/...\") are supported, got "
            "\"http://example.com/s.json\"");
  EXPECT_EQ(compile_error(R"({"$ref": "#/definitions/missing"})"),
            "s.json: /$ref: reference \"#/definitions/missing\" does not resolve inside this schema");
  EXPECT_EQ(compile_error(R"({"pattern": "(["})").rfind("s.json: /pattern: not a valid ECMAScript regular expression", 0), 0u);
  EXPECT_EQ(compile_error(R"({"$schema": "http://json-schema.org/draft-04/schema#"})"),
            "s.json: /$schema: only draft-07 is supported (\"http://json-schema.org/draft-07/schema#\"), got "
            "\"http://json-schema.org/draft-04/schema#\"");
  EXPECT_EQ(compile_error(R"({"minLength": -1})"), "s.json: /minLength: must be a non-negative integer (got -1)");
  EXPECT_EQ(compile_error(R"({"multipleOf": 0})"), "s.json: /multipleOf: must be > 0 (got 0)");
  EXPECT_EQ(compile_error(R"({"required": ["a", "a"]})"), "s.json: /required: lists \"a\" twice");
  EXPECT_EQ(compile_error(R"(5)"), "s.json: /: a schema must be an object or a boolean (got 5)");
  EXPECT_EQ(compile_error(R"({"x-ui": {"widget": "slider"}, "definitions": {"a~b": {"type": "string"}},
                              "properties": {"a": {"$ref": "#/definitions/a~0b"}}})"),
            "(compiled)");
  EXPECT_EQ(compile_error("true"), "(compiled)");
}

// ---------------------------------------------------------------------------------------------
// Manifests

TEST(Manifest, ValidManifestGetsDefaults) {
  const json doc = manifest_json("image", "modality", json{{"type", "object"}});
  json without_schema = doc;
  without_schema.erase("config_schema");
  const Manifest m = parse_manifest(without_schema, "/opt/plugins/image/image.plugin.json");
  EXPECT_EQ(m.name, "image");
  EXPECT_EQ(m.kind, "modality");
  EXPECT_EQ(m.version, "0.1.0");
  EXPECT_EQ(m.abi_major, 1);
  EXPECT_EQ(m.abi_minor, 0);
  EXPECT_EQ(m.config_schema, json({{"type", "object"}}));
  EXPECT_EQ(m.artifacts, json::array());
  EXPECT_TRUE(m.output.is_null());
  EXPECT_EQ(m.raw, without_schema);  // as written, for the comparison with the embedded copy
  EXPECT_EQ(m.library_path(), fs::path("/opt/plugins/image/libmodalkit_image.so"));
  ASSERT_TRUE(m.config_validator);
  EXPECT_TRUE(m.config_validator->validate(json::object()).empty());
}

TEST(Manifest, BadNameIsRefusedWithEveryError) {
  json doc = manifest_json("Image", "encoder", json{{"type", "object"}});
  doc["abi"] = {{"major", 1}};
  try {
    parse_manifest(doc, "Image.plugin.json");
    FAIL() << "accepted";
  } catch (const ValidationFailed& e) {
    EXPECT_EQ(e.file(), "Image.plugin.json");
    EXPECT_EQ(lines(e.errors()),
              (std::vector<std::string>{"/abi: missing required field \"minor\"",
                                        "/kind: must be one of \"modality\", \"fusion\", \"transfer\", \"evaluation\", "
                                        "\"language_model\", \"stream\" (got \"encoder\")",
                                        "/name: must match the pattern ^[a-z][a-z0-9_]*$ (got \"Image\")"}));
    EXPECT_EQ(std::string(e.what()).rfind("Image.plugin.json: /abi: missing required field \"minor\"\n", 0), 0u);
  }
}

TEST(Manifest, LibraryMustBeAPlainFileName) {
  for (const char* library : {"../x.so", "sub/x.so", "..", "."}) {
    json doc = manifest_json("image", "modality", json{{"type", "object"}});
    doc["library"] = library;
    try {
      parse_manifest(doc, "image.plugin.json");
      FAIL() << library << " accepted";
    } catch (const ValidationFailed& e) {
      ASSERT_EQ(e.errors().size(), 1u);
      EXPECT_EQ(e.errors()[0].pointer, "/library");
      EXPECT_EQ(e.errors()[0].message, "must be a file name in the manifest's own directory (got \"" +
                                           std::string(library) + "\")");
    }
  }
}

TEST(Manifest, ConfigSchemaMustBeASchema) {
  const std::vector<std::pair<json, std::string>> cases = {
      {json::parse(R"({"type": "object", "properties": {"d_model": {"type": "integer", "minimum": "1"}}})"),
       "/config_schema/properties/d_model/minimum: not a usable JSON Schema: must be a number (got \"1\")"},
      {json::parse(R"({"type": "objekt"})"),
       "/config_schema/type: not a usable JSON Schema: must be one of \"null\", \"boolean\", \"object\", \"array\", "
       "\"number\", \"string\", \"integer\" (got \"objekt\")"},
      {json::parse(R"({"type": "object", "requried": ["x"]})"),
       "/config_schema/requried: not a usable JSON Schema: unknown keyword \"requried\" (JSON Schema draft-07; a "
       "vendor extension must start with \"x-\")"},
  };
  for (const auto& [schema, expected] : cases) {
    try {
      parse_manifest(manifest_json("image", "modality", schema), "image.plugin.json");
      FAIL() << schema.dump() << " accepted";
    } catch (const ValidationFailed& e) {
      EXPECT_EQ(lines(e.errors()), std::vector<std::string>{expected});
    }
  }
  // Not even an object: caught by the plugin schema itself.
  try {
    parse_manifest(manifest_json("image", "modality", json::array()), "image.plugin.json");
    FAIL();
  } catch (const ValidationFailed& e) {
    EXPECT_EQ(lines(e.errors()), std::vector<std::string>{"/config_schema: must be an object (got [])"});
  }
}

TEST(Manifest, LoadFromFile) {
  TempDir dir;
  const fs::path file = dir.write("image.plugin.json", manifest_json("image", "modality", json{{"type", "object"}}).dump(2));
  const Manifest m = load_manifest(file);
  EXPECT_EQ(m.file, file);
  EXPECT_EQ(m.library_path(), dir.path() / "libmodalkit_image.so");
  const fs::path broken = dir.write("broken.plugin.json", "{\"name\": \"x\",\n}");
  EXPECT_THROW(load_manifest(broken), JsonFileError);
}

// ---------------------------------------------------------------------------------------------
// Pipelines against manifests

TEST(Pipeline, UnknownPluginWrongKindAndBadConfigAllAtOnce) {
  FakePlugins plugins;
  json doc = minimal_pipeline();
  doc["modalities"]["image"]["config"] = {{"d_model", 0}, {"channels", 2}};
  doc["modalities"]["sound"] = {{"plugin", "audioo"}, {"field", "audio"}};
  doc["fusion"]["plugin"] = "image";
  doc["evaluate"] = {{"modalities", {"image", "text"}}};
  const json before = doc;
  const auto errors = validate_pipeline(doc, plugins.lookup(), plugins.names());
  EXPECT_EQ(lines(errors),
            (std::vector<std::string>{
                "/modalities/image/config/channels: must be one of 1, 3 (got 2)",
                "/modalities/image/config/d_model: must be >= 1 (got 0)",
                "/modalities/sound/plugin: unknown plugin \"audioo\" (known: audio, concat, image, multitask, skipgram, supervised, translation)",
                "/fusion/plugin: plugin \"image\" is a modality plugin, expected a fusion plugin",
                "/evaluate/modalities/1: unknown modality \"text\" (declared: image, sound)"}));
  EXPECT_EQ(doc, before);  // untouched when invalid
}

TEST(Pipeline, ModalitiesOrAStreamNeverBoth) {
  FakePlugins plugins;
  // Without a stream: at least one modality, and a fusion operator for them.
  json doc = minimal_pipeline();
  doc["modalities"] = json::object();
  doc.erase("fusion");
  EXPECT_EQ(lines(validate_pipeline(doc, plugins.lookup(), plugins.names())),
            (std::vector<std::string>{
                "/modalities: declares no modality; a pipeline needs at least one, or a /data/stream that yields whole batches",
                "/: missing required field \"fusion\" (a pipeline with modalities needs a fusion operator, e.g. "
                "{\"plugin\": \"concat\"})"}));
  // With one: no modalities, fusion or tasks, no label fraction, and a stream plugin.
  doc = minimal_pipeline();
  doc["data"]["stream"] = {{"plugin", "supervised"}, {"field", "text"}};
  doc["data"]["label_fraction"] = 0.5;
  EXPECT_EQ(lines(validate_pipeline(doc, plugins.lookup(), plugins.names())),
            (std::vector<std::string>{
                "/modalities: must be empty (a pipeline with /data/stream takes whole batches from the stream; it has no "
                "modalities, fusion or tasks)",
                "/fusion: must be absent (a pipeline with /data/stream takes whole batches from the stream; it has no "
                "modalities, fusion or tasks)",
                "/tasks: must be empty (a pipeline with /data/stream takes whole batches from the stream; it has no "
                "modalities, fusion or tasks)",
                "/data/label_fraction: must be 1: a stream has no labels to withhold",
                "/data/stream/plugin: plugin \"supervised\" is a transfer plugin, expected a stream plugin"}));
  // A task-less stream pipeline is valid, selected on validation loss; tasks default to none.
  doc = json{{"name", "pretrain"},
             {"data", {{"dataset", "d.json"}, {"stream", {{"plugin", "skipgram"}, {"field", "text"}}}}},
             {"transfer", {{"plugin", "supervised"}}},
             {"train", {{"select", {{"metric", "loss"}}}}}};
  EXPECT_TRUE(validate_pipeline(doc, plugins.lookup(), plugins.names()).empty());
  EXPECT_EQ(doc.at("tasks"), json::object());
  EXPECT_EQ(doc.at("modalities"), json::object());
  EXPECT_EQ(doc.at(json::json_pointer("/data/stream/config")), json::object());
}

json multitask_pipeline() {
  return json::parse(R"({
    "name": "mt",
    "data": {"label_fraction": 0.5},
    "modalities": {"image": {"plugin": "image"}, "audio": {"plugin": "audio"}},
    "transfer": {"plugin": "multitask"},
    "tasks": {
      "clothes": {"type": "multiclass", "target": "label", "data": {"dataset": "f/dataset.json"}, "modalities": {"image": "image"}},
      "words": {"type": "multiclass", "target": "word", "weight": 2,
                "data": {"dataset": "w/dataset.json", "label_fraction": 0.1, "splits": {"val": "dev"}},
                "modalities": {"audio": "clip", "image": "picture"}}
    },
    "train": {"task_sampling": "round_robin"}
  })");
}

TEST(Pipeline, MultitaskTasksNameTheirOwnDataSets) {
  FakePlugins plugins;
  json doc = multitask_pipeline();
  ASSERT_EQ(lines(validate_pipeline(doc, plugins.lookup(), plugins.names())), std::vector<std::string>{});
  EXPECT_FALSE(doc.contains("fusion"));
  // No defaults land in a task's data: an absent label fraction or split is the pipeline's.
  EXPECT_EQ(doc.at(json::json_pointer("/tasks/clothes/data")), json::parse(R"({"dataset": "f/dataset.json"})"));
  EXPECT_FALSE(doc.at(json::json_pointer("/tasks/clothes")).contains("weight"));
}

TEST(Pipeline, MultitaskMistakesAreNamedWhereTheyAre) {
  FakePlugins plugins;
  json doc = multitask_pipeline();
  doc["data"]["dataset"] = "d.json";                              // both forms at once
  doc["tasks"]["spoken"] = {{"type", "multiclass"}, {"target", "label"}};  // no data, no modalities
  doc["tasks"]["clothes"]["modalities"] = {{"image", "image"}, {"text", "caption"}};
  doc["modalities"]["audio"]["field"] = "clip";
  doc["modalities"]["sensor"] = {{"plugin", "audio"}};             // no task sees it
  doc["fusion"] = {{"plugin", "concat"}};                           // the strategy has its own backbone
  EXPECT_EQ(lines(validate_pipeline(doc, plugins.lookup(), plugins.names())),
            (std::vector<std::string>{
                "/data/dataset: must be absent in a multitask pipeline (task \"clothes\" names its own data set); give "
                "every task its /tasks/<task>/data",
                "/tasks/clothes/modalities/text: unknown modality \"text\" (declared in /modalities: audio, image, sensor)",
                "/tasks/spoken: missing required field \"data\" in a multitask pipeline (task \"clothes\" names its own data "
                "set): every task names its data set",
                "/tasks/spoken: missing required field \"modalities\" in a multitask pipeline (task \"clothes\" names its own "
                "data set): the modalities this task sees, each mapped to a field of its data set",
                "/modalities/audio/field: must be absent in a multitask pipeline (task \"clothes\" names its own data set): "
                "each task maps the modality to its data set's field in /tasks/<task>/modalities",
                "/modalities/sensor: no task sees modality \"sensor\" (map it in some /tasks/<task>/modalities, or remove it)",
                "/fusion: must be absent: transfer plugin \"multitask\" fuses the modalities in its own backbone and reads no "
                "fusion operator"}));
}

TEST(Pipeline, OneDataSetPipelinesKeepTheirRules) {
  FakePlugins plugins;
  json doc = minimal_pipeline();
  doc["data"].erase("dataset");
  doc["modalities"]["image"].erase("field");
  doc["tasks"]["label"]["weight"] = 2;
  doc["train"] = {{"task_sampling", "proportional"}};
  EXPECT_EQ(lines(validate_pipeline(doc, plugins.lookup(), plugins.names())),
            (std::vector<std::string>{
                "/data: missing required field \"dataset\" (or give every task its own, /tasks/<task>/data, for a "
                "multitask pipeline)",
                "/modalities/image: missing required field \"field\" (the data set field it reads)",
                "/tasks/label/weight: only for a multitask pipeline, whose tasks name their own data sets "
                "(/tasks/label/data)",
                "/train/task_sampling: only for a multitask pipeline, whose tasks name their own data sets "
                "(/tasks/<task>/data)"}));
  // The multitask strategy on one data set (a single-task baseline, a transfer run) needs no fusion.
  doc = minimal_pipeline();
  doc.erase("fusion");
  doc["transfer"]["plugin"] = "multitask";
  EXPECT_EQ(lines(validate_pipeline(doc, plugins.lookup(), plugins.names())), std::vector<std::string>{});
}

TEST(Pipeline, UnlabelledRowsOnlyForAStrategyThatLearnsFromThemOnOneDataSet) {
  FakePlugins plugins;
  json doc = minimal_pipeline();
  doc["data"]["label_fraction"] = 0.1;
  doc["data"]["unlabelled"] = "auxiliary";
  EXPECT_EQ(lines(validate_pipeline(doc, plugins.lookup(), plugins.names())),
            (std::vector<std::string>{"/data/unlabelled: \"auxiliary\" keeps training samples without labels, and "
                                      "transfer plugin \"supervised\" has no loss that learns from them; use \"drop\", or a "
                                      "strategy that does (translation)"}));
  doc["transfer"]["plugin"] = "translation";
  EXPECT_EQ(lines(validate_pipeline(doc, plugins.lookup(), plugins.names())), std::vector<std::string>{});
  // A held-out split that is the train split would be scored against withheld labels.
  json same = doc;
  same["data"]["splits"] = {{"val", "train"}};
  EXPECT_EQ(lines(validate_pipeline(same, plugins.lookup(), plugins.names())),
            (std::vector<std::string>{"/data/splits/val: must differ from /data/splits/train under data.unlabelled = "
                                      "\"auxiliary\", whose training samples outside the label subset have no labels"}));
  // Absent means "drop", and the key gets no default: a pipeline without it keeps its hash.
  doc = minimal_pipeline();
  EXPECT_EQ(lines(validate_pipeline(doc, plugins.lookup(), plugins.names())), std::vector<std::string>{});
  EXPECT_FALSE(doc.at("data").contains("unlabelled"));
  doc["data"]["unlabelled"] = "some";
  EXPECT_FALSE(validate_pipeline(doc, plugins.lookup(), plugins.names()).empty());
}

TEST(Pipeline, ConfigTypeErrorIsReanchored) {
  FakePlugins plugins;
  json doc = minimal_pipeline();
  doc["modalities"]["audio"] = {{"plugin", "audio"}, {"field", "audio"}, {"config", {{"n_mels", "64"}}}};
  const auto errors = validate_pipeline(doc, plugins.lookup(), plugins.names());
  EXPECT_EQ(lines(errors), std::vector<std::string>{"/modalities/audio/config/n_mels: must be an integer (got \"64\")"});
}

TEST(Pipeline, ConfigDefaultsComeFromThePluginSchema) {
  FakePlugins plugins;
  json doc = minimal_pipeline();
  doc["modalities"]["image"]["config"] = {{"channels", 3}};
  doc["modalities"]["audio"] = {{"plugin", "audio"}, {"field", "audio"}};
  ASSERT_TRUE(validate_pipeline(doc, plugins.lookup(), plugins.names()).empty());
  EXPECT_EQ(doc.at(json::json_pointer("/modalities/image/config")),
            json::parse(R"({"d_model": 64, "channels": 3, "augment": {"flip": false}})"));
  EXPECT_EQ(doc.at(json::json_pointer("/modalities/audio/config")), json::parse(R"({"n_mels": 40})"));
}

TEST(Pipeline, StructureIsCheckedBeforeComponents) {
  FakePlugins plugins;
  json doc = minimal_pipeline();
  doc["fusion"]["plugin"] = "nope";
  doc["seed"] = "1";
  EXPECT_EQ(lines(validate_pipeline(doc, plugins.lookup(), plugins.names())),
            std::vector<std::string>{"/seed: must be an integer (got \"1\")"});
  EXPECT_EQ(lines(validate_pipeline(doc, nullptr, {})), std::vector<std::string>{"/seed: must be an integer (got \"1\")"});
  doc["seed"] = 1;
  EXPECT_EQ(lines(validate_pipeline(doc, nullptr, {})),
            (std::vector<std::string>{"/modalities/image/plugin: unknown plugin \"image\" (known: none)",
                                      "/fusion/plugin: unknown plugin \"nope\" (known: none)",
                                      "/transfer/plugin: unknown plugin \"supervised\" (known: none)"}));
}

// ---------------------------------------------------------------------------------------------
// Reading JSON

TEST(JsonFile, SyntaxErrorHasLineAndColumn) {
  TempDir dir;
  const fs::path file = dir.write("p.json", "{\n  \"name\": \"x\",\n  \"seed\": ]\n}\n");
  try {
    read_json_file(file);
    FAIL() << "parsed";
  } catch (const JsonFileError& e) {
    EXPECT_EQ(e.line(), 3u);
    EXPECT_EQ(e.column(), 11u);
    EXPECT_EQ(std::string(e.what()), file.string() +
                                         ":3:11: syntax error while parsing value - unexpected ']'; expected '[', "
                                         "'{', or a literal");
  }
  // Columns count characters, not bytes.
  try {
    parse_json_text("{\"é\": x}", "text");
    FAIL();
  } catch (const JsonFileError& e) {
    EXPECT_EQ(std::string(e.what()).rfind("text:1:7: ", 0), 0u) << e.what();
  }
  try {
    parse_json_text("{\"a\": 1", "text");
    FAIL();
  } catch (const JsonFileError& e) {
    EXPECT_EQ(std::string(e.what()).rfind("text:1:8: syntax error while parsing object", 0), 0u) << e.what();
  }
}

TEST(JsonFile, NumberOverflowHasItsPosition) {
  // nlohmann reports this as out_of_range.406 without a position (found by fuzz_manifest).
  try {
    parse_json_text("{\"a\": \"1e400\", \"b\": [1, 1e400]}", "n.json");
    FAIL();
  } catch (const JsonFileError& e) {
    EXPECT_EQ(std::string(e.what()), "n.json:1:25: number overflow parsing '1e400'");
  }
}

TEST(JsonFile, MessagesAreValidUtf8) {
  try {
    parse_json_text("{\"a\": \"\xff\xfe\"}", "bytes.json");
    FAIL();
  } catch (const JsonFileError& e) {
    EXPECT_EQ(std::string(e.what()).rfind("bytes.json:1:8: syntax error while parsing value - invalid string: "
                                          "ill-formed UTF-8 byte", 0), 0u) << e.what();
    EXPECT_NO_THROW((void)json(e.what()).dump());
  }
}

TEST(JsonFile, CannotOpen) {
  TempDir dir;
  const fs::path missing = dir.path() / "missing.json";
  try {
    read_json_file(missing);
    FAIL();
  } catch (const JsonFileError& e) {
    EXPECT_EQ(std::string(e.what()), missing.string() + ": cannot open (No such file or directory)");
    EXPECT_EQ(e.line(), 0u);
  }
  try {
    read_json_file(dir.path());
    FAIL();
  } catch (const JsonFileError& e) {
    EXPECT_EQ(std::string(e.what()), dir.path().string() + ": cannot open (Is a directory)");
  }
}

TEST(JsonFile, OversizeFileIsRefusedWithoutReadingIt) {
  TempDir dir;
  const fs::path file = dir.write("big.json", "[");
  fs::resize_file(file, kMaxJsonBytes + 1);  // sparse: costs no disk
  try {
    read_json_file(file);
    FAIL();
  } catch (const JsonFileError& e) {
    EXPECT_EQ(std::string(e.what()), file.string() + ": is 16777217 bytes, larger than the 16 MiB allowed for a JSON document");
  }
}

TEST(JsonFile, DeepNestingIsRefusedWithItsPosition) {
  const std::string text = "{\"a\": " + std::string(300, '[') + std::string(300, ']') + "}";
  try {
    parse_json_text(text, "deep.json");
    FAIL();
  } catch (const JsonFileError& e) {
    EXPECT_EQ(std::string(e.what()), "deep.json:1:134: arrays/objects nested deeper than 128 levels");
  }
  // Brackets inside strings do not count.
  EXPECT_NO_THROW(parse_json_text("{\"a\": \"" + std::string(300, '[') + "\"}", "strings.json"));
}

TEST(JsonFile, ValidationFailedKeepsErrors) {
  const ValidationFailed e("p.json", {{"", "missing required field \"name\""}, {"/a~1b", "must be a string (got 1)"}});
  EXPECT_EQ(std::string(e.what()), "p.json: /: missing required field \"name\"\np.json: /a~1b: must be a string (got 1)\n");
  EXPECT_EQ(e.errors().size(), 2u);
  EXPECT_EQ(e.file(), "p.json");
}
