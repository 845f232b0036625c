/// \file
/// Everything a plugin author needs, in one include (plugins that care about compile time
/// include only the headers they use).
#pragma once

#include "modalkit/batch.hpp"
#include "modalkit/component.hpp"
#include "modalkit/config.hpp"
#include "modalkit/context.hpp"
#include "modalkit/csv.hpp"
#include "modalkit/errors.hpp"
#include "modalkit/evaluation.hpp"
#include "modalkit/fusion.hpp"
#include "modalkit/layers.hpp"
#include "modalkit/modality.hpp"
#include "modalkit/plugin.hpp"
#include "modalkit/strategy.hpp"
#include "modalkit/stream.hpp"
#include "modalkit/task.hpp"
#include "modalkit/word_vectors.hpp"
