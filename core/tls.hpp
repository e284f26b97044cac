// SPDX-License-Identifier: BSD-3-Clause
// TLS with OpenSSL over memory BIOs: TlsContext is the per-server SSL_CTX built from Uvicorn's
// --ssl-* options; TlsSession is one connection's SSL object. The session never touches a
// socket: ciphertext from the socket goes in with feed(), plaintext comes out of read();
// plaintext goes in with seal() and the records to send come out of take_output(). TcpConnection
// moves the bytes between the session and libuv. No Python here.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

struct ssl_ctx_st;
struct ssl_st;
struct bio_st;

namespace cppuvicorn::core {

// Uvicorn's --ssl-* options, with the stdlib ssl module's integer constants.
struct TlsConfig {
    std::string certfile;                 // PEM: the certificate, then its chain (required)
    std::string keyfile;                  // PEM private key; empty: the key is in certfile
    std::optional<std::string> password;  // for an encrypted key
    int version = 17;      // ssl.PROTOCOL_*: 2 TLS, 3 TLSv1, 4 TLSv1_1, 5 TLSv1_2, 17 TLS_SERVER
    int cert_reqs = 0;     // ssl.CERT_NONE 0, CERT_OPTIONAL 1, CERT_REQUIRED 2
    std::string ca_certs;  // PEM file of CAs that client certificates must chain to
    std::string ciphers;   // OpenSSL cipher list (TLS 1.2 and below); empty: Python's
};

class TlsContext {
  public:
    // Builds the SSL_CTX; throws std::runtime_error with OpenSSL's reason (file, key, password,
    // mismatch, cipher list) when the options cannot be used.
    explicit TlsContext(const TlsConfig& config);
    ~TlsContext();
    TlsContext(const TlsContext&) = delete;
    TlsContext& operator=(const TlsContext&) = delete;

    ssl_ctx_st* native() const { return ctx_; }
    // The server's own certificate, PEM (for the ASGI tls extension's server_cert).
    const std::string& server_cert_pem() const { return server_cert_pem_; }

  private:
    ssl_ctx_st* ctx_ = nullptr;
    std::string server_cert_pem_;
    std::string password_;
};

class TlsSession {
  public:
    explicit TlsSession(const TlsContext& ctx);
    ~TlsSession();
    TlsSession(const TlsSession&) = delete;
    TlsSession& operator=(const TlsSession&) = delete;

    // What read() found besides plaintext.
    static constexpr long kNeedMore = 0;  // everything fed has been consumed
    static constexpr long kClosed = -1;   // the peer sent close_notify
    static constexpr long kFailed = -2;   // handshake or protocol error: see error()

    // Ciphertext from the peer.
    void feed(std::string_view ciphertext);
    // Advances the handshake and decrypts into buf: the number of plaintext bytes (> 0),
    // kNeedMore, kClosed or kFailed. Handshake messages and alerts to send accumulate for
    // take_output().
    long read(char* buf, std::size_t cap);
    // Encrypts `plaintext` (after the handshake) and appends the records to `wire`.
    bool seal(std::string_view plaintext, std::string& wire);
    // Appends whatever the session has to send (handshake, tickets, alerts) to `wire`.
    void take_output(std::string& wire);
    // Sealed records not yet handed to the kernel (the connection's, kept here so that plain
    // TCP connections do not carry the buffer).
    std::string& wire() { return wire_; }
    const std::string& wire() const { return wire_; }
    bool has_output() const;
    // Queues close_notify (after a completed handshake, unless the session failed).
    void shutdown();

    bool handshake_done() const { return handshake_done_; }
    bool failed() const { return failed_; }
    const std::string& error() const { return error_; }

    // ---- for the ASGI tls extension (valid after the handshake) ----
    int protocol_version() const;  // 0x0303 TLS 1.2, 0x0304 TLS 1.3
    int cipher_suite() const;      // IANA id
    std::string alpn() const;      // the negotiated protocol, or empty
    // The client's certificate first, then the chain it sent; empty without one.
    std::vector<std::string> peer_chain_pem() const;
    // RFC 4514 subject of the client's certificate, if it sent one.
    std::optional<std::string> peer_subject() const;
    // Why the client's certificate did not verify, if it sent one that did not.
    std::optional<std::string> peer_verify_error() const;

  private:
    void fail();

    ssl_st* ssl_ = nullptr;
    std::string wire_;
    bio_st* in_ = nullptr;   // ciphertext from the peer (owned by ssl_)
    bio_st* out_ = nullptr;  // ciphertext to the peer (owned by ssl_)
    std::string error_;
    bool handshake_done_ = false;
    bool failed_ = false;
};

}  // namespace cppuvicorn::core
