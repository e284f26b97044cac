// SPDX-License-Identifier: BSD-3-Clause
// The fuzz targets' invariant check: on failure, "<target>: invariant violated: <condition>" on
// stderr, then abort (libFuzzer keeps the input as a crash). The target's name comes from
// tests/fuzz/CMakeLists.txt (CPPUVICORN_FUZZ_TARGET).
#pragma once

#include <cstdio>
#include <cstdlib>

namespace cppuvicorn::fuzz {

[[noreturn]] inline void violated(const char* what) {
    std::fprintf(stderr, "%s: invariant violated: %s\n", CPPUVICORN_FUZZ_TARGET, what);
    std::abort();
}

}  // namespace cppuvicorn::fuzz

#define FUZZ_CHECK(cond)                                  \
    do {                                                  \
        if (!(cond)) ::cppuvicorn::fuzz::violated(#cond); \
    } while (0)
