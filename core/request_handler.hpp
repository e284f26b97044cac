// SPDX-License-Identifier: BSD-3-Clause
// The seam between the HTTP core and whatever runs the application (the ASGI bridge, or a
// RecordingHandler in unit tests). Core calls upward only through these interfaces; the
// application side calls back only through HttpConnection's public response methods.
// No Python here.
#pragma once

#include "core/websocket_codec.hpp"

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace cppuvicorn::core {

class HttpConnection;

struct Header {
    std::string_view name;  // lowercased by the parser for requests
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
    bool keep_alive = true;        // what the request asks for (version + Connection header)
    bool expect_continue = false;  // "Expect: 100-continue"
    bool upgrade = false;          // Connection: upgrade + Upgrade: … (WebSocket)
    bool has_body = false;         // content-length > 0 or chunked
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

// Why a WebSocket session ended, as WebSocketHandler::on_ws_closed reports it.
enum class WsCloseCause : std::uint8_t {
    kPeer,         // the client's close frame (code 1005 if it carried none)
    kProtocol,     // the client broke RFC 6455 or a limit: the close frame we sent
    kKeepalive,    // no pong within the ping timeout: we sent 1011
    kShutdown,     // server shutdown: we sent 1012
    kInvalidText,  // a text message was not UTF-8: we sent 1007
    kLost,         // the connection went away without a close handshake (1006)
};

// One WebSocket session's application side (core/websocket_connection.hpp drives it). The same
// rules as RequestHandler: every method is noexcept, may be called from inside a libuv
// callback, and must catch everything itself. Order: on_ws_connect or on_ws_rejected first;
// on_ws_release last and exactly once; nothing is called after it.
class WebSocketHandler {
  public:
    // The opening handshake is valid: start the application (it answers with
    // WebSocketConnection::accept / reject / respond).
    virtual void on_ws_connect() noexcept = 0;
    // Core wrote a non-101 answer to the handshake (invalid request, reject/respond, or server
    // shutdown before the application accepted): for the log.
    virtual void on_ws_rejected(int status) noexcept = 0;
    // A complete message: reassembled, decompressed, and valid UTF-8 when `text`. The view is
    // only valid during the call.
    virtual void on_ws_message(bool text, std::string_view data) noexcept = 0;
    // A complete binary message that came as one uncompressed frame, its payload still masked
    // where the read put it (WsFrame::masked; valid only during the call). A handler that
    // copies messages into storage of its own overrides this to unmask straight into it with
    // WsFrame::unmask_to; by default the payload is unmasked into a string for on_ws_message.
    virtual void on_ws_binary(const WsFrame& frame) noexcept {
        std::string data(frame.payload.size(), '\0');
        frame.unmask_to(data.data());
        on_ws_message(false, data);
    }
    // The session is over (at most once, before on_ws_release): code and reason as received
    // or sent, see WsCloseCause.
    virtual void on_ws_closed(int code, std::string_view reason, WsCloseCause cause) noexcept = 0;
    // The write buffer drained after WebSocketConnection::send returned kWait.
    virtual void on_ws_writable() noexcept = 0;
    // Core forgets this handler now.
    virtual void on_ws_release() noexcept = 0;

  protected:
    ~WebSocketHandler() = default;
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
    // Core closed the connection for a timeout while a request was being read (head or body):
    // for the debug log. `status` is what it answered (408), or 0 if it closed without a
    // response. Not called for an idle keep-alive connection, which is closed silently.
    virtual void on_timeout(HttpConnection& conn, int status, std::string_view detail) noexcept {
        (void)conn;
        (void)status;
        (void)detail;
    }
    // A connection was accepted (before anything is read from it): for the trace log.
    virtual void on_connection_opened(HttpConnection& conn) noexcept { (void)conn; }
    // The connection is idle between requests (no request in flight, none begun): per-request
    // state kept on its user data may be dropped until the next request.
    virtual void on_connection_idle(HttpConnection& conn) noexcept { (void)conn; }
    // The connection is closed; its user data (if any) may be dropped now.
    virtual void on_connection_closed(HttpConnection& conn) noexcept = 0;
    // A request asks to upgrade to WebSocket (its last Upgrade header is "websocket" and its
    // last Connection header lists "upgrade", as Uvicorn decides). Return the session's handler
    // (core then validates the handshake and calls on_ws_connect or on_ws_rejected), or nullptr
    // to serve the request as plain HTTP (WebSockets disabled). conn.websocket() is set here.
    virtual WebSocketHandler* on_websocket(HttpConnection& conn, const RequestHead& head) noexcept {
        (void)conn;
        (void)head;
        return nullptr;
    }

    // A TLS connection failed (`in_handshake`: before any request could be read, e.g. a
    // plain-HTTP client or a refused client certificate) and is being closed: for the log.
    virtual void on_tls_error(HttpConnection& conn, std::string_view detail,
                              bool in_handshake) noexcept {
        (void)conn;
        (void)detail;
        (void)in_handshake;
    }

  protected:
    ~ConnectionEvents() = default;
};

// Result of HttpConnection::write_body / start_response.
enum class WriteResult : std::uint8_t {
    kOk,              // accepted; the output buffer is under the high-water mark
    kWait,            // accepted, but the buffer is over the high-water mark: wait for on_writable
    kClosed,          // the connection is gone; the data was dropped
    kTooLong,         // more body than the response's content-length (or any body for a
                      // 204 / 304 without one): nothing was written
    kTooShort,        // more=false before content-length bytes were sent: nothing was written
    kNotStarted,      // write_body before start_response
    kAlreadyStarted,  // start_response twice
    kFinished,        // write after the response completed
    kInvalid,         // start_response: bad status, header name or value (see last_header_error)
};

}  // namespace cppuvicorn::core
