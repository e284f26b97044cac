// SPDX-License-Identifier: BSD-3-Clause
#include "core/tls.hpp"

#include <openssl/bio.h>
#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <stdexcept>

namespace cppuvicorn::core {

namespace {

// Python's own default (Lib/ssl.py, _DEFAULT_CIPHERS since 3.10), which is what Uvicorn's
// contexts use when --ssl-ciphers is not given.
constexpr const char* kDefaultCiphers =
    "@SECLEVEL=2:ECDH+AESGCM:ECDH+CHACHA20:ECDH+AES:DHE+AES:!aNULL:!eNULL:!aDSS:!SHA1:!AESCCM";
constexpr unsigned char kAlpnHttp11[] = {8, 'h', 't', 't', 'p', '/', '1', '.', '1'};
constexpr unsigned char kSessionIdContext[] = {'c', 'p', 'p', 'u', 'v', 'i', 'c', 'o', 'r', 'n'};

// The reasons in OpenSSL's error queue, innermost first ("bad decrypt (PEM lib)"); the queue
// is cleared.
std::string openssl_reason() {
    std::string out;
    std::string first;
    while (unsigned long e = ERR_get_error()) {
        const char* r = ERR_reason_error_string(e);
        char buf[256];
        if (r == nullptr) {
            ERR_error_string_n(e, buf, sizeof buf);
            r = buf;
        }
        if (first.empty()) {
            first = r;
        } else if (out.find(r) == std::string::npos && first != r) {
            out += out.empty() ? "" : ", ";
            out += r;
        }
    }
    if (first.empty()) return "unknown error";
    return out.empty() ? first : first + " (" + out + ")";
}

[[noreturn]] void config_error(const std::string& what) {
    ERR_clear_error();
    throw std::runtime_error(what);
}

void require_readable(const std::string& path, const char* what) {
    std::FILE* f = std::fopen(path.c_str(), "rb");
    if (f == nullptr) {
        config_error(std::string(what) + " " + path + ": " + std::strerror(errno));
    }
    std::fclose(f);
}

std::string bio_string(BIO* bio) {
    char* data = nullptr;
    long n = BIO_get_mem_data(bio, &data);
    return n > 0 ? std::string(data, static_cast<std::size_t>(n)) : std::string();
}

std::string pem_of(X509* cert) {
    BIO* bio = BIO_new(BIO_s_mem());
    if (bio == nullptr) return {};
    std::string pem;
    if (PEM_write_bio_X509(bio, cert) == 1) pem = bio_string(bio);
    BIO_free(bio);
    return pem;
}

int password_callback(char* buf, int size, int, void* userdata) {
    // Never prompt on a terminal: no password given means none.
    const auto* password = static_cast<const std::string*>(userdata);
    if (password == nullptr || password->empty() || size <= 0) return 0;
    int n =
        static_cast<int>(std::min<std::size_t>(password->size(), static_cast<std::size_t>(size)));
    std::memcpy(buf, password->data(), static_cast<std::size_t>(n));
    return n;
}

int select_alpn(SSL*, const unsigned char** out, unsigned char* outlen, const unsigned char* in,
                unsigned int inlen, void*) {
    unsigned char* selected = nullptr;
    if (SSL_select_next_proto(&selected, outlen, kAlpnHttp11, sizeof kAlpnHttp11, in, inlen) !=
        OPENSSL_NPN_NEGOTIATED) {
        return SSL_TLSEXT_ERR_NOACK;  // no http/1.1 on offer: carry on without ALPN
    }
    *out = selected;
    return SSL_TLSEXT_ERR_OK;
}

}  // namespace

TlsContext::TlsContext(const TlsConfig& config) {
    int min_version = TLS1_2_VERSION;  // Python's SSLContext minimum since 3.10
    int max_version = 0;
    switch (config.version) {
        case 2:   // PROTOCOL_TLS (PROTOCOL_SSLv23)
        case 17:  // PROTOCOL_TLS_SERVER
            break;
        case 3:  // PROTOCOL_TLSv1
            min_version = max_version = TLS1_VERSION;
            break;
        case 4:  // PROTOCOL_TLSv1_1
            min_version = max_version = TLS1_1_VERSION;
            break;
        case 5:  // PROTOCOL_TLSv1_2
            min_version = max_version = TLS1_2_VERSION;
            break;
        case 16:
            config_error(
                "ssl_version 16 is ssl.PROTOCOL_TLS_CLIENT, which cannot serve; use 17 "
                "(ssl.PROTOCOL_TLS_SERVER, the default)");
        default:
            config_error("unknown ssl_version " + std::to_string(config.version) +
                         " (one of the stdlib ssl module's PROTOCOL_* values: 2, 3, 4, 5 or 17)");
    }
    int verify = SSL_VERIFY_NONE;
    switch (config.cert_reqs) {
        case 0:
            break;
        case 1:
            verify = SSL_VERIFY_PEER;
            break;
        case 2:
            verify = SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT;
            break;
        default:
            config_error("unknown ssl_cert_reqs " + std::to_string(config.cert_reqs) +
                         " (ssl.CERT_NONE 0, CERT_OPTIONAL 1 or CERT_REQUIRED 2)");
    }
    if (config.certfile.empty()) config_error("ssl_certfile is required for TLS");

    ERR_clear_error();
    ctx_ = SSL_CTX_new(TLS_server_method());
    if (ctx_ == nullptr) config_error("cannot create a TLS context: " + openssl_reason());
    // From here the destructor will not run if we throw: free the context on the way out.
    struct Guard {
        SSL_CTX*& ctx;
        bool armed = true;
        ~Guard() {
            if (armed) {
                SSL_CTX_free(ctx);
                ctx = nullptr;
            }
        }
    } guard{ctx_};

    // Python's defaults for a server context (what Uvicorn's ssl.SSLContext gets).
    SSL_CTX_set_options(
        ctx_, (SSL_OP_ALL & ~SSL_OP_DONT_INSERT_EMPTY_FRAGMENTS & ~SSL_OP_LEGACY_SERVER_CONNECT) |
                  SSL_OP_NO_COMPRESSION | SSL_OP_CIPHER_SERVER_PREFERENCE | SSL_OP_NO_SSLv3);
    SSL_CTX_set_min_proto_version(ctx_, min_version);
    SSL_CTX_set_max_proto_version(ctx_, max_version);
    // Idle keep-alive connections then hold no 16 KiB record buffers.
    SSL_CTX_set_mode(ctx_, SSL_MODE_RELEASE_BUFFERS);
    SSL_CTX_set_session_id_context(ctx_, kSessionIdContext, sizeof kSessionIdContext);
    if (SSL_CTX_set_cipher_list(
            ctx_, config.ciphers.empty() ? kDefaultCiphers : config.ciphers.c_str()) != 1) {
        config_error("no cipher can be selected with ssl_ciphers '" + config.ciphers + "'");
    }

    password_ = config.password.value_or("");
    SSL_CTX_set_default_passwd_cb(ctx_, password_callback);
    SSL_CTX_set_default_passwd_cb_userdata(ctx_, &password_);

    require_readable(config.certfile, "cannot read ssl_certfile");
    if (SSL_CTX_use_certificate_chain_file(ctx_, config.certfile.c_str()) != 1) {
        config_error("cannot load the certificate from ssl_certfile " + config.certfile + ": " +
                     openssl_reason());
    }
    const std::string& keyfile = config.keyfile.empty() ? config.certfile : config.keyfile;
    if (!config.keyfile.empty()) require_readable(keyfile, "cannot read ssl_keyfile");
    if (SSL_CTX_use_PrivateKey_file(ctx_, keyfile.c_str(), SSL_FILETYPE_PEM) != 1) {
        std::string reason = openssl_reason();
        if (reason.find("key values mismatch") != std::string::npos) {
            config_error("the private key in " + keyfile + " does not match the certificate in " +
                         config.certfile);
        }
        if (!config.password && reason.find("bad") != std::string::npos) {
            reason += " (is the key encrypted? pass ssl_keyfile_password)";
        }
        config_error("cannot load the private key from " + keyfile + ": " + reason);
    }
    if (SSL_CTX_check_private_key(ctx_) != 1) {
        config_error("the private key in " + keyfile + " does not match the certificate in " +
                     config.certfile + ": " + openssl_reason());
    }
    SSL_CTX_set_verify(ctx_, verify, nullptr);
    if (!config.ca_certs.empty()) {
        require_readable(config.ca_certs, "cannot read ssl_ca_certs");
        if (SSL_CTX_load_verify_locations(ctx_, config.ca_certs.c_str(), nullptr) != 1) {
            config_error("cannot load CA certificates from ssl_ca_certs " + config.ca_certs + ": " +
                         openssl_reason());
        }
    }
    SSL_CTX_set_alpn_select_cb(ctx_, select_alpn, nullptr);
    if (X509* cert = SSL_CTX_get0_certificate(ctx_)) server_cert_pem_ = pem_of(cert);
    // The password is only needed while loading the key.
    SSL_CTX_set_default_passwd_cb_userdata(ctx_, nullptr);
    password_.assign(password_.size(), '\0');
    password_.clear();
    guard.armed = false;
}

TlsContext::~TlsContext() {
    SSL_CTX_free(ctx_);
}

// ---------------------------------------------------------------------------------------------

TlsSession::TlsSession(const TlsContext& ctx) {
    ssl_ = SSL_new(ctx.native());
    in_ = BIO_new(BIO_s_mem());
    out_ = BIO_new(BIO_s_mem());
    if (ssl_ == nullptr || in_ == nullptr || out_ == nullptr) {
        BIO_free(in_);
        BIO_free(out_);
        in_ = out_ = nullptr;
        fail();
        return;
    }
    // An empty input BIO means "wait for more", not end of stream.
    BIO_set_mem_eof_return(in_, -1);
    BIO_set_mem_eof_return(out_, -1);
    SSL_set_bio(ssl_, in_, out_);
    SSL_set_accept_state(ssl_);
}

TlsSession::~TlsSession() {
    SSL_free(ssl_);  // frees both BIOs
}

void TlsSession::fail() {
    failed_ = true;
    std::string reason = openssl_reason();
    if (ssl_ != nullptr) {
        long verify = SSL_get_verify_result(ssl_);
        if (verify != X509_V_OK) {
            reason += ": ";
            reason += X509_verify_cert_error_string(verify);
        }
    }
    error_ = std::move(reason);
}

void TlsSession::feed(std::string_view ciphertext) {
    if (failed_ || ciphertext.empty()) return;
    BIO_write(in_, ciphertext.data(), static_cast<int>(ciphertext.size()));
}

long TlsSession::read(char* buf, std::size_t cap) {
    if (failed_) return kFailed;
    ERR_clear_error();
    if (!handshake_done_) {
        int r = SSL_do_handshake(ssl_);
        if (r != 1) {
            int e = SSL_get_error(ssl_, r);
            if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE) return kNeedMore;
            fail();
            return kFailed;
        }
        handshake_done_ = true;
    }
    std::size_t got = 0;
    while (got < cap) {
        std::size_t n = 0;
        if (SSL_read_ex(ssl_, buf + got, cap - got, &n) == 1) {
            got += n;
            continue;
        }
        int e = SSL_get_error(ssl_, 0);
        if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE) break;
        if (got > 0) break;  // the next call reports the close or the error again
        if (e == SSL_ERROR_ZERO_RETURN) return kClosed;
        fail();
        return kFailed;
    }
    return static_cast<long>(got);
}

bool TlsSession::seal(std::string_view plaintext, std::string& wire) {
    if (failed_ || !handshake_done_) return false;
    if (!plaintext.empty()) {
        ERR_clear_error();
        std::size_t written = 0;
        if (SSL_write_ex(ssl_, plaintext.data(), plaintext.size(), &written) != 1 ||
            written != plaintext.size()) {
            fail();
            return false;
        }
    }
    take_output(wire);
    return true;
}

bool TlsSession::has_output() const {
    return out_ != nullptr && BIO_ctrl_pending(out_) > 0;
}

void TlsSession::take_output(std::string& wire) {
    if (out_ == nullptr) return;
    char* data = nullptr;
    long n = BIO_get_mem_data(out_, &data);
    if (n <= 0) return;
    wire.append(data, static_cast<std::size_t>(n));
    (void)BIO_reset(out_);
}

void TlsSession::shutdown() {
    if (!handshake_done_ || failed_) return;
    ERR_clear_error();
    SSL_shutdown(ssl_);
    ERR_clear_error();
}

int TlsSession::protocol_version() const {
    return ssl_ != nullptr ? SSL_version(ssl_) : 0;
}

int TlsSession::cipher_suite() const {
    const SSL_CIPHER* c = ssl_ != nullptr ? SSL_get_current_cipher(ssl_) : nullptr;
    return c != nullptr ? SSL_CIPHER_get_protocol_id(c) : 0;
}

std::string TlsSession::alpn() const {
    const unsigned char* p = nullptr;
    unsigned int len = 0;
    if (ssl_ != nullptr) SSL_get0_alpn_selected(ssl_, &p, &len);
    return p != nullptr ? std::string(reinterpret_cast<const char*>(p), len) : std::string();
}

std::vector<std::string> TlsSession::peer_chain_pem() const {
    std::vector<std::string> out;
    X509* peer = ssl_ != nullptr ? SSL_get0_peer_certificate(ssl_) : nullptr;
    if (peer == nullptr) return out;
    out.push_back(pem_of(peer));
    // On the server side the sent chain leaves out the client's own certificate.
    if (STACK_OF(X509)* chain = SSL_get_peer_cert_chain(ssl_)) {
        for (int i = 0; i < sk_X509_num(chain); ++i) {
            X509* c = sk_X509_value(chain, i);
            if (X509_cmp(c, peer) != 0) out.push_back(pem_of(c));
        }
    }
    return out;
}

std::optional<std::string> TlsSession::peer_subject() const {
    X509* peer = ssl_ != nullptr ? SSL_get0_peer_certificate(ssl_) : nullptr;
    if (peer == nullptr) return std::nullopt;
    BIO* bio = BIO_new(BIO_s_mem());
    if (bio == nullptr) return std::nullopt;
    X509_NAME_print_ex(bio, X509_get_subject_name(peer), 0, XN_FLAG_RFC2253);
    std::string name = bio_string(bio);
    BIO_free(bio);
    return name;
}

std::optional<std::string> TlsSession::peer_verify_error() const {
    if (ssl_ == nullptr || SSL_get0_peer_certificate(ssl_) == nullptr) return std::nullopt;
    long verify = SSL_get_verify_result(ssl_);
    if (verify == X509_V_OK) return std::nullopt;
    return std::string(X509_verify_cert_error_string(verify));
}

}  // namespace cppuvicorn::core
