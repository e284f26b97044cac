// SPDX-License-Identifier: BSD-3-Clause
// FakeTransport: an in-memory Transport for HttpConnection tests. It records what was flushed
// to the "kernel", closes, read pause/resume and deferred work, and has a settable clock.
// end_of_turn() plays the part of Server::run_deferred and the libuv close callback.
#pragma once

#include "core/http_connection.hpp"
#include "core/transport.hpp"

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace cppuvicorn::test {

class FakeTransport final : public core::Transport {
  public:
    enum class Close : std::uint8_t { kNone, kGraceful, kNow };

    void attach(core::HttpConnection& conn) { conn_ = &conn; }

    // ---- driving the connection, as TcpConnection would ----
    // As a socket read: the bytes lie in a read buffer that is reused (here: scribbled over)
    // once on_data returns, so a connection that kept a view into it reads garbage.
    void deliver(std::string_view bytes) {
        if (!reading_) throw std::logic_error("deliver() while reading is paused");
        read_buffer_.assign(bytes);
        connection().on_data(read_buffer_);
        std::fill(read_buffer_.begin(), read_buffer_.end(), '\xAA');
    }
    void eof() { connection().on_eof(); }
    // The peer read everything: unsent bytes reach written() and on_drained() is called.
    void drain() {
        written_ += unsent_;
        unsent_.clear();
        connection().on_drained();
    }
    // End of the loop turn: deferred flush, deferred process_pending, and the close callback.
    void end_of_turn() {
        if (std::exchange(resume_scheduled_, false)) connection().process_pending();
        if (std::exchange(flush_scheduled_, false)) flush();
        if (close_ != Close::kNone && !close_reported_) {
            close_reported_ = true;
            connection().on_closed();
        }
    }

    // ---- what the connection did ----
    const std::string& written() const { return written_; }
    std::string take_written() { return std::exchange(written_, {}); }
    bool reading() const { return reading_; }
    Close close_kind() const { return close_; }
    bool closed() const { return close_ != Close::kNone; }
    // linger_on_close() was called: the close would read and drop what the client still sends.
    bool lingers() const { return lingers_; }
    int close_calls() const { return close_calls_; }
    bool flush_scheduled() const override { return flush_scheduled_; }
    bool resume_scheduled() const { return resume_scheduled_; }
    int flushes() const { return flushes_; }
    int direct_writes() const { return direct_writes_; }
    int trims() const { return trims_; }

    // ---- knobs ----
    std::uint64_t clock_ms = 1'000'000;
    // While stalled, flushed bytes stay buffered (the kernel accepts nothing) until drain().
    bool stalled = false;

    // ---- Transport ----
    std::string& out() override { return out_; }
    void flush() override {
        ++flushes_;
        hand_over();
    }
    void schedule_flush() override { flush_scheduled_ = true; }
    // As TcpConnection: out() and `data` are handed over now, in one write.
    void write_direct(std::string_view data) override {
        ++direct_writes_;
        out_.append(data);
        hand_over();
    }
    void trim() override { ++trims_; }
    std::size_t buffered() const override { return out_.size() + unsent_.size(); }
    void pause_reading() override { reading_ = false; }
    void resume_reading() override { reading_ = true; }
    void close(bool now) override {
        ++close_calls_;
        if (closed()) return;
        if (now) {
            out_.clear();
            unsent_.clear();
        } else {
            // Everything already accepted is still written before the socket goes.
            written_ += unsent_ + out_;
            unsent_.clear();
            out_.clear();
        }
        close_ = now ? Close::kNow : Close::kGraceful;
        reading_ = false;
    }
    void linger_on_close() override {
        if (closed()) throw std::logic_error("linger_on_close() after close()");
        lingers_ = true;
    }
    void schedule_resume() override { resume_scheduled_ = true; }
    std::uint64_t now_ms() const override { return clock_ms; }

  private:
    // out() to the "kernel" (held while stalled); dropped once closed.
    void hand_over() {
        if (!closed()) (stalled ? unsent_ : written_) += out_;
        out_.clear();
    }
    core::HttpConnection& connection() {
        if (conn_ == nullptr) throw std::logic_error("FakeTransport is not attached");
        return *conn_;
    }

    bool lingers_ = false;
    core::HttpConnection* conn_ = nullptr;
    std::string read_buffer_;
    std::string out_;
    std::string unsent_;
    std::string written_;
    Close close_ = Close::kNone;
    int close_calls_ = 0;
    int flushes_ = 0;
    int direct_writes_ = 0;
    int trims_ = 0;
    bool close_reported_ = false;
    bool reading_ = true;
    bool flush_scheduled_ = false;
    bool resume_scheduled_ = false;
};

}  // namespace cppuvicorn::test
