// SPDX-License-Identifier: BSD-3-Clause
// TlsContext and TlsSession: the server session against an OpenSSL client, both on memory BIOs,
// bytes moved by hand. A self-signed certificate is made per test run in a temporary directory.
#include "core/tls.hpp"

#include <catch2/catch.hpp>
#include <openssl/bio.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>

#include <cstdio>
#include <cstdlib>
#include <stdexcept>
#include <string>
#include <unistd.h>

namespace {

using cppuvicorn::core::TlsConfig;
using cppuvicorn::core::TlsContext;
using cppuvicorn::core::TlsSession;

std::string temp_dir() {
    static std::string dir = [] {
        char tmpl[] = "/tmp/cppuvicorn-tls-XXXXXX";
        REQUIRE(mkdtemp(tmpl) != nullptr);
        return std::string(tmpl);
    }();
    return dir;
}

void write_file(const std::string& path, const std::string& text) {
    std::FILE* f = std::fopen(path.c_str(), "wb");
    REQUIRE(f != nullptr);
    std::fwrite(text.data(), 1, text.size(), f);
    std::fclose(f);
}

template <class F>
std::string pem(F write) {
    BIO* bio = BIO_new(BIO_s_mem());
    REQUIRE(write(bio) == 1);
    char* data = nullptr;
    long n = BIO_get_mem_data(bio, &data);
    std::string out(data, static_cast<std::size_t>(n));
    BIO_free(bio);
    return out;
}

// A P-256 key and a self-signed certificate for CN=localhost, written as PEM files.
struct Identity {
    std::string cert_file;
    std::string key_file;
    std::string cert_pem;

    explicit Identity(const std::string& name) {
        EVP_PKEY* key = EVP_EC_gen("P-256");
        REQUIRE(key != nullptr);
        X509* cert = X509_new();
        X509_set_version(cert, 2);
        ASN1_INTEGER_set(X509_get_serialNumber(cert), 1);
        X509_gmtime_adj(X509_getm_notBefore(cert), -60);
        X509_gmtime_adj(X509_getm_notAfter(cert), 3600);
        X509_NAME* subject = X509_get_subject_name(cert);
        X509_NAME_add_entry_by_txt(subject, "O", MBSTRING_ASC,
                                   reinterpret_cast<const unsigned char*>("cppuvicorn"), -1, -1, 0);
        X509_NAME_add_entry_by_txt(subject, "CN", MBSTRING_ASC,
                                   reinterpret_cast<const unsigned char*>("localhost"), -1, -1, 0);
        X509_set_issuer_name(cert, subject);
        X509_set_pubkey(cert, key);
        REQUIRE(X509_sign(cert, key, EVP_sha256()) > 0);
        cert_pem = pem([&](BIO* b) { return PEM_write_bio_X509(b, cert); });
        std::string key_pem = pem([&](BIO* b) {
            return PEM_write_bio_PrivateKey(b, key, nullptr, nullptr, 0, nullptr, nullptr);
        });
        cert_file = temp_dir() + "/" + name + ".crt";
        key_file = temp_dir() + "/" + name + ".key";
        write_file(cert_file, cert_pem);
        write_file(key_file, key_pem);
        X509_free(cert);
        EVP_PKEY_free(key);
    }
};

const Identity& server_identity() {
    static Identity id("server");
    return id;
}

TlsConfig server_config() {
    TlsConfig c;
    c.certfile = server_identity().cert_file;
    c.keyfile = server_identity().key_file;
    return c;
}

// An OpenSSL client on memory BIOs that trusts the server's self-signed certificate.
class Client {
  public:
    explicit Client(const char* alpn = nullptr, int max_version = 0) {
        ctx_ = SSL_CTX_new(TLS_client_method());
        SSL_CTX_set_verify(ctx_, SSL_VERIFY_PEER, nullptr);
        BIO* bio = BIO_new_mem_buf(server_identity().cert_pem.data(), -1);
        X509* ca = PEM_read_bio_X509(bio, nullptr, nullptr, nullptr);
        X509_STORE_add_cert(SSL_CTX_get_cert_store(ctx_), ca);
        X509_free(ca);
        BIO_free(bio);
        if (max_version != 0) SSL_CTX_set_max_proto_version(ctx_, max_version);
        ssl_ = SSL_new(ctx_);
        in_ = BIO_new(BIO_s_mem());
        out_ = BIO_new(BIO_s_mem());
        BIO_set_mem_eof_return(in_, -1);
        SSL_set_bio(ssl_, in_, out_);
        SSL_set1_host(ssl_, "localhost");
        SSL_set_tlsext_host_name(ssl_, "localhost");
        if (alpn != nullptr) {
            SSL_set_alpn_protos(ssl_, reinterpret_cast<const unsigned char*>(alpn),
                                static_cast<unsigned>(std::char_traits<char>::length(alpn)));
        }
        SSL_set_connect_state(ssl_);
    }
    ~Client() {
        SSL_free(ssl_);
        SSL_CTX_free(ctx_);
    }
    Client(const Client&) = delete;
    Client& operator=(const Client&) = delete;

    // What the client has to send.
    std::string output() {
        std::string wire;
        char* data = nullptr;
        long n = BIO_get_mem_data(out_, &data);
        if (n > 0) wire.assign(data, static_cast<std::size_t>(n));
        (void)BIO_reset(out_);
        return wire;
    }
    void input(const std::string& wire) {
        if (!wire.empty()) BIO_write(in_, wire.data(), static_cast<int>(wire.size()));
    }
    // Advances the handshake; true once it is complete.
    bool handshake() { return SSL_do_handshake(ssl_) == 1; }
    void write(const std::string& plain) {
        std::size_t n = 0;
        REQUIRE(SSL_write_ex(ssl_, plain.data(), plain.size(), &n) == 1);
    }
    // Plaintext available now; `closed` is set when close_notify arrived.
    std::string read(bool* closed = nullptr) {
        std::string plain;
        char buf[16384];
        std::size_t n = 0;
        while (SSL_read_ex(ssl_, buf, sizeof buf, &n) == 1)
            plain.append(buf, n);
        if (closed != nullptr) *closed = SSL_get_error(ssl_, 0) == SSL_ERROR_ZERO_RETURN;
        return plain;
    }
    SSL* ssl() { return ssl_; }

  private:
    SSL_CTX* ctx_ = nullptr;
    SSL* ssl_ = nullptr;
    BIO* in_ = nullptr;
    BIO* out_ = nullptr;
};

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

TEST_CASE("TLS: unusable options are refused with a reason", "[tls]") {
    TlsConfig c = server_config();
    std::string expected;
    SECTION("missing key file") {
        c.keyfile = temp_dir() + "/missing.key";
        expected = "missing.key: No such file or directory";
    }
    SECTION("the certificate is not one") {
        c.certfile = server_identity().key_file;
        expected = "cannot load the certificate";
    }
    SECTION("key and certificate do not match") {
        static Identity other("other");
        c.keyfile = other.key_file;
        expected = "does not match";
    }
    SECTION("client-side protocol") {
        c.version = 16;
        expected = "PROTOCOL_TLS_CLIENT";
    }
    SECTION("unknown cert_reqs") {
        c.cert_reqs = 7;
        expected = "ssl_cert_reqs 7";
    }
    SECTION("no usable cipher") {
        c.ciphers = "NOT-A-CIPHER";
        expected = "NOT-A-CIPHER";
    }
    SECTION("no certificate") {
        c.certfile.clear();
        expected = "ssl_certfile is required";
    }
    try {
        TlsContext ctx(c);
        FAIL("TlsContext accepted unusable options");
    } catch (const std::runtime_error& e) {
        CAPTURE(e.what());
        CHECK(std::string(e.what()).find(expected) != std::string::npos);
    }
}
