/// \file
/// The schemas shipped in schemas/, compiled into the host so validation never depends on
/// finding the installed copies (which are for editors and third-party tools).
#pragma once

#include <string_view>

#include "schema/json_schema.hpp"

namespace modalkit::schema {

/// The built-in schema `name`: "plugin" (a `<name>.plugin.json` manifest), "pipeline" or
/// "dataset" (a `dataset.json`) or "experiment" (`examples/experiments/NAME.json`). Compiled on first use, once, thread-safely; throws
/// std::out_of_range for any other name.
const JsonSchema& builtin_schema(std::string_view name);

}  // namespace modalkit::schema
