// SPDX-License-Identifier: BSD-3-Clause
// The connection fuzzers' transport: tests/unit/support/fake_transport.hpp driven by a schedule
// (reads, loop turns, drains, stalls, deadlines, EOF), with the "nothing after close" check.
// Each read reaches the connection from a buffer of its own that dies right after the call, so
// ASan sees any use of a read the connection kept. What the kernel would take is handed to
// `on_wire` in order (the peer); a stalled socket keeps it until drain().
#pragma once

#include "core/http_connection.hpp"
#include "core/transport.hpp"

#include "tests/fuzz/fuzz_check.hpp"
#include <cstdint>
#include <cstring>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <utility>

namespace cppuvicorn::fuzz {

class FuzzTransport final : public core::Transport {
  public:
    core::HttpConnection* conn = nullptr;
    std::function<void(std::string_view)> on_wire;  // the peer; unset: the bytes are dropped
    std::uint64_t clock_ms = 1'000'000;
    bool stalled = false;

    // ---- the socket and the loop ----
    bool can_deliver() const { return reading_ && !closed(); }
    void deliver(std::string_view bytes) {
        FUZZ_CHECK(can_deliver());
        auto buf = std::make_unique<char[]>(bytes.size());
        std::memcpy(buf.get(), bytes.data(), bytes.size());
        conn->on_data({buf.get(), bytes.size()});
        buf.reset();
        check();
    }
    void eof() {
        if (closed()) return;  // TcpConnection stops reading when it closes
        conn->on_eof();
        check();
    }
    void drain() {
        send(unsent_);
        unsent_.clear();
        if (!closed()) conn->on_drained();
        check();
    }
    void end_of_turn() {
        if (std::exchange(resume_scheduled_, false) && !closed()) conn->process_pending();
        if (std::exchange(flush_scheduled_, false)) flush();
        if (closed() && !close_reported_) {
            close_reported_ = true;
            conn->on_closed();
        }
        check();
    }
    void deadline(std::uint64_t advance_ms) {
        clock_ms += advance_ms;
        std::uint64_t d = conn->deadline_ms();
        if (!closed() && d != 0 && clock_ms >= d) conn->on_deadline();
        check();
    }
    // Nothing may reach the wire once the transport was told to close. After a graceful
    // close TcpConnection still writes what sits in out() (close_after_flush_), so nothing may
    // be appended then; after close(now) it drops out() on the next flush, as we do here.
    void check() {
        if (!closed()) return;
        FUZZ_CHECK(abortive_ || out_.empty());
        out_.clear();
    }

    bool closed() const { return closed_; }
    bool abortive() const { return abortive_; }  // closed with close(true)
    bool close_reported() const { return close_reported_; }
    bool idle_loop() const { return !resume_scheduled_ && !flush_scheduled_; }
    bool reading() const { return reading_; }

    // ---- Transport ----
    std::string& out() override { return out_; }
    void flush() override {
        check();
        if (stalled) {
            unsent_ += out_;
        } else {
            send(unsent_);
            unsent_.clear();
            send(out_);
        }
        out_.clear();
    }
    void schedule_flush() override {
        check();
        flush_scheduled_ = true;
    }
    bool flush_scheduled() const override { return flush_scheduled_; }
    // As TcpConnection: out() and `data` go to the kernel now (or wait with it when stalled).
    void write_direct(std::string_view data) override {
        out_.append(data);
        flush();
    }
    std::size_t buffered() const override { return out_.size() + unsent_.size(); }
    void pause_reading() override { reading_ = false; }
    void resume_reading() override {
        if (!closed()) reading_ = true;
    }
    void close(bool now) override {
        if (closed()) return;
        if (!now) {
            send(unsent_);
            send(out_);
        }
        unsent_.clear();
        out_.clear();
        closed_ = true;
        abortive_ = now;
        reading_ = false;
    }
    void schedule_resume() override { resume_scheduled_ = true; }
    std::uint64_t now_ms() const override { return clock_ms; }

  private:
    void send(std::string_view bytes) {
        if (on_wire && !bytes.empty()) on_wire(bytes);
    }

    std::string out_;
    std::string unsent_;
    bool closed_ = false;
    bool abortive_ = false;
    bool close_reported_ = false;
    bool reading_ = true;
    bool flush_scheduled_ = false;
    bool resume_scheduled_ = false;
};

}  // namespace cppuvicorn::fuzz
