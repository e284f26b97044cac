// SPDX-License-Identifier: BSD-3-Clause
// TlsContext and TlsSession: the server session against an OpenSSL client, both on memory BIOs,
// bytes moved by hand. A self-signed certificate is made per test run in a temporary directory.
#include "core/tls.hpp"

#include <catch2/catch.hpp>
#include <openssl/ssl.h>

#include "tests/unit/support/tls_support.hpp"
#include <stdexcept>
#include <string>

namespace {

using cppuvicorn::core::TlsConfig;
using cppuvicorn::core::TlsContext;
using cppuvicorn::core::TlsSession;
using cppuvicorn::test::Identity;
using cppuvicorn::test::server_identity;
using cppuvicorn::test::temp_dir;
using Client = cppuvicorn::test::TlsClient;

TlsConfig server_config() {
    TlsConfig c;
    c.certfile = server_identity().cert_file;
    c.keyfile = server_identity().key_file;
    return c;
}

// Server side: feeds the client's bytes and collects plaintext; returns read()'s last status.
long serve(TlsSession& s, Client& c, std::string& plain, std::string& wire) {
    s.feed(c.output());
    char buf[65536];
    long r = 0;
    while ((r = s.read(buf, sizeof buf)) > 0)
        plain.append(buf, static_cast<std::size_t>(r));
    s.take_output(wire);
    return r;
}

// Runs the handshake to completion (both sides); false if it failed.
bool handshake(TlsSession& s, Client& c) {
    std::string plain;
    for (int i = 0; i < 10; ++i) {
        bool client_done = c.handshake();
        std::string wire;
        if (serve(s, c, plain, wire) == TlsSession::kFailed) return false;
        c.input(wire);
        if (client_done && s.handshake_done() && c.handshake()) return true;
    }
    return false;
}

}  // namespace

TEST_CASE("TLS: handshake, request and response through memory BIOs", "[tls]") {
    TlsContext ctx(server_config());
    TlsSession session(ctx);
    Client client("\x02h2\x08http/1.1");
    REQUIRE(handshake(session, client));
    CHECK(session.protocol_version() == 0x0304);
    CHECK(session.cipher_suite() ==
          SSL_CIPHER_get_protocol_id(SSL_get_current_cipher(client.ssl())));
    CHECK(session.alpn() == "http/1.1");
    CHECK(session.peer_chain_pem().empty());
    CHECK_FALSE(session.peer_subject().has_value());
    CHECK_FALSE(session.peer_verify_error().has_value());
    CHECK(ctx.server_cert_pem() == server_identity().cert_pem);

    // A request larger than one record arrives whole.
    const std::string request =
        "POST / HTTP/1.1\r\nContent-Length: 40000\r\n\r\n" + std::string(40000, 'x');
    client.write(request);
    std::string plain;
    std::string wire;
    CHECK(serve(session, client, plain, wire) == TlsSession::kNeedMore);
    CHECK(plain == request);

    // A response sealed in one go reaches the client intact.
    const std::string response =
        "HTTP/1.1 200 OK\r\ncontent-length: 100000\r\n\r\n" + std::string(100000, 'y');
    wire.clear();
    REQUIRE(session.seal(response, wire));
    CHECK(wire.size() > response.size());  // records add headers and tags
    client.input(wire);
    CHECK(client.read() == response);

    // close_notify both ways.
    session.shutdown();
    wire.clear();
    session.take_output(wire);
    client.input(wire);
    bool closed = false;
    CHECK(client.read(&closed).empty());
    CHECK(closed);
}

TEST_CASE("TLS: a TLS 1.2 client gets TLS 1.2 and its cipher's IANA id", "[tls]") {
    TlsContext ctx(server_config());
    TlsSession session(ctx);
    Client client(nullptr, TLS1_2_VERSION);
    REQUIRE(handshake(session, client));
    CHECK(session.protocol_version() == 0x0303);
    CHECK(session.cipher_suite() ==
          SSL_CIPHER_get_protocol_id(SSL_get_current_cipher(client.ssl())));
    CHECK(session.cipher_suite() == 0xc02c);  // ECDHE-ECDSA-AES256-GCM-SHA384: Python's order
    CHECK(session.alpn().empty());
}

TEST_CASE("TLS: the peer's close_notify is reported as kClosed", "[tls]") {
    TlsContext ctx(server_config());
    TlsSession session(ctx);
    Client client;
    REQUIRE(handshake(session, client));
    client.write("last words");
    SSL_shutdown(client.ssl());
    std::string plain;
    std::string wire;
    char buf[1024];
    session.feed(client.output());
    long r = session.read(buf, sizeof buf);
    REQUIRE(r == 10);
    CHECK(std::string(buf, 10) == "last words");
    CHECK(session.read(buf, sizeof buf) == TlsSession::kClosed);
}

TEST_CASE("TLS: plain HTTP and garbage fail the handshake with a reason", "[tls]") {
    TlsContext ctx(server_config());
    const std::string input =
        GENERATE(std::string("GET / HTTP/1.1\r\nHost: x\r\n\r\n"),
                 std::string("\x16\x03\x01\x00\x05hello-garbage-garbage", 26));
    TlsSession session(ctx);
    session.feed(input);
    char buf[1024];
    CHECK(session.read(buf, sizeof buf) == TlsSession::kFailed);
    CHECK(session.failed());
    CHECK_FALSE(session.handshake_done());
    CHECK_FALSE(session.error().empty());
    if (input.rfind("GET", 0) == 0) CHECK(session.error() == "http request");
    // Failed stays failed; nothing can be sealed.
    CHECK(session.read(buf, sizeof buf) == TlsSession::kFailed);
    std::string wire;
    CHECK_FALSE(session.seal("x", wire));
}

TEST_CASE("TLS: a partial ClientHello waits for more", "[tls]") {
    TlsContext ctx(server_config());
    TlsSession session(ctx);
    Client client;
    client.handshake();
    std::string hello = client.output();
    REQUIRE(hello.size() > 10);
    session.feed(hello.substr(0, 10));
    char buf[1024];
    CHECK(session.read(buf, sizeof buf) == TlsSession::kNeedMore);
    CHECK_FALSE(session.has_output());
    session.feed(hello.substr(10));
    CHECK(session.read(buf, sizeof buf) == TlsSession::kNeedMore);
    CHECK(session.has_output());  // ServerHello and the rest of the server's flight
}

// The reason TlsContext gives for refusing `c` (empty if it accepted it).
std::string refusal(const TlsConfig& c) {
    try {
        TlsContext ctx(c);
    } catch (const std::runtime_error& e) {
        return e.what();
    }
    return {};
}

TEST_CASE("TLS: unusable options are refused with a reason", "[tls]") {
    TlsConfig c = server_config();
    REQUIRE(refusal(c).empty());
    SECTION("missing key file") {
        c.keyfile = temp_dir() + "/missing.key";
        CHECK_THAT(refusal(c), Catch::Contains("missing.key: No such file or directory"));
    }
    SECTION("the certificate is not one") {
        c.certfile = server_identity().key_file;
        CHECK_THAT(refusal(c), Catch::Contains("cannot load the certificate"));
    }
    SECTION("key and certificate do not match") {
        static Identity other("other");
        c.keyfile = other.key_file;
        CHECK_THAT(refusal(c), Catch::Contains("does not match"));
    }
    SECTION("client-side protocol") {
        c.version = 16;
        CHECK_THAT(refusal(c), Catch::Contains("PROTOCOL_TLS_CLIENT"));
    }
    SECTION("unknown cert_reqs") {
        c.cert_reqs = 7;
        CHECK_THAT(refusal(c), Catch::Contains("ssl_cert_reqs 7"));
    }
    SECTION("no usable cipher") {
        c.ciphers = "NOT-A-CIPHER";
        CHECK_THAT(refusal(c), Catch::Contains("NOT-A-CIPHER"));
    }
    SECTION("no certificate") {
        c.certfile.clear();
        CHECK_THAT(refusal(c), Catch::Contains("ssl_certfile is required"));
    }
}
