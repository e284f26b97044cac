// SPDX-License-Identifier: BSD-3-Clause
// HttpConnection: the HTTP/1.1 connection state machine. It glues a Transport, an HttpParser
// and the response framing together: keep-alive, pipelining (one request at a time, parsing
// paused while a response is outstanding), 100-continue, read and write backpressure, canned
// error responses and the idle deadline. No Python here.
#pragma once

#include "core/config.hpp"
#include "core/date_cache.hpp"
#include "core/http_parser.hpp"
#include "core/request_handler.hpp"
#include "core/response_writer.hpp"
#include "core/transport.hpp"
#include "core/websocket_connection.hpp"

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <string_view>

namespace cppuvicorn::core {

// Shared by every connection of one server.
struct ConnectionContext {
    const ServerConfig& config;
    const StatusLines& status_lines;
    DateCache& date;
    ConnectionEvents& events;
};

class HttpConnection final : private ParserSink {
  public:
    HttpConnection(Transport& transport, ConnectionContext& ctx, PeerAddress peer,
                   PeerAddress local);
    ~HttpConnection();
    HttpConnection(const HttpConnection&) = delete;
    HttpConnection& operator=(const HttpConnection&) = delete;

    // ---- called by the transport owner ----
    void on_data(std::string_view data);  // bytes from the socket (the view dies after)
    void on_eof();                        // the peer closed its side, or a read error
    void on_drained();                    // buffered() dropped below the high-water mark
    void on_closed();                     // the transport is closed: release the handler
    void process_pending();               // see Transport::schedule_resume
    // The next timeout on Transport::now_ms()'s clock, or 0 for none. One deadline carries
    // every HTTP timeout (the server's sweep checks it a few times a second):
    // - no request in flight: keep-alive silence (--timeout-keep-alive), re-armed by every
    //   read, and from the first byte of a request head also the head's total time
    //   (--timeout-request-head), whichever comes first;
    // - a request whose body is still being read: body silence (--timeout-body-read), re-armed
    //   by every read; off while the application holds back the body (pause_body) or has not
    //   asked for it after "Expect: 100-continue".
    std::uint64_t deadline_ms() const { return ws_ ? ws_->deadline_ms() : deadline_ms_; }
    // The deadline passed: close (a 408 first if a request was cut short and nothing was
    // answered yet; silently for an idle connection, as Uvicorn's keep-alive timeout).
    void on_deadline();
    // Server shutdown: close now if idle, else close after the current response.
    void shutdown();

    // ---- called by the request handler (the application side) ----
    WriteResult start_response(int status, std::span<const Header> headers);
    // Last error detail from start_response (kBadName/kBadValue) for the app's RuntimeError.
    HeaderError last_header_error() const { return header_error_; }
    WriteResult write_body(std::string_view data, bool more);
    // The whole response body is the regular file `fd` (`size` bytes from its start); the
    // connection owns and closes `fd` from here on, whatever the result. The file goes to the
    // socket with sendfile(2) where the transport can, else in copied chunks; the response
    // completes when its last byte is handed over (kWait until then: on_writable follows).
    // Content-length framing must announce exactly `size` (else kTooLong / kTooShort).
    WriteResult send_file(int fd, std::uint64_t size);
    // A complete server-generated response (e.g. 503) instead of calling the app; closes after.
    void respond_simple(int status, std::string_view body);
    // The app wants the body: sends "100 Continue" the first time if the client expects it.
    void want_body();
    // Body flow control: the handler holds more than it wants / has consumed it.
    void pause_body();
    void resume_body();
    // Close the connection now (app error after the response started, etc.).
    void abort();

    bool response_started() const { return response_started_; }
    bool closed() const { return closed_; }
    // A request is being served and its response is not complete yet.
    bool awaiting_response() const {
        return handler_ != nullptr && !response_complete_ && !closed_ && ws_ == nullptr;
    }
    // If idle between requests (and not trimmed yet): release the parser, the transport's
    // buffers and, through ConnectionEvents::on_connection_idle, the owner's per-request state.
    void trim() {
        if (parser_ != nullptr) trim_parsed();  // the sweep calls this for every connection
    }
    // For Server::sweep's prefetch: the fields trim() and deadline_ms() read.
    void prefetch_sweep_fields() const {
        __builtin_prefetch(&parser_);
        __builtin_prefetch(&deadline_ms_);  // the same cache line, or the next
    }
    bool idle() const {
        return ws_ == nullptr && handler_ == nullptr && (!parser_ || !parser_->in_message());
    }
    // The WebSocket session, once the connection upgraded (set before on_websocket is called).
    WebSocketConnection* websocket() { return ws_.get(); }
    const PeerAddress& peer() const { return peer_; }
    const PeerAddress& local() const { return local_; }
    // The TLS session carrying this connection (handshake complete), or nullptr.
    const TlsSession* tls() const { return transport_.tls(); }
    void* user_data = nullptr;  // owned by the ConnectionEvents implementation

  private:
    // ParserSink
    void on_head(const RequestHead& head) override;
    void on_body(std::string_view chunk) override;
    int on_message_end() override;

    void process(std::string_view data);
    void fail_request(int status, std::string_view detail);
    void finish_request();
    // The request's body is not all read, or bytes after it are: a close should linger.
    bool client_may_send() const;
    void pump_file();
    void end_file(bool ok);
    void after_response_complete();
    void arm_deadline(bool head_bytes = false);
    void time_out(int status, std::string_view detail);
    void write_canned_response(int status);  // status line + reason (Uvicorn's text for 400)
    void update_read_state();
    void trim_parsed();
    void meter_request_end();

    Transport& transport_;
    ConnectionContext& ctx_;
    // The sweep reads these three for every connection, ten times a second: together, so that
    // an idle connection costs it one cache line (Server::sweep prefetches it).
    // Null on a trimmed idle connection (see trim) and once the connection became a WebSocket.
    std::unique_ptr<HttpParser> parser_;
    std::unique_ptr<WebSocketConnection> ws_;  // after a WebSocket upgrade: gets all input
    std::uint64_t deadline_ms_ = 0;
    PeerAddress peer_;
    PeerAddress local_;
    RequestHandler* handler_ = nullptr;
    struct FileBody;  // a send_file in progress
    std::unique_ptr<FileBody> file_;
    RequestInfo request_;
    ResponseState response_;
    std::uint64_t head_deadline_ms_ = 0;  // end of --timeout-request-head for the head being read
    HeaderError header_error_ = HeaderError::kNone;
    bool in_process_ = false;        // inside process(): completions are handled by its loop
    bool pumping_file_ = false;      // inside pump_file(): on_drained must not re-enter it
    bool message_complete_ = false;  // the current request has been read to its end
    bool response_started_ = false;
    bool response_complete_ = false;
    bool expect_continue_ = false;   // the client waits for 100 before sending the body
    bool waiting_writable_ = false;  // write_body returned kWait
    bool body_paused_ = false;       // the handler asked to stop reading body
    bool parser_paused_ = false;     // a request is outstanding; parsing waits
    bool keep_alive_ = true;         // the connection may carry another request
    bool closed_ = false;
    bool metered_ = false;  // metrics on: this request's start was counted
    int response_status_ = 0;
    std::uint64_t request_start_ns_ = 0;
};

}  // namespace cppuvicorn::core
