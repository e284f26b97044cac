// SPDX-License-Identifier: BSD-3-Clause
// The seam between the HTTP core and whatever runs the application (the ASGI bridge, or a
// RecordingHandler in unit tests). Core calls upward only through these interfaces; the
// application side calls back only through HttpConnection's public response methods.
// No Python here.
#pragma once

#include <cstdint>
#include <string_view>
#include <vector>

namespace cppuvicorn::core {

class HttpConnection;

struct Header {
    std::string_view name;   // lowercased by the parser for requests
    std::string_view value;
};

// One parsed request head. Views point into the connection's head buffer and stay valid
// until the request's handler is released (on_release).
struct RequestHead {
    std::string_view method;
    std::string_view target;  // raw request-target as received (path + optional ?query)
    int http_major = 1;
    int http_minor = 1;
    std::vector<Header> headers;
    bool keep_alive = true;       // what the request asks for (version + Connection header)
    bool expect_continue = false; // "Expect: 100-continue"
    bool upgrade = false;         // Connection: upgrade + Upgrade: … (WebSocket)
    bool has_body = false;        // content-length > 0 or chunked
};

// One request's application side. Every method is noexcept: core may call it from inside
// llhttp_execute or a libuv callback, so the implementation must catch everything itself.
class RequestHandler {
public:
    // A chunk of request body (already de-chunked). The view is only valid during the call.
    virtual void on_body(std::string_view chunk) noexcept = 0;
    // The request body is complete (immediately after on_request for bodiless requests).
    virtual void on_body_complete() noexcept = 0;
    // The write buffer drained below the low-water mark after write_body reported kWait.
    virtual void on_writable() noexcept = 0;
    // The client closed or the connection failed before this request's response completed.
    virtual void on_disconnect() noexcept = 0;
    // Core forgets this handler now; called exactly once, and nothing is called after it.
    virtual void on_release() noexcept = 0;

protected:
    ~RequestHandler() = default;
};

// Per-server upward interface (one per listening server, not per connection).
class ConnectionEvents {
public:
    // A complete request head arrived. Return the handler for it; core keeps the pointer
    // until on_release. Returning nullptr means the callee already answered through
    // HttpConnection::respond_simple (e.g. 503) or aborted the connection.
    virtual RequestHandler* on_request(HttpConnection& conn, const RequestHead& head) noexcept = 0;
    // Core answered the request itself (400/413/414/431/…): for logging. `detail` says why.
    virtual void on_protocol_error(HttpConnection& conn, int status,
                                   std::string_view detail) noexcept = 0;
    // The connection is closed; its user data (if any) may be dropped now.
    virtual void on_connection_closed(HttpConnection& conn) noexcept = 0;

protected:
    ~ConnectionEvents() = default;
};

// Result of HttpConnection::write_body / start_response.
enum class WriteResult : std::uint8_t {
    kOk,          // accepted; the output buffer is under the high-water mark
    kWait,        // accepted, but the buffer is over the high-water mark: wait for on_writable
    kClosed,      // the connection is gone; the data was dropped
    kTooLong,     // more body than the response's content-length: nothing was written
    kTooShort,    // more=false before content-length bytes were sent: nothing was written
    kNotStarted,  // write_body before start_response
    kAlreadyStarted,  // start_response twice
    kFinished,    // write after the response completed
    kInvalid,     // start_response: bad status, header name or value (see last_header_error)
};

}  // namespace cppuvicorn::core
