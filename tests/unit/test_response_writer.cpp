// SPDX-License-Identifier: BSD-3-Clause
// ResponseWriter: byte-exact response heads, body framing and canned responses.
#include "core/request_handler.hpp"
#include "core/response_writer.hpp"

#include <catch2/catch.hpp>

#include <string>
#include <string_view>
#include <vector>

namespace {

using namespace cppuvicorn::core;
using namespace std::string_literals;

constexpr std::string_view kDate = "date: Sun, 06 Nov 1994 08:49:37 GMT\r\n";
constexpr std::string_view kDefaults = "server: cppuvicorn\r\n";
const std::string kHeadStart = "date: Sun, 06 Nov 1994 08:49:37 GMT\r\nserver: cppuvicorn\r\n";

struct Head {
    HeaderError error;
    std::string bytes;
    ResponseState state;
};

// Writes a head after `before` (to show that nothing is appended on error).
Head write_head(int status, std::vector<Header> headers, RequestInfo req = {},
                std::string before = {}) {
    static const StatusLines lines;
    Head h{HeaderError::kNone, std::move(before), {}};
    h.error = write_response_head(h.bytes, lines, status, headers, req, kDate, kDefaults, h.state);
    return h;
}

RequestInfo http10() {
    RequestInfo r;
    r.http10 = true;
    r.keep_alive = false;
    return r;
}

}  // namespace

TEST_CASE("ResponseWriter: a content-length response is framed by its length",
          "[response_writer]") {
    Head h = write_head(200, {{"content-type", "text/plain"}, {"content-length", "5"}});
    REQUIRE(h.error == HeaderError::kNone);
    REQUIRE(h.bytes == "HTTP/1.1 200 OK\r\n" + kHeadStart +
                           "content-type: text/plain\r\ncontent-length: 5\r\n\r\n");
    CHECK(h.state.framing == Framing::kContentLength);
    CHECK(h.state.remaining == 5);
    CHECK(h.state.keep_alive);
}

TEST_CASE("ResponseWriter: whitespace around a content-length is not part of it",
          "[response_writer]") {
    // RFC 9110 §5.5: a field value's leading and trailing OWS is not part of it; Uvicorn's
    // int(value) reads " 5 " as 5 too. The value goes out as the app gave it.
    auto value = GENERATE(" 5"s, "5 "s, " 5 "s, "\t5\t"s, "  5"s);
    CAPTURE(value);
    Head h = write_head(200, {{"content-length", value}});
    REQUIRE(h.error == HeaderError::kNone);
    CHECK(h.bytes == "HTTP/1.1 200 OK\r\n" + kHeadStart + "content-length: " + value + "\r\n\r\n");
    CHECK(h.state.framing == Framing::kContentLength);
    CHECK(h.state.remaining == 5);
}

TEST_CASE("ResponseWriter: lengths that agree are one length", "[response_writer]") {
    Head h = write_head(200, {{"content-length", "5"}, {"Content-Length", " 5"}});
    REQUIRE(h.error == HeaderError::kNone);
    CHECK(h.state.framing == Framing::kContentLength);
    CHECK(h.state.remaining == 5);
}

TEST_CASE("ResponseWriter: an HTTP/1.1 response without a length is chunked", "[response_writer]") {
    SECTION("transfer-encoding is added after the app's headers") {
        Head h = write_head(200, {{"content-type", "text/plain"}});
        REQUIRE(h.bytes == "HTTP/1.1 200 OK\r\n" + kHeadStart +
                               "content-type: text/plain\r\ntransfer-encoding: chunked\r\n\r\n");
        CHECK(h.state.framing == Framing::kChunked);
        CHECK(h.state.keep_alive);
    }
    SECTION("the app's own transfer-encoding: chunked is not repeated") {
        Head h = write_head(200, {{"Transfer-Encoding", "Chunked"}});
        REQUIRE(h.bytes ==
                "HTTP/1.1 200 OK\r\n" + kHeadStart + "transfer-encoding: Chunked\r\n\r\n");
        CHECK(h.state.framing == Framing::kChunked);
    }
}

TEST_CASE("ResponseWriter: an HTTP/1.0 response without a length ends with the connection",
          "[response_writer]") {
    Head h = write_head(200, {{"content-type", "text/plain"}}, http10());
    REQUIRE(h.bytes == "HTTP/1.1 200 OK\r\n" + kHeadStart +
                           "content-type: text/plain\r\nconnection: close\r\n\r\n");
    CHECK(h.state.framing == Framing::kUntilClose);
    CHECK_FALSE(h.state.keep_alive);
}

TEST_CASE("ResponseWriter: an HTTP/1.0 response with a length is framed by it",
          "[response_writer]") {
    Head h = write_head(200, {{"content-length", "2"}}, http10());
    REQUIRE(h.bytes ==
            "HTTP/1.1 200 OK\r\n" + kHeadStart + "content-length: 2\r\nconnection: close\r\n\r\n");
    CHECK(h.state.framing == Framing::kContentLength);
    CHECK_FALSE(h.state.keep_alive);
}

TEST_CASE("ResponseWriter: HEAD, 204 and 304 responses have no body framing", "[response_writer]") {
    SECTION("HEAD keeps the app's content-length but expects no body") {
        RequestInfo req;
        req.head_method = true;
        Head h = write_head(200, {{"content-length", "1234"}}, req);
        REQUIRE(h.bytes == "HTTP/1.1 200 OK\r\n" + kHeadStart + "content-length: 1234\r\n\r\n");
        CHECK(h.state.framing == Framing::kNoBody);
        CHECK(h.state.keep_alive);
    }
    SECTION("HEAD without a length gets no transfer-encoding") {
        RequestInfo req;
        req.head_method = true;
        Head h = write_head(200, {}, req);
        REQUIRE(h.bytes == "HTTP/1.1 200 OK\r\n" + kHeadStart + "\r\n");
        CHECK(h.state.framing == Framing::kNoBody);
        CHECK_FALSE(h.state.body_refused);  // a HEAD handler may send the GET body
    }
    SECTION("statuses that never carry a body") {
        auto [status, line] = GENERATE(table<int, std::string>({
            {204, "HTTP/1.1 204 No Content\r\n"},
            {304, "HTTP/1.1 304 Not Modified\r\n"},
        }));
        Head h = write_head(status, {{"etag", "\"x\""}});
        REQUIRE(h.bytes == line + kHeadStart + "etag: \"x\"\r\n\r\n");
        CHECK(h.state.framing == Framing::kNoBody);
        CHECK(h.state.keep_alive);
        CHECK(h.state.body_refused);  // no length: a body from the app is its error
    }
    SECTION("with a length or chunked, a 204 or 304 body is dropped, not refused") {
        auto status = GENERATE(204, 304);
        CHECK_FALSE(write_head(status, {{"content-length", "5"}}).state.body_refused);
        CHECK_FALSE(write_head(status, {{"transfer-encoding", "chunked"}}).state.body_refused);
    }
}

TEST_CASE("ResponseWriter: a connection that will not be kept alive says connection: close",
          "[response_writer]") {
    RequestInfo closing;
    closing.keep_alive = false;
    SECTION("appended after the app's headers and before transfer-encoding") {
        Head h = write_head(200, {{"x-a", "1"}}, closing);
        REQUIRE(h.bytes == "HTTP/1.1 200 OK\r\n" + kHeadStart +
                               "x-a: 1\r\nconnection: close\r\ntransfer-encoding: chunked\r\n\r\n");
        CHECK_FALSE(h.state.keep_alive);
    }
    SECTION("not repeated when the app already said it") {
        Head h = write_head(200, {{"Connection", "Close"}, {"content-length", "0"}}, closing);
        REQUIRE(h.bytes == "HTTP/1.1 200 OK\r\n" + kHeadStart +
                               "connection: Close\r\ncontent-length: 0\r\n\r\n");
        CHECK_FALSE(h.state.keep_alive);
    }
    SECTION("not added to a keep-alive response") {
        Head h = write_head(200, {{"content-length", "0"}});
        REQUIRE(h.bytes == "HTTP/1.1 200 OK\r\n" + kHeadStart + "content-length: 0\r\n\r\n");
        CHECK(h.state.keep_alive);
    }
}

TEST_CASE("ResponseWriter: the app's connection: close ends keep-alive", "[response_writer]") {
    auto value = GENERATE("close"s, "Close"s, "keep-alive, close"s, "upgrade ,\tCLOSE "s);
    CAPTURE(value);
    Head h = write_head(200, {{"connection", value}, {"content-length", "0"}});
    REQUIRE(h.bytes == "HTTP/1.1 200 OK\r\n" + kHeadStart + "connection: " + value +
                           "\r\ncontent-length: 0\r\n\r\n");
    CHECK_FALSE(h.state.keep_alive);
}

TEST_CASE("ResponseWriter: a connection header without the close token keeps the connection",
          "[response_writer]") {
    auto value = GENERATE("keep-alive"s, "closed"s, "upgrade"s);
    CAPTURE(value);
    Head h = write_head(200, {{"connection", value}, {"content-length", "0"}});
    CHECK(h.state.keep_alive);
}

TEST_CASE("ResponseWriter: header names are lowercased and values kept as given",
          "[response_writer]") {
    Head h = write_head(201, {{"X-Custom-HEADER", "Mixed Case\tValue"}, {"Content-Length", "0"}});
    REQUIRE(h.bytes == "HTTP/1.1 201 Created\r\n" + kHeadStart +
                           "x-custom-header: Mixed Case\tValue\r\ncontent-length: 0\r\n\r\n");
}

TEST_CASE("ResponseWriter: without date and default headers the head is only the app's",
          "[response_writer]") {
    const StatusLines lines;
    std::string out;
    ResponseState state;
    std::vector<Header> headers{{"content-length", "0"}};
    REQUIRE(write_response_head(out, lines, 404, headers, {}, "", "", state) == HeaderError::kNone);
    REQUIRE(out == "HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n");
}

TEST_CASE("ResponseWriter: invalid heads are rejected and nothing is appended",
          "[response_writer]") {
    const std::string before = "previous response bytes";
    SECTION("bad header names") {
        auto name = GENERATE(""s, "with space"s, "colon:"s, "tab\t"s, "paren("s, "quote\""s,
                             "ctl\x01"s, "del\x7f"s, "cr\r"s);
        CAPTURE(name);
        Head h = write_head(200, {{"ok", "1"}, {name, "v"}}, {}, before);
        CHECK(h.error == HeaderError::kBadName);
        CHECK(h.bytes == before);
    }
    SECTION("bad header values") {
        auto value = GENERATE("a\r\nset-cookie: x"s, "lf\n"s, "cr\r"s, "nul\0x"s, "del\x7f"s);
        CAPTURE(value);
        Head h = write_head(200, {{"x", value}}, {}, before);
        CHECK(h.error == HeaderError::kBadValue);
        CHECK(h.bytes == before);
    }
    SECTION("a content-length that is not a number") {
        auto value = GENERATE(""s, " "s, "abc"s, "-1"s, "+5"s, "5_0"s, "5 5"s, "0x10"s);
        CAPTURE(value);
        Head h = write_head(200, {{"x-first", "1"}, {"content-length", value}}, {}, before);
        CHECK(h.error == HeaderError::kBadValue);
        CHECK(h.bytes == before);
    }
    SECTION("two lengths that disagree") {
        auto second = GENERATE("6"s, "-1"s, "abc"s, ""s);
        CAPTURE(second);
        Head h = write_head(200, {{"content-length", "5"}, {"content-length", second}}, {}, before);
        CHECK(h.error == HeaderError::kBadValue);
        CHECK(h.bytes == before);
    }
    SECTION("a status outside 200..599: 1xx are interim, never the answer") {
        auto status = GENERATE(0, 99, 100, 101, 103, 199, 600, 1000, -200);
        CAPTURE(status);
        Head h = write_head(status, {}, {}, before);
        CHECK(h.error == HeaderError::kBadStatus);
        CHECK(h.bytes == before);
    }
}

TEST_CASE("ResponseWriter: every byte is judged as Uvicorn's header patterns judge it",
          "[response_writer]") {
    // HEADER_RE: a token (no CTL, space, DEL or separator); HEADER_VALUE_RE: no CTL but HTAB.
    const std::string_view separators = "()<>@,;:[]={}\\\"";
    for (int b = 0; b < 256; ++b) {
        const char c = static_cast<char>(b);
        CAPTURE(b);
        const bool name_ok = b > 0x20 && b != 0x7f && separators.find(c) == std::string_view::npos;
        Head named = write_head(200, {{"x-"s + c + "Y", "v"}, {"content-length", "0"}});
        CHECK((named.error == HeaderError::kNone) == name_ok);
        if (name_ok) {
            // Names go out lower-cased (ASCII letters only), values as given.
            const char lower = b >= 'A' && b <= 'Z' ? static_cast<char>(b + 32) : c;
            CHECK(named.bytes.find("\r\nx-"s + lower + "y: v\r\n") != std::string::npos);
        }
        const bool value_ok = (b >= 0x20 && b != 0x7f) || b == '\t';
        Head valued = write_head(200, {{"X-Value", "a"s + c + "B"}, {"content-length", "0"}});
        CHECK((valued.error == HeaderError::kNone) == value_ok);
        if (value_ok)
            CHECK(valued.bytes.find("\r\nx-value: a"s + c + "B\r\n") != std::string::npos);
    }
}

TEST_CASE("ResponseWriter: framing headers are recognised in any case", "[response_writer]") {
    Head length = write_head(200, {{"Content-Length", "3"}});
    CHECK(length.state.framing == Framing::kContentLength);
    CHECK(length.state.remaining == 3);
    CHECK(length.bytes.find("transfer-encoding") == std::string::npos);
    Head chunked = write_head(200, {{"Transfer-Encoding", "Chunked"}});
    CHECK(chunked.state.framing == Framing::kChunked);
    CHECK(chunked.bytes.find("transfer-encoding: Chunked\r\n\r\n") != std::string::npos);
    Head close = write_head(200, {{"CONNECTION", "keep-alive, Close"}, {"content-length", "0"}});
    CHECK_FALSE(close.state.keep_alive);
    CHECK(close.bytes.find("connection: close") == std::string::npos);  // the app's, not a second
}

TEST_CASE("ResponseWriter: headers are checked in order, each length where it stands",
          "[response_writer]") {
    // As Uvicorn: each header's name, then its value, then (a content-length) its number.
    Head name = write_head(200, {{"bad name", "v"}, {"content-length", "x"}}, {}, "kept");
    CHECK(name.error == HeaderError::kBadName);
    CHECK(name.bytes == "kept");
    Head value = write_head(200, {{"v", "a\nb"}, {"content-length", "x"}}, {}, "kept");
    CHECK(value.error == HeaderError::kBadValue);
    Head length = write_head(200, {{"content-length", "x"}, {"bad name", "ok"}}, {}, "kept");
    CHECK(length.error == HeaderError::kBadValue);
    CHECK(length.bytes == "kept");
}

TEST_CASE("ResponseWriter: body chunks are framed per the response's framing",
          "[response_writer]") {
    ResponseState state;
    std::string out;
    SECTION("chunked: hex size, CRLF, data, CRLF; the end is a zero chunk") {
        state.framing = Framing::kChunked;
        write_body_chunk(out, state, "hello");
        write_body_chunk(out, state, std::string(300, 'x'));
        write_body_end(out, state);
        REQUIRE(out == "5\r\nhello\r\n12c\r\n" + std::string(300, 'x') + "\r\n0\r\n\r\n");
    }
    SECTION("chunked: an empty write is not a zero chunk") {
        state.framing = Framing::kChunked;
        write_body_chunk(out, state, "");
        REQUIRE(out.empty());
    }
    SECTION("content-length and until-close: raw bytes, no end marker") {
        state.framing = GENERATE(Framing::kContentLength, Framing::kUntilClose);
        write_body_chunk(out, state, "hello");
        write_body_chunk(out, state, " world");
        write_body_end(out, state);
        REQUIRE(out == "hello world");
    }
    SECTION("no body: whatever the app sends is dropped") {
        state.framing = Framing::kNoBody;
        write_body_chunk(out, state, "hello");
        write_body_end(out, state);
        REQUIRE(out.empty());
    }
}

TEST_CASE("ResponseWriter: a simple response is complete and closes the connection",
          "[response_writer]") {
    const StatusLines lines;
    std::string out = "earlier";
    write_simple_response(out, lines, 400, kDate, kDefaults, "Invalid HTTP request received.");
    REQUIRE(out == "earlierHTTP/1.1 400 Bad Request\r\n" + kHeadStart +
                       "content-type: text/plain; charset=utf-8\r\ncontent-length: 30\r\n"
                       "connection: close\r\n\r\nInvalid HTTP request received.");
}

TEST_CASE("StatusLines: known statuses have Python's reason phrases", "[response_writer]") {
    const StatusLines lines;
    auto [status, line] = GENERATE(table<int, std::string_view>({
        {100, "HTTP/1.1 100 Continue\r\n"},
        {200, "HTTP/1.1 200 OK\r\n"},
        {404, "HTTP/1.1 404 Not Found\r\n"},
        {413, "HTTP/1.1 413 Request Entity Too Large\r\n"},
        {418, "HTTP/1.1 418 I'm a Teapot\r\n"},
        {431, "HTTP/1.1 431 Request Header Fields Too Large\r\n"},
        {503, "HTTP/1.1 503 Service Unavailable\r\n"},
        {505, "HTTP/1.1 505 HTTP Version Not Supported\r\n"},
    }));
    REQUIRE(lines.line(status) == line);
}

TEST_CASE("StatusLines: an unknown status has an empty reason", "[response_writer]") {
    StatusLines lines;
    CHECK(lines.line(599) == "HTTP/1.1 599 \r\n");
    CHECK(lines.line(299) == "HTTP/1.1 299 \r\n");
    SECTION("set_reason names it") {
        lines.set_reason(599, "Custom");
        CHECK(lines.line(599) == "HTTP/1.1 599 Custom\r\n");
    }
    SECTION("set_reason ignores statuses it cannot hold") {
        lines.set_reason(600, "Nope");
        lines.set_reason(99, "Nope");
        CHECK(lines.line(100) == "HTTP/1.1 100 Continue\r\n");
        CHECK(lines.line(599) == "HTTP/1.1 599 \r\n");
    }
}
