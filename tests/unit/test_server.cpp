// SPDX-License-Identifier: BSD-3-Clause
// Server and TcpConnection on a real libuv loop and loopback sockets: port 0, a client socket
// in the same thread, run_once() spun against a deadline instead of sleeps, and a teardown
// that fails if any handle is left on the loop.
#include "core/http_connection.hpp"
#include "core/server.hpp"
#include "core/tls.hpp"

#include <catch2/catch.hpp>
#include <uv.h>

#include "tests/unit/support/recording_handler.hpp"
#include "tests/unit/support/tls_support.hpp"
#include <arpa/inet.h>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <fcntl.h>
#include <functional>
#include <memory>
#include <netinet/in.h>
#include <string>
#include <string_view>
#include <sys/socket.h>
#include <unistd.h>
#include <utility>
#include <vector>

namespace {

using namespace cppuvicorn::core;
using namespace std::chrono_literals;
using cppuvicorn::test::RecordingHandler;
using cppuvicorn::test::Response;
using Events = std::vector<std::string>;
using Moment = RecordingHandler::Moment;

constexpr auto kSpinLimit = 5s;

struct CountingHooks final : LoopHooks {
    int runs_requested = 0;
    int accepts_requested = 0;
    bool accept_due = false;
    int releases_requested = 0;
    void request_run() noexcept override { ++runs_requested; }
    void request_release() noexcept override { ++releases_requested; }
    // What the bridge does there (first steps of new handlers); none by default.
    std::function<bool()> on_after_reads;
    bool after_reads() noexcept override { return on_after_reads ? on_after_reads() : false; }
    void request_accept() noexcept override {
        ++accepts_requested;
        accept_due = true;
    }
};

ServerConfig test_config() {
    ServerConfig c;
    c.date_header = false;  // byte-exact responses
    return c;
}

// A loop, a Server listening on 127.0.0.1:0, and a teardown that proves nothing leaked.
struct LoopRig {
    uv_loop_t loop{};
    CountingHooks hooks;
    RecordingHandler app;
    std::unique_ptr<Server> server;
    PeerAddress bound;

    explicit LoopRig(ServerConfig config = test_config()) {
        REQUIRE(uv_loop_init(&loop) == 0);
        server = std::make_unique<Server>(&loop, std::move(config), app, hooks);
        REQUIRE(server->listen_tcp("127.0.0.1", 0, 16, &bound) == 0);
        REQUIRE(bound.port > 0);
    }

    ~LoopRig() {
        server->stop_listening();
        server->close_all();
        // Lingering connections are out of connection_count() but still the server's until
        // their close callbacks have run.
        CHECK(spin_until(
            [&] { return server->connection_count() == 0 && server->lingering_count() == 0; }));
        server.reset();
        for (int i = 0; i < 1000 && uv_loop_alive(&loop) != 0; ++i)
            uv_run(&loop, UV_RUN_NOWAIT);
        int rc = uv_loop_close(&loop);
        if (rc != 0) uv_print_all_handles(&loop, stderr);
        CHECK(rc == 0);
    }

    // One loop turn, as the bridge runs them: an accept turn when the server asked for one.
    void turn() {
        if (std::exchange(hooks.accept_due, false)) {
            server->accept_turn();
        } else {
            server->run_once();
        }
    }

    // Runs the server until `done()` or the time limit; false on timeout.
    template <class Pred>
    bool spin_until(Pred done) {
        const auto deadline = std::chrono::steady_clock::now() + kSpinLimit;
        while (!done()) {
            if (std::chrono::steady_clock::now() > deadline) return false;
            turn();
        }
        return true;
    }
};

// A blocking connect (the kernel completes it from the listen backlog), then non-blocking I/O
// so the test thread can keep running the loop.
class Client {
  public:
    explicit Client(int port) {
        fd_ = ::socket(AF_INET, SOCK_STREAM, 0);
        REQUIRE(fd_ >= 0);
        sockaddr_in addr{};
        addr.sin_family = AF_INET;
        addr.sin_port = htons(static_cast<std::uint16_t>(port));
        addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        int rc = ::connect(fd_, reinterpret_cast<sockaddr*>(&addr), sizeof addr);
        connect_errno = rc == 0 ? 0 : errno;
        ::fcntl(fd_, F_SETFL, ::fcntl(fd_, F_GETFL) | O_NONBLOCK);
    }
    ~Client() { close(); }
    Client(const Client&) = delete;
    Client& operator=(const Client&) = delete;

    void send(std::string_view bytes) {
        while (!bytes.empty()) {
            ssize_t n = ::send(fd_, bytes.data(), bytes.size(), MSG_NOSIGNAL);
            REQUIRE(n > 0);
            bytes.remove_prefix(static_cast<std::size_t>(n));
        }
    }
    // Reads whatever is there; remembers end of stream (or a reset) as eof.
    void pump() {
        char buf[4096];
        while (!eof) {
            ssize_t n = ::recv(fd_, buf, sizeof buf, 0);
            if (n > 0) {
                received.append(buf, static_cast<std::size_t>(n));
            } else if (n == 0 || (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)) {
                eof = true;
            } else {
                break;
            }
        }
    }
    void close() {
        if (fd_ >= 0) ::close(fd_);
        fd_ = -1;
    }

    int connect_errno = 0;
    std::string received;
    bool eof = false;

  private:
    int fd_ = -1;
};

std::string ok(const std::string& body) {
    return "HTTP/1.1 200 OK\r\nserver: cppuvicorn\r\ncontent-length: " +
           std::to_string(body.size()) + "\r\n\r\n" + body;
}

const std::string kGet1 = "GET /1 HTTP/1.1\r\nHost: a\r\n\r\n";
const std::string kGet2 = "GET /2 HTTP/1.1\r\nHost: a\r\n\r\n";

}  // namespace

TEST_CASE("Server: a loopback request is answered and keep-alive carries a second one",
          "[server]") {
    LoopRig rig;
    rig.app.respond_at(Moment::kOnBodyComplete, Response::text("hello"));
    Client client{rig.bound.port};
    REQUIRE(client.connect_errno == 0);
    REQUIRE(rig.spin_until([&] { return rig.server->connection_count() == 1; }));

    client.send(kGet1);
    REQUIRE(rig.spin_until([&] {
        client.pump();
        return client.received.size() >= ok("hello").size();
    }));
    REQUIRE(client.received == ok("hello"));
    REQUIRE(rig.app.conn != nullptr);
    CHECK(rig.app.conn->peer().host == "127.0.0.1");
    CHECK(rig.app.conn->local().port == rig.bound.port);

    client.send(kGet2);
    REQUIRE(rig.spin_until([&] {
        client.pump();
        return client.received.size() >= 2 * ok("hello").size();
    }));
    REQUIRE(client.received == ok("hello") + ok("hello"));
    CHECK_FALSE(client.eof);
    CHECK(rig.server->connection_count() == 1);
    REQUIRE(rig.app.events == Events{"head GET /1", "body_complete", "release", "head GET /2",
                                     "body_complete", "release"});
}

TEST_CASE("Server: pipelined requests are resumed by the server's deferred work", "[server]") {
    LoopRig rig;
    Client client{rig.bound.port};
    client.send(kGet1 + kGet2);
    REQUIRE(rig.spin_until([&] { return rig.app.count("body_complete") == 1; }));

    const int runs_before = rig.hooks.runs_requested;
    REQUIRE(rig.app.respond(Response::text("one")) == WriteResult::kOk);
    // Written outside run_once: the loop owner is asked for a run.
    CHECK(rig.hooks.runs_requested > runs_before);

    REQUIRE(rig.spin_until([&] { return rig.app.count("body_complete") == 2; }));
    REQUIRE(rig.app.respond(Response::text("two")) == WriteResult::kOk);
    REQUIRE(rig.spin_until([&] {
        client.pump();
        return client.received.size() >= ok("one").size() + ok("two").size();
    }));
    REQUIRE(client.received == ok("one") + ok("two"));
}

TEST_CASE("Server: a pipelined response is held until the next request's handler has run once",
          "[server]") {
    LoopRig rig;
    Client client{rig.bound.port};
    client.send(kGet1 + kGet2 + "GET /3 HTTP/1.1\r\nHost: a\r\n\r\n");
    REQUIRE(rig.spin_until([&] { return rig.app.count("body_complete") == 1; }));

    // Answering /1 resumes the pipeline: /2 starts, and "one" waits for /2's first step.
    const int releases_before = rig.hooks.releases_requested;
    REQUIRE(rig.app.respond(Response::text("one")) == WriteResult::kOk);
    REQUIRE(rig.spin_until([&] { return rig.app.count("body_complete") == 2; }));
    CHECK(rig.hooks.releases_requested == releases_before + 1);
    for (int i = 0; i < 20; ++i) {
        rig.turn();
        client.pump();
    }
    CHECK(client.received.empty());

    SECTION("the handler answers in its first step: both responses in one write") {
        REQUIRE(rig.app.respond(Response::text("two")) == WriteResult::kOk);
        REQUIRE(rig.spin_until([&] { return rig.app.count("body_complete") == 3; }));
        rig.server->release_held();  // the release queued when /2 started
        for (int i = 0; i < 20; ++i) {
            rig.turn();
            client.pump();
        }
        // /3 is in flight now: "one" and "two" wait for the release queued when it started.
        CHECK(client.received.empty());
        rig.server->release_held();
        REQUIRE(rig.spin_until([&] {
            client.pump();
            return client.received.size() >= ok("one").size() + ok("two").size();
        }));
        CHECK(client.received == ok("one") + ok("two"));
    }
    SECTION("the handler does not answer at once: the release sends what was held") {
        rig.server->release_held();
        REQUIRE(rig.spin_until([&] {
            client.pump();
            return client.received.size() >= ok("one").size();
        }));
        CHECK(client.received == ok("one"));
        REQUIRE(rig.app.respond(Response::text("two")) == WriteResult::kOk);
        REQUIRE(rig.spin_until([&] { return rig.app.count("body_complete") == 3; }));
    }
    REQUIRE(rig.app.respond(Response::text("three")) == WriteResult::kOk);
    REQUIRE(rig.spin_until([&] {
        client.pump();
        return client.received.size() >= ok("one").size() + ok("two").size() + ok("three").size();
    }));
    CHECK(client.received == ok("one") + ok("two") + ok("three"));
}

TEST_CASE("Server: handlers answered after the reads leave in the same pass, a pipeline whole",
          "[server]") {
    LoopRig rig;
    // As the bridge's first steps: answer the request in flight, if any, once the reads are done.
    int answered = 0;
    rig.hooks.on_after_reads = [&] {
        if (!rig.app.active()) return false;
        ++answered;
        return rig.app.respond(Response::text(std::to_string(answered))) == WriteResult::kOk;
    };
    Client client{rig.bound.port};
    client.send(kGet1 + kGet2 + "GET /3 HTTP/1.1\r\nHost: a\r\n\r\n");
    REQUIRE(rig.spin_until([&] { return rig.app.count("head GET /1") == 1; }));
    // The turn that read /1 answered it after its reads, which let /2 in, answered in turn,
    // and so /3: nothing was held back for a later release.
    CHECK(rig.app.count("release") == 3);
    CHECK(rig.hooks.releases_requested == 0);
    REQUIRE(rig.spin_until([&] {
        client.pump();
        return client.received.size() >= ok("1").size() * 3;
    }));
    CHECK(client.received == ok("1") + ok("2") + ok("3"));
}

TEST_CASE("Server: a pass's responses wait for its end only up to flush_delay_max_ns", "[server]") {
    // Two clients whose requests are read in one pass, each answered as its head is parsed.
    // Returns how many of them had their response when the pass's second read was parsed.
    auto answered_by_second_read = [](std::uint64_t delay_ns) {
        ServerConfig config = test_config();
        config.flush_delay_max_ns = delay_ns;
        LoopRig rig{config};
        rig.app.respond_at(Moment::kOnHead, Response::text("hi"));
        Client a{rig.bound.port};
        Client b{rig.bound.port};
        REQUIRE(rig.spin_until([&] { return rig.server->connection_count() == 2; }));
        int seen = -1;
        rig.hooks.on_after_reads = [&] {
            if (seen < 0 && rig.app.count("head GET /1") + rig.app.count("head GET /2") == 2) {
                a.pump();
                b.pump();
                seen = (a.received.empty() ? 0 : 1) + (b.received.empty() ? 0 : 1);
            }
            return false;
        };
        a.send(kGet1);
        b.send(kGet2);
        REQUIRE(rig.spin_until([&] {
            a.pump();
            b.pump();
            return a.received.size() + b.received.size() >= 2 * ok("hi").size();
        }));
        CHECK(a.received == ok("hi"));
        CHECK(b.received == ok("hi"));
        return seen;
    };
    // Both reads in one pass: only the first one's response can be out by the second read.
    SECTION("0: every response waits for the end of the pass") {
        CHECK(answered_by_second_read(0) == 0);
    }
    SECTION("1 ns: the first read's response leaves before the second read is parsed") {
        CHECK(answered_by_second_read(1) == 1);
    }
}

TEST_CASE("Server: a malformed request gets a 400 and the socket is closed", "[server]") {
    LoopRig rig;
    Client client{rig.bound.port};
    client.send("NOT HTTP\r\n\r\n");
    REQUIRE(rig.spin_until([&] {
        client.pump();
        return client.eof;
    }));
    CHECK(client.received.rfind("HTTP/1.1 400 Bad Request\r\n", 0) == 0);
    REQUIRE(rig.spin_until([&] { return rig.server->connection_count() == 0; }));
    REQUIRE(rig.app.events == Events{"error 400", "closed"});
}

TEST_CASE("Server: a closed connection lingers while the client still sends", "[server]") {
    LoopRig rig;
    Client client{rig.bound.port};
    client.send("NOT HTTP\r\n\r\n");
    REQUIRE(rig.spin_until([&] {
        client.pump();
        return client.eof;
    }));
    CHECK(client.received.rfind("HTTP/1.1 400 Bad Request\r\n", 0) == 0);
    // Closed for the app and the registry; still reading (and dropping) the client's bytes.
    REQUIRE(rig.spin_until([&] { return rig.server->lingering_count() == 1; }));
    CHECK(rig.server->connection_count() == 0);
    CHECK(rig.app.events == Events{"error 400", "closed"});
    client.send(std::string(20000, 'x'));  // no reset: MSG_NOSIGNAL send would fail on one
    for (int i = 0; i < 20; ++i)
        rig.turn();
    client.send("more");
    CHECK(rig.server->lingering_count() == 1);
    client.close();  // its FIN ends the linger
    REQUIRE(rig.spin_until([&] { return rig.server->lingering_count() == 0; }));
}

TEST_CASE("Server: close_all ends lingering connections", "[server]") {
    LoopRig rig;
    Client client{rig.bound.port};
    client.send("NOT HTTP\r\n\r\n");
    REQUIRE(rig.spin_until([&] { return rig.server->lingering_count() == 1; }));
    rig.server->close_all();
    REQUIRE(rig.spin_until([&] { return rig.server->lingering_count() == 0; }));
    REQUIRE(rig.spin_until([&] {
        client.pump();
        return client.eof;
    }));
}

TEST_CASE("Server: a client that goes away mid-request disconnects and releases the handler",
          "[server]") {
    LoopRig rig;
    Client client{rig.bound.port};
    client.send("POST / HTTP/1.1\r\nContent-Length: 100\r\n\r\npartial");
    REQUIRE(rig.spin_until([&] { return rig.app.count("body partial") == 1; }));

    client.close();
    REQUIRE(rig.spin_until([&] { return rig.server->connection_count() == 0; }));
    REQUIRE(rig.app.events ==
            Events{"head POST /", "body partial", "disconnect", "release", "closed"});
}

TEST_CASE("Server: stop_listening refuses new clients and keeps the connected ones", "[server]") {
    LoopRig rig;
    rig.app.respond_at(Moment::kOnBodyComplete, Response::text("still here"));
    Client first{rig.bound.port};
    REQUIRE(rig.spin_until([&] { return rig.server->connection_count() == 1; }));

    rig.server->stop_listening();
    CHECK(rig.server->listener_count() == 0);
    rig.server->run_once();
    Client late{rig.bound.port};
    CHECK(late.connect_errno == ECONNREFUSED);

    first.send(kGet1);
    REQUIRE(rig.spin_until([&] {
        first.pump();
        return first.received.size() >= ok("still here").size();
    }));
    CHECK(first.received == ok("still here"));
}

TEST_CASE("Server: close_all closes every connection now", "[server]") {
    LoopRig rig;
    Client a{rig.bound.port};
    Client b{rig.bound.port};
    b.send("GET /busy HTTP/1.1\r\n\r\n");  // one idle, one with an unanswered request
    REQUIRE(rig.spin_until([&] { return rig.app.count("body_complete") == 1; }));
    REQUIRE(rig.server->connection_count() == 2);

    rig.server->close_all();
    REQUIRE(rig.spin_until([&] { return rig.server->connection_count() == 0; }));
    REQUIRE(rig.spin_until([&] {
        a.pump();
        b.pump();
        return a.eof && b.eof;
    }));
    CHECK(a.received.empty());
    CHECK(b.received.empty());
    CHECK(rig.app.count("closed") == 2);
    CHECK(rig.app.count("disconnect") == 1);
    CHECK(rig.app.count("release") == 1);
}

TEST_CASE("Server: shutdown closes idle connections now and busy ones after their response",
          "[server]") {
    LoopRig rig;
    Client idle{rig.bound.port};
    Client busy{rig.bound.port};
    busy.send(kGet1);
    REQUIRE(rig.spin_until([&] { return rig.app.count("body_complete") == 1; }));
    REQUIRE(rig.server->connection_count() == 2);

    rig.server->shutdown();
    REQUIRE(rig.spin_until([&] { return rig.server->connection_count() == 1; }));
    REQUIRE(rig.spin_until([&] {
        idle.pump();
        return idle.eof;
    }));

    rig.app.respond(Response::text("last"));
    REQUIRE(rig.spin_until([&] {
        busy.pump();
        return busy.eof;
    }));
    CHECK(busy.received ==
          "HTTP/1.1 200 OK\r\nserver: cppuvicorn\r\ncontent-length: 4\r\n"
          "connection: close\r\n\r\nlast");
    REQUIRE(rig.spin_until([&] { return rig.server->connection_count() == 0; }));
}

TEST_CASE("Server: sweep closes connections whose keep-alive deadline has passed", "[server]") {
    ServerConfig config = test_config();
    SECTION("expired") {
        config.timeout_keep_alive = 0.0;
        LoopRig rig{config};
        Client client{rig.bound.port};
        REQUIRE(rig.spin_until([&] { return rig.server->connection_count() == 1; }));
        rig.server->sweep();
        REQUIRE(rig.spin_until([&] { return rig.server->connection_count() == 0; }));
        REQUIRE(rig.spin_until([&] {
            client.pump();
            return client.eof;
        }));
    }
    SECTION("not yet") {
        config.timeout_keep_alive = 60.0;
        LoopRig rig{config};
        Client client{rig.bound.port};
        REQUIRE(rig.spin_until([&] { return rig.server->connection_count() == 1; }));
        rig.server->sweep();
        rig.server->run_once();
        CHECK(rig.server->connection_count() == 1);
    }
}

TEST_CASE("Server: a response bigger than the socket buffers waits for on_writable", "[server]") {
    LoopRig rig;
    Client client{rig.bound.port};
    client.send(kGet1);
    REQUIRE(rig.spin_until([&] { return rig.app.count("body_complete") == 1; }));

    const std::size_t total = 8 << 20;
    const std::string chunk(1 << 20, 'z');
    REQUIRE(rig.app.start({200, {{"content-length", std::to_string(total)}}, ""}) ==
            WriteResult::kOk);
    std::size_t sent = 0;
    int waits = 0;
    while (sent < total) {
        sent += chunk.size();
        WriteResult r = rig.app.write(chunk, sent < total);
        if (r == WriteResult::kWait) {
            ++waits;
            // The client reads; the kernel takes the rest; on_writable says go on.
            REQUIRE(rig.spin_until([&] {
                client.pump();
                return rig.app.count("writable") == waits;
            }));
        } else {
            REQUIRE(r == WriteResult::kOk);
        }
    }
    CHECK(waits > 0);  // 8 MiB does not fit in loopback socket buffers at once
    const std::string head =
        "HTTP/1.1 200 OK\r\nserver: cppuvicorn\r\ncontent-length: " + std::to_string(total) +
        "\r\n\r\n";
    REQUIRE(rig.spin_until([&] {
        client.pump();
        return client.received.size() >= head.size() + total;
    }));
    CHECK(client.received.size() == head.size() + total);
    CHECK(client.received.compare(0, head.size(), head) == 0);
    CHECK(client.received.find_first_not_of('z', head.size()) == std::string::npos);
    CHECK(rig.app.events.back() == "release");
}

TEST_CASE("Server: large and small body writes keep their order on the wire", "[server]") {
    // Writes of 16 KiB and more go straight to the kernel (writev with whatever is queued);
    // smaller ones are copied into the output buffer. Mixed, with partial writes, the bytes
    // must still arrive in order.
    LoopRig rig;
    Client client{rig.bound.port};
    client.send(kGet1);
    REQUIRE(rig.spin_until([&] { return rig.app.count("body_complete") == 1; }));

    const std::vector<std::size_t> sizes = {100,   20000, 7,       1 << 20, 16383,
                                            16384, 300,   3 << 20, 1,       65536};
    std::string expected;
    std::size_t total = 0;
    for (std::size_t s : sizes)
        total += s;
    REQUIRE(rig.app.start({200, {{"content-length", std::to_string(total)}}, ""}) ==
            WriteResult::kOk);
    int waits = 0;
    for (std::size_t i = 0; i < sizes.size(); ++i) {
        std::string piece(sizes[i], '\0');
        for (std::size_t j = 0; j < piece.size(); ++j)
            piece[j] = static_cast<char>('a' + (expected.size() + j) % 23);
        expected += piece;
        WriteResult r = rig.app.write(piece, i + 1 < sizes.size());
        if (r == WriteResult::kWait) {
            ++waits;
            REQUIRE(rig.spin_until([&] {
                client.pump();
                return rig.app.count("writable") == waits;
            }));
        } else {
            REQUIRE(r == WriteResult::kOk);
        }
    }
    const std::string head =
        "HTTP/1.1 200 OK\r\nserver: cppuvicorn\r\ncontent-length: " + std::to_string(total) +
        "\r\n\r\n";
    REQUIRE(rig.spin_until([&] {
        client.pump();
        return client.received.size() >= head.size() + total;
    }));
    CHECK(client.received.size() == head.size() + total);
    CHECK(client.received.compare(0, head.size(), head) == 0);
    CHECK(client.received.compare(head.size(), std::string::npos, expected) == 0);
}

// ---- TLS listeners: TcpConnection with a TlsSession between the socket and HttpConnection ----

namespace {

std::shared_ptr<const TlsContext> test_tls_context() {
    TlsConfig c;
    c.certfile = cppuvicorn::test::server_identity().cert_file;
    c.keyfile = cppuvicorn::test::server_identity().key_file;
    return std::make_shared<const TlsContext>(c);
}

// Moves bytes between the in-memory TLS client and the socket.
void shuttle(Client& socket, cppuvicorn::test::TlsClient& tls) {
    std::string out = tls.output();
    if (!out.empty()) socket.send(out);
    socket.pump();
    if (!socket.received.empty()) {
        tls.input(socket.received);
        socket.received.clear();
    }
}

}  // namespace

namespace {

// A listening socket made outside the server, as a supervisor's workers inherit theirs.
int shared_listener(int* port) {
    int fd = ::socket(AF_INET, SOCK_STREAM, 0);
    REQUIRE(fd >= 0);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    REQUIRE(::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0);
    REQUIRE(::listen(fd, 16) == 0);
    socklen_t len = sizeof addr;
    REQUIRE(::getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len) == 0);
    *port = ntohs(addr.sin_port);
    return fd;
}

}  // namespace

TEST_CASE("Server: TLS requests, keep-alive and a large response through TcpConnection",
          "[server][tls]") {
    LoopRig rig;
    rig.server->set_tls(test_tls_context());
    const std::string big(300000, 'z');  // many records, more than one socket write
    rig.app.respond_at(Moment::kOnBodyComplete, Response::text(big));
    Client socket{rig.bound.port};
    cppuvicorn::test::TlsClient tls;
    REQUIRE(rig.spin_until([&] {
        shuttle(socket, tls);
        return tls.handshake();
    }));
    std::string plain;
    for (const std::string& request : {kGet1, kGet2}) {
        tls.write(request);
        plain.clear();
        REQUIRE(rig.spin_until([&] {
            shuttle(socket, tls);
            plain += tls.read();
            return plain.size() >= ok(big).size();
        }));
        CHECK(plain == ok(big));
    }
    REQUIRE(rig.app.conn != nullptr);
    REQUIRE(rig.app.conn->tls() != nullptr);
    CHECK(rig.app.conn->tls()->protocol_version() == 0x0304);
    CHECK(rig.server->connection_count() == 1);
    REQUIRE(rig.app.events == Events{"head GET /1", "body_complete", "release", "head GET /2",
                                     "body_complete", "release"});

    // The client's close_notify ends the connection like an EOF, answered with ours.
    SSL_shutdown(tls.ssl());
    bool closed = false;
    REQUIRE(rig.spin_until([&] {
        shuttle(socket, tls);
        tls.read(&closed);
        return closed && rig.server->connection_count() == 0;
    }));
}

TEST_CASE("Server: plain HTTP on a TLS listener is closed and never reaches the application",
          "[server][tls]") {
    LoopRig rig;
    rig.server->set_tls(test_tls_context());
    Client client{rig.bound.port};
    client.send(kGet1);
    REQUIRE(rig.spin_until([&] {
        client.pump();
        return client.eof;
    }));
    CHECK(client.received.find("HTTP/1.1") == std::string::npos);
    REQUIRE(rig.spin_until([&] { return rig.server->connection_count() == 0; }));
    REQUIRE(rig.app.events == Events{"tls_error handshake", "closed"});
    CHECK(rig.app.last_error_detail == "http request");
}

TEST_CASE("Server: a shared listener accepts one connection per accept turn, when asked",
          "[server]") {
    LoopRig rig;
    rig.app.respond_at(Moment::kOnBodyComplete, Response::text("hi"));
    int port = 0;
    int fd = shared_listener(&port);
    PeerAddress bound;
    REQUIRE(rig.server->listen_fd(fd, &bound, 1) == 0);
    CHECK(bound.port == port);
    Client a{port};
    Client b{port};
    Client c{port};
    a.send(kGet1);
    b.send(kGet1);
    c.send(kGet1);

    // A plain turn only notices the waiting connections and asks for an accept turn: the
    // requests it read (none here) start first.
    for (int i = 0; i < 3; ++i)
        rig.server->run_once();
    CHECK(rig.server->connection_count() == 0);
    CHECK(rig.hooks.accepts_requested == 1);  // once, until the accept turn ran

    // Each accept turn takes one connection and reads its request in the same turn.
    rig.hooks.accept_due = false;
    rig.server->accept_turn();
    CHECK(rig.server->connection_count() == 1);
    CHECK(rig.app.count("body_complete") == 1);
    CHECK(rig.hooks.accepts_requested == 2);  // two more wait
    rig.hooks.accept_due = false;
    rig.server->accept_turn();
    CHECK(rig.app.count("body_complete") == 2);

    REQUIRE(rig.spin_until([&] {
        for (Client* client : {&a, &b, &c})
            client->pump();
        return a.received == ok("hi") && b.received == ok("hi") && c.received == ok("hi");
    }));

    // stop_listening closes the socket the server was given.
    rig.server->stop_listening();
    rig.server->run_once();
    Client late{port};
    CHECK(late.connect_errno == ECONNREFUSED);
}
