// Shared by the test suites: the message of the exception a call throws.
#pragma once

#include <exception>
#include <functional>
#include <string>

namespace modalkit::testing {

/// what() of the exception `fn` throws, or "" when it throws nothing.
inline std::string error_of(const std::function<void()>& fn) {
  try {
    fn();
  } catch (const std::exception& e) {
    return e.what();
  }
  return "";
}

}  // namespace modalkit::testing
