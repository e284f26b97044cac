// SPDX-License-Identifier: BSD-3-Clause
// The Catch2 runner for bench_micro (core only, no Python).
#define CATCH_CONFIG_MAIN
#include <catch2/catch.hpp>
