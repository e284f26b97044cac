// SPDX-License-Identifier: BSD-3-Clause
// HttpParser hardening found while fuzzing (tests/fuzz): llhttp answers a parser in error with
// the old error position, which points into the previous buffer, so execute() must not turn
// that into a `consumed` count; and a Transfer-Encoding that does not end in chunked is refused
// before anyone sees the head, also on upgrade and CONNECT requests, where llhttp would
// otherwise parse the body as the next request.
#include "core/config.hpp"
#include "core/http_parser.hpp"

#include <catch2/catch.hpp>

#include <string>
#include <string_view>

namespace {

using cppuvicorn::core::HttpParser;
using cppuvicorn::core::ParseResult;
using cppuvicorn::core::ParserSink;
using cppuvicorn::core::RequestHead;
using cppuvicorn::core::ServerConfig;

class CountingSink final : public ParserSink {
  public:
    int heads = 0;
    int bodies = 0;
    int ends = 0;
    std::string targets;
    void on_head(const RequestHead& head) override {
        ++heads;
        targets.append(head.target).append(" ");
    }
    void on_body(std::string_view) override { ++bodies; }
    int on_message_end() override {
        ++ends;
        return kPause;
    }
};

// Parses `input` in two pieces, split at every offset, with a fresh parser each time, and
// hands each result (and what the sink saw) to `check`.
template <class Check>
void parse_in_every_split(std::string_view input, Check check) {
    for (std::size_t split = 1; split < input.size(); ++split) {
        CAPTURE(split);
        ServerConfig config;
        CountingSink sink;
        HttpParser parser(sink, config);
        ParseResult r = parser.execute(input.substr(0, split));
        if (r.kind == ParseResult::Kind::kNeedMore) r = parser.execute(input.substr(split));
        check(r, sink);
    }
}

}  // namespace

TEST_CASE("HttpParser: an error is sticky, consumes nothing and calls nothing afterwards",
          "[http_parser]") {
    ServerConfig config;
    CountingSink sink;
    HttpParser parser(sink, config);
    // The obs-fold is refused in the second buffer; llhttp's error position is in it.
    std::string first = "GET / HTTP/1.1\r\nHost: a\r\nX: one\r\n";
    std::string second = " two\r\n\r\n";
    REQUIRE(parser.execute(first).kind == ParseResult::Kind::kNeedMore);
    ParseResult r = parser.execute(second);
    REQUIRE(r.kind == ParseResult::Kind::kError);
    CHECK(r.status == 400);
    CHECK(r.consumed <= second.size());
    const std::string detail(r.detail);

    std::string later = "GET /next HTTP/1.1\r\nHost: a\r\n\r\n";
    for (std::string_view again :
         {std::string_view(later), std::string_view(first), std::string_view()}) {
        ParseResult r2 = parser.execute(again);
        CHECK(r2.kind == ParseResult::Kind::kError);
        CHECK(r2.status == 400);
        CHECK(r2.detail == detail);
        CHECK(r2.consumed == 0);
    }
    CHECK(sink.heads == 0);
    CHECK(sink.ends == 0);
}

TEST_CASE("HttpParser: a limit error keeps its status on later calls", "[http_parser]") {
    ServerConfig config;
    config.max_url_size = 8;
    CountingSink sink;
    HttpParser parser(sink, config);
    ParseResult r = parser.execute("GET /0123456789 HTTP/1.1\r\n\r\n");
    REQUIRE(r.kind == ParseResult::Kind::kError);
    CHECK(r.status == 414);
    ParseResult r2 = parser.execute("GET / HTTP/1.1\r\n\r\n");
    CHECK(r2.kind == ParseResult::Kind::kError);
    CHECK(r2.status == 414);
    CHECK(r2.consumed == 0);
}

TEST_CASE("HttpParser: execute() before resume() stays paused and consumes nothing",
          "[http_parser]") {
    ServerConfig config;
    CountingSink sink;
    HttpParser parser(sink, config);
    std::string two = "GET /1 HTTP/1.1\r\nHost: a\r\n\r\nGET /2 HTTP/1.1\r\nHost: a\r\n\r\n";
    ParseResult r = parser.execute(two);
    REQUIRE(r.kind == ParseResult::Kind::kPaused);
    REQUIRE(r.consumed == two.size() / 2);
    std::string_view rest = std::string_view(two).substr(r.consumed);

    ParseResult still = parser.execute(rest);
    CHECK(still.kind == ParseResult::Kind::kPaused);
    CHECK(still.consumed == 0);
    CHECK(sink.heads == 1);

    parser.resume();
    ParseResult next = parser.execute(rest);
    CHECK(next.kind == ParseResult::Kind::kPaused);
    CHECK(next.consumed == rest.size());
    CHECK(sink.heads == 2);
    CHECK(sink.ends == 2);
}

TEST_CASE("HttpParser: a Transfer-Encoding not ending in chunked is a 400 before the head",
          "[http_parser]") {
    const std::string next = "GET /smuggled HTTP/1.1\r\nHost: a\r\n\r\n";
    const char* heads[] = {
        "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\n\r\n",
        "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: identity\r\n\r\n",
        "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: \r\n\r\n",
        "POST / HTTP/1.0\r\nHost: a\r\nTransfer-Encoding: gzip\r\n\r\n",
        // llhttp alone ends these messages at the head and parses /smuggled as the next one.
        "POST / HTTP/1.1\r\nHost: a\r\nConnection: upgrade\r\nUpgrade: foo\r\n"
        "Transfer-Encoding: gzip\r\n\r\n",
        "GET /ws HTTP/1.1\r\nHost: a\r\nConnection: upgrade\r\nUpgrade: websocket\r\n"
        "Transfer-Encoding: identity\r\n\r\n",
        "CONNECT a:443 HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\n\r\n",
        "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nTransfer-Encoding: \r\n\r\n",
        // An empty field next to chunked (llhttp skips it; as Uvicorn, refused: a proxy may
        // read the empty field as "no transfer coding").
        "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: \r\nTransfer-Encoding: chunked\r\n\r\n",
        "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: \r\n\r\n",
    };
    for (const char* head : heads) {
        CAPTURE(head);
        ServerConfig config;
        CountingSink sink;
        HttpParser parser(sink, config);
        std::string input = std::string(head) + next;
        ParseResult r = parser.execute(input);
        while (r.kind == ParseResult::Kind::kPaused) {
            parser.resume();
            input.erase(0, r.consumed);
            r = parser.execute(input);
        }
        CHECK(r.kind == ParseResult::Kind::kError);
        CHECK(r.status == 400);
        CHECK(sink.heads == 0);
    }
}

TEST_CASE("HttpParser: chunked as the final transfer coding is accepted", "[http_parser]") {
    const char* heads[] = {
        "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n",
        "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: Chunked\r\n\r\n",
        "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
        "POST / HTTP/1.0\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n",
    };
    for (const char* head : heads) {
        CAPTURE(head);
        ServerConfig config;
        CountingSink sink;
        HttpParser parser(sink, config);
        std::string input = std::string(head) + "3\r\nabc\r\n0\r\n\r\n";
        ParseResult r = parser.execute(input);
        CHECK(r.kind == ParseResult::Kind::kPaused);
        CHECK(r.consumed == input.size());
        CHECK(sink.heads == 1);
        CHECK(sink.ends == 1);
    }
}

TEST_CASE("HttpParser: max_body_size: 413 from the head for a content-length, mid-body for chunks",
          "[http_parser]") {
    ServerConfig config;
    config.max_body_size = 4;
    CountingSink sink;
    HttpParser parser(sink, config);
    SECTION("content-length") {
        ParseResult r = parser.execute("POST / HTTP/1.1\r\nContent-Length: 5\r\n\r\n");
        REQUIRE(r.kind == ParseResult::Kind::kError);
        CHECK(r.status == 413);
        CHECK(sink.heads == 0);  // nobody saw the request
    }
    SECTION("chunked: the chunk that crosses the limit is not delivered") {
        REQUIRE(parser.execute("POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nabcd\r\n")
                    .kind == ParseResult::Kind::kNeedMore);
        CHECK(sink.bodies == 1);
        ParseResult r = parser.execute("1\r\ne\r\n0\r\n\r\n");
        REQUIRE(r.kind == ParseResult::Kind::kError);
        CHECK(r.status == 413);
        CHECK(sink.bodies == 1);
        CHECK(sink.ends == 0);
        CHECK(parser.execute("GET / HTTP/1.1\r\n\r\n").status == 413);  // sticky
    }
    SECTION("the count starts again with every message") {
        for (int i = 0; i < 3; ++i) {
            REQUIRE(parser
                        .execute("POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"
                                 "2\r\nab\r\n2\r\ncd\r\n0\r\n\r\n")
                        .kind == ParseResult::Kind::kPaused);
            parser.resume();
        }
        CHECK(sink.ends == 3);
    }
}

TEST_CASE("HttpParser: a bare LF anywhere in a request head is a 400, in any split",
          "[http_parser]") {
    const std::string next = "GET /smuggled HTTP/1.1\r\nHost: a\r\n\r\n";
    const char* heads[] = {
        "GET / HTTP/1.1\nHost: a\r\n\r\n",  // after the request line (llhttp 8.1 takes it)
        "GET / HTTP/1.1\n\r\n",             // ... with no header fields
        "GET / HTTP/1.1\r\nHost: a\r\n\n",  // as the blank line ending the head
        "GET / HTTP/1.1\r\nHost: a\nX: b\r\n\r\n",
        "\nGET / HTTP/1.1\r\nHost: a\r\n\r\n",  // before the request line
        // In the trailer section of a chunked body.
        "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n1\r\na\r\n0\r\n\n",
        "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\nX-T: 1\r\n\n",
        "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\nX-T: 1\nX-U: 2\r\n\r\n",
    };
    for (const char* head : heads) {
        CAPTURE(head);
        parse_in_every_split(std::string(head) + next,
                             [](const ParseResult& r, const CountingSink& sink) {
                                 CHECK(r.kind == ParseResult::Kind::kError);
                                 CHECK(r.status == 400);
                                 CHECK(sink.ends == 0);
                             });
    }
}

TEST_CASE("HttpParser: a bare CR anywhere in a request head is a 400, in any split",
          "[http_parser]") {
    // llhttp 8.1 ends the header section at CR + any byte ("\r\n\r\0" was a complete head):
    // found by fuzz_http_connection (regress-bare-cr-ends-head), where a split input reported a
    // head that the whole input did not.
    const std::string next = "GET /smuggled HTTP/1.1\r\nHost: a\r\n\r\n";
    const std::string heads[] = {
        std::string("POST /up HTTP/1.1\r\nHost: i\r\nX: y\r\n\r\0\0\0d", 39),
        "GET / HTTP/1.1\r\nHost: a\r\n\rX",
        "GET / HTTP/1.1\rHost: a\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: a\r\r\n\r\n",
        "GET / HTTP/1.1\r\nHo\rst: a\r\n\r\n",
    };
    for (const std::string& head : heads) {
        CAPTURE(head);
        parse_in_every_split(head + next, [](const ParseResult& r, const CountingSink& sink) {
            CHECK(r.kind == ParseResult::Kind::kError);
            CHECK(r.status == 400);
            CHECK(sink.heads == 0);
        });
    }
}

TEST_CASE("HttpParser: bodies are not scanned for bare LFs; CRLFs before a request are skipped",
          "[http_parser]") {
    ServerConfig config;
    CountingSink sink;
    HttpParser parser(sink, config);
    const std::string input =
        "\r\nPOST /a HTTP/1.1\r\nContent-Length: 4\r\n\r\n\n\n\r\n"
        "\r\n\r\nPOST /b HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"
        "2\r\n\n\n\r\n0\r\nX-Trailer: 1\r\n\r\n";
    std::string_view rest = input;
    for (std::size_t i = 0; i < 2; ++i) {
        ParseResult r = parser.execute(rest);
        REQUIRE(r.kind == ParseResult::Kind::kPaused);
        rest.remove_prefix(r.consumed);
        parser.resume();
    }
    CHECK(rest.empty());
    CHECK(sink.targets == "/a /b ");
}

TEST_CASE("HttpParser: a chunk extension needs a name", "[http_parser]") {
    auto [chunks, ok] = GENERATE(table<std::string, bool>({
        {"3;name=value\r\nabc\r\n0\r\n\r\n", true},
        {"3;name\r\nabc\r\n0;last\r\n\r\n", true},
        {"3;a=\"quoted; value\"\r\nabc\r\n0\r\n\r\n", true},
        {"3;=value\r\nabc\r\n0\r\n\r\n", false},
        {"3\r\nabc\r\n0;=x\r\n\r\n", false},
        {"3;\r\nabc\r\n0\r\n\r\n", false},
    }));
    CAPTURE(chunks);
    ServerConfig config;
    const std::string input = "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n" + chunks;
    // Byte by byte too: the extension name's length is counted across calls.
    for (bool bytewise : {false, true}) {
        CountingSink s2;
        HttpParser p2(s2, config);
        ParseResult r;
        if (bytewise) {
            for (char c : input) {
                r = p2.execute(std::string_view(&c, 1));
                if (r.kind != ParseResult::Kind::kNeedMore) break;
            }
        } else {
            r = p2.execute(input);
        }
        CHECK(r.kind == (ok ? ParseResult::Kind::kPaused : ParseResult::Kind::kError));
        if (!ok) CHECK(r.status == 400);
    }
}

TEST_CASE("HttpParser: a request target byte that is not printable ASCII is a 400, in any split",
          "[http_parser]") {
    // RFC 9112 §3.2: a request target is printable ASCII. llhttp passes HTAB, FF and raw UTF-8
    // through; Uvicorn (httptools' URL parser) answers 400, and so do we.
    const char* heads[] = {
        "GET /a\tb HTTP/1.1\r\nHost: a\r\n\r\n",
        "GET /a\t HTTP/1.1\r\nHost: a\r\n\r\n",
        "GET /a\x0c HTTP/1.1\r\nHost: a\r\n\r\n",
        "GET /caf\xc3\xa9 HTTP/1.1\r\nHost: a\r\n\r\n",
        "GET /a?q=\xc3\xa9 HTTP/1.1\r\nHost: a\r\n\r\n",
        "GET http://a/\x80 HTTP/1.1\r\nHost: a\r\n\r\n",
        "GET /\xff HTTP/1.0\r\n\r\n",
    };
    for (const char* head : heads) {
        CAPTURE(head);
        parse_in_every_split(head, [](const ParseResult& r, const CountingSink& sink) {
            CHECK(r.kind == ParseResult::Kind::kError);
            CHECK(r.status == 400);
            CHECK(r.detail == cppuvicorn::core::kBadTargetByte);
            CHECK(sink.heads == 0);
        });
    }
    ServerConfig config;
    CountingSink sink;
    HttpParser parser(sink, config);
    CHECK(parser.execute("GET /caf%C3%A9?q=%E2%82%AC HTTP/1.1\r\nHost: a\r\n\r\n").kind ==
          ParseResult::Kind::kPaused);
    CHECK(sink.targets == "/caf%C3%A9?q=%E2%82%AC ");
}

TEST_CASE("HttpParser: the request target's form is Uvicorn's", "[http_parser]") {
    const char* valid[] = {
        "/",
        "/a?b#c",
        "*",
        "http://x",
        "http://x/a",
        "HTTP://X:0/a",
        "ftp://x:65535/a?q",
        "http://u:p@x:80/a",
        "http://[::1]/a",
        "http://[::1]:80",
        "http://x?q",
        "http://x/a:b",
    };
    const char* invalid[] = {
        "a/b",
        "x:80",
        "http:/x",
        "http:///a",
        "http://:80/a",
        "http://x:/a",
        "http://x:8a/",
        "http://x:65536/a",
        "http://x_y/a",
        "http://[]/a",
        "http://[::1]x/",
        "http://[::1]:70000/a",
        "1http://x/a",
        "http://x:123456/",
    };
    auto parse = [](std::string_view target) {
        ServerConfig config;
        CountingSink sink;
        HttpParser parser(sink, config);
        std::string input = "GET ";
        input.append(target).append(" HTTP/1.1\r\nHost: a\r\n\r\n");
        return parser.execute(input);
    };
    for (const char* target : valid) {
        CAPTURE(target);
        CHECK(parse(target).kind == ParseResult::Kind::kPaused);
    }
    for (const char* target : invalid) {
        CAPTURE(target);
        ParseResult r = parse(target);
        CHECK(r.kind == ParseResult::Kind::kError);
        CHECK(r.status == 400);
    }
}
