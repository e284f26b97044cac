// SPDX-License-Identifier: BSD-3-Clause
// TcpConnection: one accepted libuv stream (TCP or UNIX) carrying an HttpConnection.
// Corked writes (try-write first, then one queued uv_write), read pause/resume, and a close
// lifecycle that ends exactly once, in the libuv close callback; before it, when asked, a
// lingering half-close that drops what the client still sends (see linger_on_close). On a TLS
// listener a TlsSession sits between the socket and the HttpConnection: reads are decrypted before
// on_data, and the corked plaintext is sealed into records when it is flushed. Plain TCP only tests
// a null pointer per read and per flush. No Python here.
#pragma once

#include "core/http_connection.hpp"
#include "core/tls.hpp"
#include "core/transport.hpp"

#include <uv.h>

#include <cstddef>
#include <memory>
#include <optional>
#include <string>
#include <string_view>

namespace cppuvicorn::core {

class Server;
struct MetricsSlot;

class TcpConnection final : public Transport {
  public:
    // Accepts a pending connection from `listener`; returns nullptr (and logs nothing) if the
    // accept failed. The connection deletes itself after its close callback.
    static TcpConnection* accept(Server& server, uv_stream_t* listener, bool unix_socket);
    // Takes over `fd`, a connection the server accepted itself; closes it if that fails.
    static TcpConnection* adopt(Server& server, int fd, bool unix_socket);

    HttpConnection& http() { return *http_; }

    // Transport
    std::string& out() override { return out_; }
    void flush() override;
    void trim() override;
    void schedule_flush() override;
    bool flush_scheduled() const override { return in_flush_list; }
    void reserve_out(std::size_t n) override;
    void release_out() override;
    void write_direct(std::string_view data) override;
    std::int64_t send_file(int fd, std::uint64_t offset, std::size_t len) override;
    std::size_t buffered() const override {
        return out_.size() + (tls_ != nullptr ? tls_->wire().size() : 0) +
               (req_ != nullptr ? req_->inflight.size() : 0);
    }
    void pause_reading() override;
    void resume_reading() override;
    void close(bool now) override;
    void linger_on_close() override { linger_ = !unix_socket_; }
    void schedule_resume() override;
    std::uint64_t now_ms() const override { return uv_hrtime() / 1000000; }
    const TlsSession* tls() const override { return tls_.get(); }

    // Bookkeeping for Server.
    std::size_t registry_index = 0;
    bool in_flush_list = false;
    bool in_resume_list = false;
    std::uint64_t hold_ticket = 0;  // Server::run_deferred: corked output held until this release
    std::size_t linger_index = 0;   // in Server's lingering list, while lingering

    // Lingering: past its deadline, or the server is closing. Ends it (see linger_on_close).
    bool linger_expired(std::uint64_t now_ms) const { return now_ms >= req_->linger_deadline_ms; }
    void end_linger();

  private:
    TcpConnection(Server& server, bool unix_socket);
    ~TcpConnection() = default;
    void start();  // accepted: addresses, the HTTP state machine, the registry, reading
    uv_stream_t* stream() { return reinterpret_cast<uv_stream_t*>(&handle_); }
    uv_handle_t* handle() { return reinterpret_cast<uv_handle_t*>(&handle_); }

    static void on_uv_alloc(uv_handle_t* h, std::size_t, uv_buf_t* buf) noexcept;
    static void on_uv_read(uv_stream_t* s, ssize_t nread, const uv_buf_t* buf) noexcept;
    static void on_uv_write(uv_write_t* req, int status) noexcept;
    static void on_uv_shutdown(uv_shutdown_t* req, int status) noexcept;
    static void on_uv_close(uv_handle_t* h) noexcept;
    static void on_linger_read(uv_stream_t* s, ssize_t nread, const uv_buf_t* buf) noexcept;
    void after_write();
    void begin_linger();
    void close_now();
    void read_tls(char* buf, std::size_t len, std::size_t cap);
    void send_tls_goodbye();

    union {
        uv_tcp_t tcp;
        uv_pipe_t pipe;
    } handle_{};
    Server& server_;
    std::optional<HttpConnection> http_;  // in place: one allocation per connection, not two
    std::unique_ptr<TlsSession> tls_;     // null on plain TCP
    // The queued write's request and bytes, or at the end the shutdown's request and the
    // linger clock: never both at once (shutdown waits for the write, and nothing is written
    // once closing). Made when a write does not go out at once, or at the shutdown, and
    // dropped when the queued writes are done (on_uv_write): most connections, and idle
    // WebSockets above all, hold none, and it is 240 bytes.
    struct Request {
        union {
            uv_write_t write;
            uv_shutdown_t shutdown;
        };
        std::string inflight;  // owned by the pending uv_write
        std::uint64_t linger_started_ms = 0;
        std::uint64_t linger_deadline_ms = 0;
    };
    std::unique_ptr<Request> req_;
    std::string out_;  // corked output not yet handed to the kernel
    static constexpr std::size_t kKeepInflightBytes = 65536;
    bool unix_socket_;
    bool writing_ = false;
    bool reading_ = false;
    bool close_after_flush_ = false;
    bool closing_ = false;
    bool linger_ = false;     // linger_on_close() was called
    bool lingering_ = false;  // half-closed, discarding input: no longer the HttpConnection's
    MetricsSlot* metrics_;    // null: metrics off
};

}  // namespace cppuvicorn::core
