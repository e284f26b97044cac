// SPDX-License-Identifier: BSD-3-Clause
#include "core/date_cache.hpp"

#include <cstdio>

namespace cppuvicorn::core {

std::string_view DateCache::header_line() {
    // NOTE(perf): time() is a vDSO call; formatting happens once a second. Names are spelled
    // out rather than taken from strftime so the locale can never change them (RFC 9110 §5.6.7).
    static constexpr const char* kDays[] = {"Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"};
    static constexpr const char* kMonths[] = {"Jan", "Feb", "Mar", "Apr", "May", "Jun",
                                              "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"};
    std::time_t now = std::time(nullptr);
    if (now != second_) {
        second_ = now;
        std::tm tm{};
        gmtime_r(&now, &tm);
        int n = std::snprintf(line_, sizeof line_, "date: %s, %02d %s %04d %02d:%02d:%02d GMT\r\n",
                              kDays[tm.tm_wday], tm.tm_mday, kMonths[tm.tm_mon], tm.tm_year + 1900,
                              tm.tm_hour, tm.tm_min, tm.tm_sec);
        len_ = n > 0 ? static_cast<std::size_t>(n) : 0;
    }
    return {line_, len_};
}

}  // namespace cppuvicorn::core
