// SPDX-License-Identifier: BSD-3-Clause
// libFuzzer target: HttpConnection over an in-memory transport, with a scripted application
// that answers every request, driven by a fuzzer-chosen schedule of socket and loop events.
//
// Input layout (see make_corpus.py):
//   byte 0     app flags: bits 0-1 when to answer (0 on head, 1 on body complete, 2 only from
//              a schedule op or the final drain, 3 on head for even requests else on body
//              complete); bits 2-3 first response style (rotates per request); bit 4 refuse
//              every request with respond_simple(503); bit 5 pause the body on head;
//              bit 6 want_body on head (100-continue); bit 7 small limits
//   byte 1     number of schedule ops N
//   N bytes    schedule ops: low 3 bits the op, high 5 bits its parameter (see Driver::step)
//   rest       the byte stream from the client (requests, pipelined, chunked bodies, …)
//
// After the schedule, the rest of the stream is delivered and the connection is driven until
// nothing changes (the app answers, the peer reads, the loop turns), then closed.
// Invariants: no crash or sanitizer report; the app sees the heads a reference HttpParser finds
// in the same stream, in order (a prefix of them: the connection may close early); one request
// at a time; at most one protocol error and no request after it; per request: no body after
// body-complete, at most one body-complete and one disconnect, on_release exactly once and nothing
// after it; on_connection_closed exactly once; nothing is appended to the output after the
// transport was closed; the app's writes never come back kInvalid / kAlreadyStarted / kNotStarted;
// and a connection still open at the end has served every complete request of the stream.
#include "core/config.hpp"
#include "core/date_cache.hpp"
#include "core/http_connection.hpp"
#include "core/http_parser.hpp"
#include "core/request_handler.hpp"
#include "core/response_writer.hpp"
#include "core/transport.hpp"

#include "tests/fuzz/fuzz_check.hpp"
#include "tests/fuzz/fuzz_transport.hpp"
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <deque>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace {

using namespace cppuvicorn::core;

using cppuvicorn::fuzz::FuzzTransport;

// ---------------------------------------------------------------------------------------------
// The application

struct App;

struct Request final : RequestHandler {
    App* app = nullptr;
    std::size_t index = 0;
    bool head_request = false;
    bool body_complete = false;
    bool responded = false;
    int disconnects = 0;
    int releases = 0;

    void on_body(std::string_view chunk) noexcept override;
    void on_body_complete() noexcept override;
    void on_writable() noexcept override { alive("on_writable after on_release"); }
    void on_disconnect() noexcept override {
        alive("on_disconnect after on_release");
        FUZZ_CHECK(disconnects == 0);
        ++disconnects;
    }
    void on_release() noexcept override;

    void alive(const char* what) const {
        if (releases != 0) cppuvicorn::fuzz::violated(what);
    }
};

struct App final : ConnectionEvents {
    std::uint8_t flags = 0;
    HttpConnection* conn = nullptr;
    std::deque<Request> requests;  // stable addresses
    std::vector<std::string> heads;
    Request* active = nullptr;
    int connection_closed = 0;
    int protocol_errors = 0;
    std::size_t big_body_size = 70000;  // over the write high-water mark

    int when() const { return flags & 3; }
    bool refuse() const { return (flags & 0x10) != 0; }

    RequestHandler* on_request(HttpConnection& c, const RequestHead& head) noexcept override {
        FUZZ_CHECK(connection_closed == 0);
        FUZZ_CHECK(protocol_errors == 0);  // never a request after a rejected one
        FUZZ_CHECK(active == nullptr);     // one request at a time
        conn = &c;
        heads.push_back(std::string(head.method) + " " + std::string(head.target));
        if (refuse()) {
            c.respond_simple(503, "Service Unavailable");
            return nullptr;
        }
        Request& r = requests.emplace_back();
        r.app = this;
        r.index = requests.size() - 1;
        r.head_request = head.method == "HEAD";
        active = &r;
        if ((flags & 0x20) != 0) c.pause_body();
        if ((flags & 0x40) != 0) c.want_body();
        if (when() == 0 || (when() == 3 && r.index % 2 == 0)) respond(r);
        return &r;
    }
    void on_protocol_error(HttpConnection&, int status, std::string_view) noexcept override {
        FUZZ_CHECK(status == 400 || status == 414 || status == 431 || status == 505);
        FUZZ_CHECK(protocol_errors == 0);
        ++protocol_errors;
    }
    void on_connection_closed(HttpConnection&) noexcept override {
        FUZZ_CHECK(connection_closed == 0);
        ++connection_closed;
    }

    static void ok(WriteResult w) {
        FUZZ_CHECK(w != WriteResult::kInvalid && w != WriteResult::kAlreadyStarted &&
                   w != WriteResult::kNotStarted && w != WriteResult::kTooLong &&
                   w != WriteResult::kTooShort && w != WriteResult::kFinished);
    }

    // Answers in one of four styles; the connection may close under us at any step.
    void respond(Request& r) {
        if (r.responded || r.releases != 0) return;
        r.responded = true;
        int style = static_cast<int>(((flags >> 2) & 3) + r.index) % 4;
        switch (style) {
            case 0: {  // content-length
                Header h[] = {{"content-length", "2"}, {"content-type", "text/plain"}};
                WriteResult w = conn->start_response(200, h);
                ok(w);
                if (w == WriteResult::kClosed) return;
                ok(conn->write_body("ok", false));
                break;
            }
            case 1: {  // chunked, in pieces
                Header h[] = {{"x-style", "chunked"}};
                WriteResult w = conn->start_response(200, h);
                ok(w);
                if (w == WriteResult::kClosed) return;
                w = conn->write_body("hel", true);
                ok(w);
                if (w == WriteResult::kClosed) return;
                w = conn->write_body("", true);
                ok(w);
                if (w == WriteResult::kClosed) return;
                ok(conn->write_body("lo", false));
                break;
            }
            case 2: {  // no body
                WriteResult w = conn->start_response(204, {});
                ok(w);
                if (w == WriteResult::kClosed) return;
                ok(conn->write_body({}, false));
                break;
            }
            default: {  // a body over the write high-water mark: kWait is fine
                std::string len = std::to_string(big_body_size);
                Header h[] = {{"content-length", len}};
                WriteResult w = conn->start_response(200, h);
                ok(w);
                if (w == WriteResult::kClosed) return;
                std::string body(big_body_size, 'x');
                std::size_t first = big_body_size / 3;
                w = conn->write_body(std::string_view(body).substr(0, first), true);
                ok(w);
                if (w == WriteResult::kClosed) return;
                ok(conn->write_body(std::string_view(body).substr(first), false));
                break;
            }
        }
    }
};

void Request::on_body(std::string_view) noexcept {
    alive("on_body after on_release");
    FUZZ_CHECK(!body_complete);
}

void Request::on_body_complete() noexcept {
    alive("on_body_complete after on_release");
    FUZZ_CHECK(!body_complete);
    body_complete = true;
    if (app->when() == 1 || (app->when() == 3 && index % 2 == 1)) app->respond(*this);
}

void Request::on_release() noexcept {
    alive("on_release twice");
    ++releases;
    FUZZ_CHECK(app->active == this);
    app->active = nullptr;
}

// ---------------------------------------------------------------------------------------------
// The reference: the heads a bare HttpParser finds in the stream.

struct HeadList final : ParserSink {
    std::vector<std::string> heads;
    bool error = false;
    void on_head(const RequestHead& head) override {
        heads.push_back(std::string(head.method) + " " + std::string(head.target));
    }
    void on_body(std::string_view) override {}
    int on_message_end() override { return kPause; }
};

HeadList reference_heads(const ServerConfig& config, std::string_view stream) {
    HeadList list;
    HttpParser parser(list, config);
    while (true) {
        ParseResult r = parser.execute(stream);
        if (r.kind == ParseResult::Kind::kError) {
            list.error = true;
            break;
        }
        if (r.kind == ParseResult::Kind::kNeedMore) break;
        stream.remove_prefix(r.consumed);
        parser.resume();
        if (stream.empty()) break;
    }
    return list;
}

constexpr std::size_t kSizes[32] = {1,   2,   3,   4,   5,   6,    7,    8,    10,   12,   15,
                                    17,  20,  24,  28,  32,  40,   48,   64,   80,   100,  128,
                                    160, 200, 256, 400, 512, 1024, 2048, 4096, 8192, 65536};

const StatusLines& shared_status_lines() {
    static const StatusLines lines;
    return lines;
}

struct Driver {
    ServerConfig config;
    // Built once for the process: formatting all the status lines again for every Driver
    // (two per input) took a sixth of a WebSocket run and most of an HTTP one.
    const StatusLines& lines = shared_status_lines();
    DateCache date;
    App app;
    FuzzTransport wire;
    ConnectionContext ctx{config, lines, date, app};
    std::string_view stream;
    HttpConnection* conn = nullptr;

    void respond_active() {
        if (app.active != nullptr) app.respond(*app.active);
        wire.check();
    }

    void step(std::uint8_t op) {
        unsigned param = op >> 3;
        switch (op & 7) {
            case 0: {
                if (!wire.can_deliver() || stream.empty()) return;
                std::size_t n = std::min(kSizes[param], stream.size());
                std::string_view piece = stream.substr(0, n);
                stream.remove_prefix(n);
                wire.deliver(piece);
                return;
            }
            case 1:
                wire.end_of_turn();
                return;
            case 2:
                wire.drain();
                return;
            case 3:
                wire.stalled = !wire.stalled;
                return;
            case 4:
                if (param % 3 == 0) {
                    respond_active();
                } else if (param % 3 == 1) {
                    if (app.active != nullptr) conn->resume_body();
                } else if (app.active != nullptr) {
                    conn->want_body();
                }
                wire.check();
                return;
            case 5:
                wire.deadline(param * 1000u);
                return;
            case 6:
                if (param < 2) {
                    wire.eof();
                } else if (param < 6) {
                    conn->shutdown();
                    wire.check();
                } else if (param < 8) {
                    if (app.active != nullptr) conn->abort();
                    wire.check();
                } else {
                    wire.end_of_turn();
                }
                return;
            default:
                if (app.active != nullptr) conn->pause_body();
                wire.check();
                return;
        }
    }

    // What the server and a patient client would do until nothing changes.
    void settle() {
        // Each round serves at least one request when the app answers only here (when() == 2).
        for (int round = 0; round < 8192; ++round) {
            std::size_t before_heads = app.heads.size();
            std::size_t before_stream = stream.size();
            bool was_closed = wire.closed();
            wire.stalled = false;
            if (app.active != nullptr) {
                conn->resume_body();
                respond_active();
            }
            wire.drain();
            wire.end_of_turn();
            if (wire.can_deliver() && !stream.empty()) {
                std::string_view rest = stream;
                stream = {};
                wire.deliver(rest);
            }
            wire.end_of_turn();
            if (app.heads.size() == before_heads && stream.size() == before_stream &&
                wire.closed() == was_closed && wire.idle_loop() &&
                (app.active == nullptr || app.active->responded)) {
                return;
            }
        }
    }
};

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    if (size < 2) return 0;
    const std::uint8_t flags = data[0];
    const std::size_t nops = std::min<std::size_t>(data[1], size - 2);
    const std::uint8_t* ops = data + 2;
    std::string_view stream(reinterpret_cast<const char*>(data + 2 + nops), size - 2 - nops);

    auto d = std::make_unique<Driver>();
    d->config.date_header = false;
    if ((flags & 0x80) != 0) {
        d->config.max_head_size = 256;
        d->config.max_url_size = 64;
        d->config.max_header_count = 8;
        d->config.read_high_water = 64;
        d->config.write_high_water = 256;
        d->app.big_body_size = 600;
    }
    d->app.flags = flags;
    d->stream = stream;
    HeadList reference = reference_heads(d->config, stream);

    {
        HttpConnection conn(d->wire, d->ctx, PeerAddress{"127.0.0.1", 40000, false},
                            PeerAddress{"127.0.0.1", 8000, false});
        d->conn = &conn;
        d->wire.conn = &conn;

        for (std::size_t i = 0; i < nops; ++i)
            d->step(ops[i]);
        d->settle();

        // Heads in order: what the app saw is what the parser finds, up to where it stopped.
        FUZZ_CHECK(d->app.heads.size() <= reference.heads.size());
        for (std::size_t i = 0; i < d->app.heads.size(); ++i) {
            FUZZ_CHECK(d->app.heads[i] == reference.heads[i]);
        }
        // A protocol error closes the connection.
        FUZZ_CHECK(d->app.protocol_errors == 0 || d->wire.closed());
        // A connection still open has served every complete request and met no bad input.
        if (!d->wire.closed()) {
            FUZZ_CHECK(!reference.error);
            FUZZ_CHECK(d->app.heads.size() == reference.heads.size());
        }

        // The end: the peer goes away; the close callback releases what is left.
        d->wire.eof();
        if (!d->wire.closed()) d->wire.close(true);
        d->wire.end_of_turn();
        FUZZ_CHECK(d->wire.close_reported());
        FUZZ_CHECK(d->app.connection_closed == 1);
        FUZZ_CHECK(d->app.active == nullptr);
        for (const Request& r : d->app.requests)
            FUZZ_CHECK(r.releases == 1);
        d->wire.check();
    }
    return 0;
}
