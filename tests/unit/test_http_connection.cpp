// SPDX-License-Identifier: BSD-3-Clause
// HttpConnection: the connection state machine driven through a FakeTransport and a
// RecordingHandler. No sockets and no loop: end_of_turn() stands in for the server's deferred
// work and the libuv close callback.
#include "core/http_connection.hpp"

#include <catch2/catch.hpp>

#include "tests/unit/support/fake_transport.hpp"
#include "tests/unit/support/recording_handler.hpp"
#include <cstdio>
#include <fcntl.h>
#include <string>
#include <unistd.h>
#include <vector>

namespace {

using namespace cppuvicorn::core;
using cppuvicorn::test::FakeTransport;
using cppuvicorn::test::RecordingHandler;
using cppuvicorn::test::Response;
using Events = std::vector<std::string>;
using Moment = RecordingHandler::Moment;

// One connection with everything it talks to. No date header, so responses are byte-exact.
struct Rig {
    ServerConfig config = [] {
        ServerConfig c;
        c.date_header = false;
        return c;
    }();
    StatusLines lines;
    DateCache date;
    RecordingHandler app;
    ConnectionContext ctx{config, lines, date, app};
    FakeTransport wire;
    HttpConnection conn{wire, ctx, PeerAddress{"127.0.0.1", 40000, false},
                        PeerAddress{"127.0.0.1", 8000, false}};

    Rig() { wire.attach(conn); }
};

std::string ok(const std::string& body) {
    return "HTTP/1.1 200 OK\r\nserver: cppuvicorn\r\ncontent-length: " +
           std::to_string(body.size()) + "\r\n\r\n" + body;
}

// The same, from a connection that will close after it.
std::string ok_closing(const std::string& body) {
    return "HTTP/1.1 200 OK\r\nserver: cppuvicorn\r\ncontent-length: " +
           std::to_string(body.size()) + "\r\nconnection: close\r\n\r\n" + body;
}

std::string simple(const std::string& status_line, const std::string& body) {
    return status_line +
           "\r\nserver: cppuvicorn\r\ncontent-type: text/plain; charset=utf-8\r\n"
           "content-length: " +
           std::to_string(body.size()) + "\r\nconnection: close\r\n\r\n" + body;
}

const std::string kGet1 = "GET /1 HTTP/1.1\r\nHost: a\r\n\r\n";
const std::string kGet2 = "GET /2 HTTP/1.1\r\nHost: a\r\n\r\n";
const std::string kGet3 = "GET /3 HTTP/1.1\r\nHost: a\r\n\r\n";

}  // namespace

TEST_CASE("HttpConnection: a keep-alive GET is answered and the connection stays open",
          "[http_connection]") {
    Rig rig;
    rig.app.respond_at(Moment::kOnBodyComplete, Response::text("hello"));

    rig.wire.deliver("GET /x HTTP/1.1\r\nHost: a\r\n\r\n");
    REQUIRE(rig.app.events == Events{"head GET /x", "body_complete", "release"});
    // Answered while its request was read: the write waits for the end of the loop turn, so
    // the responses of every connection read in this turn leave back to back.
    CHECK(rig.wire.written().empty());
    CHECK(rig.wire.flush_scheduled());
    rig.wire.end_of_turn();
    REQUIRE(rig.wire.written() == ok("hello"));
    CHECK(rig.wire.flushes() == 1);  // the whole batch leaves in one flush
    CHECK_FALSE(rig.wire.closed());
    CHECK(rig.wire.reading());
    CHECK(rig.conn.idle());

    rig.wire.deliver("GET /y HTTP/1.1\r\nHost: a\r\n\r\n");
    REQUIRE(rig.app.events == Events{"head GET /x", "body_complete", "release", "head GET /y",
                                     "body_complete", "release"});
    rig.wire.end_of_turn();
    REQUIRE(rig.wire.written() == ok("hello") + ok("hello"));
    CHECK_FALSE(rig.wire.closed());
    REQUIRE(rig.app.heads.size() == 2);
    CHECK(rig.app.heads[1].headers ==
          std::vector<std::pair<std::string, std::string>>{{"host", "a"}});
}

TEST_CASE("HttpConnection: pipelined requests are answered in order, one at a time",
          "[http_connection]") {
    Rig rig;
    rig.wire.deliver(kGet1 + kGet2 + kGet3);
    // The second head is not reported while the first response is outstanding.
    REQUIRE(rig.app.events == Events{"head GET /1", "body_complete"});
    REQUIRE(rig.wire.written().empty());

    REQUIRE(rig.app.respond(Response::text("one")) == WriteResult::kOk);
    REQUIRE(rig.app.events == Events{"head GET /1", "body_complete", "release"});
    REQUIRE(rig.wire.resume_scheduled());
    REQUIRE(rig.conn.deadline_ms() == 0);  // more requests are waiting: not idle

    rig.wire.end_of_turn();  // process_pending: the next request
    REQUIRE(rig.wire.written() == ok("one"));
    REQUIRE(rig.app.events ==
            Events{"head GET /1", "body_complete", "release", "head GET /2", "body_complete"});

    rig.app.respond(Response::text("two"));
    rig.wire.end_of_turn();
    rig.app.respond(Response::text("three"));
    rig.wire.end_of_turn();
    REQUIRE(rig.app.events == Events{"head GET /1", "body_complete", "release", "head GET /2",
                                     "body_complete", "release", "head GET /3", "body_complete",
                                     "release"});
    REQUIRE(rig.wire.written() == ok("one") + ok("two") + ok("three"));
    CHECK_FALSE(rig.wire.resume_scheduled());
    CHECK_FALSE(rig.wire.closed());
}

TEST_CASE("HttpConnection: pipelined requests that arrive later still wait their turn",
          "[http_connection]") {
    Rig rig;
    rig.wire.deliver(kGet1);
    rig.wire.deliver(kGet2.substr(0, 10));
    rig.wire.deliver(kGet2.substr(10));
    REQUIRE(rig.app.events == Events{"head GET /1", "body_complete"});

    rig.app.respond(Response::text("one"));
    rig.wire.end_of_turn();
    REQUIRE(rig.app.events ==
            Events{"head GET /1", "body_complete", "release", "head GET /2", "body_complete"});
}

TEST_CASE("HttpConnection: pipelined requests answered synchronously leave in one flush",
          "[http_connection]") {
    Rig rig;
    rig.app.respond_at(Moment::kOnBodyComplete, Response::text("x"));
    rig.wire.deliver(kGet1 + kGet2 + kGet3);
    REQUIRE(rig.app.count("release") == 3);
    rig.wire.end_of_turn();
    REQUIRE(rig.wire.written() == ok("x") + ok("x") + ok("x"));
    CHECK(rig.wire.flushes() == 1);
    CHECK_FALSE(rig.wire.resume_scheduled());
}

TEST_CASE("HttpConnection: a request body is delivered as it arrives", "[http_connection]") {
    Rig rig;
    SECTION("content-length") {
        rig.wire.deliver("POST /u HTTP/1.1\r\nContent-Length: 11\r\n\r\nhel");
        rig.wire.deliver("lo wo");
        REQUIRE(rig.app.events == Events{"head POST /u", "body hel", "body lo wo"});
        rig.wire.deliver("rld");
        REQUIRE(rig.app.events ==
                Events{"head POST /u", "body hel", "body lo wo", "body rld", "body_complete"});
    }
    SECTION("chunked, de-chunked") {
        rig.wire.deliver("POST /u HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n");
        rig.wire.deliver("6;ext=1\r\n world\r\n0\r\n\r\n");
        REQUIRE(rig.app.events ==
                Events{"head POST /u", "body hello", "body  world", "body_complete"});
    }
    REQUIRE(rig.app.heads.at(0).has_body);
}

TEST_CASE("HttpConnection: pause_body and resume_body stop and restart reading",
          "[http_connection]") {
    Rig rig;
    rig.wire.deliver("POST / HTTP/1.1\r\nContent-Length: 10\r\n\r\n12345");
    rig.conn.pause_body();
    CHECK_FALSE(rig.wire.reading());
    rig.conn.resume_body();
    CHECK(rig.wire.reading());
}

TEST_CASE("HttpConnection: pipelined bytes over read_high_water pause reading until their turn",
          "[http_connection]") {
    Rig rig;
    rig.config.read_high_water = 40;
    rig.wire.deliver(kGet1 + kGet2 + kGet3);  // 56 bytes wait behind the first request
    CHECK_FALSE(rig.wire.reading());
    rig.app.respond(Response::text("one"));
    rig.wire.end_of_turn();
    CHECK(rig.wire.reading());  // 28 bytes left
}

TEST_CASE("HttpConnection: 100 Continue is written only when the app wants the body",
          "[http_connection]") {
    Rig rig;
    const std::string head = "POST / HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n";
    const std::string kContinue = "HTTP/1.1 100 Continue\r\n\r\n";

    SECTION("want_body sends it once, and the connection is reused") {
        rig.wire.deliver(head);
        REQUIRE(rig.wire.written().empty());
        rig.conn.want_body();
        REQUIRE(rig.wire.written() == kContinue);
        rig.conn.want_body();
        REQUIRE(rig.wire.written() == kContinue);

        rig.wire.deliver("hello");
        REQUIRE(rig.app.events == Events{"head POST /", "body hello", "body_complete"});
        rig.app.respond(Response::text("ok"));
        rig.wire.end_of_turn();
        REQUIRE(rig.wire.written() == kContinue + ok("ok"));
        CHECK_FALSE(rig.wire.closed());
    }
    SECTION("answering without reading the body: no 100; a body sent anyway is discarded") {
        rig.wire.deliver(head);
        rig.app.respond(Response::text("no"));
        rig.conn.want_body();  // too late: the final response went first
        rig.wire.end_of_turn();
        REQUIRE(rig.wire.written() == ok("no"));
        REQUIRE(rig.app.events == Events{"head POST /"});

        rig.wire.deliver("hello" + kGet2);
        REQUIRE(rig.app.events == Events{"head POST /", "release", "head GET /2", "body_complete"});
        CHECK_FALSE(rig.wire.closed());
    }
    SECTION("a client that sent the body anyway gets no 100") {
        rig.wire.deliver(head + "hello");
        rig.conn.want_body();
        REQUIRE(rig.wire.written().empty());
    }
}

TEST_CASE("HttpConnection: malformed input gets a 400 and the connection closes",
          "[http_connection]") {
    Rig rig;
    rig.wire.deliver("GARBAGE\r\n\r\n" + kGet1);
    REQUIRE(rig.app.events == Events{"error 400"});
    REQUIRE(rig.wire.written() ==
            simple("HTTP/1.1 400 Bad Request", "Invalid HTTP request received."));
    CHECK(rig.wire.close_kind() == FakeTransport::Close::kGraceful);
    CHECK(rig.conn.closed());

    rig.conn.on_data(kGet2);  // late bytes, already in flight, are ignored
    rig.wire.end_of_turn();
    REQUIRE(rig.app.events == Events{"error 400", "closed"});
}

TEST_CASE("HttpConnection: limit errors answer with their status and reason", "[http_connection]") {
    Rig rig;
    rig.config.max_header_count = 2;
    rig.config.max_url_size = 8;
    auto [input, status_line, status] = GENERATE(table<std::string, std::string, int>({
        {"GET / HTTP/1.1\r\nA: 1\r\nB: 2\r\nC: 3\r\n\r\n",
         "HTTP/1.1 431 Request Header Fields Too Large", 431},
        {"GET /0123456789 HTTP/1.1\r\n\r\n", "HTTP/1.1 414 Request-URI Too Long", 414},
        {"GET / HTTP/2.0\r\n\r\n", "HTTP/1.1 505 HTTP Version Not Supported", 505},
    }));
    rig.wire.deliver(input + kGet1);
    REQUIRE(rig.app.events == Events{"error " + std::to_string(status)});
    REQUIRE(rig.wire.written() == simple(status_line, status_line.substr(13)));
    CHECK(rig.wire.close_kind() == FakeTransport::Close::kGraceful);
}

TEST_CASE("HttpConnection: a malformed body tells the waiting handler it is disconnected",
          "[http_connection]") {
    Rig rig;
    rig.wire.deliver("POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\nzz\r\n");
    REQUIRE(rig.app.events == Events{"head POST /", "body abc", "error 400"});
    CHECK(rig.wire.close_kind() == FakeTransport::Close::kGraceful);
    rig.wire.end_of_turn();
    // The app never got the end of its body: it must hear about it, and be released once.
    REQUIRE(rig.app.events ==
            Events{"head POST /", "body abc", "error 400", "disconnect", "release", "closed"});
}

TEST_CASE("HttpConnection: the idle deadline runs only while no request is active",
          "[http_connection]") {
    Rig rig;
    rig.config.timeout_keep_alive = 5.0;
    const std::uint64_t t0 = rig.wire.clock_ms;
    // (The rig's constructor ran with the same default timeout.)
    REQUIRE(rig.conn.deadline_ms() == t0 + 5000);

    rig.wire.deliver(kGet1);
    REQUIRE(rig.conn.deadline_ms() == 0);

    SECTION("a deadline while a request is active does not close") {
        rig.conn.on_deadline();
        CHECK_FALSE(rig.wire.closed());
    }
    SECTION("after the response the deadline is set from the clock then") {
        rig.wire.clock_ms = t0 + 1234;
        rig.app.respond(Response::text("x"));
        REQUIRE(rig.conn.deadline_ms() == t0 + 1234 + 5000);
        rig.wire.end_of_turn();  // the response is out (the sweep never runs before that)
        rig.conn.on_deadline();
        CHECK(rig.wire.close_kind() == FakeTransport::Close::kNow);
        rig.wire.end_of_turn();
        REQUIRE(rig.app.events == Events{"head GET /1", "body_complete", "release", "closed"});
    }
}

TEST_CASE("HttpConnection: trim() releases an idle connection's state and nothing else",
          "[http_connection][trim]") {
    Rig rig;
    rig.app.respond_at(Moment::kOnBodyComplete, Response::text("one"));

    SECTION("before any request there is nothing to give back") {
        rig.conn.trim();
        CHECK(rig.wire.trims() == 0);
        CHECK(rig.app.events.empty());
    }
    SECTION("idle after a request: trimmed once, and the next request is served as usual") {
        rig.wire.deliver(kGet1);
        rig.wire.end_of_turn();
        REQUIRE(rig.wire.take_written() == ok("one"));
        rig.conn.trim();
        rig.conn.trim();  // already trimmed: nothing more happens
        CHECK(rig.wire.trims() == 1);
        REQUIRE(rig.app.events == Events{"head GET /1", "body_complete", "release", "idle"});
        rig.app.events.clear();
        rig.wire.deliver(kGet2);
        rig.wire.end_of_turn();
        CHECK(rig.wire.take_written() == ok("one"));
        CHECK(rig.app.events == Events{"head GET /2", "body_complete", "release"});
        CHECK(rig.conn.idle());
    }
    SECTION("not while a request head is half read: the rest still completes it") {
        rig.wire.deliver("GET /half HTTP/1.1\r\nHo");
        rig.conn.trim();
        CHECK(rig.wire.trims() == 0);
        rig.wire.deliver("st: a\r\n\r\n");
        rig.wire.end_of_turn();
        CHECK(rig.wire.take_written() == ok("one"));
        CHECK(rig.app.events == Events{"head GET /half", "body_complete", "release"});
    }
    SECTION("not while a request is being answered") {
        rig.app.respond_at(Moment::kNever, Response::text("late"));
        rig.wire.deliver(kGet1);
        rig.conn.trim();
        CHECK(rig.wire.trims() == 0);
        rig.app.respond(Response::text("late"));
        rig.wire.end_of_turn();
        CHECK(rig.wire.take_written() == ok("late"));
        rig.conn.trim();
        CHECK(rig.wire.trims() == 1);
    }
    SECTION("not while pipelined requests wait behind the one being answered") {
        rig.app.respond_at(Moment::kNever, Response::text("a"));
        rig.wire.deliver(kGet1 + kGet2);
        rig.conn.trim();
        CHECK(rig.wire.trims() == 0);
        rig.app.respond(Response::text("a"));
        rig.wire.end_of_turn();
        rig.app.respond(Response::text("b"));
        rig.wire.end_of_turn();
        CHECK(rig.wire.take_written() == ok("a") + ok("b"));
        CHECK(rig.app.events == Events{"head GET /1", "body_complete", "release", "head GET /2",
                                       "body_complete", "release"});
    }
    SECTION("a trimmed connection still times out silently when idle too long") {
        rig.config.timeout_keep_alive = 5.0;
        rig.wire.deliver(kGet1);
        rig.wire.end_of_turn();  // the response is out (the sweep never runs before that)
        rig.conn.trim();
        rig.wire.clock_ms += 5000;
        rig.conn.on_deadline();
        CHECK(rig.wire.close_kind() == FakeTransport::Close::kNow);
    }
    SECTION("a trimmed connection answers a malformed request with 400, as before") {
        rig.wire.deliver(kGet1);
        rig.wire.end_of_turn();
        rig.conn.trim();
        rig.wire.take_written();
        rig.wire.deliver("BAD\x01 / HTTP/1.1\r\n\r\n");
        CHECK(rig.wire.written().rfind("HTTP/1.1 400 Bad Request\r\n", 0) == 0);
    }
}

TEST_CASE("HttpConnection: a response completed before the body was read discards the rest",
          "[http_connection]") {
    Rig rig;
    rig.wire.deliver("POST / HTTP/1.1\r\nContent-Length: 10\r\n\r\nhello");
    REQUIRE(rig.app.respond(Response::text("early")) == WriteResult::kOk);
    REQUIRE(rig.wire.written().empty());  // flushed at the end of the turn
    rig.wire.end_of_turn();
    REQUIRE(rig.wire.written() == ok("early"));
    REQUIRE(rig.app.write("late", false) == WriteResult::kFinished);
    REQUIRE(rig.app.events == Events{"head POST /", "body hello"});  // not released yet

    rig.wire.deliver("world" + kGet2);
    REQUIRE(rig.app.events ==
            Events{"head POST /", "body hello", "release", "head GET /2", "body_complete"});
    CHECK_FALSE(rig.wire.closed());
}

TEST_CASE("HttpConnection: write_body checks the response's content-length", "[http_connection]") {
    Rig rig;
    rig.wire.deliver(kGet1);
    REQUIRE(rig.app.write("x", false) == WriteResult::kNotStarted);
    REQUIRE(rig.app.start({200, {{"content-length", "5"}}, ""}) == WriteResult::kOk);
    REQUIRE(rig.app.start({200, {{"content-length", "5"}}, ""}) == WriteResult::kAlreadyStarted);
    rig.wire.end_of_turn();
    const std::string head = rig.wire.take_written();
    REQUIRE(head == "HTTP/1.1 200 OK\r\nserver: cppuvicorn\r\ncontent-length: 5\r\n\r\n");

    SECTION("a body that fits, in pieces") {
        CHECK(rig.app.write("abc", true) == WriteResult::kOk);
        CHECK(rig.app.write("def", false) == WriteResult::kTooLong);  // 2 bytes remain
        CHECK(rig.wire.buffered() == 3);  // the refused write added nothing
        CHECK(rig.app.write("de", false) == WriteResult::kOk);
        rig.wire.end_of_turn();
        REQUIRE(rig.wire.written() == "abcde");
        REQUIRE(rig.app.events == Events{"head GET /1", "body_complete", "release"});
    }
    SECTION("too long: refused, nothing written") {
        CHECK(rig.app.write("too long", true) == WriteResult::kTooLong);
        CHECK(rig.wire.buffered() == 0);
    }
    SECTION("too short: what was given goes out, and the response stays unfinished") {
        CHECK(rig.app.write("abc", false) == WriteResult::kTooShort);
        rig.wire.end_of_turn();
        REQUIRE(rig.wire.written() == "abc");
        CHECK_FALSE(rig.app.events.back() == "release");
        rig.conn.abort();  // what the app side does next
        rig.wire.end_of_turn();
        REQUIRE(rig.app.events ==
                Events{"head GET /1", "body_complete", "disconnect", "release", "closed"});
    }
}

TEST_CASE("HttpConnection: a 204 or 304 without a length refuses a body", "[http_connection]") {
    // As Uvicorn ("Response content longer than Content-Length"): there is no body to send.
    Rig rig;
    rig.wire.deliver(kGet1);
    REQUIRE(rig.app.start({204, {}, ""}) == WriteResult::kOk);
    CHECK(rig.app.write("x", false) == WriteResult::kTooLong);
    CHECK(rig.app.write("", false) == WriteResult::kOk);
    rig.wire.end_of_turn();
    REQUIRE(rig.wire.take_written() == "HTTP/1.1 204 No Content\r\nserver: cppuvicorn\r\n\r\n");
    REQUIRE(rig.app.events == Events{"head GET /1", "body_complete", "release"});
}

TEST_CASE("HttpConnection: a 304 with a length drops the body, as HEAD does", "[http_connection]") {
    // RFC 9110 §8.6: a 304's content-length is the selected representation's; the app may send
    // that body or none. Either way nothing follows the head.
    auto body = GENERATE(std::string(), std::string("hello"));
    Rig rig;
    rig.wire.deliver(kGet1);
    REQUIRE(rig.app.start({304, {{"content-length", "5"}}, ""}) == WriteResult::kOk);
    CHECK(rig.app.write(body, false) == WriteResult::kOk);
    rig.wire.end_of_turn();
    REQUIRE(rig.wire.take_written() ==
            "HTTP/1.1 304 Not Modified\r\nserver: cppuvicorn\r\ncontent-length: 5\r\n\r\n");
    REQUIRE(rig.app.events == Events{"head GET /1", "body_complete", "release"});
}

TEST_CASE("HttpConnection: an invalid response head is refused and can be retried",
          "[http_connection]") {
    Rig rig;
    rig.wire.deliver(kGet1);
    REQUIRE(rig.app.start({200, {{"bad name", "v"}}, ""}) == WriteResult::kInvalid);
    CHECK(rig.conn.last_header_error() == HeaderError::kBadName);
    REQUIRE(rig.app.start({200, {{"x", "a\r\nb"}}, ""}) == WriteResult::kInvalid);
    CHECK(rig.conn.last_header_error() == HeaderError::kBadValue);
    CHECK_FALSE(rig.conn.response_started());
    CHECK(rig.wire.buffered() == 0);

    REQUIRE(rig.app.respond(Response::text("fine")) == WriteResult::kOk);
    rig.wire.end_of_turn();
    REQUIRE(rig.wire.written() == ok("fine"));
}

TEST_CASE("HttpConnection: a chunked response is framed and ends keep-alive cleanly",
          "[http_connection]") {
    Rig rig;
    rig.wire.deliver(kGet1);
    rig.app.start({200, {}, ""});
    rig.app.write("hello", true);
    rig.app.write("", true);  // an empty write is not the end
    rig.app.write("!", false);
    rig.wire.end_of_turn();
    REQUIRE(rig.wire.written() ==
            "HTTP/1.1 200 OK\r\nserver: cppuvicorn\r\ntransfer-encoding: chunked\r\n\r\n"
            "5\r\nhello\r\n1\r\n!\r\n0\r\n\r\n");
    CHECK_FALSE(rig.wire.closed());
}

TEST_CASE("HttpConnection: an HTTP/1.0 response without a length closes the connection",
          "[http_connection]") {
    Rig rig;
    rig.wire.deliver("GET / HTTP/1.0\r\n\r\n");
    rig.app.start({200, {}, ""});
    rig.app.write("body", false);
    REQUIRE(rig.wire.written() ==
            "HTTP/1.1 200 OK\r\nserver: cppuvicorn\r\nconnection: close\r\n\r\nbody");
    CHECK(rig.wire.close_kind() == FakeTransport::Close::kGraceful);
}

TEST_CASE("HttpConnection: an HTTP/1.0 keep-alive request is still closed after its response",
          "[http_connection]") {
    Rig rig;
    rig.app.respond_at(Moment::kOnBodyComplete, Response::text("once"));
    rig.wire.deliver("GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n");
    REQUIRE(rig.wire.written() == ok_closing("once"));
    CHECK(rig.wire.close_kind() == FakeTransport::Close::kGraceful);
}

TEST_CASE("HttpConnection: a request with connection: close gets it back and is closed after",
          "[http_connection]") {
    Rig rig;
    rig.app.respond_at(Moment::kOnBodyComplete, Response::text("bye"));
    rig.wire.deliver("GET / HTTP/1.1\r\nConnection: close\r\n\r\n" + kGet2);
    REQUIRE(rig.wire.written() == ok_closing("bye"));
    CHECK(rig.wire.close_kind() == FakeTransport::Close::kGraceful);
    rig.wire.end_of_turn();
    REQUIRE(rig.app.events == Events{"head GET /", "body_complete", "release", "closed"});
}

TEST_CASE("HttpConnection: a close lingers only while the client may still be sending",
          "[http_connection]") {
    // A close with the client's bytes unread makes the kernel send a reset, and a client still
    // writing its body then fails on write without reading the answer that came first.
    Rig rig;
    SECTION("the request is all read, nothing after it: a plain close") {
        rig.app.respond_at(Moment::kOnBodyComplete, Response::text("bye"));
        rig.wire.deliver("POST / HTTP/1.1\r\nConnection: close\r\nContent-Length: 2\r\n\r\nhi");
        REQUIRE(rig.wire.close_kind() == FakeTransport::Close::kGraceful);
        CHECK_FALSE(rig.wire.lingers());
    }
    SECTION("a request pipelined behind a closing one") {
        rig.wire.deliver("GET / HTTP/1.1\r\nConnection: close\r\n\r\n" + kGet2);
        REQUIRE(rig.app.respond(Response::text("bye")) == WriteResult::kOk);
        REQUIRE(rig.wire.close_kind() == FakeTransport::Close::kGraceful);
        CHECK(rig.wire.lingers());
    }
    SECTION("answered and closed before the body is all in") {
        Response r = Response::text("too big", 413);
        r.headers.emplace_back("connection", "close");
        rig.wire.deliver("POST / HTTP/1.1\r\nContent-Length: 100\r\n\r\nsome");
        REQUIRE(rig.app.respond(r) == WriteResult::kOk);
        REQUIRE(rig.wire.close_kind() == FakeTransport::Close::kGraceful);
        CHECK(rig.wire.lingers());
    }
    SECTION("answered and closed inside the read, before the body is all in") {
        Response r = Response::text("too big", 413);
        r.headers.emplace_back("connection", "close");
        rig.app.respond_at(Moment::kOnHead, r);
        rig.wire.deliver("POST / HTTP/1.1\r\nContent-Length: 100\r\n\r\nsome");
        REQUIRE(rig.wire.close_kind() == FakeTransport::Close::kGraceful);
        CHECK(rig.wire.lingers());
    }
    SECTION("malformed input") {
        rig.wire.deliver("GARBAGE\r\n\r\n");
        REQUIRE(rig.wire.close_kind() == FakeTransport::Close::kGraceful);
        CHECK(rig.wire.lingers());
    }
    SECTION("a body over max_body_size") {
        rig.config.max_body_size = 5;
        rig.wire.deliver("POST / HTTP/1.1\r\nContent-Length: 6\r\n\r\n");
        REQUIRE(rig.wire.close_kind() == FakeTransport::Close::kGraceful);
        CHECK(rig.wire.lingers());
    }
    SECTION("keep-alive: no close at all, the rest of the body is read and dropped") {
        rig.wire.deliver("POST / HTTP/1.1\r\nContent-Length: 10\r\n\r\nsome");
        REQUIRE(rig.app.respond(Response::text("early")) == WriteResult::kOk);
        rig.wire.deliver("thing" + std::string("!") + kGet2);
        CHECK_FALSE(rig.wire.closed());
        CHECK_FALSE(rig.wire.lingers());
        CHECK(rig.app.count("head GET /2") == 1);
    }
}

TEST_CASE("HttpConnection: a HEAD response carries no body bytes", "[http_connection]") {
    Rig rig;
    rig.wire.deliver("HEAD / HTTP/1.1\r\n\r\n");
    REQUIRE(rig.app.respond(Response::text("not sent")) == WriteResult::kOk);
    rig.wire.end_of_turn();
    REQUIRE(rig.wire.written() ==
            "HTTP/1.1 200 OK\r\nserver: cppuvicorn\r\ncontent-length: 8\r\n\r\n");
    CHECK_FALSE(rig.wire.closed());
}

TEST_CASE("HttpConnection: respond_simple from on_request answers and closes",
          "[http_connection]") {
    Rig rig;
    rig.app.refuse_with(503, "Service Unavailable");
    rig.wire.deliver(kGet1 + kGet2);
    REQUIRE(rig.wire.written() ==
            simple("HTTP/1.1 503 Service Unavailable", "Service Unavailable"));
    CHECK(rig.wire.close_kind() == FakeTransport::Close::kGraceful);
    rig.wire.end_of_turn();
    REQUIRE(rig.app.events == Events{"head GET /1", "closed"});  // no second request
}

TEST_CASE("HttpConnection: end of input during a request disconnects and releases it once",
          "[http_connection]") {
    Rig rig;
    rig.wire.deliver("POST / HTTP/1.1\r\nContent-Length: 10\r\n\r\nhello");
    rig.wire.eof();
    CHECK(rig.wire.close_kind() == FakeTransport::Close::kNow);
    rig.wire.end_of_turn();
    rig.wire.end_of_turn();
    REQUIRE(rig.app.events ==
            Events{"head POST /", "body hello", "disconnect", "release", "closed"});
    CHECK(rig.app.start({200, {}, ""}) == WriteResult::kClosed);
    CHECK(rig.app.write("x", false) == WriteResult::kClosed);
}

TEST_CASE("HttpConnection: end of input after a complete response only releases",
          "[http_connection]") {
    Rig rig;
    rig.wire.deliver("POST / HTTP/1.1\r\nContent-Length: 10\r\n\r\nhello");
    rig.app.respond(Response::text("early"));  // the rest of the body is still to come
    rig.wire.eof();
    rig.wire.end_of_turn();
    REQUIRE(rig.app.events == Events{"head POST /", "body hello", "release", "closed"});
}

TEST_CASE("HttpConnection: end of input while idle just closes", "[http_connection]") {
    Rig rig;
    rig.wire.eof();
    rig.wire.end_of_turn();
    REQUIRE(rig.app.events == Events{"closed"});
}

TEST_CASE("HttpConnection: abort sends what was written, closes and tells the handler",
          "[http_connection]") {
    Rig rig;
    rig.wire.deliver(kGet1);
    rig.app.start({200, {{"content-length", "10"}}, ""});
    rig.app.write("part", true);
    rig.conn.abort();
    CHECK(rig.wire.close_kind() == FakeTransport::Close::kGraceful);
    CHECK(rig.wire.written() ==
          "HTTP/1.1 200 OK\r\nserver: cppuvicorn\r\ncontent-length: 10\r\n\r\npart");
    CHECK(rig.app.write("more", false) == WriteResult::kClosed);
    rig.wire.end_of_turn();
    REQUIRE(rig.app.events ==
            Events{"head GET /1", "body_complete", "disconnect", "release", "closed"});
}

TEST_CASE("HttpConnection: shutdown closes an idle connection now and a busy one after",
          "[http_connection]") {
    Rig rig;
    SECTION("idle") {
        rig.conn.shutdown();
        CHECK(rig.wire.closed());
    }
    SECTION("busy: the current response completes, the next request is never read") {
        rig.wire.deliver(kGet1 + kGet2);
        rig.conn.shutdown();
        CHECK_FALSE(rig.wire.closed());
        rig.app.respond(Response::text("last"));
        REQUIRE(rig.wire.written() == ok_closing("last"));  // the client is told
        CHECK(rig.wire.close_kind() == FakeTransport::Close::kGraceful);
        rig.wire.end_of_turn();
        REQUIRE(rig.app.events == Events{"head GET /1", "body_complete", "release", "closed"});
    }
}

TEST_CASE("HttpConnection: write backpressure says kWait and on_writable follows the drain",
          "[http_connection]") {
    Rig rig;
    rig.config.write_high_water = 128;  // the head and one small chunk stay under it
    rig.wire.stalled = true;
    rig.wire.deliver(kGet1);
    REQUIRE(rig.app.start({200, {}, ""}) == WriteResult::kOk);

    REQUIRE(rig.app.write("small", true) == WriteResult::kOk);
    CHECK(rig.wire.flush_scheduled());  // under the mark: left for the end of the turn

    REQUIRE(rig.app.write(std::string(200, 'x'), true) == WriteResult::kWait);
    CHECK(rig.wire.buffered() >= 128);
    rig.wire.drain();
    REQUIRE(rig.app.events == Events{"head GET /1", "body_complete", "writable"});

    rig.wire.drain();  // no one is waiting: no second on_writable
    REQUIRE(rig.app.count("writable") == 1);

    rig.wire.stalled = false;
    REQUIRE(rig.app.write("", false) == WriteResult::kOk);
    rig.wire.end_of_turn();
    CHECK(rig.wire.written().size() > 200);
    CHECK(rig.app.events.back() == "release");
}

TEST_CASE("HttpConnection: bytes that arrive before a scheduled resume queue behind the rest",
          "[http_connection]") {
    Rig rig;
    rig.wire.deliver(kGet1 + kGet2);
    rig.app.respond(Response::text("one"));
    REQUIRE(rig.wire.resume_scheduled());
    rig.wire.deliver(kGet3);  // a read in the same turn, before process_pending runs
    REQUIRE(rig.app.events == Events{"head GET /1", "body_complete", "release"});

    rig.wire.end_of_turn();
    REQUIRE(rig.app.events.back() == "body_complete");
    REQUIRE(rig.app.heads.back().target == "/2");
    rig.app.respond(Response::text("two"));
    rig.wire.end_of_turn();
    REQUIRE(rig.app.heads.back().target == "/3");
}

TEST_CASE("HttpConnection: an upgrade request answered over HTTP/1.1 is followed by the next",
          "[http_connection]") {
    Rig rig;
    rig.wire.deliver("GET /ws HTTP/1.1\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n" +
                     kGet2);
    REQUIRE(rig.app.heads.at(0).upgrade);
    rig.app.respond(Response::text("no websockets here"));
    rig.wire.end_of_turn();
    REQUIRE(rig.app.events ==
            Events{"head GET /ws", "body_complete", "release", "head GET /2", "body_complete"});
    REQUIRE(rig.wire.written() == ok("no websockets here"));
}

// ---------------------------------------------------------------------------------------------
// Timeouts (one deadline, checked by the server's sweep) and the request body limit

namespace {

std::string timeout_408() {
    return simple("HTTP/1.1 408 Request Timeout", "Request Timeout");
}

// A rig whose timeouts are easy to tell apart: keep-alive 5 s, head 12 s, body 7 s.
struct TimeoutRig : Rig {
    TimeoutRig() {
        config.timeout_keep_alive = 5.0;
        config.timeout_request_head = 12.0;
        config.timeout_body_read = 7.0;
    }
    std::uint64_t t0 = wire.clock_ms;
    void at(std::uint64_t ms_after_t0) { wire.clock_ms = t0 + ms_after_t0; }
};

}  // namespace

TEST_CASE("HttpConnection: an idle connection is closed silently at the keep-alive deadline",
          "[http_connection][timeout]") {
    TimeoutRig rig;
    rig.wire.deliver("");  // nothing
    REQUIRE(rig.conn.deadline_ms() == rig.t0 + 5000);
    rig.conn.on_deadline();
    CHECK(rig.wire.close_kind() == FakeTransport::Close::kNow);
    CHECK(rig.wire.written().empty());
    rig.wire.end_of_turn();
    REQUIRE(rig.app.events == Events{"closed"});  // no timeout report for plain idleness
}

TEST_CASE("HttpConnection: the keep-alive deadline does not cut a response still going out",
          "[http_connection][timeout]") {
    // A slow reader: the app is done, but its response still sits in the socket's queue when
    // the keep-alive period ends. It must all arrive; the idle close comes once it has.
    TimeoutRig rig;
    rig.app.respond_at(Moment::kOnBodyComplete, Response::text("hello"));
    rig.wire.stalled = true;
    rig.wire.deliver("GET /x HTTP/1.1\r\nHost: a\r\n\r\n");
    rig.wire.end_of_turn();
    REQUIRE(rig.wire.written().empty());
    REQUIRE(rig.conn.deadline_ms() == rig.t0 + 5000);
    rig.at(5000);
    rig.conn.on_deadline();
    CHECK_FALSE(rig.wire.closed());
    REQUIRE(rig.conn.deadline_ms() == rig.t0 + 10000);
    rig.wire.drain();
    REQUIRE(rig.wire.written() == ok("hello"));
    rig.at(10000);
    rig.conn.on_deadline();
    CHECK(rig.wire.close_kind() == FakeTransport::Close::kNow);
    REQUIRE(rig.wire.written() == ok("hello"));
}

TEST_CASE("HttpConnection: a trickled request head is cut off by the head timeout with 408",
          "[http_connection][timeout]") {
    TimeoutRig rig;
    // One byte every 4 s: each pushes the keep-alive deadline back, never past the head's.
    rig.wire.deliver("G");
    REQUIRE(rig.conn.deadline_ms() == rig.t0 + 5000);
    rig.at(4000);
    rig.wire.deliver("E");
    REQUIRE(rig.conn.deadline_ms() == rig.t0 + 9000);
    rig.at(8000);
    rig.wire.deliver("T");
    REQUIRE(rig.conn.deadline_ms() == rig.t0 + 12000);
    rig.at(12000);
    rig.conn.on_deadline();
    REQUIRE(rig.wire.written() == timeout_408());
    CHECK(rig.wire.close_kind() == FakeTransport::Close::kGraceful);
    CHECK(rig.app.last_error_detail.find("request head timeout") != std::string::npos);
    rig.wire.end_of_turn();
    REQUIRE(rig.app.events == Events{"timeout 408", "closed"});  // the app never saw it
}

TEST_CASE("HttpConnection: silence in the middle of a request head is the keep-alive timeout",
          "[http_connection][timeout]") {
    TimeoutRig rig;
    const bool head_timeout = GENERATE(true, false);  // with a head timeout too, or off
    CAPTURE(head_timeout);
    if (!head_timeout) rig.config.timeout_request_head = 0;
    rig.at(1000);
    rig.wire.deliver("GET /x HTTP/1.1\r\nHo");
    REQUIRE(rig.conn.deadline_ms() == rig.t0 + 6000);
    rig.at(6000);
    rig.conn.on_deadline();
    REQUIRE(rig.wire.written() == timeout_408());
    CHECK(rig.app.last_error_detail.find("keep-alive timeout") != std::string::npos);
    rig.wire.end_of_turn();
    REQUIRE(rig.app.events == Events{"timeout 408", "closed"});
}

TEST_CASE("HttpConnection: trickled CRLFs before a request line do not escape the head timeout",
          "[http_connection][timeout]") {
    TimeoutRig rig;
    for (std::uint64_t t = 0; t < 12000; t += 1000) {
        rig.at(t);
        rig.wire.deliver("\r\n");
    }
    REQUIRE(rig.conn.deadline_ms() == rig.t0 + 12000);
    rig.at(12000);
    rig.conn.on_deadline();
    // No request line yet: nothing to answer, a silent close (reported for the debug log).
    CHECK(rig.wire.close_kind() == FakeTransport::Close::kNow);
    CHECK(rig.wire.written().empty());
    rig.wire.end_of_turn();
    REQUIRE(rig.app.events == Events{"timeout 0", "closed"});
}

TEST_CASE("HttpConnection: each request head gets its own head timeout",
          "[http_connection][timeout]") {
    TimeoutRig rig;
    rig.app.respond_at(Moment::kOnBodyComplete, Response::text("x"));
    rig.wire.deliver("GET /1 HTTP/1.1\r\nHo");
    rig.at(4000);
    rig.wire.deliver("st: a\r\n\r\n");                 // answered at once
    REQUIRE(rig.conn.deadline_ms() == rig.t0 + 9000);  // idle again: keep-alive only

    SECTION("a second head started later is measured from its own first byte") {
        rig.at(8000);
        rig.wire.deliver("GET /2 HT");
        rig.at(12000);
        rig.wire.deliver("TP/1.1\r\n");
        rig.at(16000);
        rig.wire.deliver("Host: a\r\n");
        REQUIRE(rig.conn.deadline_ms() == rig.t0 + 20000);  // 8 s + 12 s
        rig.at(19999);
        rig.wire.deliver("\r\n");
        REQUIRE(rig.app.count("release") == 2);
        CHECK_FALSE(rig.wire.closed());
    }
    SECTION("pipelined bytes start their head timer when they are parsed") {
        rig.app.respond_at(Moment::kNever);
        rig.at(5000);
        rig.wire.deliver(kGet2 + "GET /3 HTTP/1.1\r\n");  // /3 waits behind /2
        REQUIRE(rig.conn.deadline_ms() == 0);
        rig.at(30000);
        rig.app.respond(Response::text("two"));
        rig.wire.end_of_turn();                             // parses the start of /3 now
        REQUIRE(rig.conn.deadline_ms() == rig.t0 + 35000);  // keep-alive, head at 42 s
        rig.at(34000);
        rig.wire.deliver("X: 1\r\n");
        rig.at(38000);
        rig.wire.deliver("Y: 2\r\n");
        REQUIRE(rig.conn.deadline_ms() == rig.t0 + 42000);
    }
}

TEST_CASE("HttpConnection: a stalled request body is closed by the body read timeout",
          "[http_connection][timeout]") {
    TimeoutRig rig;
    rig.wire.deliver("POST /u HTTP/1.1\r\nContent-Length: 10\r\n\r\nhel");
    REQUIRE(rig.conn.deadline_ms() == rig.t0 + 7000);
    rig.at(6000);
    rig.wire.deliver("lo");  // every read pushes it back
    REQUIRE(rig.conn.deadline_ms() == rig.t0 + 13000);

    SECTION("before the response: 408, and the app hears disconnect") {
        rig.at(13000);
        rig.conn.on_deadline();
        REQUIRE(rig.wire.written() == timeout_408());
        CHECK(rig.wire.close_kind() == FakeTransport::Close::kGraceful);
        CHECK(rig.app.last_error_detail.find("body read timeout") != std::string::npos);
        rig.wire.end_of_turn();
        REQUIRE(rig.app.events == Events{"head POST /u", "body hel", "body lo", "timeout 408",
                                         "disconnect", "release", "closed"});
    }
    SECTION("after the response started: closed without a 408") {
        rig.app.start({200, {}, ""});
        rig.wire.end_of_turn();
        CHECK(rig.wire.take_written().starts_with("HTTP/1.1 200 OK\r\n"));
        rig.conn.on_deadline();
        CHECK(rig.wire.close_kind() == FakeTransport::Close::kNow);
        CHECK(rig.wire.written().empty());
        rig.wire.end_of_turn();
        REQUIRE(rig.app.events == Events{"head POST /u", "body hel", "body lo", "timeout 0",
                                         "disconnect", "release", "closed"});
    }
    SECTION("off when the timeout is 0") {
        rig.config.timeout_body_read = 0;
        rig.wire.deliver("wo");
        REQUIRE(rig.conn.deadline_ms() == 0);
    }
}

TEST_CASE("HttpConnection: the body timer waits while the client is not the one to move",
          "[http_connection][timeout]") {
    TimeoutRig rig;
    SECTION("the app holds back the body (pause_body)") {
        rig.wire.deliver("POST / HTTP/1.1\r\nContent-Length: 10\r\n\r\n12345");
        rig.conn.pause_body();
        REQUIRE(rig.conn.deadline_ms() == 0);
        rig.conn.on_deadline();  // a deadline taken before the pause is stale: ignored
        CHECK_FALSE(rig.wire.closed());
        rig.at(60000);
        rig.conn.resume_body();
        REQUIRE(rig.conn.deadline_ms() == rig.t0 + 67000);  // from the resume
    }
    SECTION("the client waits for 100 Continue") {
        rig.wire.deliver("POST / HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n");
        REQUIRE(rig.conn.deadline_ms() == 0);
        rig.conn.on_deadline();
        CHECK_FALSE(rig.wire.closed());
        rig.at(20000);
        rig.conn.want_body();
        REQUIRE(rig.conn.deadline_ms() == rig.t0 + 27000);
    }
    SECTION("the body is complete: the app is working on the response") {
        rig.wire.deliver("POST / HTTP/1.1\r\nContent-Length: 2\r\n\r\nok");
        REQUIRE(rig.conn.deadline_ms() == 0);
        rig.conn.on_deadline();
        CHECK_FALSE(rig.wire.closed());
    }
}

TEST_CASE(
    "HttpConnection: a body left unread after the response is discarded under the body "
    "timeout",
    "[http_connection][timeout]") {
    TimeoutRig rig;
    rig.wire.deliver("POST / HTTP/1.1\r\nContent-Length: 10\r\n\r\nhello");
    rig.at(1000);
    rig.app.respond(Response::text("early"));
    REQUIRE(rig.conn.deadline_ms() == rig.t0 + 8000);
    rig.wire.end_of_turn();
    REQUIRE(rig.wire.take_written() == ok("early"));
    rig.at(8000);
    rig.conn.on_deadline();
    CHECK(rig.wire.close_kind() == FakeTransport::Close::kNow);
    rig.wire.end_of_turn();
    CHECK(rig.wire.written().empty());
    // The response was complete: no disconnect for the app.
    REQUIRE(rig.app.events ==
            Events{"head POST /", "body hello", "timeout 0", "release", "closed"});
}

TEST_CASE("HttpConnection: a request body over max_body_size gets 413", "[http_connection]") {
    Rig rig;
    rig.config.max_body_size = 5;
    const std::string too_large =
        simple("HTTP/1.1 413 Request Entity Too Large", "Request Entity Too Large");
    SECTION("a content-length over the limit: answered before the app or the body") {
        rig.wire.deliver("POST / HTTP/1.1\r\nContent-Length: 6\r\n\r\n");
        REQUIRE(rig.app.events == Events{"error 413"});
        REQUIRE(rig.wire.written() == too_large);
        CHECK(rig.wire.close_kind() == FakeTransport::Close::kGraceful);
    }
    SECTION("with Expect: 100-continue: 413 instead of the 100") {
        rig.wire.deliver("POST / HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 99\r\n\r\n");
        REQUIRE(rig.app.events == Events{"error 413"});
        REQUIRE(rig.wire.written() == too_large);
    }
    SECTION("exactly the limit is accepted") {
        rig.app.respond_at(Moment::kOnBodyComplete, Response::text("ok"));
        rig.wire.deliver("POST / HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello");
        REQUIRE(rig.app.events == Events{"head POST /", "body hello", "body_complete", "release"});
        rig.wire.deliver(
            "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n"
            "2\r\nde\r\n0\r\n\r\n");
        REQUIRE(rig.app.count("release") == 2);
        CHECK_FALSE(rig.wire.closed());
    }
    SECTION("a chunked body going over mid-stream: 413, and the app hears disconnect") {
        rig.wire.deliver("POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n");
        rig.wire.deliver("3\r\ndef\r\n0\r\n\r\n" + kGet2);
        REQUIRE(rig.wire.written() == too_large);
        CHECK(rig.wire.close_kind() == FakeTransport::Close::kGraceful);
        rig.wire.end_of_turn();
        REQUIRE(rig.app.events ==
                Events{"head POST /", "body abc", "error 413", "disconnect", "release", "closed"});
    }
    SECTION("a chunked body going over after the app answered: closed, nothing more written") {
        rig.wire.deliver("POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n");
        rig.app.respond(Response::text("early"));
        rig.wire.end_of_turn();
        REQUIRE(rig.wire.take_written() == ok("early"));
        rig.wire.deliver("3\r\ndef\r\n");
        CHECK(rig.wire.written().empty());
        CHECK(rig.wire.close_kind() == FakeTransport::Close::kGraceful);
    }
}

// ---------------------------------------------------------------------------------------------
// send_file (http.response.pathsend). FakeTransport cannot sendfile, so these cover the copied
// path: 64 KiB chunks through out(), each waiting for the previous to drain.

namespace {

// An unlinked temporary file holding `content`; returns its fd.
int temp_file(const std::string& content) {
    char name[] = "/tmp/cppuvicorn-sendfile-XXXXXX";
    int fd = ::mkstemp(name);
    REQUIRE(fd >= 0);
    ::unlink(name);
    REQUIRE(::write(fd, content.data(), content.size()) == static_cast<ssize_t>(content.size()));
    return fd;
}

bool fd_open(int fd) {
    return ::fcntl(fd, F_GETFD) != -1;
}

std::string pattern(std::size_t n) {
    std::string s(n, '\0');
    for (std::size_t i = 0; i < n; ++i)
        s[i] = static_cast<char>('a' + i % 26);
    return s;
}

}  // namespace

TEST_CASE("HttpConnection: send_file copies a file through a full socket, chunk by chunk",
          "[http_connection][send_file]") {
    Rig rig;
    const std::string content = pattern(200 * 1024 + 5);
    rig.wire.deliver(kGet1);
    rig.wire.stalled = true;
    REQUIRE(rig.app.start({200, {{"content-length", std::to_string(content.size())}}, ""}) ==
            WriteResult::kOk);
    int fd = temp_file(content);
    REQUIRE(rig.conn.send_file(fd, content.size()) == WriteResult::kWait);
    CHECK(fd_open(fd));
    CHECK(rig.wire.buffered() <= 64 * 1024 + 200);  // one chunk (and the head) at a time
    int drains = 0;
    while (rig.app.count("release") == 0 && drains < 100) {
        rig.wire.drain();
        rig.wire.end_of_turn();
        ++drains;
    }
    rig.wire.stalled = false;
    rig.wire.drain();  // the last chunk was handed over (the response is complete); now sent
    rig.wire.end_of_turn();
    CHECK(drains >= 3);  // 200 KiB in 64 KiB chunks
    CHECK(rig.app.count("release") == 1);
    CHECK_FALSE(fd_open(fd));  // the connection closed the file when it was done
    std::string got = rig.wire.take_written();
    CHECK(got.size() == ok(content).size());
    REQUIRE(got == ok(content));
    // The connection carries on.
    rig.app.respond_at(Moment::kOnBodyComplete, Response::text("next"));
    rig.wire.deliver(kGet2);
    rig.wire.end_of_turn();
    CHECK(rig.wire.written() == ok("next"));
}

TEST_CASE("HttpConnection: send_file without content-length sends one chunk",
          "[http_connection][send_file]") {
    Rig rig;
    rig.wire.deliver(kGet1);
    REQUIRE(rig.app.start({200, {}, ""}) == WriteResult::kOk);
    const std::string content = pattern(70000);
    REQUIRE(rig.conn.send_file(temp_file(content), content.size()) == WriteResult::kOk);
    rig.wire.end_of_turn();
    char size[16];
    std::snprintf(size, sizeof size, "%zx", content.size());
    CHECK(rig.wire.written() ==
          "HTTP/1.1 200 OK\r\nserver: cppuvicorn\r\ntransfer-encoding: chunked\r\n\r\n" +
              std::string(size) + "\r\n" + content + "\r\n0\r\n\r\n");
    CHECK(rig.app.count("release") == 1);
}

TEST_CASE("HttpConnection: send_file checks content-length and always closes the file",
          "[http_connection][send_file]") {
    Rig rig;
    rig.wire.deliver(kGet1);
    REQUIRE(rig.app.start({200, {{"content-length", "10"}}, ""}) == WriteResult::kOk);
    int shorter = temp_file("123456789");
    CHECK(rig.conn.send_file(shorter, 9) == WriteResult::kTooShort);
    CHECK_FALSE(fd_open(shorter));
    int longer = temp_file("12345678901");
    CHECK(rig.conn.send_file(longer, 11) == WriteResult::kTooLong);
    CHECK_FALSE(fd_open(longer));
    int exact = temp_file("1234567890");
    CHECK(rig.conn.send_file(exact, 10) == WriteResult::kOk);
    CHECK_FALSE(fd_open(exact));
    int late = temp_file("x");  // the response is over (and the request released)
    CHECK(rig.conn.send_file(late, 1) == WriteResult::kNotStarted);
    CHECK_FALSE(fd_open(late));
    rig.wire.end_of_turn();
    CHECK(rig.wire.written() == ok("1234567890"));
}

TEST_CASE("HttpConnection: a file cut short by the client is closed; one that shrank aborts",
          "[http_connection][send_file]") {
    SECTION("the client goes away mid-file") {
        Rig rig;
        rig.wire.deliver(kGet1);
        rig.wire.stalled = true;
        const std::string content = pattern(300 * 1024);
        REQUIRE(rig.app.start({200, {{"content-length", std::to_string(content.size())}}, ""}) ==
                WriteResult::kOk);
        int fd = temp_file(content);
        REQUIRE(rig.conn.send_file(fd, content.size()) == WriteResult::kWait);
        rig.wire.close(true);
        rig.wire.end_of_turn();  // the close callback
        CHECK_FALSE(fd_open(fd));
        CHECK(rig.app.count("disconnect") == 1);
        CHECK(rig.app.count("release") == 1);
    }
    SECTION("the file is shorter than announced when it is read") {
        Rig rig;
        rig.wire.deliver(kGet1);
        REQUIRE(rig.app.start({200, {{"content-length", "100"}}, ""}) == WriteResult::kOk);
        int fd = temp_file(std::string(40, 'z'));
        rig.conn.send_file(fd, 100);  // the size the app saw before the file shrank
        rig.wire.end_of_turn();
        CHECK(rig.wire.closed());  // a promised body that cannot be delivered: abort
        CHECK(rig.wire.written().size() < ok(std::string(100, 'z')).size());
    }
}
