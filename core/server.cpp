// SPDX-License-Identifier: BSD-3-Clause
#include "core/server.hpp"

#include "core/connection.hpp"
#include "core/http_connection.hpp"

#include <algorithm>
#include <cerrno>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

namespace cppuvicorn::core {

namespace {
constexpr std::size_t kReadBufferSize = 65536;
}  // namespace

struct Server::Listener {
    union {
        uv_tcp_t tcp;
        uv_pipe_t pipe;
        uv_poll_t poll;  // accepts_per_turn > 0: readiness only, accept4 is ours
    } handle{};
    Server* server = nullptr;
    bool unix_socket = false;
    int fd = -1;                       // polled listeners: the socket, closed with the handle
    std::size_t accepts_per_turn = 0;  // 0: libuv's uv_listen accepts every pending connection
    bool pending = false;              // polled listeners: readable in the last turn
    bool paused = false;               // polled listeners: out of descriptors, retried on sweep
    uv_stream_t* stream() { return reinterpret_cast<uv_stream_t*>(&handle); }
    uv_handle_t* as_handle() { return reinterpret_cast<uv_handle_t*>(&handle); }
};

Server::Server(uv_loop_t* loop, ServerConfig config, ConnectionEvents& events, LoopHooks& hooks)
    : loop_(loop),
      config_(std::move(config)),
      events_(events),
      hooks_(hooks),
      read_buffer_(new char[kReadBufferSize]) {
    ctx_ = std::make_unique<ConnectionContext>(
        ConnectionContext{config_, status_lines_, date_, events_});
}

Server::~Server() {
    // Owners call stop_listening() and close_all() and let the loop run the close callbacks
    // first; whatever is left here is abandoned to the loop's own teardown.
}

int Server::listen_tcp(const std::string& host, int port, int backlog, PeerAddress* bound) {
    sockaddr_storage addr{};
    int rc = host.find(':') != std::string::npos
                 ? uv_ip6_addr(host.c_str(), port, reinterpret_cast<sockaddr_in6*>(&addr))
                 : uv_ip4_addr(host.c_str(), port, reinterpret_cast<sockaddr_in*>(&addr));
    if (rc != 0) return rc;
    auto* l = new Listener;
    l->server = this;
    uv_tcp_init_ex(loop_, &l->handle.tcp, addr.ss_family);
    l->handle.tcp.data = l;
    // SO_REUSEADDR is set by libuv itself on bind.
    // IPv6 listeners are IPv6-only, as asyncio's (and so Uvicorn's) are: "::" and "0.0.0.0"
    // can then be bound side by side.
    unsigned flags = addr.ss_family == AF_INET6 ? UV_TCP_IPV6ONLY : 0;
    rc = uv_tcp_bind(&l->handle.tcp, reinterpret_cast<sockaddr*>(&addr), flags);
    if (rc == 0) rc = uv_listen(l->stream(), backlog, on_uv_connection);
    if (rc != 0) {
        uv_close(l->as_handle(), on_listener_closed);
        return rc;
    }
    if (bound != nullptr) {
        sockaddr_storage ss{};
        int len = sizeof ss;
        uv_tcp_getsockname(&l->handle.tcp, reinterpret_cast<sockaddr*>(&ss), &len);
        char name[INET6_ADDRSTRLEN] = {};
        if (ss.ss_family == AF_INET6) {
            auto* in6 = reinterpret_cast<sockaddr_in6*>(&ss);
            uv_ip6_name(in6, name, sizeof name);
            bound->port = ntohs(in6->sin6_port);
        } else {
            auto* in = reinterpret_cast<sockaddr_in*>(&ss);
            uv_ip4_name(in, name, sizeof name);
            bound->port = ntohs(in->sin_port);
        }
        bound->host = name;
    }
    listeners_.push_back(l);
    note_uv_work();
    return 0;
}

int Server::listen_unix(const std::string& path, int backlog) {
    auto* l = new Listener;
    l->server = this;
    l->unix_socket = true;
    uv_pipe_init(loop_, &l->handle.pipe, 0);
    l->handle.pipe.data = l;
    int rc = uv_pipe_bind(&l->handle.pipe, path.c_str());
    if (rc == 0) rc = uv_listen(l->stream(), backlog, on_uv_connection);
    if (rc != 0) {
        uv_close(l->as_handle(), on_listener_closed);
        return rc;
    }
    listeners_.push_back(l);
    note_uv_work();
    return 0;
}

int Server::listen_fd(int fd, PeerAddress* bound, std::size_t accepts_per_turn) {
    sockaddr_storage ss{};
    socklen_t len = sizeof ss;
    if (getsockname(fd, reinterpret_cast<sockaddr*>(&ss), &len) != 0) return -errno;
    auto* l = new Listener;
    l->server = this;
    l->unix_socket = ss.ss_family == AF_UNIX;
    l->accepts_per_turn = accepts_per_turn;
    int rc = 0;
    if (accepts_per_turn > 0) {
        // libuv's uv_listen accepts until EAGAIN on every wake-up; watch readiness instead
        // and accept ourselves. Level-triggered: what is left waits for the next turn, or for
        // another process sharing the socket.
        rc = uv_poll_init(loop_, &l->handle.poll, fd);
        if (rc != 0) {
            delete l;
            return rc;
        }
        l->as_handle()->data = l;
        l->fd = fd;  // ours now: closed with the handle
        if (::listen(fd, config_.backlog) != 0) rc = -errno;
        if (rc == 0) rc = uv_poll_start(&l->handle.poll, UV_READABLE, on_uv_poll);
    } else {
        rc = l->unix_socket ? uv_pipe_init(loop_, &l->handle.pipe, 0)
                            : uv_tcp_init(loop_, &l->handle.tcp);
        l->as_handle()->data = l;
        if (rc == 0) {
            rc = l->unix_socket ? uv_pipe_open(&l->handle.pipe, fd)
                                : uv_tcp_open(&l->handle.tcp, fd);
        }
        if (rc == 0) rc = uv_listen(l->stream(), config_.backlog, on_uv_connection);
    }
    if (rc != 0) {
        uv_close(l->as_handle(), on_listener_closed);
        return rc;
    }
    if (bound != nullptr && !l->unix_socket) {
        char name[INET6_ADDRSTRLEN] = {};
        if (ss.ss_family == AF_INET6) {
            auto* in6 = reinterpret_cast<sockaddr_in6*>(&ss);
            uv_ip6_name(in6, name, sizeof name);
            bound->port = ntohs(in6->sin6_port);
        } else {
            auto* in = reinterpret_cast<sockaddr_in*>(&ss);
            uv_ip4_name(in, name, sizeof name);
            bound->port = ntohs(in->sin_port);
        }
        bound->host = name;
    }
    listeners_.push_back(l);
    note_uv_work();
    return 0;
}

void Server::stop_listening() {
    for (Listener* l : listeners_) {
        uv_close(l->as_handle(), on_listener_closed);
    }
    listeners_.clear();
    note_uv_work();
}

void Server::on_uv_connection(uv_stream_t* stream, int status) noexcept {
    auto* l = static_cast<Listener*>(stream->data);
    if (status == 0) l->server->accept(*l);
}

void Server::accept(Listener& l) {
    TcpConnection::accept(*this, l.stream(), l.unix_socket);
}

void Server::on_uv_poll(uv_poll_t* handle, int status, int) noexcept {
    // Noted here, accepted in accept_turn() once the requests read in this turn have started:
    // a handler that blocks the loop then holds back its own connection, not one more taken
    // in the same turn that other workers could have served.
    auto* l = static_cast<Listener*>(handle->data);
    if (status == 0) l->pending = true;
}

void Server::on_listener_closed(uv_handle_t* handle) noexcept {
    auto* l = static_cast<Listener*>(handle->data);
    if (l->fd >= 0) ::close(l->fd);  // a uv_poll_t never owns its descriptor
    delete l;
}

void Server::accept_polled(Listener& l) {
    l.pending = false;
    for (std::size_t n = 0; n < l.accepts_per_turn;) {
        int fd = ::accept4(l.fd, nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) {
            if (errno == EINTR || errno == ECONNABORTED) {
                ++n;  // bounded all the same
                continue;
            }
            if (errno == EMFILE || errno == ENFILE || errno == ENOBUFS || errno == ENOMEM) {
                // Out of descriptors or memory: a level-triggered watch would spin. Pause it;
                // sweep() retries a tick later, and the backlog (or another worker) holds the
                // connections meanwhile.
                uv_poll_stop(&l.handle.poll);
                l.paused = true;
            }
            return;  // EAGAIN: another process took it, or nothing is left
        }
        TcpConnection::adopt(*this, fd, l.unix_socket);
        ++n;
    }
}

uv_buf_t Server::borrow_read_buffer() {
    return uv_buf_init(read_buffer_.get(), static_cast<unsigned>(kReadBufferSize));
}

void Server::add(TcpConnection* c) {
    c->registry_index = connections_.size();
    connections_.push_back(c);
}

void Server::remove(TcpConnection* c) {
    // Swap-remove keeps the registry O(1); deferred lists are short, scan them.
    std::size_t i = c->registry_index;
    if (i < connections_.size() && connections_[i] == c) {
        connections_[i] = connections_.back();
        connections_[i]->registry_index = i;
        connections_.pop_back();
    }
    if (c->in_flush_list)
        std::replace(flush_list_.begin(), flush_list_.end(), c,
                     static_cast<TcpConnection*>(nullptr));
    if (c->in_resume_list)
        std::replace(resume_list_.begin(), resume_list_.end(), c,
                     static_cast<TcpConnection*>(nullptr));
    for (auto* list : {&resume_batch_, &resumed_, &flush_batch_})
        std::replace(list->begin(), list->end(), c, static_cast<TcpConnection*>(nullptr));
}

bool Server::add_lingering(TcpConnection* c) {
    if (stopping_) return false;
    c->linger_index = lingering_.size();
    lingering_.push_back(c);
    return true;
}

void Server::remove_lingering(TcpConnection* c) {
    std::size_t i = c->linger_index;
    if (i < lingering_.size() && lingering_[i] == c) {
        lingering_[i] = lingering_.back();
        lingering_[i]->linger_index = i;
        lingering_.pop_back();
    }
}

void Server::defer_flush(TcpConnection* c) {
    if (flush_list_.empty()) flush_since_ns_ = uv_hrtime();
    c->in_flush_list = true;
    flush_list_.push_back(c);
    if (!in_first_steps_) note_uv_work();  // else flushed by the run_deferred now running
}

void Server::defer_resume(TcpConnection* c) {
    c->in_resume_list = true;
    resume_list_.push_back(c);
    if (!in_first_steps_) note_uv_work();  // else resumed by the run_deferred now running
}

void Server::note_uv_work() {
    if (in_uv_run_ || run_requested_) return;
    run_requested_ = true;
    hooks_.request_run();
}

void Server::run_deferred() {
    // Pipelined requests first, then the first steps of the handlers started since the last
    // pass (by these reads and by the pipeline): the responses they make join the flushes
    // below. A response may let the next pipelined request in: repeat until both are done.
    in_first_steps_ = true;
    do {
        while (!resume_list_.empty()) {
            resume_batch_.swap(resume_list_);  // both keep their capacity from turn to turn
            for (TcpConnection* c : resume_batch_) {
                if (c == nullptr) continue;
                c->in_resume_list = false;
                c->http().process_pending();
                if (c->http().awaiting_response()) resumed_.push_back(c);
            }
            resume_batch_.clear();
        }
    } while (hooks_.after_reads());
    in_first_steps_ = false;
    // A pipelined request still in flight after its handler's first step (a handler that
    // awaits, or one whose step the loop runs later): hold back what its connection has
    // corked, the responses before it, until a release queued after that step, so that a
    // pipeline's responses leave in one write instead of one each. A handler that does not
    // answer within a loop turn delays them by one turn.
    bool holding = false;
    for (TcpConnection* c : resumed_) {
        if (c != nullptr && c->http().awaiting_response()) {
            c->hold_ticket = releases_requested_ + 1;
            holding = true;
        }
    }
    resumed_.clear();
    if (holding) {
        ++releases_requested_;
        hooks_.request_release();
    }
    flush_deferred();
}

void Server::after_read() {
    hooks_.after_reads();
    if (flush_list_.empty() || config_.flush_delay_max_ns == 0) return;
    std::uint64_t now = uv_hrtime();
    if (now - flush_since_ns_ < config_.flush_delay_max_ns) return;
    flush_deferred();
    flush_since_ns_ = now;  // what stays is held for a release
}

void Server::flush_deferred() {
    flush_batch_.swap(flush_list_);  // both keep their capacity from turn to turn
    for (TcpConnection* c : flush_batch_) {
        if (c == nullptr) continue;
        if (c->hold_ticket > releases_done_ && c->http().awaiting_response() &&
            c->out().size() < config_.write_high_water) {
            flush_list_.push_back(c);  // still in_flush_list: flushed at its release
            continue;
        }
        c->in_flush_list = false;
        c->flush();
    }
    flush_batch_.clear();
}

void Server::release_held() {
    ++releases_done_;
    run_once();
}

void Server::run_once() {
    run_requested_ = false;
    run_deferred();
    in_uv_run_ = true;
    uv_run(loop_, UV_RUN_NOWAIT);
    in_uv_run_ = false;
    run_deferred();
    if (accept_requested_) return;
    for (Listener* l : listeners_) {
        if (l->pending) {
            accept_requested_ = true;
            hooks_.request_accept();
            return;
        }
    }
}

void Server::accept_turn() {
    accept_requested_ = false;
    for (Listener* l : listeners_) {
        if (l->pending) accept_polled(*l);
    }
    run_once();  // reads what the new connections sent
}

void Server::sweep() {
    for (Listener* l : listeners_) {
        if (l->paused && uv_poll_start(&l->handle.poll, UV_READABLE, on_uv_poll) == 0) {
            l->paused = false;
            note_uv_work();
        }
    }
    std::uint64_t now = uv_hrtime() / 1000000;
    // Copy: closing removes connections from the registry.
    std::vector<TcpConnection*> expired;
    // Every connection is a cache miss here: with 10,000 idle ones a sweep took about 250 µs
    // reading them one by one, about 165 µs fetching a few ahead (the rest is TLB misses).
    constexpr std::size_t kAhead = 8;
    const std::size_t n = connections_.size();
    for (std::size_t i = 0; i < n; ++i) {
        if (i + kAhead < n) connections_[i + kAhead]->http().prefetch_sweep_fields();
        TcpConnection* c = connections_[i];
        HttpConnection& h = c->http();
        std::uint64_t d = h.deadline_ms();
        if (d != 0 && d <= now) {
            expired.push_back(c);
        } else {
            h.trim();
        }
    }
    for (TcpConnection* c : expired)
        c->http().on_deadline();
    out_pool_.trim_unused();
    // Lingering ones leave the list in their close callback, not here.
    for (TcpConnection* c : lingering_) {
        if (c->linger_expired(now)) c->end_linger();
    }
}

void Server::stop_lingering() {
    stopping_ = true;
    for (TcpConnection* c : lingering_)
        c->end_linger();
}

void Server::shutdown() {
    stop_lingering();
    std::vector<TcpConnection*> all = connections_;
    for (TcpConnection* c : all)
        c->http().shutdown();
}

void Server::close_all() {
    stop_lingering();
    std::vector<TcpConnection*> all = connections_;
    for (TcpConnection* c : all)
        c->close(true);
}

}  // namespace cppuvicorn::core
