// SPDX-License-Identifier: BSD-3-Clause
// Microbenchmarks of the pure C++ core (no Python): HttpParser, the response writer and the
// WebSocket codec, each called the way HttpConnection / WebSocketConnection call it. A name
// ending in "[N B]" processes N bytes per call: benchmarks/micro/run.sh derives ns/byte from it.
// Every case first checks that the measured call does what its name says.
#include "core/config.hpp"
#include "core/date_cache.hpp"
#include "core/http_parser.hpp"
#include "core/request_handler.hpp"
#include "core/response_writer.hpp"
#include "core/websocket_codec.hpp"

#include <catch2/catch.hpp>

#include <cstddef>
#include <string>
#include <string_view>
#include <vector>

namespace {

using namespace cppuvicorn::core;

// Counts messages and body bytes; pauses after every message, as HttpConnection does.
class CountingSink final : public ParserSink {
  public:
    std::size_t heads = 0;
    std::size_t headers = 0;
    std::size_t body_bytes = 0;
    std::size_t messages = 0;

    void on_head(const RequestHead& head) override {
        ++heads;
        headers += head.headers.size();
    }
    void on_body(std::string_view chunk) override { body_bytes += chunk.size(); }
    int on_message_end() override {
        ++messages;
        return kPause;
    }
};

// Feeds `input` (whole messages) to a parser that lives across calls, like a keep-alive
// connection's: execute, and after each message resume() and go on with the rest.
std::size_t parse_all(HttpParser& parser, std::string_view input) {
    std::size_t messages = 0;
    while (!input.empty()) {
        ParseResult r = parser.execute(input);
        if (r.kind != ParseResult::Kind::kPaused) break;
        input.remove_prefix(r.consumed);
        parser.resume();
        ++messages;
    }
    return messages;
}

std::string name_with_size(std::string_view what, std::size_t bytes) {
    return std::string(what) + " [" + std::to_string(bytes) + " B]";
}

const std::string kCurlGet =
    "GET /api/items?id=42 HTTP/1.1\r\n"
    "Host: localhost:8000\r\n"
    "User-Agent: curl/7.88.1\r\n"
    "Accept: */*\r\n"
    "\r\n";

const std::string kBrowserGet =
    "GET /static/app/main.css?v=3f2a9c HTTP/1.1\r\n"
    "Host: www.example.com\r\n"
    "Connection: keep-alive\r\n"
    "sec-ch-ua: \"Chromium\";v=\"124\", \"Google Chrome\";v=\"124\", \"Not-A.Brand\";v=\"99\"\r\n"
    "sec-ch-ua-mobile: ?0\r\n"
    "User-Agent: Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/124.0.0.0 Safari/537.36\r\n"
    "sec-ch-ua-platform: \"Linux\"\r\n"
    "Accept: text/css,*/*;q=0.1\r\n"
    "Sec-Fetch-Site: same-origin\r\n"
    "Sec-Fetch-Mode: no-cors\r\n"
    "Referer: https://www.example.com/\r\n"
    "Accept-Encoding: gzip, deflate, br, zstd\r\n"
    "Accept-Language: en-GB,en;q=0.9,de;q=0.8\r\n"
    "Cookie: session=6b1f0a0e2d4c4f8e9a7b3c2d1e0f9a8b; theme=dark; "
    "_ga=GA1.1.123456789.1700000000\r\n"
    "\r\n";

// A POST whose 4 KiB JSON-ish body arrives in four 1 KiB chunks.
std::string chunked_post() {
    std::string s =
        "POST /upload HTTP/1.1\r\n"
        "Host: localhost:8000\r\n"
        "User-Agent: python-httpx/0.27.0\r\n"
        "Content-Type: application/json\r\n"
        "Transfer-Encoding: chunked\r\n"
        "\r\n";
    const std::string chunk(1024, 'x');
    for (int i = 0; i < 4; ++i)
        s += "400\r\n" + chunk + "\r\n";
    s += "0\r\n\r\n";
    return s;
}

std::string pipelined_gets(int n) {
    std::string s;
    for (int i = 0; i < n; ++i)
        s += "GET / HTTP/1.1\r\nHost: localhost:8000\r\nUser-Agent: wrk\r\n\r\n";
    return s;
}

// A masked client frame (RFC 6455 §5.2).
std::string masked_frame(int opcode, std::string_view payload) {
    static constexpr char kMask[4] = {0x11, 0x22, 0x33, 0x44};
    std::string f;
    f.push_back(static_cast<char>(0x80 | opcode));
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
    f.append(kMask, 4);
    for (std::size_t i = 0; i < n; ++i)
        f.push_back(static_cast<char>(payload[i] ^ kMask[i & 3]));
    return f;
}

std::string payload_of(std::size_t n) {
    std::string p(n, '\0');
    for (std::size_t i = 0; i < n; ++i)
        p[i] = static_cast<char>('a' + i % 26);
    return p;
}

// A ~1 KiB JSON message like a chat/app payload.
std::string json_message() {
    std::string s = "{\"type\":\"update\",\"items\":[";
    for (int i = 0; s.size() < 1000; ++i) {
        if (i) s += ',';
        s += "{\"id\":" + std::to_string(1000 + i) + ",\"name\":\"item-" + std::to_string(i) +
             "\",\"price\":" + std::to_string(9 + i % 7) + ".99,\"in_stock\":true}";
    }
    s += "]}";
    return s;
}

}  // namespace

TEST_CASE("HttpParser", "[parser]") {
    const ServerConfig config;
    CountingSink sink;
    HttpParser parser{sink, config};

    const std::string post = chunked_post();
    const std::string pipe16 = pipelined_gets(16);
    // The inputs parse as intended before any timing.
    REQUIRE(parse_all(parser, kCurlGet) == 1);
    REQUIRE(sink.headers == 3);
    REQUIRE(parse_all(parser, kBrowserGet) == 1);
    REQUIRE(sink.headers == 3 + 13);
    REQUIRE(parse_all(parser, post) == 1);
    REQUIRE(sink.body_bytes == 4096);
    REQUIRE(parse_all(parser, pipe16) == 16);
    REQUIRE(sink.messages == 19);

    BENCHMARK(name_with_size("parse curl GET, 3 headers", kCurlGet.size())) {
        return parse_all(parser, kCurlGet);
    };
    BENCHMARK(name_with_size("parse browser GET, 13 headers", kBrowserGet.size())) {
        return parse_all(parser, kBrowserGet);
    };
    BENCHMARK(name_with_size("parse POST, 4 KiB body in 4 chunks", post.size())) {
        return parse_all(parser, post);
    };
    BENCHMARK(name_with_size("parse 16 pipelined GETs, one buffer", pipe16.size())) {
        return parse_all(parser, pipe16);
    };
}

TEST_CASE("ResponseWriter", "[writer]") {
    const StatusLines lines;
    DateCache date;
    const std::string defaults = ServerConfig{}.default_headers;  // "server: cppuvicorn"
    const std::vector<Header> headers = {
        {"content-type", "application/json"},
        {"content-length", "47"},
        {"cache-control", "no-store"},
        {"x-request-id", "8c5e2f3a-41b7-4d8e-9f10-2b6c7d8e9f01"},
    };
    const RequestInfo req;
    std::string out;
    ResponseState state;
    REQUIRE(write_response_head(out, lines, 200, headers, req, date.header_line(), defaults,
                                state) == HeaderError::kNone);
    REQUIRE(state.framing == Framing::kContentLength);
    const std::size_t head_size = out.size();

    // As HttpConnection::start_response: the cached date line, then the head into the
    // connection's output buffer (cleared, as after a write, so its capacity is reused).
    BENCHMARK(name_with_size("response head, 4 headers + date + server", head_size)) {
        out.clear();
        ResponseState s;
        write_response_head(out, lines, 200, headers, req, date.header_line(), defaults, s);
        return out.size();
    };

    // A chunked body: 16 chunks of 1 KiB, then the terminating chunk.
    const std::vector<Header> no_length = {{"content-type", "text/plain"}};
    ResponseState chunked;
    out.clear();
    REQUIRE(write_response_head(out, lines, 200, no_length, req, "", defaults, chunked) ==
            HeaderError::kNone);
    REQUIRE(chunked.framing == Framing::kChunked);
    const std::string chunk(1024, 'c');
    BENCHMARK(name_with_size("chunked body framing, 16 x 1 KiB", 16 * chunk.size())) {
        out.clear();
        for (int i = 0; i < 16; ++i)
            write_body_chunk(out, chunked, chunk);
        write_body_end(out, chunked);
        return out.size();
    };
    REQUIRE(out.size() == 16 * (chunk.size() + 7) + 5);  // "400\r\n" … "\r\n", "0\r\n\r\n"
}

TEST_CASE("WebSocket codec", "[websocket]") {
    for (std::size_t n : {std::size_t{64}, std::size_t{16384}}) {
        const std::string payload = payload_of(n);
        const std::string frame = masked_frame(0x2, payload);
        WsDecoder decoder{ServerConfig{}.ws_max_size, true};
        WsFrame f;
        decoder.feed(frame);
        REQUIRE(decoder.next(f) == WsDecoder::Status::kFrame);
        REQUIRE(f.payload == payload);

        // As WebSocketConnection::on_data: decode what one read returned where it lies, take
        // the frames, keep what is left, free the drained buffers.
        BENCHMARK(name_with_size("decode masked binary frame, " + std::to_string(n) + " B payload",
                                 frame.size())) {
            decoder.feed_borrowed(frame);
            WsFrame out;
            std::size_t got = 0;
            while (decoder.next(out) == WsDecoder::Status::kFrame)
                got += out.payload.size();
            decoder.retain();
            decoder.trim(0);
            return got;
        };

        std::string wire;
        BENCHMARK(name_with_size("encode binary frame, " + std::to_string(n) + " B payload",
                                 payload.size())) {
            wire.clear();
            ws_encode_frame(wire, WsOpcode::kBinary, payload);
            return wire.size();
        };
        REQUIRE(wire.size() == payload.size() + (n < 126 ? 2 : 4));
    }

    // permessage-deflate as negotiated by default (server and client windows of 12 bits, context
    // takeover): one side compresses a message, the other inflates it, both real WsDeflate.
    auto params = negotiate_permessage_deflate("permessage-deflate; client_max_window_bits");
    REQUIRE(params.has_value());
    WsDeflate sender{*params};
    WsDeflate receiver{*params};
    const std::string message = json_message();
    std::string compressed;
    std::string inflated;
    REQUIRE(sender.compress(message, compressed));
    REQUIRE(receiver.decompress(compressed, 1 << 20, inflated) == WsDeflate::Inflate::kOk);
    REQUIRE(inflated == message);
    BENCHMARK(name_with_size("permessage-deflate round trip, JSON", message.size())) {
        compressed.clear();
        inflated.clear();
        sender.compress(message, compressed);
        receiver.decompress(compressed, 1 << 20, inflated);
        return inflated.size();
    };
    REQUIRE(inflated == message);
}
