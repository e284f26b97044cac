// SPDX-License-Identifier: BSD-3-Clause
// WebSocket wire format (websocket_codec) and the session state machine (WebSocketConnection,
// reached through HttpConnection's upgrade path): decoder at every split point, every invalid
// frame with its close code and websockets' reason text, encoder bytes, permessage-deflate
// round trips and negotiation, the handshake verdicts, and the session's closing handshake,
// keepalive and flow control. No sockets: FakeTransport stands in for the wire.
#include "core/http_connection.hpp"
#include "core/websocket_codec.hpp"
#include "core/websocket_connection.hpp"

#include <catch2/catch.hpp>
#include <zlib.h>

#include "tests/unit/support/fake_transport.hpp"
#include <algorithm>
#include <cstdint>
#include <cstring>
#include <functional>
#include <string>
#include <string_view>
#include <vector>

namespace {

using namespace cppuvicorn::core;
using namespace std::string_literals;
using cppuvicorn::test::FakeTransport;

// ---- client-side helpers -----------------------------------------------------------------

// A masked client frame, as RFC 6455 §5.2 lays it out.
std::string masked(int opcode, std::string_view payload, bool fin = true, int rsv = 0,
                   std::string_view mask = "\x11\x22\x33\x44") {
    std::string f;
    f.push_back(static_cast<char>((fin ? 0x80 : 0) | (rsv << 4) | opcode));
    std::size_t n = payload.size();
    if (n < 126) {
        f.push_back(static_cast<char>(0x80 | n));
    } else if (n <= 0xFFFF) {
        f.push_back(static_cast<char>(0x80 | 126));
        f.push_back(static_cast<char>(n >> 8));
        f.push_back(static_cast<char>(n));
    } else {
        f.push_back(static_cast<char>(0x80 | 127));
        for (int i = 7; i >= 0; --i)
            f.push_back(static_cast<char>(n >> (8 * i)));
    }
    f.append(mask);
    for (std::size_t i = 0; i < n; ++i)
        f.push_back(static_cast<char>(payload[i] ^ mask[i & 3]));
    return f;
}

std::string close_payload(int code, std::string_view reason = {}) {
    std::string p;
    p.push_back(static_cast<char>(code >> 8));
    p.push_back(static_cast<char>(code & 0xFF));
    p.append(reason);
    return p;
}

struct Decoded {
    bool fin;
    bool rsv1;
    int opcode;
    std::string payload;
    bool operator==(const Decoded& o) const {
        return fin == o.fin && rsv1 == o.rsv1 && opcode == o.opcode && payload == o.payload;
    }
};

// Decodes everything in `parts` (fed one after the other) with feed(), or with feed_borrowed()
// as a connection reads: each part lies in a read buffer that is scribbled over after
// retain(), so a frame that still pointed into it would come out wrong. With `defer`, whole
// binary frames come back masked and are unmasked here, as a connection's handler does.
std::vector<Decoded> decode_with(bool borrowed, const std::vector<std::string>& parts, int* error,
                                 std::string* reason, std::uint64_t max, bool rsv1,
                                 bool defer = false) {
    WsDecoder d(max, rsv1);
    std::vector<Decoded> out;
    std::string read_buffer;
    for (const auto& part : parts) {
        if (borrowed) {
            read_buffer = part;
            d.feed_borrowed(read_buffer);
        } else {
            d.feed(part);
        }
        WsFrame f;
        bool failed = false;
        while (true) {
            auto st = d.next(f, defer);
            if (st == WsDecoder::Status::kNeedMore) break;
            if (st == WsDecoder::Status::kError) {
                if (error) *error = d.error_code();
                if (reason) *reason = d.error_reason();
                failed = true;
                break;
            }
            // Only a whole uncompressed binary frame from a borrowed read is ever left masked.
            if (f.masked) {
                REQUIRE((defer && borrowed && f.opcode == WsOpcode::kBinary && f.fin && !f.rsv1));
            }
            std::string payload(f.payload.size(), '\0');
            f.unmask_to(payload.data());
            out.push_back({f.fin, f.rsv1, static_cast<int>(f.opcode), payload});
        }
        if (borrowed) {
            d.retain();
            std::fill(read_buffer.begin(), read_buffer.end(), '\xAA');
        }
        if (failed) return out;
    }
    return out;
}

// Both ways must agree (frames, error code and reason); returns the frames.
std::vector<Decoded> decode(const std::vector<std::string>& parts, int* error = nullptr,
                            std::string* reason = nullptr, std::uint64_t max = 1 << 20,
                            bool rsv1 = false) {
    int error_borrowed = 0;
    std::string reason_borrowed;
    auto borrowed = decode_with(true, parts, &error_borrowed, &reason_borrowed, max, rsv1);
    int error_copied = 0;
    std::string reason_copied;
    auto copied = decode_with(false, parts, &error_copied, &reason_copied, max, rsv1);
    REQUIRE(borrowed == copied);
    REQUIRE(error_borrowed == error_copied);
    REQUIRE(reason_borrowed == reason_copied);
    int error_deferred = 0;
    std::string reason_deferred;
    auto deferred =
        decode_with(true, parts, &error_deferred, &reason_deferred, max, rsv1, /*defer=*/true);
    REQUIRE(deferred == copied);
    REQUIRE(error_deferred == error_copied);
    REQUIRE(reason_deferred == reason_copied);
    if (error) *error = error_copied;
    if (reason) *reason = reason_copied;
    return copied;
}

// Raw deflate as a client's compressor: Python zlib's compress() + flush(Z_SYNC_FLUSH), minus
// the 00 00 ff ff tail when `fin` (RFC 7692 §7.2.1).
class ClientDeflate {
  public:
    explicit ClientDeflate(int bits = 15) {
        deflateInit2(&z_, Z_DEFAULT_COMPRESSION, Z_DEFLATED, -bits, 8, Z_DEFAULT_STRATEGY);
    }
    ~ClientDeflate() { deflateEnd(&z_); }
    std::string compress(std::string_view in, bool fin = true) {
        std::string out;
        z_.next_in = reinterpret_cast<Bytef*>(const_cast<char*>(in.data()));
        z_.avail_in = static_cast<uInt>(in.size());
        for (int flush : {Z_NO_FLUSH, Z_SYNC_FLUSH}) {
            do {
                char buf[4096];
                z_.next_out = reinterpret_cast<Bytef*>(buf);
                z_.avail_out = sizeof buf;
                deflate(&z_, flush);
                out.append(buf, sizeof buf - z_.avail_out);
            } while (z_.avail_out == 0 || z_.avail_in != 0);
        }
        if (fin) out.resize(out.size() - 4);
        return out;
    }
    void reset() { deflateReset(&z_); }

  private:
    z_stream z_{};
};

// A client's inflater for the server's compressed messages.
class ClientInflate {
  public:
    ClientInflate() { inflateInit2(&z_, -15); }
    ~ClientInflate() { inflateEnd(&z_); }
    // Returns false on a zlib error (what a client reports as "decompression failed").
    bool decompress(std::string data, std::string& out) {
        data.append("\x00\x00\xff\xff", 4);
        out.clear();
        z_.next_in = reinterpret_cast<Bytef*>(data.data());
        z_.avail_in = static_cast<uInt>(data.size());
        do {
            char buf[4096];
            z_.next_out = reinterpret_cast<Bytef*>(buf);
            z_.avail_out = sizeof buf;
            int rc = inflate(&z_, Z_SYNC_FLUSH);
            if (rc != Z_OK && rc != Z_BUF_ERROR) return false;
            out.append(buf, sizeof buf - z_.avail_out);
        } while (z_.avail_in != 0 || z_.avail_out == 0);
        return true;
    }

  private:
    z_stream z_{};
};

}  // namespace

// ---------------------------------------------------------------------------------------------
// Small pure functions

TEST_CASE("websocket_accept_key: the RFC 6455 §1.3 example", "[websocket]") {
    REQUIRE(websocket_accept_key("dGhlIHNhbXBsZSBub25jZQ==") == "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
}

TEST_CASE("valid_close_code: websockets' EXTERNAL_CLOSE_CODES and 3000-4999", "[websocket]") {
    for (int code :
         {1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014, 3000, 4999}) {
        CAPTURE(code);
        REQUIRE(valid_close_code(code));
    }
    for (int code : {0, 999, 1004, 1005, 1006, 1015, 1016, 2999, 5000, 65535}) {
        CAPTURE(code);
        REQUIRE_FALSE(valid_close_code(code));
    }
}

TEST_CASE("utf8_error: CPython's reason and position", "[websocket]") {
    struct Case {
        std::string input;
        const char* reason;  // nullptr: valid
        std::size_t position;
    };
    // Each expectation is what bytes.decode() says (checked against CPython 3.11).
    const std::vector<Case> cases = {
        {"", nullptr, 0},
        {"plain ascii", nullptr, 0},
        {"\xc3\xa9\xe2\x82\xac\xf0\x9f\x98\x80", nullptr, 0},
        {"ab\xff", "invalid start byte", 2},
        {"\x80", "invalid start byte", 0},
        {"\xc0\xaf", "invalid start byte", 0},  // overlong lead byte
        {"ab\xc3\x28", "invalid continuation byte", 2},
        {"ab\xe2\x82", "unexpected end of data", 2},
        {"\xe2\x82\x28", "invalid continuation byte", 0},
        {"\xe0\x80\x80", "invalid continuation byte", 0},      // overlong 3-byte form
        {"\xed\xa0\x80", "invalid continuation byte", 0},      // UTF-16 surrogate
        {"\xf4\x90\x80\x80", "invalid continuation byte", 0},  // above U+10FFFF
        {"\xf5\x80\x80\x80", "invalid start byte", 0},
        {"x\xf0\x9f\x98", "unexpected end of data", 1},
    };
    for (const auto& c : cases) {
        CAPTURE(c.input);
        auto e = utf8_error(c.input);
        if (c.reason == nullptr) {
            REQUIRE_FALSE(e.has_value());
            REQUIRE(valid_utf8(c.input));
        } else {
            REQUIRE(e.has_value());
            REQUIRE(std::string(e->reason) == c.reason);
            REQUIRE(e->position == c.position);
            REQUIRE_FALSE(valid_utf8(c.input));
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Decoder

TEST_CASE("WsDecoder: a stream of frames decodes the same at every split point", "[websocket]") {
    const std::string big = [] {
        std::string s(70000, 'b');
        for (std::size_t i = 0; i < s.size(); ++i)
            s[i] = static_cast<char>(i * 7 + i / 251);  // unmasking at a wrong offset shows
        return s;
    }();
    const std::string medium(300, 'm');
    const std::string stream = masked(1, "hello") + masked(2, medium) + masked(9, "ping") +
                               masked(1, "frag", false) + masked(0, "ment", false) +
                               masked(0, "ed") + masked(2, big) + masked(2, "") +
                               masked(8, close_payload(1000, "bye"));
    const std::vector<Decoded> expected = {
        {true, false, 1, "hello"},
        {true, false, 2, medium},
        {true, false, 9, "ping"},
        {false, false, 1, "frag"},
        {false, false, 0, "ment"},
        {true, false, 0, "ed"},
        {true, false, 2, big},
        {true, false, 2, ""},
        {true, false, 8, close_payload(1000, "bye")},
    };
    REQUIRE(decode({stream}) == expected);
    // Every split point of the stream (a read may end anywhere, even inside a length field or
    // the mask) gives the same frames.
    auto split = GENERATE_COPY(range<std::size_t>(0, stream.size() + 1, 7));
    CAPTURE(split);
    REQUIRE(decode({stream.substr(0, split), stream.substr(split)}) == expected);
}

TEST_CASE("WsDecoder: only a whole uncompressed binary frame from a borrowed read stays masked",
          "[websocket]") {
    std::string payload(1000, '\0');
    for (std::size_t i = 0; i < payload.size(); ++i)
        payload[i] = static_cast<char>(i * 13 + 5);
    const std::string mask = "\x9a\x01\xff\x3c";
    const std::string stream = masked(2, payload, true, 0, mask) + masked(1, "text") +
                               masked(2, "frag", false) + masked(0, "ment") +
                               masked(2, payload, true, 4, mask) + masked(9, "ping") +
                               masked(2, "", true, 0, mask) + masked(2, payload, true, 0, mask);
    for (bool defer : {false, true}) {
        CAPTURE(defer);
        WsDecoder d(1 << 20, /*allow_rsv1=*/true);
        std::string read_buffer = stream.substr(0, stream.size() - 10);
        d.feed_borrowed(read_buffer);
        std::vector<std::pair<bool, std::string>> got;  // (masked, unmasked payload)
        WsFrame f;
        while (d.next(f, defer) == WsDecoder::Status::kFrame) {
            if (f.masked) {
                REQUIRE(std::memcmp(f.mask, mask.data(), 4) == 0);
                REQUIRE(f.payload.data() >= read_buffer.data());  // not copied anywhere
                REQUIRE(f.payload.data() < read_buffer.data() + read_buffer.size());
            }
            std::string p(f.payload.size(), '\0');
            f.unmask_to(p.data());
            got.emplace_back(f.masked, p);
        }
        d.retain();  // the last frame is incomplete: it is copied, and decoded unmasked
        std::fill(read_buffer.begin(), read_buffer.end(), '\xAA');
        d.feed(stream.substr(stream.size() - 10));
        while (d.next(f, defer) == WsDecoder::Status::kFrame) {
            std::string p(f.payload.size(), '\0');
            f.unmask_to(p.data());
            got.emplace_back(f.masked, p);
        }
        const std::vector<std::pair<bool, std::string>> expected = {
            {defer, payload}, {false, "text"}, {false, "frag"}, {false, "ment"},
            {false, payload}, {false, "ping"}, {defer, ""},     {false, payload},
        };
        REQUIRE(got == expected);
    }
}

TEST_CASE("WsDecoder: trim frees a big drained buffer and keeps pending bytes", "[websocket]") {
    WsDecoder d(1 << 20, false);
    const std::string big(100000, 'x');
    std::string stream = masked(2, big) + masked(1, "tail");
    d.feed(std::string_view(stream).substr(0, stream.size() - 3));
    WsFrame f;
    REQUIRE(d.next(f) == WsDecoder::Status::kFrame);
    REQUIRE(f.payload == big);
    d.trim(4096);  // the next frame is incomplete: its bytes must survive
    REQUIRE(d.buffered() == masked(1, "tail").size() - 3);
    d.feed(std::string_view(stream).substr(stream.size() - 3));
    REQUIRE(d.next(f) == WsDecoder::Status::kFrame);
    REQUIRE(f.payload == "tail");
    REQUIRE(d.buffered() == 0);
    d.trim(4096);  // drained: freed, and the decoder goes on from scratch
    d.feed(masked(1, "again"));
    REQUIRE(d.next(f) == WsDecoder::Status::kFrame);
    REQUIRE(f.payload == "again");
    REQUIRE(d.next(f) == WsDecoder::Status::kNeedMore);
}

TEST_CASE("WsDecoder: borrowed reads are retained only when a frame is left incomplete",
          "[websocket]") {
    WsDecoder d(1 << 20, false);
    std::string read = masked(2, std::string(3000, 'z')) + masked(1, "next");
    std::string first = read.substr(0, read.size() - 2);
    d.feed_borrowed(first);
    WsFrame f;
    REQUIRE(d.next(f) == WsDecoder::Status::kFrame);
    REQUIRE(f.payload == std::string(3000, 'z'));
    REQUIRE(first == read.substr(0, read.size() - 2));  // the read buffer is not written to
    REQUIRE(d.next(f) == WsDecoder::Status::kNeedMore);
    REQUIRE(d.buffered() == masked(1, "next").size() - 2);
    d.retain();
    first.assign(first.size(), '\0');
    std::string second = read.substr(read.size() - 2);
    d.feed_borrowed(second);  // something is buffered: this one is copied after it
    d.retain();
    second.assign(second.size(), '\0');
    REQUIRE(d.next(f) == WsDecoder::Status::kFrame);
    REQUIRE(f.payload == "next");
    REQUIRE(d.buffered() == 0);
    d.trim(0);
    std::string third = masked(1, "after trim");
    d.feed_borrowed(third);
    REQUIRE(d.next(f) == WsDecoder::Status::kFrame);
    REQUIRE(f.payload == "after trim");
    REQUIRE(d.next(f) == WsDecoder::Status::kNeedMore);
    d.retain();  // nothing left: nothing copied
    REQUIRE(d.buffered() == 0);
}

TEST_CASE("WsDecoder: a read that completes a pending frame is copied only as far as that frame",
          "[websocket]") {
    // A streaming client's reads end inside frames. The read after one must not be copied
    // whole behind the pending bytes: only what completes that frame is, and the frames after
    // it are decoded where the read put them (a binary one comes back still masked).
    auto bytes = [](std::size_t n, int seed) {
        std::string b(n, '\0');
        for (std::size_t i = 0; i < n; ++i)
            b[i] = static_cast<char>(i * 7 + seed);
        return b;
    };
    const std::string a = bytes(3000, 1);
    const std::string b = bytes(70000, 2);  // a 64-bit length: a 14-byte header
    const std::string c = bytes(1000, 3);
    const std::string stream = masked(2, a) + masked(2, b) + masked(1, "text") + masked(2, c) +
                               masked(9, "ping") + masked(2, a);
    const std::size_t b_at = masked(2, a).size();
    const std::size_t c_at = b_at + masked(2, b).size() + masked(1, "text").size();
    // The reads end inside a's payload, inside b's header, inside c's payload.
    for (std::size_t end1 : {std::size_t{1500}, b_at + 5}) {
        CAPTURE(end1);
        const std::vector<std::size_t> cuts = {end1, c_at + 300, stream.size() - 5, stream.size()};
        WsDecoder d(1 << 20, false);
        std::vector<std::pair<bool, std::string>> got;  // (decoded in place, payload)
        std::size_t from = 0;
        for (std::size_t cut : cuts) {
            std::string read_buffer = stream.substr(from, cut - from);
            from = cut;
            std::size_t before = d.buffered();
            d.feed_borrowed(read_buffer);
            REQUIRE(d.buffered() == before + read_buffer.size());
            WsFrame f;
            while (d.next(f, true) == WsDecoder::Status::kFrame) {
                bool in_place = f.payload.data() >= read_buffer.data() &&
                                f.payload.data() < read_buffer.data() + read_buffer.size();
                REQUIRE(in_place == f.masked);  // only binary frames are left masked
                std::string p(f.payload.size(), '\0');
                f.unmask_to(p.data());
                got.emplace_back(in_place || f.opcode != WsOpcode::kBinary, p);
            }
            d.retain();
            std::fill(read_buffer.begin(), read_buffer.end(), '\xAA');
        }
        REQUIRE(d.buffered() == 0);
        // A frame cut by a read is completed behind its first bytes (copied): a or b by the
        // first cut, c by the second, the last frame by the third. Every other binary frame is
        // decoded in place; "text" and "ping" are unmasked into scratch wherever they lie.
        const bool a_cut = end1 < b_at;
        const std::vector<std::pair<bool, std::string>> expected = {
            {!a_cut, a}, {a_cut, b}, {true, "text"}, {false, c}, {true, "ping"}, {false, a}};
        REQUIRE(got == expected);
    }
}

TEST_CASE("WsDecoder: every split point of a small stream, and byte by byte", "[websocket]") {
    const std::string stream =
        masked(1, "abc") + masked(2, std::string(200, 'x')) + masked(10, "") + masked(8, "");
    const auto expected = decode({stream});
    REQUIRE(expected.size() == 4);
    for (std::size_t split = 0; split <= stream.size(); ++split) {
        CAPTURE(split);
        REQUIRE(decode({stream.substr(0, split), stream.substr(split)}) == expected);
    }
    std::vector<std::string> bytes;
    for (char c : stream)
        bytes.emplace_back(1, c);
    REQUIRE(decode(bytes) == expected);
}

TEST_CASE("WsDecoder: invalid frames give websockets' close code and reason", "[websocket]") {
    struct Case {
        const char* name;
        std::string bytes;
        int code;
        const char* reason;
        bool rsv1_allowed = false;
        std::uint64_t max = 1 << 20;
    };
    std::string unmasked = "\x81\x02hi"s;
    std::string len127 = "\x82\xff"s + std::string("\x00\x00\x00\x00\x00\x10\x00\x01", 8) + "MASK";
    const std::vector<Case> cases = {
        {"unmasked frame", unmasked, 1002, "incorrect masking"},
        {"reserved opcode 3", masked(3, "x"), 1002, "invalid opcode"},
        {"reserved opcode 7", masked(7, "x"), 1002, "invalid opcode"},
        {"reserved opcode 11", masked(11, "x"), 1002, "invalid opcode"},
        {"reserved opcode 15", masked(15, "x"), 1002, "invalid opcode"},
        // opcode is checked before masking, as in websockets' Frame.parse
        {"reserved opcode, unmasked", "\x83\x00"s, 1002, "invalid opcode"},
        {"RSV2", masked(1, "x", true, 2), 1002, "reserved bits must be 0"},
        {"RSV3", masked(1, "x", true, 1), 1002, "reserved bits must be 0"},
        {"RSV1 without deflate", masked(1, "x", true, 4), 1002, "reserved bits must be 0"},
        {"RSV1 on a control frame", masked(9, "x", true, 4), 1002, "reserved bits must be 0", true},
        {"ping of 126 bytes", masked(9, std::string(126, 'p')), 1002, "control frame too long"},
        {"close of 126 bytes", masked(8, std::string(126, 'c')), 1002, "control frame too long"},
        {"fragmented ping", masked(9, "p", false), 1002, "fragmented control frame"},
        {"fragmented close", masked(8, "", false), 1002, "fragmented control frame"},
        {"over the size limit", masked(2, std::string(11, 'x')), 1009, "frame exceeds limit", false,
         10},
        // The limit is checked from the length field: the payload need not arrive.
        {"64-bit length over the limit", len127, 1009, "frame exceeds limit"},
        // The size limit comes before the control-frame checks (websockets' order).
        {"long ping over the limit", masked(9, std::string(126, 'p')), 1009, "frame exceeds limit",
         false, 100},
    };
    for (const auto& c : cases) {
        CAPTURE(c.name);
        int code = 0;
        std::string reason;
        auto frames = decode({c.bytes}, &code, &reason, c.max, c.rsv1_allowed);
        REQUIRE(frames.empty());
        REQUIRE(code == c.code);
        REQUIRE(reason == c.reason);
    }
}

TEST_CASE("WsDecoder: the too-big length is reported for the close reason", "[websocket]") {
    WsDecoder d(1000, false);
    d.feed(masked(2, std::string(2000, 'x')).substr(0, 8));  // header only
    WsFrame f;
    REQUIRE(d.next(f) == WsDecoder::Status::kError);
    REQUIRE(d.error_code() == 1009);
    REQUIRE(d.too_big_length() == 2000);
}

TEST_CASE("WsDecoder: RSV1 passes on data frames when permessage-deflate allows it",
          "[websocket]") {
    auto frames =
        decode({masked(1, "x", true, 4), masked(0, "y", true, 4)}, nullptr, nullptr, 1 << 20, true);
    REQUIRE(frames == std::vector<Decoded>{{true, true, 1, "x"}, {true, true, 0, "y"}});
}

TEST_CASE("WsDecoder: the limit can change between frames", "[websocket]") {
    WsDecoder d(100, false);
    d.feed(masked(2, std::string(60, 'a'), false) + masked(0, std::string(60, 'b')));
    WsFrame f;
    REQUIRE(d.next(f) == WsDecoder::Status::kFrame);
    d.set_max_frame_size(40);  // what is left of a 100-byte message limit
    REQUIRE(d.next(f) == WsDecoder::Status::kError);
    REQUIRE(d.error_code() == 1009);
    REQUIRE(d.too_big_length() == 60);
}

// ---------------------------------------------------------------------------------------------
// Encoder

TEST_CASE("ws_encode_frame: byte-exact headers for the three length forms", "[websocket]") {
    std::string out;
    ws_encode_frame(out, WsOpcode::kText, "hi");
    REQUIRE(out == "\x81\x02hi");
    out.clear();
    ws_encode_frame(out, WsOpcode::kBinary, std::string(125, 'x'));
    REQUIRE(out.substr(0, 2) == "\x82\x7d");
    REQUIRE(out.size() == 127);
    out.clear();
    ws_encode_frame(out, WsOpcode::kBinary, std::string(126, 'x'));
    REQUIRE(out.substr(0, 4) == "\x82\x7e\x00\x7e"s);
    out.clear();
    ws_encode_frame(out, WsOpcode::kBinary, std::string(65535, 'x'));
    REQUIRE(out.substr(0, 4) == "\x82\x7e\xff\xff"s);
    out.clear();
    ws_encode_frame(out, WsOpcode::kBinary, std::string(65536, 'x'));
    REQUIRE(out.substr(0, 10) == "\x82\x7f\x00\x00\x00\x00\x00\x01\x00\x00"s);
    REQUIRE(out.size() == 65546);
    out.clear();
    ws_encode_frame(out, WsOpcode::kText, "z", false, true);  // RSV1, not final
    REQUIRE(out == "\x41\x01z");
    out.clear();
    ws_encode_frame(out, WsOpcode::kPong, "");
    REQUIRE(out == "\x8a\x00"s);
}

TEST_CASE("ws_encode_close: code and reason, 1005 as an empty frame", "[websocket]") {
    std::string out;
    ws_encode_close(out, 1000, "bye");
    REQUIRE(out ==
            "\x88\x05\x03\xe8"
            "bye"s);
    out.clear();
    ws_encode_close(out, 1012, "");
    REQUIRE(out == "\x88\x02\x03\xf4"s);
    out.clear();
    ws_encode_close(out, 1005, "ignored");
    REQUIRE(out == "\x88\x00"s);
    out.clear();
    ws_encode_close(out, 4000, std::string(200, 'r'));
    REQUIRE(out.size() == 2 + 125);  // a control frame's payload stays within 125 bytes
}

// ---------------------------------------------------------------------------------------------
// permessage-deflate

TEST_CASE("negotiate_permessage_deflate: websockets' answers with 12-bit windows", "[websocket]") {
    struct Case {
        const char* offer;
        const char* answer;  // nullptr: declined
    };
    const std::vector<Case> cases = {
        {"permessage-deflate", "permessage-deflate; server_max_window_bits=12"},
        {"permessage-deflate; client_max_window_bits",
         "permessage-deflate; server_max_window_bits=12; client_max_window_bits=12"},
        {"permessage-deflate; client_max_window_bits=10",
         "permessage-deflate; server_max_window_bits=12; client_max_window_bits=10"},
        {"permessage-deflate; server_max_window_bits=10",
         "permessage-deflate; server_max_window_bits=10"},
        {"permessage-deflate; server_no_context_takeover; client_no_context_takeover",
         "permessage-deflate; server_no_context_takeover; client_no_context_takeover; "
         "server_max_window_bits=12"},
        {"permessage-deflate; server_max_window_bits=8", nullptr},  // zlib cannot do 8
        {"permessage-deflate; unknown_param", nullptr},
        {"permessage-deflate; server_max_window_bits=16", nullptr},
        {"permessage-deflate; server_max_window_bits=09", nullptr},
        {"permessage-deflate; client_max_window_bits; client_max_window_bits", nullptr},
        {"x-webkit-deflate-frame", nullptr},
        // The first acceptable offer wins.
        {"permessage-deflate; bogus, permessage-deflate; client_max_window_bits=\"11\"",
         "permessage-deflate; server_max_window_bits=12; client_max_window_bits=11"},
    };
    for (const auto& c : cases) {
        CAPTURE(c.offer);
        auto r = negotiate_permessage_deflate(c.offer);
        if (c.answer == nullptr) {
            REQUIRE_FALSE(r.has_value());
        } else {
            REQUIRE(r.has_value());
            REQUIRE(r->response == c.answer);
        }
    }
}

TEST_CASE("WsDeflate: the server's messages inflate on the client, with context takeover",
          "[websocket]") {
    DeflateParams params;
    params.server_max_window_bits = 12;
    WsDeflate server(params);
    ClientInflate client;
    for (std::string msg : {"hello"s, ""s, std::string(100000, 'a'), "hello"s, ""s, ""s, "é"s}) {
        std::string wire;
        REQUIRE(server.compress(msg, wire));
        // An empty message still carries a byte (an empty stored block minus its tail): an
        // empty payload would make the client's inflater fail.
        REQUIRE_FALSE(wire.empty());
        std::string back;
        REQUIRE(client.decompress(wire, back));
        REQUIRE(back == msg);
    }
}

TEST_CASE("WsDeflate: client messages inflate, whole or frame by frame", "[websocket]") {
    for (bool takeover : {true, false}) {
        CAPTURE(takeover);
        DeflateParams params;
        params.client_no_context_takeover = !takeover;
        WsDeflate server(params);
        ClientDeflate client;
        for (int round = 0; round < 3; ++round) {
            std::string msg = "round " + std::to_string(round) + std::string(5000, 'z');
            if (!takeover) client.reset();
            std::string out;
            REQUIRE(server.decompress(client.compress(msg), 1 << 20, out) ==
                    WsDeflate::Inflate::kOk);
            REQUIRE(out == msg);
            // The same as three frames: only the last drops the 00 00 ff ff tail.
            if (!takeover) client.reset();
            std::string frames;
            REQUIRE(server.decompress_frame(client.compress("abc", false), false, 1 << 20,
                                            frames) == WsDeflate::Inflate::kOk);
            REQUIRE(server.decompress_frame(client.compress("", false), false, 1 << 20, frames) ==
                    WsDeflate::Inflate::kOk);
            REQUIRE(server.decompress_frame(client.compress("def", true), true, 1 << 20, frames) ==
                    WsDeflate::Inflate::kOk);
            REQUIRE(frames == "abcdef");
        }
    }
}

TEST_CASE(
    "WsDeflate: without client context takeover, a message not depending on the last "
    "one is required",
    "[websocket]") {
    // A client that keeps its context while the server resets would send back-references the
    // server cannot resolve: the second message fails instead of decoding garbage.
    DeflateParams params;
    params.client_no_context_takeover = true;
    WsDeflate server(params);
    ClientDeflate client;
    std::string msg(3000, 'q');
    std::string out;
    REQUIRE(server.decompress(client.compress(msg), 1 << 20, out) == WsDeflate::Inflate::kOk);
    REQUIRE(server.decompress(client.compress(msg), 1 << 20, out) == WsDeflate::Inflate::kError);
}

TEST_CASE("WsDeflate: a decompression bomb stops at the limit", "[websocket]") {
    WsDeflate server(DeflateParams{});
    ClientDeflate client;
    std::string bomb = client.compress(std::string(10 << 20, '\0'));
    REQUIRE(bomb.size() < 20000);
    std::string out;
    REQUIRE(server.decompress(bomb, 1 << 20, out) == WsDeflate::Inflate::kTooBig);
    REQUIRE(out.size() <= (1 << 20) + 1);
}

TEST_CASE("WsDeflate: garbage is an error", "[websocket]") {
    WsDeflate server(DeflateParams{});
    std::string out;
    REQUIRE(server.decompress("\xff\xff\xff\xff garbage", 1 << 20, out) ==
            WsDeflate::Inflate::kError);
}

TEST_CASE("WsDeflate: server without context takeover compresses each message alone",
          "[websocket]") {
    DeflateParams params;
    params.server_no_context_takeover = true;
    WsDeflate server(params);
    std::string a;
    std::string b;
    REQUIRE(server.compress("repeated text repeated text", a));
    REQUIRE(server.compress("repeated text repeated text", b));
    REQUIRE(a == b);  // no back-reference into the previous message
    ClientInflate fresh;
    std::string back;
    REQUIRE(fresh.decompress(b, back));
    REQUIRE(back == "repeated text repeated text");
}

// ---------------------------------------------------------------------------------------------
// Handshake verdicts

namespace {

struct HeadBuilder {
    std::string method = "GET";
    std::vector<std::pair<std::string, std::string>> headers = {
        {"host", "x"},
        {"upgrade", "websocket"},
        {"connection", "Upgrade"},
        {"sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="},
        {"sec-websocket-version", "13"},
    };
    void set(const std::string& name, std::string value) {
        for (auto& [n, v] : headers) {
            if (n == name) {
                v = std::move(value);
                return;
            }
        }
        headers.emplace_back(name, std::move(value));
    }
    void drop(const std::string& name) {
        std::erase_if(headers, [&](const auto& h) { return h.first == name; });
    }
    RequestHead head() const {
        RequestHead h;
        h.method = method;
        h.target = "/ws";
        h.upgrade = true;
        for (const auto& [n, v] : headers)
            h.headers.push_back({n, v});
        return h;
    }
};

constexpr std::string_view kPrefix = "Failed to open a WebSocket connection: ";

}  // namespace

TEST_CASE("check_websocket_handshake: websockets' status codes and texts", "[websocket]") {
    struct Case {
        const char* name;
        std::function<void(HeadBuilder&)> edit;
        int status;
        std::string message;  // after the prefix, before ".\n"
    };
    const std::vector<Case> cases = {
        {"valid", [](HeadBuilder&) {}, 101, ""},
        {"POST", [](HeadBuilder& b) { b.method = "POST"; }, 405, "unsupported HTTP method: POST"},
        {"no key", [](HeadBuilder& b) { b.drop("sec-websocket-key"); }, 400,
         "missing Sec-WebSocket-Key header"},
        {"empty key", [](HeadBuilder& b) { b.set("sec-websocket-key", ""); }, 400,
         "empty Sec-WebSocket-Key header"},
        {"two keys",
         [](HeadBuilder& b) {
             b.headers.emplace_back("sec-websocket-key", "AAAAAAAAAAAAAAAAAAAAAA==");
         },
         400, "invalid Sec-WebSocket-Key header: multiple values"},
        {"key of 15 bytes",
         [](HeadBuilder& b) { b.set("sec-websocket-key", "AAAAAAAAAAAAAAAAAAAA"); }, 400,
         "invalid Sec-WebSocket-Key header: AAAAAAAAAAAAAAAAAAAA"},
        {"key padding", [](HeadBuilder& b) { b.set("sec-websocket-key", "abc"); }, 400,
         "invalid Sec-WebSocket-Key header: abc; Incorrect padding"},
        {"key leading padding", [](HeadBuilder& b) { b.set("sec-websocket-key", "=abc"); }, 400,
         "invalid Sec-WebSocket-Key header: =abc; Leading padding not allowed"},
        {"key bad char", [](HeadBuilder& b) { b.set("sec-websocket-key", "ab!d"); }, 400,
         "invalid Sec-WebSocket-Key header: ab!d; Only base64 data is allowed"},
        {"key discontinuous", [](HeadBuilder& b) { b.set("sec-websocket-key", "ab=c"); }, 400,
         "invalid Sec-WebSocket-Key header: ab=c; Discontinuous padding not allowed"},
        {"key excess", [](HeadBuilder& b) { b.set("sec-websocket-key", "ab==c"); }, 400,
         "invalid Sec-WebSocket-Key header: ab==c; Excess data after padding"},
        {"key one extra char", [](HeadBuilder& b) { b.set("sec-websocket-key", "abcde"); }, 400,
         "invalid Sec-WebSocket-Key header: abcde; Invalid base64-encoded string: number of data "
         "characters (5) cannot be 1 more than a multiple of 4"},
        {"no version", [](HeadBuilder& b) { b.drop("sec-websocket-version"); }, 400,
         "missing Sec-WebSocket-Version header"},
        {"version 8", [](HeadBuilder& b) { b.set("sec-websocket-version", "8"); }, 400,
         "invalid Sec-WebSocket-Version header: 8"},
        {"two origins",
         [](HeadBuilder& b) {
             b.headers.emplace_back("origin", "a");
             b.headers.emplace_back("origin", "b");
         },
         400, "invalid Origin header: multiple values"},
        {"two upgrade tokens",
         [](HeadBuilder& b) {
             b.headers.insert(b.headers.begin(), {"upgrade", "h2c"});
         },
         426, "invalid Upgrade header: h2c, websocket"},
        {"a body", [](HeadBuilder& b) { b.set("content-length", "3"); }, 400,
         "did not receive a valid HTTP request"},
        {"an empty body is fine", [](HeadBuilder& b) { b.set("content-length", "0"); }, 101, ""},
        // Header lists that websockets' parsers (headers.py) refuse, with its texts.
        {"connection missing comma", [](HeadBuilder& b) { b.set("connection", "Upgrade, a b"); },
         400, "invalid Connection header: expected comma at 11 in Upgrade, a b"},
        {"upgrade slash without version", [](HeadBuilder& b) { b.set("upgrade", "websocket/"); },
         400, "invalid Upgrade header: expected comma at 9 in websocket/"},
        {"upgrade with version", [](HeadBuilder& b) { b.set("upgrade", "websocket/13"); }, 426,
         "invalid Upgrade header: websocket/13"},
        {"extensions trailing ;",
         [](HeadBuilder& b) { b.set("sec-websocket-extensions", "permessage-deflate;"); }, 400,
         "invalid Sec-WebSocket-Extensions header: expected token at 19 in permessage-deflate;"},
        {"extensions empty", [](HeadBuilder& b) { b.set("sec-websocket-extensions", ""); }, 400,
         "invalid Sec-WebSocket-Extensions header: expected token at 0 in "},
        {"extensions quoted non-token",
         [](HeadBuilder& b) { b.set("sec-websocket-extensions", "x; a=\"b c\""); }, 400,
         "invalid Sec-WebSocket-Extensions header: invalid quoted header content at 5 in "
         "x; a=\"b c\""},
        {"extensions open quote",
         [](HeadBuilder& b) { b.set("sec-websocket-extensions", "x; a=\"b"); }, 400,
         "invalid Sec-WebSocket-Extensions header: expected quoted string at 5 in x; a=\"b"},
        {"extensions latin-1 in quotes",
         [](HeadBuilder& b) { b.set("sec-websocket-extensions", "x; a=\"\xe9\""); }, 400,
         "invalid Sec-WebSocket-Extensions header: expected quoted string at 5 in "
         "x; a=\"\xc3\xa9\""},
        {"protocol missing comma",
         [](HeadBuilder& b) { b.set("sec-websocket-protocol", "chat;x"); }, 400,
         "invalid Sec-WebSocket-Protocol header: expected comma at 4 in chat;x"},
        {"protocol only commas", [](HeadBuilder& b) { b.set("sec-websocket-protocol", " , ,"); },
         400, "invalid Sec-WebSocket-Protocol header: expected token at 3 in , ,"},
        {"protocol empty elements",
         [](HeadBuilder& b) { b.set("sec-websocket-protocol", ",a,\t ,b,"); }, 101, ""},
        {"protocol checked after extensions",
         [](HeadBuilder& b) {
             b.set("sec-websocket-protocol", "a b");
             b.set("sec-websocket-extensions", ",");
         },
         400, "invalid Sec-WebSocket-Extensions header: expected token at 1 in ,"},
    };
    for (const auto& c : cases) {
        CAPTURE(c.name);
        HeadBuilder b;
        c.edit(b);
        WsHandshake r = check_websocket_handshake(b.head(), true);
        REQUIRE(r.status == c.status);
        if (c.status == 101) {
            REQUIRE(r.accept_key == "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
            continue;
        }
        REQUIRE(r.body.starts_with(kPrefix));
        std::string expected = std::string(kPrefix) + c.message + ".\n";
        if (c.status == 426) {
            REQUIRE(r.body.starts_with(expected));
            REQUIRE(r.extra_header == "Upgrade: websocket\r\n");
        } else {
            REQUIRE(r.body == expected);
        }
        if (c.status == 405) REQUIRE(r.extra_header == "Allow: GET\r\n");
    }
}

TEST_CASE("check_websocket_handshake: malformed extensions only count with deflate on",
          "[websocket]") {
    HeadBuilder b;
    b.set("sec-websocket-extensions", "permessage-deflate;");
    REQUIRE(check_websocket_handshake(b.head(), false).status == 101);
    REQUIRE(check_websocket_handshake(b.head(), true).status == 400);
    // Quoted and escaped values are unquoted before the negotiation.
    b.set("sec-websocket-extensions", "permessage-deflate; server_max_window_bits=\"1\\0\"");
    WsHandshake r = check_websocket_handshake(b.head(), true);
    REQUIRE(r.status == 101);
    REQUIRE(r.deflate);
    REQUIRE(r.deflate->response == "permessage-deflate; server_max_window_bits=10");
}

TEST_CASE("is_websocket_upgrade: only the last Upgrade and Connection headers count",
          "[websocket]") {
    HeadBuilder b;
    REQUIRE(is_websocket_upgrade(b.head()));
    b.set("connection", "keep-alive, Upgrade");
    REQUIRE(is_websocket_upgrade(b.head()));
    b.set("upgrade", "WebSocket");
    REQUIRE(is_websocket_upgrade(b.head()));
    b.headers.emplace_back("upgrade", "h2c");  // the last one is not websocket: plain HTTP
    REQUIRE_FALSE(is_websocket_upgrade(b.head()));
    HeadBuilder c;
    c.headers.emplace_back("connection", "keep-alive");
    REQUIRE_FALSE(is_websocket_upgrade(c.head()));
    HeadBuilder d;
    d.set("upgrade", "websocket, h2c");
    REQUIRE_FALSE(is_websocket_upgrade(d.head()));
}

// ---------------------------------------------------------------------------------------------
// The session, through HttpConnection's upgrade path

namespace {

// ConnectionEvents + WebSocketHandler that records what core reports and lets the test answer.
class WsRecorder final : public ConnectionEvents, public WebSocketHandler {
  public:
    std::vector<std::string> events;
    HttpConnection* conn = nullptr;
    bool accept_on_connect = true;
    bool websockets_enabled = true;
    int pause_after = 0;  // > 0: pause reading after that many more messages
    std::vector<std::pair<std::string, std::string>> accept_headers;
    std::string subprotocol;

    WebSocketConnection& ws() { return *conn->websocket(); }

    // ---- ConnectionEvents ----
    RequestHandler* on_request(HttpConnection&, const RequestHead& head) noexcept override {
        events.push_back("http " + std::string(head.target));
        return nullptr;  // not used: the tests that reach here only check the event
    }
    void on_protocol_error(HttpConnection&, int status, std::string_view) noexcept override {
        events.push_back("protocol error " + std::to_string(status));
    }
    void on_connection_closed(HttpConnection&) noexcept override { events.push_back("closed"); }
    WebSocketHandler* on_websocket(HttpConnection& c, const RequestHead&) noexcept override {
        if (!websockets_enabled) return nullptr;
        conn = &c;
        events.push_back(c.websocket() != nullptr ? "websocket" : "BUG: no session");
        return this;
    }

    // ---- WebSocketHandler ----
    void on_ws_connect() noexcept override {
        events.push_back("connect");
        if (accept_on_connect) {
            std::vector<Header> hs;
            for (const auto& [n, v] : accept_headers)
                hs.push_back({n, v});
            ws().accept(hs, subprotocol);
        }
    }
    void on_ws_rejected(int status) noexcept override {
        events.push_back("rejected " + std::to_string(status));
    }
    void on_ws_message(bool text, std::string_view data) noexcept override {
        events.push_back(std::string(text ? "text " : "bytes ") + std::string(data));
        if (pause_after > 0 && --pause_after == 0) ws().pause_reading();
    }
    void on_ws_closed(int code, std::string_view reason, WsCloseCause cause) noexcept override {
        events.push_back("ws closed " + std::to_string(code) + " " + std::string(reason) + " " +
                         std::to_string(static_cast<int>(cause)));
    }
    void on_ws_writable() noexcept override { events.push_back("writable"); }
    void on_ws_release() noexcept override { events.push_back("release"); }
};

struct WsRig {
    ServerConfig config = [] {
        ServerConfig c;
        c.date_header = false;
        c.default_headers = "server: test\r\n";
        c.ws_ping_interval = 20.0;
        c.ws_ping_timeout = 20.0;
        return c;
    }();
    StatusLines lines;
    DateCache date;
    WsRecorder app;
    ConnectionContext ctx{config, lines, date, app};
    FakeTransport wire;
    HttpConnection conn{wire, ctx, PeerAddress{"127.0.0.1", 40000, false},
                        PeerAddress{"127.0.0.1", 8000, false}};

    WsRig() { wire.attach(conn); }
    explicit WsRig(void (*tweak)(ServerConfig&)) {
        tweak(config);
        wire.attach(conn);
    }
    // Sends the handshake (plus `after`, in the same read); returns what came back.
    std::string open(const std::string& after = "", const std::string& extra = "") {
        wire.deliver(
            "GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n" +
            extra + "\r\n" + after);
        wire.end_of_turn();
        return wire.take_written();
    }
    void turn() { wire.end_of_turn(); }
};

using Events = std::vector<std::string>;

const std::string k101 =
    "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    "Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\nserver: test\r\n\r\n";

std::string server_close(int code, std::string_view reason = {}) {
    std::string out;
    ws_encode_close(out, code, reason);
    return out;
}

std::string server_frame(WsOpcode op, std::string_view payload) {
    std::string out;
    ws_encode_frame(out, op, payload);
    return out;
}

}  // namespace

TEST_CASE("WebSocketConnection: the 101 carries defaults, app headers and the subprotocol",
          "[websocket]") {
    WsRig rig;
    rig.app.accept_headers = {{"X-Extra", "yes"}};
    rig.app.subprotocol = "chat";
    std::string out = rig.open();
    REQUIRE(out ==
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            "Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\nserver: test\r\n"
            "x-extra: yes\r\nSec-WebSocket-Protocol: chat\r\n\r\n");
    REQUIRE(rig.app.events == Events{"websocket", "connect"});
}

TEST_CASE("WebSocketConnection: frames behind the handshake wait for the accept", "[websocket]") {
    WsRig rig;
    rig.app.accept_on_connect = false;
    rig.wire.deliver(
        "GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n" +
        masked(9, "early") + masked(1, "first"));
    rig.turn();
    // No pong may precede the 101, and reading stops while the frames wait.
    REQUIRE(rig.wire.take_written().empty());
    REQUIRE_FALSE(rig.wire.reading());
    REQUIRE(rig.app.events == Events{"websocket", "connect"});
    rig.app.ws().accept({}, "");
    rig.turn();
    REQUIRE(rig.wire.take_written() == k101 + server_frame(WsOpcode::kPong, "early"));
    REQUIRE(rig.app.events == Events{"websocket", "connect", "text first"});
    REQUIRE(rig.wire.reading());
}

TEST_CASE("WebSocketConnection: messages, fragments, pings and the client's close", "[websocket]") {
    WsRig rig;
    REQUIRE(rig.open() == k101);
    rig.wire.deliver(masked(1, "héllo") + masked(2, "ab", false) + masked(9, "p") +
                     masked(0, "cd"));
    rig.turn();
    REQUIRE(rig.wire.take_written() == server_frame(WsOpcode::kPong, "p"));
    rig.wire.deliver(masked(8, close_payload(4000, "bye")));
    rig.turn();
    // The close frame is echoed as received, then the server closes the TCP connection.
    REQUIRE(rig.wire.take_written() == server_frame(WsOpcode::kClose, close_payload(4000, "bye")));
    REQUIRE(rig.wire.close_kind() == FakeTransport::Close::kGraceful);
    REQUIRE(rig.app.events == Events{"websocket", "connect", "text héllo", "bytes abcd",
                                     "ws closed 4000 bye 0", "release", "closed"});
    REQUIRE(rig.app.ws().send(true, "late") == WriteResult::kClosed);
}

TEST_CASE("WebSocketConnection: an empty close frame is 1005 and echoed empty", "[websocket]") {
    WsRig rig;
    rig.open();
    rig.wire.deliver(masked(8, ""));
    rig.turn();
    REQUIRE(rig.wire.take_written() == "\x88\x00"s);
    REQUIRE(rig.app.events.at(2) == "ws closed 1005  0");
}

TEST_CASE("WebSocketConnection: protocol failures send the close code and reason", "[websocket]") {
    struct Case {
        const char* name;
        std::string frames;
        int code;
        std::string reason;
        int cause;
    };
    const std::vector<Case> cases = {
        {"unexpected continuation", masked(0, "x"), 1002, "unexpected continuation frame", 1},
        {"text inside a fragmented message", masked(1, "a", false) + masked(1, "b"), 1002,
         "expected a continuation frame", 1},
        {"close inside a fragmented message",
         masked(1, "a", false) + masked(8, close_payload(1000)), 1002,
         "incomplete fragmented message", 1},
        {"invalid UTF-8 text", masked(1, "\xff"), 1007, "", 4},
        {"invalid UTF-8 across fragments", masked(1, "ok\xe2\x82", false) + masked(0, "\x28"), 1007,
         "", 4},
        {"close code 999", masked(8, close_payload(999)), 1002, "invalid status code", 1},
        {"close code 1005 on the wire", masked(8, close_payload(1005)), 1002, "invalid status code",
         1},
        {"one-byte close payload", masked(8, "\x03"), 1002, "close frame too short", 1},
        {"invalid UTF-8 close reason", masked(8, close_payload(1000, "ab\xc3\x28")), 1007,
         "invalid continuation byte at position 2", 1},
        {"truncated UTF-8 close reason", masked(8, close_payload(1000, "ab\xe2\x82")), 1007,
         "unexpected end of data at position 2", 1},
        {"unmasked frame", "\x81\x01x"s, 1002, "incorrect masking", 1},
    };
    for (const auto& c : cases) {
        CAPTURE(c.name);
        WsRig rig;
        rig.open();
        rig.wire.deliver(c.frames);
        rig.turn();
        REQUIRE(rig.wire.take_written() == server_close(c.code, c.reason));
        REQUIRE(rig.wire.close_kind() == FakeTransport::Close::kGraceful);
        std::string expected =
            "ws closed " + std::to_string(c.code) + " " + c.reason + " " + std::to_string(c.cause);
        REQUIRE(std::find(rig.app.events.begin(), rig.app.events.end(), expected) !=
                rig.app.events.end());
    }
}

TEST_CASE("WebSocketConnection: valid UTF-8 split across fragments is one message", "[websocket]") {
    WsRig rig;
    rig.open();
    rig.wire.deliver(masked(1, "ok\xe2\x82", false) + masked(0, "\xac!"));
    rig.turn();
    REQUIRE(rig.app.events.back() == "text ok\xe2\x82\xac!");
}

TEST_CASE("WebSocketConnection: --ws-max-size, unfragmented and fragmented", "[websocket]") {
    WsRig rig([](ServerConfig& c) { c.ws_max_size = 1000; });
    rig.open();
    rig.wire.deliver(masked(2, std::string(1000, 'x')));  // exactly at the limit is fine
    rig.turn();
    REQUIRE(rig.app.events.back() == "bytes " + std::string(1000, 'x'));
    rig.wire.deliver(masked(2, std::string(600, 'x'), false) + masked(0, std::string(600, 'x')));
    rig.turn();
    REQUIRE(rig.wire.take_written() ==
            server_close(1009,
                         "frame with 600 bytes after reading 600 bytes exceeds limit of "
                         "1000 bytes"));
}

TEST_CASE("WebSocketConnection: --ws-max-size applies after decompression", "[websocket]") {
    WsRig rig([](ServerConfig& c) { c.ws_max_size = 1000; });
    std::string out = rig.open("", "Sec-WebSocket-Extensions: permessage-deflate\r\n");
    REQUIRE(
        out.find("Sec-WebSocket-Extensions: permessage-deflate; server_max_window_bits=12\r\n") !=
        std::string::npos);
    ClientDeflate client;
    rig.wire.deliver(masked(1, client.compress(std::string(900, 'a')), true, 4));
    rig.turn();
    REQUIRE(rig.app.events.back() == "text " + std::string(900, 'a'));
    rig.wire.deliver(masked(1, client.compress(std::string(5000, 'a')), true, 4));
    rig.turn();
    REQUIRE(rig.wire.take_written() == server_close(1009, "frame exceeds limit of 1000 bytes"));
}

TEST_CASE("WebSocketConnection: compressed messages both ways", "[websocket]") {
    WsRig rig;
    rig.open("", "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n");
    ClientDeflate client(12);
    rig.wire.deliver(masked(1, client.compress("frag", false), false, 4) +
                     masked(0, client.compress("mented", true)) +
                     masked(2, client.compress(""), true, 4));
    rig.turn();
    REQUIRE(rig.app.events == Events{"websocket", "connect", "text fragmented", "bytes "});
    // RSV1 on a continuation of a compressed message is websockets' own error.
    rig.wire.deliver(masked(1, client.compress("a", false), false, 4) + masked(0, "x", true, 4));
    rig.turn();
    REQUIRE(rig.wire.take_written() == server_close(1002, "RSV1 bit set in continuation frame"));

    WsRig rig2;
    rig2.open("", "Sec-WebSocket-Extensions: permessage-deflate\r\n");
    REQUIRE(rig2.app.ws().send(true, "hello hello hello") == WriteResult::kOk);
    REQUIRE(rig2.app.ws().send(false, "") == WriteResult::kOk);
    rig2.turn();
    std::string wire = rig2.wire.take_written();
    REQUIRE(static_cast<unsigned char>(wire[0]) == 0xC1);  // FIN + RSV1 + text
    std::size_t len = static_cast<unsigned char>(wire[1]);
    ClientInflate inflater;
    std::string text;
    REQUIRE(inflater.decompress(wire.substr(2, len), text));
    REQUIRE(text == "hello hello hello");
    std::string second = wire.substr(2 + len);
    REQUIRE(static_cast<unsigned char>(second[0]) == 0xC2);
    std::string empty;
    REQUIRE(inflater.decompress(second.substr(2, static_cast<unsigned char>(second[1])), empty));
    REQUIRE(empty.empty());
}

TEST_CASE("WebSocketConnection: the application's close waits for the client's", "[websocket]") {
    WsRig rig;
    rig.open();
    REQUIRE(rig.app.ws().close(1000, "done") == WriteResult::kOk);
    rig.turn();
    REQUIRE(rig.wire.take_written() == server_close(1000, "done"));
    REQUIRE_FALSE(rig.wire.closed());
    REQUIRE(rig.app.ws().send(true, "x") == WriteResult::kClosed);
    // Messages after our close are dropped; pings are still answered; the close completes.
    rig.wire.deliver(masked(1, "dropped") + masked(9, "p") + masked(8, close_payload(1000)));
    rig.turn();
    REQUIRE(rig.wire.take_written() == server_frame(WsOpcode::kPong, "p"));
    REQUIRE(rig.wire.closed());
    REQUIRE(rig.app.events ==
            Events{"websocket", "connect", "ws closed 1000  0", "release", "closed"});
}

TEST_CASE("WebSocketConnection: the close timeout ends a close the client never answers",
          "[websocket]") {
    WsRig rig;
    rig.open();
    rig.app.ws().close(1001, "");
    REQUIRE(rig.conn.deadline_ms() == rig.wire.clock_ms + WebSocketConnection::kCloseTimeoutMs);
    rig.wire.clock_ms += WebSocketConnection::kCloseTimeoutMs;
    rig.conn.on_deadline();
    REQUIRE(rig.wire.closed());
}

TEST_CASE("WebSocketConnection: keepalive pings, pongs and the ping timeout", "[websocket]") {
    WsRig rig;
    rig.open();
    REQUIRE(rig.conn.deadline_ms() == rig.wire.clock_ms + 20000);
    rig.wire.clock_ms += 20000;
    rig.conn.on_deadline();
    rig.turn();
    std::string ping = rig.wire.take_written();
    REQUIRE(ping.size() == 6);
    REQUIRE(ping.substr(0, 2) == "\x89\x04");
    REQUIRE(rig.conn.deadline_ms() == rig.wire.clock_ms + 20000);  // the pong deadline
    // A pong with another payload is stale: ignored.
    rig.wire.deliver(masked(10, "nope"));
    rig.wire.clock_ms += 50;
    rig.wire.deliver(masked(10, ping.substr(2)));
    // Answered after 50 ms: the next ping is one interval after the last was sent.
    REQUIRE(rig.conn.deadline_ms() == rig.wire.clock_ms + 20000 - 50);
    rig.wire.clock_ms = rig.conn.deadline_ms();
    rig.conn.on_deadline();
    rig.turn();
    REQUIRE(rig.wire.take_written().substr(0, 2) == "\x89\x04");
    rig.wire.clock_ms += 20000;
    rig.conn.on_deadline();
    rig.turn();
    REQUIRE(rig.wire.take_written() == server_close(1011, "keepalive ping timeout"));
    REQUIRE(rig.wire.closed());
    REQUIRE(std::find(rig.app.events.begin(), rig.app.events.end(),
                      "ws closed 1011 keepalive ping timeout 2") != rig.app.events.end());
}

TEST_CASE("WebSocketConnection: no ping interval, no pings", "[websocket]") {
    WsRig rig([](ServerConfig& c) { c.ws_ping_interval = 0; });
    rig.open();
    REQUIRE(rig.conn.deadline_ms() == 0);
}

TEST_CASE("WebSocketConnection: shutdown sends 1012, or 500 before the accept", "[websocket]") {
    WsRig rig;
    rig.open();
    rig.conn.shutdown();
    rig.turn();
    REQUIRE(rig.wire.take_written() == server_close(1012));
    REQUIRE(rig.app.events.at(2) == "ws closed 1012  3");

    WsRig pending;
    pending.app.accept_on_connect = false;
    pending.open();
    pending.conn.shutdown();
    std::string out = pending.wire.take_written();
    REQUIRE(out.starts_with("HTTP/1.1 500 Internal Server Error\r\nDate: "));
    REQUIRE(
        out.ends_with("\r\nConnection: close\r\nContent-Length: 21\r\n"
                      "Content-Type: text/plain; charset=utf-8\r\n\r\nInternal Server Error"));
    REQUIRE(pending.app.events.back() == "rejected 500");
}

TEST_CASE("WebSocketConnection: an invalid handshake is answered without the application",
          "[websocket]") {
    WsRig rig;
    rig.wire.deliver(
        "GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        "Sec-WebSocket-Version: 13\r\n\r\n");
    rig.turn();
    std::string out = rig.wire.take_written();
    REQUIRE(out.starts_with("HTTP/1.1 400 Bad Request\r\nDate: "));
    REQUIRE(
        out.ends_with("Content-Length: 73\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n"
                      "Failed to open a WebSocket connection: missing Sec-WebSocket-Key "
                      "header.\n"));
    REQUIRE(rig.app.events == Events{"websocket", "rejected 400", "release", "closed"});
}

TEST_CASE("WebSocketConnection: a denial response keeps the app's headers first", "[websocket]") {
    WsRig rig;
    rig.app.accept_on_connect = false;
    rig.open();
    std::vector<Header> hs = {{"X-Denied", "1"}, {"content-type", "application/json"}};
    REQUIRE(rig.app.ws().respond(401, hs, "{}") == WriteResult::kOk);
    std::string out = rig.wire.take_written();
    REQUIRE(
        out.starts_with("HTTP/1.1 401 Unauthorized\r\nX-Denied: 1\r\n"
                        "content-type: application/json\r\nDate: "));
    REQUIRE(out.ends_with("\r\nConnection: close\r\nContent-Length: 2\r\n\r\n{}"));
    REQUIRE(rig.app.ws().accept({}, "") == WriteResult::kClosed);
    std::vector<Header> bad = {{"x", "a\r\nb"}};
    WsRig rig2;
    rig2.app.accept_on_connect = false;
    rig2.open();
    REQUIRE(rig2.app.ws().respond(401, bad, "") == WriteResult::kInvalid);
    REQUIRE(rig2.app.ws().accept(bad, "") == WriteResult::kInvalid);
    REQUIRE(rig2.app.ws().last_header_error() == HeaderError::kBadValue);
}

TEST_CASE("WebSocketConnection: paused reading holds frames until resumed", "[websocket]") {
    WsRig rig;
    rig.open();
    rig.app.ws().pause_reading();
    REQUIRE_FALSE(rig.wire.reading());
    rig.app.ws().resume_reading();
    REQUIRE(rig.wire.reading());
    // The application's queue fills after "one": the rest of the same read stays buffered,
    // even the ping behind it, until the application makes room.
    rig.app.pause_after = 1;
    rig.wire.deliver(masked(1, "one") + masked(1, "two") + masked(9, "p"));
    REQUIRE(rig.app.events.back() == "text one");
    REQUIRE_FALSE(rig.wire.reading());
    rig.turn();
    REQUIRE(rig.wire.take_written().empty());
    rig.app.ws().resume_reading();
    REQUIRE(rig.wire.resume_scheduled());
    rig.turn();
    REQUIRE(rig.app.events.back() == "text two");
    REQUIRE(rig.wire.take_written() == server_frame(WsOpcode::kPong, "p"));
    REQUIRE(rig.wire.reading());
}

TEST_CASE("WebSocketConnection: send reports kWait over the high-water mark, then writable",
          "[websocket]") {
    WsRig rig([](ServerConfig& c) { c.write_high_water = 1024; });
    rig.open();
    rig.wire.stalled = true;
    REQUIRE(rig.app.ws().send(false, std::string(2000, 'x')) == WriteResult::kWait);
    rig.wire.drain();
    REQUIRE(rig.app.events.back() == "writable");
}

TEST_CASE(
    "WebSocketConnection: a large message goes out at once, those behind it in the turn "
    "are corked",
    "[websocket]") {
    WsRig rig;
    rig.open();
    const std::string a(kDirectWriteMin, 'a');
    const std::string b(kDirectWriteMin, 'b');
    const std::string c(kDirectWriteMin, 'c');
    // The first large message of a turn is written now, straight from the caller's buffer.
    REQUIRE(rig.app.ws().send(false, a) == WriteResult::kOk);
    REQUIRE(rig.wire.direct_writes() == 1);
    REQUIRE(rig.wire.written() == server_frame(WsOpcode::kBinary, a));
    // Those sent behind it in the same turn wait for its end and leave in one write.
    REQUIRE(rig.app.ws().send(false, b) == WriteResult::kOk);
    REQUIRE(rig.app.ws().send(false, c) == WriteResult::kOk);
    REQUIRE(rig.wire.direct_writes() == 1);
    REQUIRE(rig.wire.written().size() == server_frame(WsOpcode::kBinary, a).size());
    int flushes = rig.wire.flushes();
    rig.turn();
    REQUIRE(rig.wire.flushes() == flushes + 1);
    REQUIRE(rig.wire.take_written() == server_frame(WsOpcode::kBinary, a) +
                                           server_frame(WsOpcode::kBinary, b) +
                                           server_frame(WsOpcode::kBinary, c));
    // A new turn starts afresh.
    REQUIRE(rig.app.ws().send(false, c) == WriteResult::kOk);
    REQUIRE(rig.wire.direct_writes() == 2);
    REQUIRE(rig.wire.take_written() == server_frame(WsOpcode::kBinary, c));
    rig.turn();
    // The cork holds below the high-water mark; the message that would fill it is written at
    // once with it, from the caller's buffer.
    REQUIRE(rig.app.ws().send(false, c) == WriteResult::kOk);
    REQUIRE(rig.wire.direct_writes() == 3);
    REQUIRE(rig.wire.take_written() == server_frame(WsOpcode::kBinary, c));
    const std::size_t frame_size = server_frame(WsOpcode::kText, c).size();
    std::size_t corked = 0;
    while (corked + frame_size < rig.config.write_high_water) {
        REQUIRE(rig.app.ws().send(true, c) == WriteResult::kOk);
        corked += frame_size;
    }
    REQUIRE(rig.wire.direct_writes() == 3);
    REQUIRE(rig.wire.written().empty());
    flushes = rig.wire.flushes();
    REQUIRE(rig.app.ws().send(true, c) == WriteResult::kOk);
    REQUIRE(rig.wire.direct_writes() == 4);
    REQUIRE(rig.wire.flushes() == flushes);
    REQUIRE(rig.wire.take_written().size() == corked + frame_size);
}

TEST_CASE("WebSocketConnection: a lost connection reports 1006 once, then releases",
          "[websocket]") {
    WsRig rig;
    rig.open();
    rig.wire.eof();
    rig.turn();
    REQUIRE(rig.app.events ==
            Events{"websocket", "connect", "ws closed 1006  5", "release", "closed"});
}

TEST_CASE("HttpConnection: with WebSockets off an upgrade is plain HTTP", "[websocket]") {
    WsRig rig;
    rig.app.websockets_enabled = false;
    rig.wire.deliver(
        "GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n");
    REQUIRE(rig.app.events == Events{"http /ws"});
    REQUIRE(rig.conn.websocket() == nullptr);
}
