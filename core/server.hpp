// SPDX-License-Identifier: BSD-3-Clause
// Server: listeners, the registry of open connections, deferred per-turn work (flushes and
// pipelined requests), idle deadlines and graceful shutdown, on a libuv loop that somebody
// else runs (the ASGI bridge nests it in asyncio). No Python here.
#pragma once

#include "core/buffer_pool.hpp"
#include "core/config.hpp"
#include "core/date_cache.hpp"
#include "core/request_handler.hpp"
#include "core/response_writer.hpp"
#include "core/transport.hpp"

#include <uv.h>

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace cppuvicorn::core {

class TcpConnection;
class TlsContext;
struct ConnectionContext;

// How the server asks whoever runs the loop for attention.
class LoopHooks {
  public:
    // Something was queued outside uv_run (a write, a close, read start/stop, deferred work):
    // call Server::run_once() soon, at the latest at the end of this loop turn.
    virtual void request_run() noexcept = 0;
    // A listener opened with accepts_per_turn > 0 has connections waiting: call
    // Server::accept_turn() once the work this turn started (the tasks of the requests it
    // read) has had its first go, not before.
    virtual void request_accept() noexcept = 0;
    // Output was held back for pipelined requests whose handlers were just started: call
    // Server::release_held() once for each call, after everything the loop has queued so far
    // (their first steps), in the order of the calls (asyncio's call_soon is FIFO).
    virtual void request_release() noexcept = 0;
    // The bytes of one read have been parsed (called inside uv_run), or the pipelined
    // requests of run_deferred let in (before its flushes): do what was kept for this moment
    // (the bridge: the first steps of the handlers just started, and answers to handlers that
    // waited for body). True if there was any. What the handlers answer leaves in this loop
    // pass's writes.
    virtual bool after_reads() noexcept = 0;

  protected:
    ~LoopHooks() = default;
};

class Server {
  public:
    // The most the pool of spare output buffers holds (see BufferPool).
    static constexpr std::size_t kOutPoolBytes = std::size_t{4} << 20;

    Server(uv_loop_t* loop, ServerConfig config, ConnectionEvents& events, LoopHooks& hooks);
    ~Server();
    Server(const Server&) = delete;
    Server& operator=(const Server&) = delete;

    // Serve TLS on every listener (call before listening); nullptr for plain TCP.
    void set_tls(std::shared_ptr<const TlsContext> tls) { tls_ = std::move(tls); }
    const TlsContext* tls_context() const { return tls_.get(); }

    // Bind and listen. Return 0 or a negative libuv error code.
    int listen_tcp(const std::string& host, int port, int backlog, PeerAddress* bound);
    int listen_unix(const std::string& path, int backlog);
    // `accepts_per_turn` > 0: take at most that many connections per loop turn (the listening
    // socket is shared with other processes: a worker whose loop is about to block in a handler
    // must not take the whole queue with it, as libuv's accept-until-EAGAIN would); 0: every
    // pending connection, as libuv does.
    int listen_fd(int fd, PeerAddress* bound, std::size_t accepts_per_turn = 0);
    void stop_listening();

    // Runs deferred work, one non-blocking libuv pass, and deferred work again.
    void run_once();
    // The answer to one LoopHooks::request_release(): flushes what was held back for it.
    void release_held();
    // Accepts what the polled listeners have waiting (see LoopHooks::request_accept), then
    // run_once().
    void accept_turn();
    // Closes connections whose idle deadline passed; call a few times a second.
    void sweep();
    // Graceful: idle connections close now, busy ones after their current response.
    void shutdown();
    // Closes every connection now.
    void close_all();

    std::size_t connection_count() const { return connections_.size(); }
    std::size_t lingering_count() const { return lingering_.size(); }
    std::size_t listener_count() const { return listeners_.size(); }
    const ServerConfig& config() const { return config_; }
    StatusLines& status_lines() { return status_lines_; }
    uv_loop_t* loop() const { return loop_; }

    // ---- for TcpConnection ----
    uv_buf_t borrow_read_buffer();
    void defer_flush(TcpConnection* c);
    void after_read();  // a read's bytes are parsed (in uv_run)
    void defer_resume(TcpConnection* c);
    void note_uv_work();
    void add(TcpConnection* c);
    void remove(TcpConnection* c);
    // A lingering connection (TcpConnection::linger_on_close) is out of the registry, so it
    // counts for no limit; sweep() ends it at its deadline, shutdown() and close_all() at once.
    // false: the server is shutting down, close it instead.
    bool add_lingering(TcpConnection* c);
    void remove_lingering(TcpConnection* c);
    ConnectionContext& context() { return *ctx_; }
    BufferPool& out_pool() { return out_pool_; }

  private:
    struct Listener;
    static void on_uv_connection(uv_stream_t* server, int status) noexcept;
    static void on_uv_poll(uv_poll_t* handle, int status, int events) noexcept;
    static void on_listener_closed(uv_handle_t* handle) noexcept;
    void accept(Listener& l);
    void accept_polled(Listener& l);
    void run_deferred();
    void flush_deferred();
    void stop_lingering();  // shutdown(), close_all(): end the lingering, let no more start

    uv_loop_t* loop_;
    ServerConfig config_;
    ConnectionEvents& events_;
    LoopHooks& hooks_;
    StatusLines status_lines_;
    DateCache date_;
    std::unique_ptr<ConnectionContext> ctx_;
    std::shared_ptr<const TlsContext> tls_;
    std::vector<Listener*> listeners_;
    std::vector<TcpConnection*> connections_;
    std::vector<TcpConnection*> lingering_;
    bool stopping_ = false;  // shutdown() or close_all() was called: no new lingering
    std::vector<TcpConnection*> flush_list_;
    std::vector<TcpConnection*> flush_batch_;  // flush_deferred: the flush_list_ being flushed
    std::uint64_t flush_since_ns_ = 0;         // uv_hrtime() when flush_list_ last filled
    std::vector<TcpConnection*> resume_list_;
    std::vector<TcpConnection*> resume_batch_;  // run_deferred: the resume_list_ being run
    std::vector<TcpConnection*> resumed_;       // run_deferred: resumed, awaiting a first answer
    std::unique_ptr<char[]> read_buffer_;
    BufferPool out_pool_{kOutPoolBytes};
    bool in_uv_run_ = false;
    bool in_first_steps_ = false;  // run_deferred is resuming and stepping; its flushes follow
    std::uint64_t releases_requested_ = 0;  // LoopHooks::request_release() calls so far
    std::uint64_t releases_done_ = 0;       // release_held() calls so far
    bool run_requested_ = false;
    bool accept_requested_ = false;
};

}  // namespace cppuvicorn::core
