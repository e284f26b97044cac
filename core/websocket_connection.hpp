// SPDX-License-Identifier: BSD-3-Clause
// WebSocketConnection: one WebSocket session (RFC 6455, permessage-deflate RFC 7692) on a
// connection HttpConnection handed over after an upgrade request. Handshake validation and
// answers, frame reassembly and limits, automatic pongs, keepalive pings, the closing handshake,
// read pausing and write backpressure. The wire behaviour (status codes, bodies, close codes and
// reasons) is that of Uvicorn's websockets-sansio implementation. No Python here.
#pragma once

#include "core/request_handler.hpp"
#include "core/response_writer.hpp"
#include "core/transport.hpp"
#include "core/websocket_codec.hpp"

#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>

namespace cppuvicorn::core {

struct ConnectionContext;

// True if Uvicorn would hand this request to its WebSocket protocol: the last Upgrade header is
// "websocket" (any case) and the last Connection header lists "upgrade" (any case).
bool is_websocket_upgrade(const RequestHead& head);

// The verdict on an upgrade request, as websockets' ServerProtocol.accept gives it.
struct WsHandshake {
    int status = 101;          // 101, or 400 / 405 / 426
    std::string body;          // with a rejection: the text/plain body
    std::string extra_header;  // with 405: "Allow: GET\r\n"; with 426: "Upgrade: websocket\r\n"
    std::string accept_key;    // with 101: Sec-WebSocket-Accept
    std::optional<DeflateParams> deflate;  // with 101: permessage-deflate, if agreed
};
WsHandshake check_websocket_handshake(const RequestHead& head, bool per_message_deflate);

class WebSocketConnection {
  public:
    enum class State : std::uint8_t {
        kNew,        // created, start() not called yet
        kHandshake,  // valid request; waiting for the application's answer
        kRejected,   // a non-101 response went out; the connection closes after it
        kOpen,       // 101 sent: messages flow both ways
        kClosing,    // the application's close frame went out; waiting for the client's
        kClosed,     // the session is over; the connection is closing
    };

    // The HttpConnection that owns this object also owns the transport and the context.
    WebSocketConnection(Transport& transport, ConnectionContext& ctx);
    ~WebSocketConnection();
    WebSocketConnection(const WebSocketConnection&) = delete;
    WebSocketConnection& operator=(const WebSocketConnection&) = delete;

    // ---- called by HttpConnection (the transport owner) ----
    // Validates the handshake: a bad one is answered (400/405/426) and closes; a good one calls
    // handler.on_ws_connect(). Called once, from inside the parser's on_head.
    void start(const RequestHead& head, WebSocketHandler& handler);
    void on_data(std::string_view data);  // bytes after the request head; the view dies after
    void process_pending();               // frames left buffered while reading was paused
    void on_drained();
    void on_closed();                   // the transport is closed: report and release
    std::uint64_t deadline_ms() const;  // next ping / pong / close timer, 0 for none
    void on_deadline();
    void shutdown();  // server shutdown: 1012, or 500 before the accept

    // ---- called by the handler (the application side) ----
    // 101 Switching Protocols with the application's extra headers and subprotocol (empty for
    // none). kInvalid (see last_header_error) for a bad header; kClosed unless in kHandshake.
    WriteResult accept(std::span<const Header> headers, std::string_view subprotocol);
    // A complete non-101 answer instead of the handshake (403 for a close before the accept,
    // 500 for an application error, or the websocket.http.response denial): the application's
    // headers, then Date / Connection / Content-Length / Content-Type unless it gave them.
    // kInvalid for a status outside 200..599 or a bad header; kTooLong / kTooShort when the
    // application's content-length does not match `body`. Nothing is sent then.
    WriteResult respond(int status, std::span<const Header> headers, std::string_view body);
    // One message (a single frame, compressed if permessage-deflate was agreed).
    WriteResult send(bool text, std::string_view data);
    // Starts the closing handshake: the connection closes when the client answers, or after
    // the close timeout. kClosed unless kOpen.
    WriteResult close(int code, std::string_view reason);
    // Stop / resume taking frames off the socket (the application's queue is full / has room).
    void pause_reading();
    void resume_reading();
    // Close the connection now, without a close frame.
    void abort();

    State state() const { return state_; }
    HeaderError last_header_error() const { return header_error_; }

    static constexpr std::uint64_t kCloseTimeoutMs = 10000;  // Uvicorn's close_timeout

  private:
    void process_frames();
    void handle_frame(const WsFrame& frame);
    void handle_data_frame(const WsFrame& frame);
    void handle_close_frame(std::string_view payload);
    void handle_pong(std::string_view payload);
    void deliver(bool text, std::string_view data);
    void fail(int code, std::string_view reason, WsCloseCause cause);
    void fail_too_big(std::uint64_t frame_length, bool decompressed);
    void report_closed(int code, std::string_view reason, WsCloseCause cause);
    void write_http_response(int status, std::span<const Header> headers, std::string_view body,
                             std::string_view extra_header);
    void send_ping();
    void stop_keepalive();
    void update_reading();
    void after_write();
    void trim_buffers();
    WriteResult write_state();
    std::uint64_t message_limit_left() const;

    Transport& transport_;
    ConnectionContext& ctx_;
    WebSocketHandler* handler_ = nullptr;
    WsDecoder decoder_;
    std::unique_ptr<WsDeflate> deflate_;
    // "Sec-WebSocket-Accept: …" and the extensions answer, from the handshake to the 101.
    std::unique_ptr<std::string> handshake_lines_;
    std::string message_;  // the fragmented or decompressed message being assembled
    // Keepalive and close timers, on Transport::now_ms()'s clock; 0 = not armed.
    std::uint64_t ping_due_ms_ = 0;
    std::uint64_t pong_due_ms_ = 0;
    std::uint64_t close_due_ms_ = 0;
    std::uint64_t ping_sent_ms_ = 0;
    // The fields below are packed (memory per idle session: the object is 248 bytes, 256 with
    // malloc's header, not 272).
    std::uint32_t last_rtt_ms_ = 0;  // capped at 2^32 - 1 ms
    std::uint32_t ping_payload_ = 0;
    std::uint32_t rng_state_;
    State state_ = State::kNew;
    HeaderError header_error_ = HeaderError::kNone;
    bool ping_pending_ = false;
    bool in_message_ = false;  // a fragmented message is being received
    bool message_text_ = false;
    bool message_compressed_ = false;
    bool paused_ = false;     // the application asked to stop reading
    bool connected_ = false;  // on_ws_connect was called
    bool metered_ = false;    // metrics on: counted as an open session
    bool closed_reported_ = false;
    bool waiting_writable_ = false;
    bool in_frames_ = false;  // inside process_frames (no re-entry)
};

}  // namespace cppuvicorn::core
