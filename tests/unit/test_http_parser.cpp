// SPDX-License-Identifier: BSD-3-Clause
// HttpParser: golden event traces, each replayed with the input split at every byte offset
// (callers feed llhttp whatever one read returned), and the requests it must refuse.
#include "core/config.hpp"
#include "core/http_parser.hpp"

#include <catch2/catch.hpp>

#include <algorithm>
#include <string>
#include <string_view>
#include <vector>

namespace {

using cppuvicorn::core::HttpParser;
using cppuvicorn::core::ParseResult;
using cppuvicorn::core::ParserSink;
using cppuvicorn::core::RequestHead;
using cppuvicorn::core::ServerConfig;
using Trace = std::vector<std::string>;

std::string render(const RequestHead& h) {
    std::string s = "head " + std::string(h.method) + " " + std::string(h.target) + " HTTP/" +
                    std::to_string(h.http_major) + "." + std::to_string(h.http_minor);
    s += h.keep_alive ? " keep-alive" : " close";
    if (h.expect_continue) s += " expect-continue";
    if (h.upgrade) s += " upgrade";
    if (h.has_body) s += " body";
    for (const auto& [name, value] : h.headers) {
        s.append("\n  ").append(name).append(": ").append(value);
    }
    return s;
}

// Records parser events one line each; consecutive body chunks are joined, so a trace does
// not depend on where the input was split. Pauses after every message, as HttpConnection does.
class TraceSink final : public ParserSink {
  public:
    Trace trace;

    void on_head(const RequestHead& head) override {
        head_ = &head;
        head_text_ = render(head);
        trace.push_back(head_text_);
    }
    void on_body(std::string_view chunk) override {
        if (trace.empty() || trace.back().rfind("body ", 0) != 0) trace.emplace_back("body ");
        trace.back().append(chunk);
    }
    int on_message_end() override {
        // The head's views must still be good at the end of the message (RequestHead's
        // contract: valid until the handler is released), whatever came after the head.
        if (head_ != nullptr && render(*head_) != head_text_) trace.push_back("head changed");
        trace.emplace_back("end");
        return kPause;
    }

  private:
    const RequestHead* head_ = nullptr;
    std::string head_text_;
};

// Feeds `input` in two execute() calls split at `split`, each from its own buffer that is
// scribbled over afterwards: a parser that kept views into a read buffer shows up here.
Trace trace_of(std::string_view input, std::size_t split, const ServerConfig& config) {
    TraceSink sink;
    HttpParser parser{sink, config};
    auto feed = [&](std::string_view part) {
        std::string buffer(part);
        std::string_view data = buffer;
        bool ok = true;
        for (int guard = 0; guard < 100; ++guard) {
            ParseResult r = parser.execute(data);
            if (r.kind == ParseResult::Kind::kError) {
                sink.trace.push_back("error " + std::to_string(r.status));
                ok = false;
                break;
            }
            if (r.kind == ParseResult::Kind::kNeedMore) {
                REQUIRE(r.consumed == data.size());
                break;
            }
            REQUIRE(r.consumed <= data.size());
            data.remove_prefix(r.consumed);
            parser.resume();
        }
        std::fill(buffer.begin(), buffer.end(), '#');
        return ok;
    };
    if (feed(input.substr(0, split))) feed(input.substr(split));
    return sink.trace;
}

struct Golden {
    const char* name;
    std::string input;
    Trace expected;
};

std::vector<Golden> goldens() {
    return {
        {"simple GET",
         "GET /x HTTP/1.1\r\nHost: a\r\n\r\n",
         {"head GET /x HTTP/1.1 keep-alive\n  host: a", "end"}},
        {"header names are lowercased, values kept, trailing whitespace trimmed",
         "GET / HTTP/1.1\r\nHOST: a\r\nX-Mixed-Case: Value Kept\r\nX-Pad:  padded \t\r\n\r\n",
         {"head GET / HTTP/1.1 keep-alive\n  host: a\n  x-mixed-case: Value Kept\n"
          "  x-pad: padded",
          "end"}},
        {"repeated header names are all kept, in order",
         "GET / HTTP/1.1\r\nAccept: a\r\nX-Other: o\r\naccept: b\r\n\r\n",
         {"head GET / HTTP/1.1 keep-alive\n  accept: a\n  x-other: o\n  accept: b", "end"}},
        {"an empty header value does not merge two headers",
         "GET / HTTP/1.1\r\nX-Empty:\r\nHost: a\r\n\r\n",
         {"head GET / HTTP/1.1 keep-alive\n  x-empty: \n  host: a", "end"}},
        {"chunked body with chunk extensions",
         "POST /u HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"
         "5;name=value\r\nhello\r\n6;a;b=\"c\"\r\n world\r\n0\r\n\r\n",
         {"head POST /u HTTP/1.1 keep-alive body\n  transfer-encoding: chunked", "body hello world",
          "end"}},
        {"chunked body with a trailer larger than the head buffer",
         "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
         "3\r\nabc\r\n0\r\nX-Trailer: " +
             std::string(3000, 't') + "\r\n\r\n",
         {"head POST / HTTP/1.1 keep-alive body\n  host: a\n  transfer-encoding: chunked",
          "body abc", "end"}},
        {"content-length body",
         "POST / HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello",
         {"head POST / HTTP/1.1 keep-alive body\n  content-length: 5", "body hello", "end"}},
        {"content-length 0 is not a body",
         "POST / HTTP/1.1\r\nContent-Length: 0\r\n\r\n",
         {"head POST / HTTP/1.1 keep-alive\n  content-length: 0", "end"}},
        {"three pipelined requests, paused and resumed after each",
         "GET /1 HTTP/1.1\r\n\r\nPOST /2 HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc"
         "GET /3 HTTP/1.1\r\nConnection: close\r\n\r\n",
         {"head GET /1 HTTP/1.1 keep-alive", "end",
          "head POST /2 HTTP/1.1 keep-alive body\n  content-length: 3", "body abc", "end",
          "head GET /3 HTTP/1.1 close\n  connection: close", "end"}},
        {"HTTP/1.0 is not keep-alive by default",
         "GET / HTTP/1.0\r\n\r\n",
         {"head GET / HTTP/1.0 close", "end"}},
        {"HTTP/1.0 with connection: keep-alive",
         "GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n",
         {"head GET / HTTP/1.0 keep-alive\n  connection: keep-alive", "end"}},
        {"Expect: 100-continue is detected case-insensitively",
         "POST / HTTP/1.1\r\nExpect: 100-Continue\r\nContent-Length: 3\r\n\r\nabc",
         {"head POST / HTTP/1.1 keep-alive expect-continue body\n  expect: 100-Continue\n"
          "  content-length: 3",
          "body abc", "end"}},
        {"other Expect values are not 100-continue",
         "GET / HTTP/1.1\r\nExpect: something-else\r\n\r\n",
         {"head GET / HTTP/1.1 keep-alive\n  expect: something-else", "end"}},
        {"absolute-form target is passed through raw",
         "GET http://example.com:8080/p%20q?x=1&y HTTP/1.1\r\nHost: example.com\r\n\r\n",
         {"head GET http://example.com:8080/p%20q?x=1&y HTTP/1.1 keep-alive\n"
          "  host: example.com",
          "end"}},
        {"upgrade request, then the connection goes on as HTTP/1.1",
         "GET /ws HTTP/1.1\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n"
         "GET /after HTTP/1.1\r\n\r\n",
         {"head GET /ws HTTP/1.1 keep-alive upgrade\n  connection: Upgrade\n"
          "  upgrade: websocket",
          "end", "head GET /after HTTP/1.1 keep-alive", "end"}},
    };
}

struct Refusal {
    const char* name;
    std::string input;
    Trace expected;  // ends with "error <status>"; nothing may follow it
};

// Small limits so that the limit cases stay readable.
ServerConfig small_limits() {
    ServerConfig c;
    c.max_head_size = 200;
    c.max_url_size = 16;
    c.max_header_count = 3;
    return c;
}

const char* const kNext = "GET /next HTTP/1.1\r\n\r\n";  // appended to show nothing follows

std::vector<Refusal> refusals() {
    return {
        {"content-length together with transfer-encoding",
         "POST / HTTP/1.1\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n"
         "0\r\n\r\n" +
             std::string(kNext),
         {"error 400"}},
        {"two different content-lengths",
         "POST / HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello" +
             std::string(kNext),
         {"error 400"}},
        {"a chunk size that is not hex",
         "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n" +
             std::string(kNext),
         {"head POST / HTTP/1.1 keep-alive body\n  transfer-encoding: chunked", "error 400"}},
        {"obs-fold continuation line",
         "GET / HTTP/1.1\r\nX-A: a\r\n  b\r\n\r\n" + std::string(kNext),
         {"error 400"}},
        {"obs-fold continuation line starting with a tab, after an empty value",
         "GET / HTTP/1.1\r\nX-A:\r\n\tb\r\n\r\n" + std::string(kNext),
         {"error 400"}},
        {"whitespace between header name and colon",
         "GET / HTTP/1.1\r\nHost : a\r\n\r\n" + std::string(kNext),
         {"error 400"}},
        {"bare CR ending the request line",
         "GET / HTTP/1.1\rHost: a\r\n\r\n" + std::string(kNext),
         {"error 400"}},
        {"bare CR inside a header value",
         "GET / HTTP/1.1\r\nX-A: a\rb\r\n\r\n" + std::string(kNext),
         {"error 400"}},
        {"an unknown method", "FOO / HTTP/1.1\r\n\r\n" + std::string(kNext), {"error 400"}},
        {"a lowercase method", "get / HTTP/1.1\r\n\r\n" + std::string(kNext), {"error 400"}},
        {"HTTP/2.0 in an HTTP/1 request line",
         "GET / HTTP/2.0\r\n\r\n" + std::string(kNext),
         {"error 505"}},
        {"a head over max_head_size",
         "GET / HTTP/1.1\r\nX-Big: " + std::string(300, 'b') + "\r\n\r\n" + std::string(kNext),
         {"error 431"}},
        {"more headers than max_header_count",
         "GET / HTTP/1.1\r\nA: 1\r\nB: 2\r\nC: 3\r\nD: 4\r\n\r\n" + std::string(kNext),
         {"error 431"}},
        {"a target one byte over max_url_size",
         "GET /" + std::string(16, 'u') + " HTTP/1.1\r\n\r\n" + std::string(kNext),
         {"error 414"}},
        {"an error in the second pipelined request",
         "GET /1 HTTP/1.1\r\n\r\nGET /2 HTTP/1.1\r\nBad Header\r\n\r\n" + std::string(kNext),
         {"head GET /1 HTTP/1.1 keep-alive", "end", "error 400"}},
    };
}

}  // namespace

TEST_CASE("HttpParser: golden traces are the same at every split point", "[http_parser]") {
    auto golden = GENERATE(from_range(goldens()));
    auto split = GENERATE_COPY(range<std::size_t>(0, golden.input.size() + 1));
    CAPTURE(golden.name, split);
    REQUIRE(trace_of(golden.input, split, ServerConfig{}) == golden.expected);
}

TEST_CASE("HttpParser: malformed requests are refused and nothing after them is reported",
          "[http_parser]") {
    auto refusal = GENERATE(from_range(refusals()));
    auto split = GENERATE_COPY(range<std::size_t>(0, refusal.input.size() + 1));
    CAPTURE(refusal.name, split);
    REQUIRE(trace_of(refusal.input, split, small_limits()) == refusal.expected);
}

TEST_CASE("HttpParser: limits are inclusive", "[http_parser]") {
    const ServerConfig config = small_limits();
    SECTION("a target of exactly max_url_size bytes is accepted") {
        std::string target = "/" + std::string(15, 'u');
        REQUIRE(trace_of("GET " + target + " HTTP/1.1\r\n\r\n", 0, config) ==
                Trace{"head GET " + target + " HTTP/1.1 keep-alive", "end"});
    }
    SECTION("exactly max_header_count headers are accepted") {
        REQUIRE(trace_of("GET / HTTP/1.1\r\nA: 1\r\nB: 2\r\nC: 3\r\n\r\n", 0, config) ==
                Trace{"head GET / HTTP/1.1 keep-alive\n  a: 1\n  b: 2\n  c: 3", "end"});
    }
}

TEST_CASE("HttpParser: the error detail says what was wrong", "[http_parser]") {
    const ServerConfig config = small_limits();
    TraceSink sink;
    HttpParser parser{sink, config};
    auto [input, status, detail] = GENERATE(table<std::string, int, std::string>({
        {"GET /" + std::string(40, 'u') + " HTTP/1.1\r\n\r\n", 414, "request target too long"},
        {"GET / HTTP/1.1\r\nX: " + std::string(300, 'x') + "\r\n\r\n", 431,
         "request head too large"},
        {"GET / HTTP/1.1\r\nA: 1\r\nB: 2\r\nC: 3\r\nD: 4\r\n\r\n", 431, "too many headers"},
        {"GET / HTTP/2.0\r\n\r\n", 505, "HTTP version not supported"},
        {"GET / HTTP/1.1\r\nHost : a\r\n\r\n", 400, "invalid header name"},
        {"GET / HTTP/1.1\r\nX: a\r\n\tb\r\n\r\n", 400, "obsolete line folding in header value"},
    }));
    CAPTURE(input);
    ParseResult r = parser.execute(input);
    REQUIRE(r.kind == ParseResult::Kind::kError);
    CHECK(r.status == status);
    CHECK(r.detail == detail);
    CHECK(sink.trace.empty());
}

TEST_CASE("HttpParser: a paused parser stops exactly at the end of the message", "[http_parser]") {
    TraceSink sink;
    const ServerConfig config;
    HttpParser parser{sink, config};  // keeps a reference to the config
    const std::string first = "POST /1 HTTP/1.1\r\nContent-Length: 2\r\n\r\nhi";
    const std::string second = "GET /2 HTTP/1.1\r\n\r\n";
    const std::string input = first + second;

    ParseResult r = parser.execute(input);
    REQUIRE(r.kind == ParseResult::Kind::kPaused);
    REQUIRE(r.consumed == first.size());
    REQUIRE(sink.trace.size() == 3);  // head, body, end: the second head is not reported yet
    REQUIRE_FALSE(parser.in_message());

    parser.resume();
    r = parser.execute(std::string_view(input).substr(r.consumed));
    REQUIRE(r.kind == ParseResult::Kind::kPaused);
    REQUIRE(r.consumed == second.size());
    REQUIRE(sink.trace == Trace{"head POST /1 HTTP/1.1 keep-alive body\n  content-length: 2",
                                "body hi", "end", "head GET /2 HTTP/1.1 keep-alive", "end"});
}

TEST_CASE("HttpParser: in_head and in_message follow the request", "[http_parser]") {
    TraceSink sink;
    const ServerConfig config;
    HttpParser parser{sink, config};  // keeps a reference to the config
    REQUIRE_FALSE(parser.in_message());

    REQUIRE(parser.execute("POST / HTTP/1.1\r\nContent-Le").kind == ParseResult::Kind::kNeedMore);
    CHECK(parser.in_message());
    CHECK(parser.in_head());

    REQUIRE(parser.execute("ngth: 4\r\n\r\nab").kind == ParseResult::Kind::kNeedMore);
    CHECK(parser.in_message());
    CHECK_FALSE(parser.in_head());

    REQUIRE(parser.execute("cd").kind == ParseResult::Kind::kPaused);
    CHECK_FALSE(parser.in_message());
    CHECK_FALSE(parser.in_head());
}

TEST_CASE("HttpParser: head buffers parked between requests are reused by any parser", "[parser]") {
    // An idle keep-alive connection parks its head buffers in a per-thread pool; the next
    // message (on this connection or another) takes a set back. Heads must come out whole
    // whichever set a parser gets, including one grown by a large head before.
    ServerConfig config;
    TraceSink sink_a, sink_b;
    HttpParser a{sink_a, config}, b{sink_b, config};
    auto parse = [](HttpParser& p, std::string input) {
        ParseResult r = p.execute(input);
        REQUIRE(r.kind == ParseResult::Kind::kPaused);
        REQUIRE(r.consumed == input.size());
        std::fill(input.begin(), input.end(), '#');
        p.resume();
    };
    const std::string big(12000, 'v');
    parse(a, "GET /big HTTP/1.1\r\nHost: a\r\nX-Big: " + big + "\r\n\r\n");
    a.park_buffers();
    a.park_buffers();  // twice: harmless
    parse(b, "POST /b HTTP/1.1\r\nHost: b\r\nContent-Length: 2\r\n\r\nhi");
    b.park_buffers();
    parse(a, "GET /a2 HTTP/1.1\r\nHost: a2\r\n\r\n");
    parse(b, "GET /b2 HTTP/1.1\r\nHost: b2\r\nX-One: 1\r\n\r\n");
    CHECK(sink_a.trace == Trace{"head GET /big HTTP/1.1 keep-alive\n  host: a\n  x-big: " + big,
                                "end", "head GET /a2 HTTP/1.1 keep-alive\n  host: a2", "end"});
    CHECK(sink_b.trace ==
          Trace{"head POST /b HTTP/1.1 keep-alive body\n  host: b\n  content-length: 2", "body hi",
                "end", "head GET /b2 HTTP/1.1 keep-alive\n  host: b2\n  x-one: 1", "end"});
}
