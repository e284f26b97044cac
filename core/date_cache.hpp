// SPDX-License-Identifier: BSD-3-Clause
// The IMF-fixdate for the `date` response header, formatted at most once per second.
// No Python here.
#pragma once

#include <ctime>
#include <string_view>

namespace cppuvicorn::core {

class DateCache {
  public:
    // "date: Sun, 06 Nov 1994 08:49:37 GMT\r\n" for the current second.
    std::string_view header_line();

  private:
    std::time_t second_ = -1;
    char line_[64] = {};
    std::size_t len_ = 0;
};

}  // namespace cppuvicorn::core
