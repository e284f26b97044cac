// SPDX-License-Identifier: BSD-3-Clause
// DateCache: the `date` header line is an IMF-fixdate (RFC 9110 §5.6.7) for the current second.
#include "core/date_cache.hpp"

#include <catch2/catch.hpp>

#include <ctime>
#include <regex>
#include <string>

TEST_CASE("DateCache: the header line is an IMF-fixdate in GMT", "[date_cache]") {
    cppuvicorn::core::DateCache cache;
    const std::string line{cache.header_line()};
    const std::regex shape{
        "date: (Mon|Tue|Wed|Thu|Fri|Sat|Sun), [0-3][0-9] "
        "(Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec) [0-9]{4} "
        "[0-2][0-9]:[0-5][0-9]:[0-6][0-9] GMT\r\n"};
    CAPTURE(line);
    REQUIRE(std::regex_match(line, shape));
}

TEST_CASE("DateCache: the header line is for the current second", "[date_cache]") {
    cppuvicorn::core::DateCache cache;
    // Retry if the second ticks over between reading the clock and formatting.
    for (int attempt = 0; attempt < 5; ++attempt) {
        const std::time_t before = std::time(nullptr);
        const std::string line{cache.header_line()};
        const std::string again{cache.header_line()};
        if (std::time(nullptr) != before) continue;
        std::tm tm{};
        gmtime_r(&before, &tm);
        char expected[64];
        std::strftime(expected, sizeof expected, "date: %a, %d %b %Y %H:%M:%S GMT\r\n", &tm);
        REQUIRE(line == expected);  // strftime's "C" locale names are the IMF ones
        REQUIRE(again == line);
        return;
    }
    FAIL("the clock moved on during every attempt");
}
