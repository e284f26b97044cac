// SPDX-License-Identifier: BSD-3-Clause
#include "core/connection.hpp"

#include "core/metrics.hpp"
#include "core/server.hpp"

#include <algorithm>
#include <cerrno>
#include <new>
#include <sys/sendfile.h>
#include <unistd.h>

namespace cppuvicorn::core {

namespace {

// Lingering close (linger_on_close): the client's input is discarded until it closes, goes
// quiet for kLingerIdleMs, or kLingerMaxMs have passed (nginx's lingering_timeout and
// lingering_time, 5 s and 30 s there, shorter here: it is a courtesy to a client still sending,
// and a worker has no connection slots to spare for one that does not stop).
constexpr std::uint64_t kLingerIdleMs = 2000;
constexpr std::uint64_t kLingerMaxMs = 10000;

PeerAddress address_of(const sockaddr_storage& ss) {
    PeerAddress a;
    char host[INET6_ADDRSTRLEN] = {};
    if (ss.ss_family == AF_INET) {
        const auto* in = reinterpret_cast<const sockaddr_in*>(&ss);
        uv_ip4_name(in, host, sizeof host);
        a.port = ntohs(in->sin_port);
    } else if (ss.ss_family == AF_INET6) {
        const auto* in6 = reinterpret_cast<const sockaddr_in6*>(&ss);
        uv_ip6_name(in6, host, sizeof host);
        a.port = ntohs(in6->sin6_port);
    }
    a.host = host;
    return a;
}

}  // namespace

TcpConnection::TcpConnection(Server& server, bool unix_socket)
    : server_(server), unix_socket_(unix_socket), metrics_(server.config().metrics) {}

TcpConnection* TcpConnection::accept(Server& server, uv_stream_t* listener, bool unix_socket) {
    auto* c = new TcpConnection(server, unix_socket);
    int rc = unix_socket ? uv_pipe_init(server.loop(), &c->handle_.pipe, 0)
                         : uv_tcp_init(server.loop(), &c->handle_.tcp);
    if (rc != 0) {
        delete c;
        return nullptr;
    }
    c->handle()->data = c;
    if (uv_accept(listener, c->stream()) != 0) {
        uv_close(c->handle(),
                 [](uv_handle_t* h) noexcept { delete static_cast<TcpConnection*>(h->data); });
        return nullptr;
    }
    c->start();
    return c;
}

TcpConnection* TcpConnection::adopt(Server& server, int fd, bool unix_socket) {
    auto* c = new TcpConnection(server, unix_socket);
    int rc = unix_socket ? uv_pipe_init(server.loop(), &c->handle_.pipe, 0)
                         : uv_tcp_init(server.loop(), &c->handle_.tcp);
    if (rc != 0) {
        ::close(fd);
        delete c;
        return nullptr;
    }
    c->handle()->data = c;
    rc = unix_socket ? uv_pipe_open(&c->handle_.pipe, fd) : uv_tcp_open(&c->handle_.tcp, fd);
    if (rc != 0) {
        ::close(fd);  // not the handle's yet
        uv_close(c->handle(),
                 [](uv_handle_t* h) noexcept { delete static_cast<TcpConnection*>(h->data); });
        return nullptr;
    }
    c->start();
    return c;
}

void TcpConnection::start() {
    PeerAddress peer;
    PeerAddress local;
    if (unix_socket_) {
        char path[512];
        std::size_t len = sizeof path;
        if (uv_pipe_getsockname(&handle_.pipe, path, &len) == 0) local.host.assign(path, len);
        local.unix_socket = peer.unix_socket = true;
    } else {
        uv_tcp_nodelay(&handle_.tcp, 1);
        sockaddr_storage ss{};
        int len = sizeof ss;
        if (uv_tcp_getpeername(&handle_.tcp, reinterpret_cast<sockaddr*>(&ss), &len) == 0) {
            peer = address_of(ss);
        }
        len = sizeof ss;
        if (uv_tcp_getsockname(&handle_.tcp, reinterpret_cast<sockaddr*>(&ss), &len) == 0) {
            local = address_of(ss);
        }
    }
    http_.emplace(*this, server_.context(), std::move(peer), std::move(local));
    server_.add(this);
    if (metrics_ != nullptr) metrics_->add(kConnectionsOpened);
    server_.context().events.on_connection_opened(*http_);
    if (const TlsContext* tls = server_.tls_context()) {
        tls_ = std::make_unique<TlsSession>(*tls);
        if (tls_->failed()) {  // out of memory: nothing was said yet, just hang up
            close_now();
            return;
        }
    }
    resume_reading();
}

void TcpConnection::on_uv_alloc(uv_handle_t* h, std::size_t, uv_buf_t* buf) noexcept {
    // libuv calls this right before on_uv_read: the server's shared buffer is free then.
    *buf = static_cast<TcpConnection*>(h->data)->server_.borrow_read_buffer();
}

void TcpConnection::on_uv_read(uv_stream_t* s, ssize_t nread, const uv_buf_t* buf) noexcept {
    auto* c = static_cast<TcpConnection*>(s->data);
    Server& server = c->server_;
    if (nread > 0) {
        if (c->metrics_ != nullptr)
            c->metrics_->add(kBytesReceived, static_cast<std::uint64_t>(nread));
        if (c->tls_ != nullptr) {
            c->read_tls(buf->base, static_cast<std::size_t>(nread), buf->len);
        } else {
            c->http_->on_data({buf->base, static_cast<std::size_t>(nread)});
        }
        // What the handlers started by these bytes do first, they do now, with all of these
        // bytes parsed (a body that came with its head is in hand): their state dies before
        // the next read makes more (run after a whole pass instead, the bridge's Tasks lived
        // through it and the GC promoted them: see the bridge's spawn_stepped).
        server.after_read();
    } else if (nread < 0) {
        c->http_->on_eof();
    }
}

void TcpConnection::read_tls(char* buf, std::size_t len, std::size_t cap) {
    // The ciphertext is copied into the session, so the read buffer takes the plaintext.
    TlsSession& tls = *tls_;
    tls.feed({buf, len});
    for (;;) {
        long n = tls.read(buf, cap);
        if (n > 0) {
            http_->on_data({buf, static_cast<std::size_t>(n)});
            if (closing_) return;
            continue;
        }
        if (n == TlsSession::kNeedMore) break;
        if (n == TlsSession::kClosed) {  // close_notify: the peer is done sending, like EOF
            http_->on_eof();
            return;
        }
        // A failed handshake (a plain-HTTP client, an unacceptable client certificate, no
        // common protocol or cipher) or a broken record: the application never hears of it.
        server_.context().events.on_tls_error(*http_, tls.error(), !tls.handshake_done());
        close_now();
        return;
    }
    // Handshake flights, session tickets: send what the session produced.
    if (tls.has_output()) flush();
}

void TcpConnection::flush() {
    if (closing_) {
        out_.clear();
        return;
    }
    if (writing_) return;  // on_uv_write continues with what accumulated meanwhile
    if (tls_ != nullptr) {
        // Seal everything corked so far into records (one SSL_write for the whole turn), after
        // whatever the session itself has to send.
        if (!out_.empty() && tls_->handshake_done()) {
            if (!tls_->seal(out_, tls_->wire())) {
                close_now();
                return;
            }
            out_.clear();
        } else {
            tls_->take_output(tls_->wire());
        }
    }
    std::string& pending = tls_ != nullptr ? tls_->wire() : out_;
    if (!pending.empty()) {
        uv_buf_t buf = uv_buf_init(pending.data(), static_cast<unsigned>(pending.size()));
        int n = uv_try_write(stream(), &buf, 1);
        if (n == UV_EAGAIN || n == UV_ENOSYS) n = 0;
        if (n < 0) {
            close_now();
            return;
        }
        if (metrics_ != nullptr) metrics_->add(kBytesSent, static_cast<std::uint64_t>(n));
        if (static_cast<std::size_t>(n) < pending.size()) {
            pending.erase(0, static_cast<std::size_t>(n));
            if (req_ == nullptr) req_ = std::make_unique<Request>();
            std::string& inflight = req_->inflight;
            inflight.swap(pending);
            buf = uv_buf_init(inflight.data(), static_cast<unsigned>(inflight.size()));
            writing_ = true;
            req_->write.data = this;
            if (uv_write(&req_->write, stream(), &buf, 1, on_uv_write) != 0) {
                writing_ = false;
                close_now();
                return;
            }
            server_.note_uv_work();
            return;
        }
        pending.clear();
    }
    after_write();
}

void TcpConnection::write_direct(std::string_view data) {
    if (closing_) return;
    // A queued write is in flight (order says behind it), or TLS (the data must be sealed:
    // the caller's flush does it, in one SSL_write with what is already corked).
    if (writing_ || tls_ != nullptr) {
        out_.append(data);
        return;
    }
    uv_buf_t bufs[2];
    unsigned nbufs = 0;
    if (!out_.empty()) bufs[nbufs++] = uv_buf_init(out_.data(), static_cast<unsigned>(out_.size()));
    bufs[nbufs++] = uv_buf_init(const_cast<char*>(data.data()), static_cast<unsigned>(data.size()));
    int n = uv_try_write(stream(), bufs, nbufs);
    if (n == UV_EAGAIN || n == UV_ENOSYS) n = 0;
    if (n < 0) {
        close_now();
        return;
    }
    auto written = static_cast<std::size_t>(n);
    if (metrics_ != nullptr) metrics_->add(kBytesSent, written);
    if (written < out_.size()) {
        out_.erase(0, written);
        out_.append(data);
    } else {
        out_.assign(data.substr(written - out_.size()));
    }
}

std::int64_t TcpConnection::send_file(int fd, std::uint64_t offset, std::size_t len) {
    if (closing_) return 0;
    if (tls_ != nullptr || writing_ || !out_.empty()) return -1;  // TLS must seal: copy instead
    uv_os_fd_t sock = -1;
    if (uv_fileno(handle(), &sock) != 0) return -1;
    auto off = static_cast<off_t>(offset);
    ssize_t n;
    do {
        n = ::sendfile(sock, fd, &off, len);
    } while (n < 0 && errno == EINTR);
    if (n < 0) {
        if (errno == EAGAIN || errno == EWOULDBLOCK) return 0;
        if (errno == EINVAL || errno == ENOSYS) return -1;  // not sendfile-able: copy
        close_now();
        return 0;
    }
    if (metrics_ != nullptr) metrics_->add(kBytesSent, static_cast<std::uint64_t>(n));
    return n;
}

void TcpConnection::on_uv_write(uv_write_t* req, int status) noexcept {
    auto* c = static_cast<TcpConnection*>(req->data);
    c->writing_ = false;
    std::string& inflight = c->req_->inflight;
    if (status == 0 && c->metrics_ != nullptr) c->metrics_->add(kBytesSent, inflight.size());
    if (inflight.capacity() > kKeepInflightBytes) {
        std::string().swap(inflight);  // a big partial write: do not keep its buffer
    } else {
        inflight.clear();
    }
    if (status < 0) {
        c->close_now();
        return;
    }
    c->flush();
    // Nothing more queued: the request and its buffer go until a write again does not go out
    // at once. A closing connection keeps it for its shutdown.
    if (!c->writing_ && !c->closing_) c->req_.reset();
}

void TcpConnection::reserve_out(std::size_t n) {
    server_.out_pool().acquire(out_, n);
}

void TcpConnection::release_out() {
    server_.out_pool().release(out_);
}

void TcpConnection::trim() {
    // Idle between requests: the output buffer goes (a response head's worth); the next
    // response makes a new one. A partial write's buffer went with its request (on_uv_write).
    if (writing_) return;
    if (out_.empty()) std::string().swap(out_);
}

void TcpConnection::after_write() {
    if (close_after_flush_) {
        close_now();
        return;
    }
    http_->on_drained();
}

void TcpConnection::schedule_flush() {
    if (!in_flush_list && !closing_) server_.defer_flush(this);
}

void TcpConnection::schedule_resume() {
    if (!in_resume_list && !closing_) server_.defer_resume(this);
}

void TcpConnection::pause_reading() {
    if (!reading_ || closing_) return;
    reading_ = false;
    uv_read_stop(stream());
}

void TcpConnection::resume_reading() {
    if (reading_ || closing_ || close_after_flush_) return;
    reading_ = true;
    uv_read_start(stream(), on_uv_alloc, on_uv_read);
    server_.note_uv_work();
}

void TcpConnection::close(bool now) {
    if (closing_) return;
    if (!now && (writing_ || !out_.empty() || (tls_ != nullptr && !tls_->wire().empty()))) {
        close_after_flush_ = true;
        if (linger_) {
            // A client blocked writing its body would never read the rest of our answer, and
            // we would wait for it to: read on and drop what it sends.
            if (reading_) uv_read_stop(stream());
            reading_ = uv_read_start(stream(), on_uv_alloc, on_linger_read) == 0;
        } else {
            pause_reading();
        }
        if (!writing_) flush();
        return;
    }
    close_now();
}

void TcpConnection::close_now() {
    if (closing_) return;
    closing_ = true;
    out_.clear();
    if (reading_) uv_read_stop(stream());
    reading_ = false;
    if (tls_ != nullptr && !writing_) send_tls_goodbye();
    // A half-close first lets the peer read what we sent before the socket goes away.
    if (!writing_) {
        if (req_ == nullptr) req_.reset(new (std::nothrow) Request{});
        if (req_ != nullptr) {
            req_->shutdown.data = this;
            if (uv_shutdown(&req_->shutdown, stream(), on_uv_shutdown) == 0) {
                server_.note_uv_work();
                return;
            }
        }
    }
    uv_close(handle(), on_uv_close);
    server_.note_uv_work();
}

void TcpConnection::send_tls_goodbye() {
    // Best effort, as the socket is being shut down: close_notify after a completed handshake,
    // or the alert that explains a failed one. Nothing is queued behind it, so it fits.
    std::string& wire = tls_->wire();
    wire.clear();
    tls_->shutdown();
    tls_->take_output(wire);
    if (wire.empty()) return;
    uv_buf_t buf = uv_buf_init(wire.data(), static_cast<unsigned>(wire.size()));
    uv_try_write(stream(), &buf, 1);
    wire.clear();
}

void TcpConnection::on_uv_shutdown(uv_shutdown_t* req, int status) noexcept {
    auto* c = static_cast<TcpConnection*>(req->data);
    if (status == 0 && c->linger_) {
        c->begin_linger();
        return;
    }
    uv_close(c->handle(), on_uv_close);
}

void TcpConnection::begin_linger() {
    // The response is out and the FIN after it: for the HttpConnection (and the app, the
    // metrics, the concurrency limit) the connection is closed now. What stays is a socket
    // that reads and drops the client's input, so that the kernel has no unread bytes to
    // answer with a reset (RFC 9112 §9.6: a staged close).
    if (!server_.add_lingering(this)) {
        uv_close(handle(), on_uv_close);
        return;
    }
    server_.remove(this);
    if (metrics_ != nullptr) metrics_->add(kConnectionsClosed);
    http_->on_closed();
    lingering_ = true;
    req_->linger_started_ms = now_ms();  // req_ made the shutdown that led here
    req_->linger_deadline_ms = req_->linger_started_ms + kLingerIdleMs;
    if (uv_read_start(stream(), on_uv_alloc, on_linger_read) != 0) end_linger();
    server_.note_uv_work();
}

void TcpConnection::on_linger_read(uv_stream_t* s, ssize_t nread, const uv_buf_t*) noexcept {
    auto* c = static_cast<TcpConnection*>(s->data);
    if (!c->lingering_) {       // the answer is still going out (close after flush)
        if (nread == UV_EOF) {  // the client is done sending; it may still read
            uv_read_stop(s);
            c->reading_ = false;
        } else if (nread < 0) {
            c->close_now();
        }
        return;
    }
    if (nread < 0) {  // the client closed (or reset): done
        c->end_linger();
    } else if (nread > 0) {
        c->req_->linger_deadline_ms =
            std::min(c->now_ms() + kLingerIdleMs, c->req_->linger_started_ms + kLingerMaxMs);
    }
}

void TcpConnection::end_linger() {
    if (uv_is_closing(handle()) != 0) return;
    uv_read_stop(stream());
    uv_close(handle(), on_uv_close);
    server_.note_uv_work();
}

void TcpConnection::on_uv_close(uv_handle_t* h) noexcept {
    auto* c = static_cast<TcpConnection*>(h->data);
    if (c->lingering_) {  // closed for everyone else when it began
        c->server_.remove_lingering(c);
        delete c;
        return;
    }
    c->server_.remove(c);
    if (c->metrics_ != nullptr) c->metrics_->add(kConnectionsClosed);
    c->http_->on_closed();
    delete c;
}

}  // namespace cppuvicorn::core
