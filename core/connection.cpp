// SPDX-License-Identifier: BSD-3-Clause
#include "core/connection.hpp"

#include "core/server.hpp"

#include <unistd.h>

namespace cppuvicorn::core {

namespace {

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
    : server_(server), unix_socket_(unix_socket) {}

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
    http_ = std::make_unique<HttpConnection>(*this, server_.context(), std::move(peer),
                                             std::move(local));
    server_.add(this);
    resume_reading();
}

void TcpConnection::on_uv_alloc(uv_handle_t* h, std::size_t, uv_buf_t* buf) noexcept {
    // libuv calls this right before on_uv_read: the server's shared buffer is free then.
    *buf = static_cast<TcpConnection*>(h->data)->server_.borrow_read_buffer();
}

void TcpConnection::on_uv_read(uv_stream_t* s, ssize_t nread, const uv_buf_t* buf) noexcept {
    auto* c = static_cast<TcpConnection*>(s->data);
    if (nread > 0) {
        c->http_->on_data({buf->base, static_cast<std::size_t>(nread)});
    } else if (nread < 0) {
        c->http_->on_eof();
    }
}

void TcpConnection::flush() {
    if (closing_) {
        out_.clear();
        return;
    }
    if (writing_) return;  // on_uv_write continues with what accumulated meanwhile
    if (!out_.empty()) {
        uv_buf_t buf = uv_buf_init(out_.data(), static_cast<unsigned>(out_.size()));
        int n = uv_try_write(stream(), &buf, 1);
        if (n == UV_EAGAIN || n == UV_ENOSYS) n = 0;
        if (n < 0) {
            close_now();
            return;
        }
        if (static_cast<std::size_t>(n) < out_.size()) {
            out_.erase(0, static_cast<std::size_t>(n));
            inflight_.swap(out_);
            buf = uv_buf_init(inflight_.data(), static_cast<unsigned>(inflight_.size()));
            writing_ = true;
            write_req_.data = this;
            if (uv_write(&write_req_, stream(), &buf, 1, on_uv_write) != 0) {
                writing_ = false;
                close_now();
                return;
            }
            server_.note_uv_work();
            return;
        }
        out_.clear();
    }
    after_write();
}

void TcpConnection::on_uv_write(uv_write_t* req, int status) noexcept {
    auto* c = static_cast<TcpConnection*>(req->data);
    c->writing_ = false;
    c->inflight_.clear();
    if (status < 0) {
        c->close_now();
        return;
    }
    c->flush();
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
    if (!now && (writing_ || !out_.empty())) {
        close_after_flush_ = true;
        pause_reading();
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
    // A half-close first lets the peer read what we sent before the socket goes away.
    shutdown_req_.data = this;
    if (!writing_ && uv_shutdown(&shutdown_req_, stream(), on_uv_shutdown) == 0) {
        server_.note_uv_work();
        return;
    }
    uv_close(handle(), on_uv_close);
    server_.note_uv_work();
}

void TcpConnection::on_uv_shutdown(uv_shutdown_t* req, int) noexcept {
    auto* c = static_cast<TcpConnection*>(req->data);
    uv_close(c->handle(), on_uv_close);
}

void TcpConnection::on_uv_close(uv_handle_t* h) noexcept {
    auto* c = static_cast<TcpConnection*>(h->data);
    c->server_.remove(c);
    c->http_->on_closed();
    delete c;
}

}  // namespace cppuvicorn::core
