// SPDX-License-Identifier: BSD-3-Clause
// libFuzzer target: a WebSocket session (WebSocketConnection behind HttpConnection's upgrade)
// over an in-memory transport, with a scripted application, driven by a fuzzer-chosen schedule
// of reads, loop turns, drains, stalls, deadlines and application actions.
//
// Input layout (see make_corpus.py):
//   byte 0     flags: bit 0 the client offers permessage-deflate; bit 1 the offer asks for no
//              context takeover both ways; bit 2 the app unmasks binary messages itself
//              (on_ws_binary + WsFrame::unmask_to); bit 3 the app accepts only from a schedule
//              op (or the final drain), not on connect; bit 4 small limits (1000-byte
//              messages, 256-byte write high-water mark); bit 5 the rest is raw client bytes,
//              not frame descriptions; bit 6 1-second keepalive pings and timeout; bit 7 the
//              app pauses reading after each message (a full queue) until a schedule op
//   byte 1     number of schedule ops N
//   N bytes    schedule ops: low 3 bits the op, high 5 bits its parameter (see Driver::step)
//   rest       frames the client sends after the handshake, each described by
//                a: low 4 bits the opcode (any, reserved ones too), bit 4 clear FIN, bit 5
//                   set RSV1, bit 6 send it unmasked, bit 7 compress the payload with the
//                   client's compressor (RSV1 set; FIN frames of text/binary only)
//                b: payload length 0-254, or 255: two more bytes give half of it (up to
//                   131070, past the 16-bit length form), the payload then repeats the bytes
//                   that follow
//                the payload bytes
//              or, with flag bit 5, the raw bytes.
//
// The handshake request goes first; the client's bytes reach the connection in fuzzer-sized
// reads, each from a buffer freed right after the call (ASan sees any use of a read after it).
// After the schedule, the rest of the stream is delivered and everything is driven until
// nothing changes, then the peer goes away.
//
// Invariants: no crash or sanitizer report; on_ws_connect once, on_ws_rejected at most once and not
// after the accept, messages only after the accept and before on_ws_closed, on_ws_closed at most
// once, on_ws_release exactly once and nothing after it; text messages are UTF-8 and no message
// exceeds --ws-max-size; the messages the app sees are a prefix of those a reference session sees
// when the same bytes arrive in one read and the app only accepts, and a session the server failed
// (1002 / 1007 / 1009) failed where and how the reference did; the server's bytes are an HTTP head
// then well-formed server frames (unmasked, control frames short and whole, RSV1 only on compressed
// data frames, nothing but pongs after a close frame); the client decodes (and decompresses) from
// them the messages the app sent, in order (all of them unless the connection was cut); the app's
// calls never come back kInvalid.
#include "core/config.hpp"
#include "core/date_cache.hpp"
#include "core/http_connection.hpp"
#include "core/request_handler.hpp"
#include "core/response_writer.hpp"
#include "core/transport.hpp"
#include "core/websocket_codec.hpp"
#include "core/websocket_connection.hpp"

#include "tests/fuzz/fuzz_check.hpp"
#include "tests/fuzz/fuzz_transport.hpp"
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace {

using namespace cppuvicorn::core;

constexpr std::string_view kHandshake =
    "GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n";
constexpr std::string_view kOffer = "permessage-deflate; client_max_window_bits";
constexpr std::string_view kOfferNoTakeover =
    "permessage-deflate; client_max_window_bits; client_no_context_takeover; "
    "server_no_context_takeover";

// ---------------------------------------------------------------------------------------------
// The client's view of what the server wrote: an HTTP head, then server frames.

struct ClientView {
    std::string pending;
    bool head_done = false;
    int status = 0;
    bool closed_frame = false;            // a close frame arrived: only pongs may follow
    std::unique_ptr<WsDeflate> inflater;  // with permessage-deflate agreed
    std::vector<std::pair<bool, std::string>> messages;

    void feed(std::string_view bytes) {
        pending.append(bytes);
        if (!head_done) {
            std::size_t end = pending.find("\r\n\r\n");
            if (end == std::string::npos) return;
            FUZZ_CHECK(pending.starts_with("HTTP/1.1 "));
            status = std::stoi(pending.substr(9, 3));
            head_done = true;
            if (status != 101) {  // a rejection: the rest is its body
                pending.clear();
                return;
            }
            pending.erase(0, end + 4);
        }
        if (status != 101) {
            pending.clear();
            return;
        }
        // Frames are read from `at`; what they took leaves `pending` once per feed (erasing
        // each frame as it was read moved the rest every time: most of a run on big reads).
        std::size_t at = 0;
        while (frame(at)) {
        }
        pending.erase(0, at);
    }

    // Decodes one whole frame from `pending` at `at`, and moves `at` past it; false when it is
    // not all there.
    bool frame(std::size_t& at) {
        const auto* p = reinterpret_cast<const unsigned char*>(pending.data() + at);
        std::size_t n = pending.size() - at;
        if (n < 2) return false;
        const bool fin = (p[0] & 0x80) != 0;
        const bool rsv1 = (p[0] & 0x40) != 0;
        FUZZ_CHECK((p[0] & 0x30) == 0);
        const unsigned op = p[0] & 0x0F;
        // After its close frame the server sends no data and no second close (RFC 6455
        // §5.5.1); it still answers a ping (§5.5.2), as the websockets library does.
        FUZZ_CHECK(!closed_frame || op == 0xA);
        FUZZ_CHECK((p[1] & 0x80) == 0);  // server frames are never masked
        std::uint64_t len = p[1] & 0x7F;
        std::size_t header = 2;
        if (len == 126) {
            if (n < 4) return false;
            len = (std::uint64_t{p[2]} << 8) | p[3];
            FUZZ_CHECK(len >= 126);  // the shortest encoding
            header = 4;
        } else if (len == 127) {
            if (n < 10) return false;
            len = 0;
            for (int i = 0; i < 8; ++i)
                len = (len << 8) | p[2 + i];
            FUZZ_CHECK(len > 0xFFFF);
            header = 10;
        }
        if (n - header < len) return false;
        std::string_view payload(pending.data() + at + header, static_cast<std::size_t>(len));
        FUZZ_CHECK(fin);  // the server sends every message and control frame whole
        if (op == 0x8 || op == 0x9 || op == 0xA) {
            FUZZ_CHECK(len <= 125);
            FUZZ_CHECK(!rsv1);
            if (op == 0x8) {
                FUZZ_CHECK(len != 1);
                const int code = len >= 2 ? (static_cast<unsigned char>(payload[0]) << 8) |
                                                static_cast<unsigned char>(payload[1])
                                          : 1005;
                FUZZ_CHECK(len < 2 || valid_close_code(code));
                FUZZ_CHECK(len < 2 || valid_utf8(payload.substr(2)));
                closed_frame = true;
            }
        } else {
            FUZZ_CHECK(op == 0x1 || op == 0x2);
            std::string data;
            if (rsv1) {
                FUZZ_CHECK(inflater != nullptr);
                FUZZ_CHECK(inflater->decompress(payload, std::uint64_t{1} << 30, data) ==
                           WsDeflate::Inflate::kOk);
            } else {
                data.assign(payload);
            }
            messages.emplace_back(op == 0x1, std::move(data));
        }
        at += header + static_cast<std::size_t>(len);
        return true;
    }
};

using cppuvicorn::fuzz::FuzzTransport;

// ---------------------------------------------------------------------------------------------
// The application

struct App final : ConnectionEvents, WebSocketHandler {
    std::uint8_t flags = 0;
    bool reference = false;  // the reference session: accept, then only listen
    HttpConnection* conn = nullptr;
    std::uint64_t max_size = 0;
    int connects = 0;
    int rejections = 0;
    int closes = 0;
    int releases = 0;
    int connection_closed = 0;
    int close_code = 0;
    WsCloseCause close_cause = WsCloseCause::kLost;
    bool app_closed = false;  // the app (or a server shutdown) began the closing handshake
    bool accepted = false;
    bool answered = false;  // accepted or rejected by the app
    std::vector<std::pair<bool, std::string>> received;
    std::vector<std::pair<bool, std::string>> sent;  // what send() took
    std::uint32_t sends = 0;

    bool unmask_self() const { return !reference && (flags & 0x04) != 0; }
    bool accept_later() const { return !reference && (flags & 0x08) != 0; }
    bool pause_each() const { return !reference && (flags & 0x80) != 0; }

    WebSocketConnection* ws() const { return conn != nullptr ? conn->websocket() : nullptr; }
    void alive(const char* what) const {
        if (releases != 0) cppuvicorn::fuzz::violated(what);
    }
    static void ok(WriteResult w) {
        FUZZ_CHECK(w == WriteResult::kOk || w == WriteResult::kWait || w == WriteResult::kClosed);
    }

    // ---- ConnectionEvents ----
    RequestHandler* on_request(HttpConnection&, const RequestHead&) noexcept override {
        cppuvicorn::fuzz::violated("the upgrade request was served as plain HTTP");
    }
    void on_protocol_error(HttpConnection&, int, std::string_view) noexcept override {}
    void on_connection_closed(HttpConnection&) noexcept override {
        FUZZ_CHECK(connection_closed == 0);
        ++connection_closed;
    }
    WebSocketHandler* on_websocket(HttpConnection& c, const RequestHead&) noexcept override {
        FUZZ_CHECK(conn == nullptr);
        FUZZ_CHECK(c.websocket() != nullptr);
        conn = &c;
        return this;
    }

    // ---- WebSocketHandler ----
    void on_ws_connect() noexcept override {
        alive("on_ws_connect after on_ws_release");
        FUZZ_CHECK(connects == 0);
        ++connects;
        if (!accept_later()) accept();
    }
    void on_ws_rejected(int status) noexcept override {
        alive("on_ws_rejected after on_ws_release");
        FUZZ_CHECK(!accepted);
        FUZZ_CHECK(rejections == 0);
        FUZZ_CHECK(status >= 400 && status <= 599);
        ++rejections;
    }
    void on_ws_message(bool text, std::string_view data) noexcept override {
        alive("on_ws_message after on_ws_release");
        FUZZ_CHECK(accepted);
        FUZZ_CHECK(closes == 0);
        FUZZ_CHECK(data.size() <= max_size);
        FUZZ_CHECK(!text || valid_utf8(data));
        received.emplace_back(text, std::string(data));
        if (pause_each()) ws()->pause_reading();
    }
    void on_ws_binary(const WsFrame& frame) noexcept override {
        if (!unmask_self()) {
            WebSocketHandler::on_ws_binary(frame);
            return;
        }
        alive("on_ws_binary after on_ws_release");
        std::string data(frame.payload.size(), '\0');
        frame.unmask_to(data.data());
        on_ws_message(false, data);
    }
    void on_ws_closed(int code, std::string_view reason, WsCloseCause cause) noexcept override {
        alive("on_ws_closed after on_ws_release");
        FUZZ_CHECK(closes == 0);
        FUZZ_CHECK(code >= 1000 && code <= 4999);
        (void)reason;
        ++closes;
        close_code = code;
        close_cause = cause;
    }
    void on_ws_writable() noexcept override { alive("on_ws_writable after on_ws_release"); }
    void on_ws_release() noexcept override {
        alive("on_ws_release twice");
        ++releases;
    }

    // ---- actions ----
    void accept() {
        if (releases != 0 || answered || ws() == nullptr) return;
        answered = true;
        WriteResult w = ws()->accept({}, "");
        ok(w);
        accepted = w != WriteResult::kClosed;
    }
    void reject() {
        if (releases != 0 || answered || ws() == nullptr) return;
        answered = true;
        Header h[] = {{"content-type", "text/plain"}};
        ok(ws()->respond(403, h, "no"));
    }
    void send(unsigned param) {
        if (releases != 0 || !accepted) return;
        static constexpr std::size_t kLengths[8] = {0, 1, 125, 126, 65535, 65536, 16384, 70000};
        std::size_t len = kLengths[param & 7];
        bool text = (param & 8) != 0;
        // "abc…z" repeated, from a different letter each time (made once: the fuzzer's
        // coverage hooks make a byte loop here the target's hottest code).
        static const std::string pattern = [] {
            std::string p(70000 + 26, '\0');
            for (std::size_t i = 0; i < p.size(); ++i)
                p[i] = static_cast<char>('a' + i % 26);
            return p;
        }();
        std::string data = pattern.substr(sends % 26, len);
        ++sends;
        WriteResult w = ws()->send(text, data);
        ok(w);
        if (w != WriteResult::kClosed) sent.emplace_back(text, std::move(data));
    }
    void close(unsigned param) {
        if (releases != 0 || !accepted) return;
        static constexpr int kCodes[4] = {1000, 1001, 3000, 4999};
        app_closed = true;
        ok(ws()->close(kCodes[param & 3], (param & 4) != 0 ? "bye \xc3\xa9" : ""));
    }
};

// ---------------------------------------------------------------------------------------------
// The client's bytes

struct Xorshift {
    std::uint32_t state = 0x9E3779B9u;
    std::uint32_t next() {
        state ^= state << 13;
        state ^= state >> 17;
        state ^= state << 5;
        return state;
    }
};

// The agreed parameters as the client's WsDeflate takes them: WsDeflate compresses with the
// "server" side's window and context and inflates with the "client" side's, so the two swap.
DeflateParams client_side(const DeflateParams& agreed) {
    DeflateParams p = agreed;
    std::swap(p.server_max_window_bits, p.client_max_window_bits);
    std::swap(p.server_no_context_takeover, p.client_no_context_takeover);
    return p;
}

// Frames described by `desc` (layout at the top), masked unless asked not to be.
std::string client_frames(std::string_view desc, const std::optional<DeflateParams>& agreed) {
    std::unique_ptr<WsDeflate> compressor;
    if (agreed) compressor = std::make_unique<WsDeflate>(client_side(*agreed));
    Xorshift rng;
    std::string out;
    std::size_t i = 0;
    while (i + 2 <= desc.size() && out.size() < (1u << 20)) {
        const auto a = static_cast<unsigned char>(desc[i]);
        std::size_t len = static_cast<unsigned char>(desc[i + 1]);
        i += 2;
        bool repeat = false;
        if (len == 255) {
            if (i + 2 > desc.size()) break;
            len = 2 * ((static_cast<std::size_t>(static_cast<unsigned char>(desc[i])) << 8) |
                       static_cast<unsigned char>(desc[i + 1]));
            i += 2;
            repeat = true;
        }
        std::string payload;
        std::size_t avail = std::min(len, desc.size() - i);
        if (repeat) {
            // The unit over and over, by doubling: a byte-at-a-time loop over up to 128 KiB per
            // frame, instrumented for coverage, took most of each run.
            std::size_t unit = std::max<std::size_t>(1, std::min<std::size_t>(avail, 16));
            payload.reserve(len);
            payload.assign(avail == 0 ? std::string_view("x") : desc.substr(i, unit));
            while (payload.size() < len)
                payload.append(payload, 0, std::min(payload.size(), len - payload.size()));
            payload.resize(len);
            i += std::min(avail, unit);
        } else {
            payload.assign(desc.substr(i, avail));
            i += avail;
        }
        const unsigned op = a & 0x0F;
        bool fin = (a & 0x10) == 0;
        bool rsv1 = (a & 0x20) != 0;
        const bool unmasked = (a & 0x40) != 0;
        if ((a & 0x80) != 0 && compressor && fin && (op == 1 || op == 2)) {
            std::string z;
            if (compressor->compress(payload, z)) {
                payload = std::move(z);
                rsv1 = true;
            }
        }
        out.push_back(static_cast<char>((fin ? 0x80 : 0) | (rsv1 ? 0x40 : 0) | op));
        const unsigned char mask_bit = unmasked ? 0 : 0x80;
        if (payload.size() < 126) {
            out.push_back(static_cast<char>(mask_bit | payload.size()));
        } else if (payload.size() <= 0xFFFF) {
            out.push_back(static_cast<char>(mask_bit | 126));
            out.push_back(static_cast<char>(payload.size() >> 8));
            out.push_back(static_cast<char>(payload.size() & 0xFF));
        } else {
            out.push_back(static_cast<char>(mask_bit | 127));
            for (int s = 56; s >= 0; s -= 8)
                out.push_back(static_cast<char>((std::uint64_t{payload.size()} >> s) & 0xFF));
        }
        if (!unmasked) {
            std::uint32_t m = rng.next();
            unsigned char mask[4] = {
                static_cast<unsigned char>(m), static_cast<unsigned char>(m >> 8),
                static_cast<unsigned char>(m >> 16), static_cast<unsigned char>(m >> 24)};
            out.append(reinterpret_cast<const char*>(mask), 4);
            std::size_t at = out.size();
            out.append(payload);
            ws_unmask_copy(out.data() + at, out.data() + at, payload.size(), mask);
        } else {
            out.append(payload);
        }
    }
    return out;
}

constexpr std::size_t kSizes[32] = {1,   2,   3,   4,   5,   6,    7,    8,    10,    12,   15,
                                    17,  20,  24,  28,  32,  40,   48,   64,   80,    100,  128,
                                    160, 200, 256, 400, 512, 1024, 2048, 4096, 16384, 70000};

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
    ClientView client;
    FuzzTransport wire;
    ConnectionContext ctx{config, lines, date, app};
    std::string_view stream;
    std::unique_ptr<HttpConnection> conn;

    void setup(std::uint8_t flags, std::optional<DeflateParams> agreed) {
        config.date_header = false;
        config.default_headers = "server: fuzz\r\n";
        if ((flags & 0x10) != 0) {
            config.ws_max_size = 1000;
            config.write_high_water = 256;
        }
        if ((flags & 0x40) != 0) {
            config.ws_ping_interval = 1.0;
            config.ws_ping_timeout = 1.0;
        }
        app.flags = flags;
        app.max_size = config.ws_max_size;
        if (agreed) client.inflater = std::make_unique<WsDeflate>(client_side(*agreed));
        wire.on_wire = [this](std::string_view bytes) { client.feed(bytes); };
        conn = std::make_unique<HttpConnection>(wire, ctx, PeerAddress{"127.0.0.1", 40000, false},
                                                PeerAddress{"127.0.0.1", 8000, false});
        wire.conn = conn.get();
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
                if (param < 16) {
                    wire.drain();
                } else {
                    wire.stalled = !wire.stalled;
                }
                return;
            case 3:
                app.send(param);
                wire.check();
                return;
            case 4:
                if (param < 8) {
                    app.close(param);
                } else if (param < 16) {
                    if (app.accepted && app.releases == 0) app.ws()->resume_reading();
                } else if (param < 20) {
                    if (app.accepted && app.releases == 0) app.ws()->pause_reading();
                } else if (param < 28) {
                    app.accept();
                } else {
                    app.reject();
                }
                wire.check();
                return;
            case 5:
                wire.deadline(std::uint64_t{param} * 250u);
                return;
            case 6:
                if (param < 2) {
                    wire.eof();
                } else if (param < 4) {
                    app.app_closed = true;
                    conn->shutdown();
                    wire.check();
                } else if (param < 6) {
                    if (app.ws() != nullptr && app.releases == 0) app.ws()->abort();
                    wire.check();
                } else {
                    wire.end_of_turn();
                }
                return;
            default:
                app.send(param | 0x10);
                wire.end_of_turn();
                return;
        }
    }

    // The server, the app and a patient client, until nothing changes.
    void settle() {
        // Each round takes at least one message when the app pauses after every message.
        for (int round = 0; round < 8192; ++round) {
            std::size_t before_received = app.received.size();
            std::size_t before_stream = stream.size();
            bool was_closed = wire.closed();
            wire.stalled = false;
            app.accept();
            if (app.accepted && app.releases == 0 && !wire.closed()) app.ws()->resume_reading();
            wire.drain();
            wire.end_of_turn();
            if (wire.can_deliver() && !stream.empty()) {
                std::string_view rest = stream;
                stream = {};
                wire.deliver(rest);
            }
            wire.end_of_turn();
            if (app.received.size() == before_received && stream.size() == before_stream &&
                wire.closed() == was_closed && wire.idle_loop()) {
                return;
            }
        }
    }

    // The peer goes away; the close callback releases what is left.
    void finish() {
        wire.eof();
        if (!wire.closed()) wire.close(true);
        wire.end_of_turn();
        FUZZ_CHECK(wire.close_reported());
        FUZZ_CHECK(app.connection_closed == 1);
        FUZZ_CHECK(app.connects == 0 || app.releases == 1);
        wire.check();
        conn.reset();
    }
};

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    if (size < 2) return 0;
    const std::uint8_t flags = data[0];
    const std::size_t nops = std::min<std::size_t>(data[1], size - 2);
    const std::uint8_t* ops = data + 2;
    std::string_view rest(reinterpret_cast<const char*>(data + 2 + nops), size - 2 - nops);

    std::string_view offer;
    if ((flags & 0x01) != 0) offer = (flags & 0x02) != 0 ? kOfferNoTakeover : kOffer;
    std::optional<DeflateParams> agreed;
    if (!offer.empty()) agreed = negotiate_permessage_deflate(offer);
    std::string stream(kHandshake);
    if (!offer.empty()) stream.append("Sec-WebSocket-Extensions: ").append(offer).append("\r\n");
    stream.append("\r\n");
    stream.append((flags & 0x20) != 0 ? std::string(rest) : client_frames(rest, agreed));

    // The reference: every byte in one read, an app that accepts and listens.
    auto ref = std::make_unique<Driver>();
    ref->setup(flags, agreed);
    ref->app.reference = true;
    ref->stream = stream;
    ref->settle();
    ref->finish();

    auto d = std::make_unique<Driver>();
    d->setup(flags, agreed);
    d->stream = stream;
    for (std::size_t i = 0; i < nops; ++i)
        d->step(ops[i]);
    d->settle();

    const App& app = d->app;
    // The handshake reached the app, unless the connection timed out before it was all in.
    FUZZ_CHECK(app.connects == 1 || (app.connects == 0 && d->wire.closed()));
    FUZZ_CHECK(ref->app.accepted);
    // What the app saw: what the reference saw, up to where this session stopped.
    FUZZ_CHECK(app.received.size() <= ref->app.received.size());
    for (std::size_t i = 0; i < app.received.size(); ++i)
        FUZZ_CHECK(app.received[i] == ref->app.received[i]);
    // Bad input is found where it lies, however the reads split it: a session the server
    // failed (1002 / 1007 / 1009) without the app closing first failed on the same message as
    // the reference did, with the same code.
    if (app.closes == 1 && !app.app_closed &&
        (app.close_cause == WsCloseCause::kProtocol ||
         app.close_cause == WsCloseCause::kInvalidText)) {
        FUZZ_CHECK(ref->app.close_cause == app.close_cause);
        FUZZ_CHECK(ref->app.close_code == app.close_code);
        FUZZ_CHECK(app.received.size() == ref->app.received.size());
    }
    // A session still open, that neither side began to close, has taken every message the
    // reference took.
    if (!d->wire.closed() && app.accepted && app.closes == 0 &&
        app.ws()->state() == WebSocketConnection::State::kOpen) {
        FUZZ_CHECK(app.received.size() == ref->app.received.size());
    }
    // The client got the head and what the app sent, in order; all of it unless the
    // connection was cut.
    const ClientView& c = d->client;
    FUZZ_CHECK(c.head_done || d->wire.abortive() || !app.answered);
    FUZZ_CHECK(!c.head_done || (c.status == 101) == app.accepted);
    FUZZ_CHECK(c.messages.size() <= app.sent.size());
    for (std::size_t i = 0; i < c.messages.size(); ++i)
        FUZZ_CHECK(c.messages[i] == app.sent[i]);
    if (app.accepted && !d->wire.abortive()) {
        FUZZ_CHECK(c.messages.size() == app.sent.size());
        if (d->wire.closed()) FUZZ_CHECK(c.pending.empty());
    }
    d->finish();
    return 0;
}
