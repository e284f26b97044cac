// SPDX-License-Identifier: BSD-3-Clause
// ResponseWriter: HTTP/1.1 response framing into an output buffer: status line, default and
// application headers, content-length vs chunked vs close-delimited, chunk framing. Pure: no
// I/O and no Python here.
#pragma once

#include "core/request_handler.hpp"

#include <cstdint>
#include <span>
#include <string>
#include <string_view>

namespace cppuvicorn::core {

// "HTTP/1.1 200 OK\r\n" for every status 100..599 (an unknown reason gives "HTTP/1.1 599 \r\n").
class StatusLines {
  public:
    StatusLines();  // reason phrases of Python 3.11's http.HTTPStatus
    void set_reason(int status, std::string_view reason);
    std::string_view line(int status) const { return lines_[status - 100]; }

  private:
    std::string lines_[500];
};

enum class Framing : std::uint8_t {
    kContentLength,  // the app gave content-length
    kChunked,        // HTTP/1.1 and no content-length: transfer-encoding chunked
    kUntilClose,     // HTTP/1.0 and no content-length: the body ends when the connection closes
    kNoBody,         // HEAD, 204, 304: headers only, whatever the app sends is dropped
};

// What the request said, needed to frame its response.
struct RequestInfo {
    bool head_method = false;
    bool http10 = false;
    bool keep_alive = true;  // the connection may be reused (request + server state)
};

struct ResponseState {
    Framing framing = Framing::kChunked;
    std::uint64_t remaining = 0;  // with kContentLength: bytes still expected from the app
    bool keep_alive = true;
    // With kNoBody for a 204 or 304 that gave no length: there is no body to send, so one from
    // the app is its error (Uvicorn: "Response content longer than Content-Length").
    bool body_refused = false;
};

enum class HeaderError : std::uint8_t { kNone, kBadName, kBadValue, kBadStatus };

// A content-length value: digits, with optional whitespace (SP, HTAB) around them (a field
// value's OWS is not part of it, RFC 9110 §5.5; Uvicorn's int(value) reads " 5 " as 5 too).
// Signs, underscores and non-ASCII digits, which int() would also take, are refused: clients
// would not read them.
bool parse_content_length(std::string_view value, std::uint64_t& out);

// Validates the app's final status (200..599) and headers (Uvicorn's HEADER_RE /
// HEADER_VALUE_RE rules) and appends the whole head to `out`. On error nothing is appended.
HeaderError write_response_head(std::string& out, const StatusLines& lines, int status,
                                std::span<const Header> headers, const RequestInfo& req,
                                std::string_view date_line, std::string_view default_headers,
                                ResponseState& state);

// Appends one body chunk framed per `state.framing` (no-op for empty data).
void write_body_chunk(std::string& out, const ResponseState& state, std::string_view data);
// Appends the end of the body ("0\r\n\r\n" for chunked).
void write_body_end(std::string& out, const ResponseState& state);

// A complete server-generated response (400, 431, 503, …) with connection: close.
void write_simple_response(std::string& out, const StatusLines& lines, int status,
                           std::string_view date_line, std::string_view default_headers,
                           std::string_view body);

}  // namespace cppuvicorn::core
