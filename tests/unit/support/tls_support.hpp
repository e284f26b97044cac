// SPDX-License-Identifier: BSD-3-Clause
// TLS test helpers: a self-signed P-256 identity written to PEM files in a temporary directory,
// and an OpenSSL client on memory BIOs that trusts it (bytes are moved by the test).
#pragma once

#include <catch2/catch.hpp>
#include <openssl/bio.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>

#include <cstdio>
#include <cstdlib>
#include <string>
#include <unistd.h>

namespace cppuvicorn::test {

inline std::string temp_dir() {
    static std::string dir = [] {
        char tmpl[] = "/tmp/cppuvicorn-tls-XXXXXX";
        REQUIRE(mkdtemp(tmpl) != nullptr);
        return std::string(tmpl);
    }();
    return dir;
}

inline void write_file(const std::string& path, const std::string& text) {
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

inline const Identity& server_identity() {
    static Identity id("server");
    return id;
}

// An OpenSSL client on memory BIOs that trusts the server's self-signed certificate.
class TlsClient {
  public:
    explicit TlsClient(const char* alpn = nullptr, int max_version = 0) {
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
    ~TlsClient() {
        SSL_free(ssl_);
        SSL_CTX_free(ctx_);
    }
    TlsClient(const TlsClient&) = delete;
    TlsClient& operator=(const TlsClient&) = delete;

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

}  // namespace cppuvicorn::test
