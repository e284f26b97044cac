// SPDX-License-Identifier: BSD-3-Clause
#include "core/http_connection.hpp"

#include "core/metrics.hpp"

#include <algorithm>
#include <cerrno>
#include <charconv>
#include <chrono>
#include <unistd.h>
#include <utility>

namespace cppuvicorn::core {

namespace {

constexpr std::string_view kContinue = "HTTP/1.1 100 Continue\r\n\r\n";
constexpr std::string_view kInvalidRequest = "Invalid HTTP request received.";

std::uint64_t to_ms(double seconds) {
    return seconds <= 0 ? 0 : static_cast<std::uint64_t>(seconds * 1000.0);
}

std::uint64_t steady_ns() {
    return static_cast<std::uint64_t>(std::chrono::duration_cast<std::chrono::nanoseconds>(
                                          std::chrono::steady_clock::now().time_since_epoch())
                                          .count());
}

}  // namespace

HttpConnection::HttpConnection(Transport& transport, ConnectionContext& ctx, PeerAddress peer,
                               PeerAddress local)
    : transport_(transport), ctx_(ctx), peer_(std::move(peer)), local_(std::move(local)) {
    // Silence is never free: a connection that never sends a request is closed like an idle
    // keep-alive connection.
    arm_deadline();
}

// ---------------------------------------------------------------------------------------------
// Input

void HttpConnection::on_data(std::string_view data) {
    if (closed_) return;
    if (ws_) {
        ws_->on_data(data);
        return;
    }
    if (!parser_)
        parser_ = std::make_unique<HttpParser>(static_cast<ParserSink&>(*this), ctx_.config);
    if (parser_paused_ || !parser_->pending().empty()) {
        // A request is outstanding, or earlier bytes wait for the scheduled process_pending:
        // hold these behind them.
        parser_->pending().append(data);
        update_read_state();
        return;
    }
    process(data);
}

void HttpConnection::process_pending() {
    if (ws_) {
        ws_->process_pending();
        return;
    }
    if (closed_ || parser_paused_ || !parser_ || parser_->pending().empty()) return;
    std::string data;
    data.swap(parser_->pending());
    process(data);
}

void HttpConnection::process(std::string_view data) {
    in_process_ = true;
    while (!closed_) {
        ParseResult r = parser_->execute(data);
        if (r.kind == ParseResult::Kind::kError) {
            in_process_ = false;
            fail_request(r.status, r.detail);
            return;
        }
        if (r.kind == ParseResult::Kind::kNeedMore) break;
        // kPaused: a request was read to its end.
        data.remove_prefix(r.consumed);
        if (ws_) {
            // The upgrade request was the last HTTP/1.1 message: the rest is WebSocket frames.
            in_process_ = false;
            // Nor is the parser needed again: it and its head buffers go (a few hundred bytes
            // per idle session).
            parser_.reset();
            ws_->on_data(data);
            return;
        }
        if (handler_ == nullptr || response_complete_) {
            finish_request();
            if (closed_) break;
            parser_->resume();
            continue;
        }
        parser_paused_ = true;
        parser_->pending().assign(data);
        break;
    }
    in_process_ = false;
    // A response completed inside this call (an eagerly started Task on Python 3.12+) while its
    // body is still coming: what write_body would have done outside it happens now (a close
    // that is due does not wait for the rest of the body).
    if (!closed_ && handler_ != nullptr && response_complete_ && !message_complete_) {
        after_response_complete();
    }
    if (closed_) return;
    if (!transport_.out().empty()) {
        // Leave the write to the end of the turn (Server::run_deferred, after every connection
        // with bytes this turn has been read): a request still being answered may join its
        // response there (pipelining), and responses answered at once (an eagerly started
        // Task on Python 3.12+, an error) leave back to back. Writing each as its request was
        // read woke the client once per response: on a 3.13 FastAPI run, 13 % of the server's
        // time went to those wake-ups, and it served about half the requests it does now.
        // A long pass does not hold them to its end: see ServerConfig::flush_delay_max_ns.
        if (transport_.out().size() >= ctx_.config.write_high_water) {
            transport_.flush();
        } else {
            transport_.schedule_flush();
        }
    }
    // `data` is what the last execute() consumed: without a request in flight, the start (or
    // more) of the next request head.
    arm_deadline(!data.empty());
    update_read_state();
}

void HttpConnection::trim_parsed() {
    // Called by the server's sweep (ten times a second), not after every request: a busy
    // connection keeps its parser and buffers from one request to the next, and only one that
    // sits idle gives them back. Between requests the parser holds nothing worth keeping (its
    // head buffers are already back in the pool): the next request's bytes make a fresh one.
    if (closed_ || ws_ != nullptr || handler_ != nullptr || parser_paused_ ||
        parser_->in_message() || !parser_->pending().empty()) {
        return;
    }
    parser_.reset();
    transport_.trim();
    ctx_.events.on_connection_idle(*this);
}

void HttpConnection::on_head(const RequestHead& head) {
    head_deadline_ms_ = 0;
    if (head.upgrade && is_websocket_upgrade(head)) {
        ws_ = std::make_unique<WebSocketConnection>(transport_, ctx_);
        if (WebSocketHandler* h = ctx_.events.on_websocket(*this, head)) {
            deadline_ms_ = 0;
            ws_->start(head, *h);
            return;
        }
        ws_.reset();  // WebSockets are off: served as plain HTTP, as Uvicorn does
    }
    request_.head_method = head.method == "HEAD";
    request_.http10 = head.http_minor == 0;
    // Uvicorn 0.54: HTTP/1.0 never keeps the connection, whatever it asks for.
    keep_alive_ = head.keep_alive && head.http_minor != 0;
    expect_continue_ = head.expect_continue;
    message_complete_ = false;
    response_started_ = false;
    response_complete_ = false;
    waiting_writable_ = false;
    deadline_ms_ = 0;
    response_status_ = 0;
    if (MetricsSlot* m = ctx_.config.metrics) {
        m->add(kRequestsStarted);
        request_start_ns_ = steady_ns();
        metered_ = true;
    }
    handler_ = ctx_.events.on_request(*this, head);
}

void HttpConnection::on_body(std::string_view chunk) {
    if (handler_ != nullptr && !response_complete_) handler_->on_body(chunk);
}

int HttpConnection::on_message_end() {
    message_complete_ = true;
    expect_continue_ = false;
    if (handler_ != nullptr && !response_complete_) handler_->on_body_complete();
    return kPause;
}

void HttpConnection::on_eof() {
    // Uvicorn treats a half-close like a lost connection; so do we.
    transport_.close(true);
}

void HttpConnection::on_closed() {
    closed_ = true;
    deadline_ms_ = 0;
    file_.reset();  // a file body cut short: close it
    if (metered_) meter_request_end();
    if (RequestHandler* h = std::exchange(handler_, nullptr)) {
        if (!response_complete_) h->on_disconnect();
        h->on_release();
    }
    if (ws_) ws_->on_closed();
    ctx_.events.on_connection_closed(*this);
}

void HttpConnection::on_deadline() {
    if (ws_) {
        ws_->on_deadline();
        return;
    }
    deadline_ms_ = 0;
    if (closed_) return;
    if (handler_ == nullptr) {
        bool head_started = (parser_ && parser_->in_head()) || head_deadline_ms_ != 0;
        if (!head_started) {
            if (transport_.buffered() > 0) {
                // The last response is still going out to a slow reader: not idle yet. Closing
                // now would cut it short (Uvicorn's keep-alive close lets the transport drain
                // first); look again one keep-alive period later.
                deadline_ms_ = transport_.now_ms() + to_ms(ctx_.config.timeout_keep_alive);
                return;
            }
            // Idle (before the first request or between requests): a silent close, as Uvicorn's
            // keep-alive timeout.
            transport_.close(true);
            return;
        }
        bool total = head_deadline_ms_ != 0 && head_deadline_ms_ <= transport_.now_ms();
        // 408 once a request line has started (RFC 9110 §15.5.9: the request was not complete
        // in time); CRLFs alone before it get a silent close.
        time_out(parser_ && parser_->in_head() ? 408 : 0,
                 total ? "request head not complete within the request head timeout"
                       : "request head stalled for the keep-alive timeout");
        return;
    }
    // A stale deadline (the body is complete, held back by the app, or waits for 100 Continue)
    // is not the client's fault.
    if (message_complete_ || body_paused_ || expect_continue_) return;
    time_out(response_started_ ? 0 : 408, "request body stalled for the body read timeout");
}

void HttpConnection::shutdown() {
    if (ws_) {
        ws_->shutdown();
        return;
    }
    keep_alive_ = false;
    if (handler_ == nullptr) transport_.close(false);
}

void HttpConnection::on_drained() {
    if (ws_) {
        ws_->on_drained();
        return;
    }
    if (file_ != nullptr) {
        if (!pumping_file_) pump_file();
        return;  // the handler waits for the whole file (end_file wakes it)
    }
    if (waiting_writable_ && handler_ != nullptr) {
        waiting_writable_ = false;
        handler_->on_writable();
    }
}

void HttpConnection::fail_request(int status, std::string_view detail) {
    if (MetricsSlot* m = ctx_.config.metrics) m->add(kProtocolErrors);
    ctx_.events.on_protocol_error(*this, status, detail);
    if (!response_started_) write_canned_response(status);
    // response_complete_ is left alone: a handler whose response is unfinished (its body was
    // malformed) hears on_disconnect before on_release, like any other lost connection.
    keep_alive_ = false;
    transport_.linger_on_close();  // the rest of what the client sends is unknown
    transport_.close(false);
    closed_ = true;
}

void HttpConnection::time_out(int status, std::string_view detail) {
    ctx_.events.on_timeout(*this, status, detail);
    keep_alive_ = false;
    if (status != 0 && !response_started_) {
        write_canned_response(status);
        transport_.close(false);
    } else {
        // Nothing (more) worth waiting for: a client this silent may not read either.
        transport_.close(true);
    }
    // As in fail_request: an unfinished handler hears on_disconnect (http.disconnect).
    closed_ = true;
}

void HttpConnection::write_canned_response(int status) {
    auto& lines = ctx_.status_lines;
    std::string_view body = kInvalidRequest;
    std::string reason;
    if (status != 400) {
        // "HTTP/1.1 431 Request Header Fields Too Large\r\n" → the reason phrase.
        std::string_view line = lines.line(status);
        reason.assign(line.substr(13, line.size() - 15));
        body = reason;
    }
    write_simple_response(transport_.out(), lines, status,
                          ctx_.config.date_header ? ctx_.date.header_line() : "",
                          ctx_.config.default_headers, body);
}

void HttpConnection::meter_request_end() {
    // The request is over (its response complete, or the connection lost): counted by the
    // status its response started with, timed from its head.
    metered_ = false;
    MetricsSlot* m = ctx_.config.metrics;
    m->add(kRequestsFinished);
    if (response_status_ != 0)
        m->observe_request(response_status_, steady_ns() - request_start_ns_);
}

bool HttpConnection::client_may_send() const {
    return !message_complete_ || (parser_ && !parser_->pending().empty());
}

void HttpConnection::finish_request() {
    if (metered_) meter_request_end();
    const bool may_send = !keep_alive_ && client_may_send();  // only a close asks
    RequestHandler* h = std::exchange(handler_, nullptr);
    message_complete_ = false;
    response_started_ = false;
    response_complete_ = false;
    waiting_writable_ = false;
    if (body_paused_) body_paused_ = false;
    if (h != nullptr) h->on_release();
    // The head's views died with the handler: an idle connection holds no head buffers.
    if (parser_) parser_->park_buffers();
    if (!keep_alive_) {
        if (may_send) transport_.linger_on_close();
        transport_.close(false);
        closed_ = true;
    }
}

void HttpConnection::arm_deadline(bool head_bytes) {
    deadline_ms_ = 0;
    if (closed_ || ws_) return;
    const ServerConfig& c = ctx_.config;
    if (handler_ == nullptr) {
        std::uint64_t now = transport_.now_ms();
        // The head timer starts at the first byte of the next request (CRLFs before a request
        // line count: trickling them is no way around it) and is not pushed back by later bytes.
        // Not inside the body of a request answered without a handler (e.g. 503).
        bool reading_head = !parser_ || !parser_->in_message() || parser_->in_head();
        if (head_bytes && reading_head && head_deadline_ms_ == 0 && c.timeout_request_head > 0) {
            head_deadline_ms_ = now + to_ms(c.timeout_request_head);
        }
        deadline_ms_ = now + to_ms(c.timeout_keep_alive);
        if (head_deadline_ms_ != 0 && head_deadline_ms_ < deadline_ms_) {
            deadline_ms_ = head_deadline_ms_;
        }
        return;
    }
    // A request is in flight: only the client's silence while its body is wanted counts.
    if (message_complete_ || body_paused_ || expect_continue_ || c.timeout_body_read <= 0) return;
    deadline_ms_ = transport_.now_ms() + to_ms(c.timeout_body_read);
}

void HttpConnection::update_read_state() {
    if (closed_) return;
    bool hold = body_paused_ || (parser_paused_ && parser_ != nullptr &&
                                 parser_->pending().size() >= ctx_.config.read_high_water);
    if (hold) {
        transport_.pause_reading();
    } else {
        transport_.resume_reading();
    }
}

// ---------------------------------------------------------------------------------------------
// Output

WriteResult HttpConnection::start_response(int status, std::span<const Header> headers) {
    if (closed_) return WriteResult::kClosed;
    if (response_started_) return WriteResult::kAlreadyStarted;
    std::string_view date = ctx_.config.date_header ? ctx_.date.header_line() : "";
    request_.keep_alive = keep_alive_;  // shutdown() may have cleared it since the head
    header_error_ = write_response_head(transport_.out(), ctx_.status_lines, status, headers,
                                        request_, date, ctx_.config.default_headers, response_);
    if (header_error_ != HeaderError::kNone) return WriteResult::kInvalid;
    response_started_ = true;
    response_status_ = status;
    keep_alive_ = keep_alive_ && response_.keep_alive;
    // As Uvicorn: no 100 after a final response; a body the client still sends is discarded.
    expect_continue_ = false;
    if (!in_process_) transport_.schedule_flush();
    return WriteResult::kOk;
}

WriteResult HttpConnection::write_body(std::string_view data, bool more) {
    if (closed_) return WriteResult::kClosed;
    if (!response_started_) return WriteResult::kNotStarted;
    if (response_complete_) return WriteResult::kFinished;
    if (response_.body_refused && !data.empty()) return WriteResult::kTooLong;
    if (response_.framing == Framing::kContentLength) {
        if (data.size() > response_.remaining) return WriteResult::kTooLong;
        if (!more && data.size() < response_.remaining) {
            // As Uvicorn: what was sent goes out, then the app hears about the shortfall.
            write_body_chunk(transport_.out(), response_, data);
            response_.remaining -= data.size();
            transport_.schedule_flush();
            return WriteResult::kTooShort;
        }
        response_.remaining -= data.size();
    }
    if (file_ != nullptr) return WriteResult::kFinished;  // the body is a file being sent
    std::string& out = transport_.out();
    if (response_.framing == Framing::kContentLength && data.size() >= kDirectWriteMin) {
        transport_.write_direct(data);  // headers (if still queued) and body in one writev
    } else {
        write_body_chunk(out, response_, data);
    }
    if (!more) {
        write_body_end(out, response_);
        response_complete_ = true;
    }
    if (out.size() >= ctx_.config.write_high_water || (!more && !keep_alive_)) {
        transport_.flush();
    } else if (!in_process_) {
        transport_.schedule_flush();
    }
    if (response_complete_ && !in_process_) {
        after_response_complete();
        return WriteResult::kOk;
    }
    if (transport_.buffered() >= ctx_.config.write_high_water) {
        waiting_writable_ = true;
        return WriteResult::kWait;
    }
    return WriteResult::kOk;
}

void HttpConnection::after_response_complete() {
    if (message_complete_ || !keep_alive_) {
        finish_request();
        if (!closed_) {
            parser_paused_ = false;
            parser_->resume();
            if (!parser_->pending().empty()) {
                transport_.schedule_resume();
            } else {
                arm_deadline();
            }
            update_read_state();
        }
    } else {
        // The app answered without reading the whole body: read on and discard it (under
        // the body read timeout).
        body_paused_ = false;
        arm_deadline();
        update_read_state();
    }
}

// ---------------------------------------------------------------------------------------------
// File bodies (ASGI http.response.pathsend)

struct HttpConnection::FileBody {
    int fd;
    std::uint64_t offset = 0;
    std::uint64_t remaining;
    bool chunked;  // one chunk: its size line went out before the file, its CRLF goes after
    FileBody(int f, std::uint64_t size, bool c) : fd(f), remaining(size), chunked(c) {}
    ~FileBody() { ::close(fd); }
    FileBody(const FileBody&) = delete;
    FileBody& operator=(const FileBody&) = delete;
};

HttpConnection::~HttpConnection() = default;

WriteResult HttpConnection::send_file(int fd, std::uint64_t size) {
    auto file = std::make_unique<FileBody>(fd, size, response_.framing == Framing::kChunked);
    if (closed_) return WriteResult::kClosed;
    if (!response_started_) return WriteResult::kNotStarted;
    if (response_complete_ || file_ != nullptr) return WriteResult::kFinished;
    if (response_.body_refused && size > 0) return WriteResult::kTooLong;
    if (response_.framing == Framing::kContentLength) {
        if (size > response_.remaining) return WriteResult::kTooLong;
        if (size < response_.remaining) return WriteResult::kTooShort;
        response_.remaining = 0;
    }
    if (response_.framing == Framing::kNoBody || size == 0) {
        write_body_end(transport_.out(), response_);  // HEAD, 204, 304, or an empty file
        response_complete_ = true;
        if (!in_process_) {
            transport_.schedule_flush();
            after_response_complete();
        }
        return WriteResult::kOk;
    }
    if (file->chunked) {
        char line[24];
        auto r = std::to_chars(line, line + sizeof line, size, 16);
        transport_.out().append(line, r.ptr).append("\r\n", 2);
    }
    file_ = std::move(file);
    pump_file();
    if (closed_) return WriteResult::kClosed;
    if (file_ == nullptr) return WriteResult::kOk;  // all of it went at once
    waiting_writable_ = true;
    return WriteResult::kWait;
}

void HttpConnection::pump_file() {
    // Loop: let what is queued before the file go; then sendfile as much as the socket takes;
    // when it takes nothing (or the transport cannot sendfile: TLS), copy one chunk through
    // the normal write path, whose completion (on_drained) brings us back here.
    constexpr std::size_t kSendChunk = std::size_t{1} << 22;
    constexpr std::size_t kCopyChunk = std::size_t{1} << 16;
    pumping_file_ = true;
    while (file_ != nullptr && !closed_) {
        if (file_->remaining == 0) {
            end_file(true);
            break;
        }
        if (!transport_.out().empty()) transport_.flush();
        if (closed_ || file_ == nullptr) break;
        if (transport_.buffered() > 0) break;  // resumed from on_drained
        std::size_t want =
            static_cast<std::size_t>(std::min<std::uint64_t>(file_->remaining, kSendChunk));
        std::int64_t sent = transport_.send_file(file_->fd, file_->offset, want);
        if (sent > 0) {
            file_->offset += static_cast<std::uint64_t>(sent);
            file_->remaining -= static_cast<std::uint64_t>(sent);
            continue;
        }
        if (closed_) break;
        // The socket is full, or no sendfile here: one copied chunk, then wait for it.
        want = static_cast<std::size_t>(std::min<std::uint64_t>(file_->remaining, kCopyChunk));
        std::string& out = transport_.out();
        std::size_t old = out.size();
        out.resize(old + want);
        ssize_t got;
        do {
            got = ::pread(file_->fd, out.data() + old, want, static_cast<off_t>(file_->offset));
        } while (got < 0 && errno == EINTR);
        if (got <= 0) {
            // The file shrank or cannot be read: the promised body cannot be delivered.
            out.resize(old);
            end_file(false);
            break;
        }
        out.resize(old + static_cast<std::size_t>(got));
        file_->offset += static_cast<std::uint64_t>(got);
        file_->remaining -= static_cast<std::uint64_t>(got);
        transport_.flush();
    }
    pumping_file_ = false;
}

void HttpConnection::end_file(bool ok) {
    bool chunked = file_->chunked;
    file_.reset();  // closes the file
    if (!ok) {
        abort();
    } else {
        std::string& out = transport_.out();
        if (chunked) out.append("\r\n", 2);
        write_body_end(out, response_);
        response_complete_ = true;
        transport_.schedule_flush();
        if (!in_process_) after_response_complete();
    }
    if (waiting_writable_ && handler_ != nullptr) {
        waiting_writable_ = false;
        handler_->on_writable();
    }
}

void HttpConnection::respond_simple(int status, std::string_view body) {
    if (closed_ || response_started_) return;
    write_simple_response(transport_.out(), ctx_.status_lines, status,
                          ctx_.config.date_header ? ctx_.date.header_line() : "",
                          ctx_.config.default_headers, body);
    response_started_ = response_complete_ = true;
    response_status_ = status;
    keep_alive_ = false;
    if (!in_process_) transport_.flush();
}

void HttpConnection::want_body() {
    if (!expect_continue_ || response_started_ || closed_) return;
    expect_continue_ = false;
    transport_.out().append(kContinue);
    if (!in_process_) transport_.flush();
    arm_deadline();  // the client was waiting for us; from now on the body is its turn
}

void HttpConnection::pause_body() {
    body_paused_ = true;
    if (handler_ != nullptr) deadline_ms_ = 0;  // the app holds back the body: no body timer
    update_read_state();
}

void HttpConnection::resume_body() {
    if (!body_paused_) return;
    body_paused_ = false;
    if (handler_ != nullptr) arm_deadline();
    update_read_state();
}

void HttpConnection::abort() {
    if (closed_) return;
    keep_alive_ = false;
    closed_ = true;
    // What the app already sent still goes out (a partial response is the client's signal).
    if (client_may_send()) transport_.linger_on_close();
    transport_.close(false);
}

}  // namespace cppuvicorn::core
