// SPDX-License-Identifier: BSD-3-Clause
// Transport: what HttpConnection needs from a byte stream. TcpConnection implements it on a
// libuv stream; unit tests implement it in memory. No Python here.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

namespace cppuvicorn::core {

class TlsSession;

struct PeerAddress {
    std::string host;  // numeric IP, or the socket path for UNIX sockets
    int port = 0;      // 0 for UNIX sockets
    bool unix_socket = false;
};

// Payloads at least this big go out through Transport::write_direct, not copied into out().
inline constexpr std::size_t kDirectWriteMin = 16384;

class Transport {
  public:
    // The output buffer: append freely, then call flush() (or let the owner flush it at the
    // end of the loop turn, see schedule_flush).
    virtual std::string& out() = 0;
    // Write what is in out() now (try-write, then queue the rest).
    virtual void flush() = 0;
    // Flush out() before the end of this loop turn; lets writes of one turn coalesce.
    virtual void schedule_flush() = 0;
    // Whether out() is already due to be flushed before the end of this loop turn: something
    // written this turn is waiting for that flush, and a write now can go out with it.
    virtual bool flush_scheduled() const { return false; }
    // Room for at least `n` bytes in out(), whose content stays (TcpConnection: a spare buffer
    // from the server's pool when it has one).
    virtual void reserve_out(std::size_t n) { out().reserve(n); }
    // out() is empty and not needed for now: its memory goes (TcpConnection: to the pool).
    virtual void release_out() {
        if (out().empty()) std::string().swap(out());
    }
    // The connection is idle between requests: drop buffers that the next response can make
    // again (memory per idle keep-alive connection).
    virtual void trim() {}
    // Appends `data` after out() and tries to hand both to the kernel now, copying only what
    // it does not take (for large bodies: one writev instead of a copy into out()). The caller
    // flushes or schedules as after appending to out().
    virtual void write_direct(std::string_view data) { out().append(data); }
    // Sends up to `len` bytes of the regular file `fd` from `offset` straight to the socket
    // (sendfile(2), no copy), when nothing is buffered before it (buffered() == 0). Returns the
    // bytes the kernel took (0: the socket is full), or -1 when this transport cannot send a
    // file directly (TLS, tests): the caller then copies the file through out(). A socket error
    // closes the transport and returns 0.
    virtual std::int64_t send_file(int fd, std::uint64_t offset, std::size_t len) {
        (void)fd;
        (void)offset;
        (void)len;
        return -1;
    }
    // Bytes accepted but not yet handed to the kernel.
    virtual std::size_t buffered() const = 0;
    virtual void pause_reading() = 0;
    virtual void resume_reading() = 0;
    // Close once everything buffered has been written (or now, if `now`).
    virtual void close(bool now) = 0;
    // Call before close(false) when the client may still be sending (a body not read to its
    // end, pipelined bytes, input cut off by a protocol error): after the half-close, read and
    // discard its input for a while instead of closing with unread bytes, which makes the
    // kernel answer with a reset that can destroy the response before the client reads it.
    virtual void linger_on_close() {}
    // Ask to be called back (HttpConnection::process_pending) at the end of this loop turn.
    virtual void schedule_resume() = 0;
    // Milliseconds on a monotonic clock.
    virtual std::uint64_t now_ms() const = 0;
    // The TLS session under this stream, or nullptr for plain TCP.
    virtual const TlsSession* tls() const { return nullptr; }

  protected:
    ~Transport() = default;
};

}  // namespace cppuvicorn::core
