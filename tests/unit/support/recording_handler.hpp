// SPDX-License-Identifier: BSD-3-Clause
// RecordingHandler: the application side of HttpConnection in unit tests. It is both the
// per-server ConnectionEvents and the (single, reused) per-request RequestHandler, records
// every upward call as a short string, and can be scripted to answer at a given moment.
#pragma once

#include "core/http_connection.hpp"
#include "core/request_handler.hpp"

#include <cstdint>
#include <functional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace cppuvicorn::test {

// A copy of a RequestHead: the original's views die with the request.
struct RecordedHead {
    std::string method;
    std::string target;
    std::vector<std::pair<std::string, std::string>> headers;
    int http_major = 0;
    int http_minor = 0;
    bool keep_alive = false;
    bool expect_continue = false;
    bool upgrade = false;
    bool has_body = false;
};

struct Response {
    int status = 200;
    std::vector<std::pair<std::string, std::string>> headers;
    std::string body;

    // A response with a content-length matching its body.
    static Response text(std::string body, int status = 200) {
        Response r{status, {{"content-length", std::to_string(body.size())}}, std::move(body)};
        return r;
    }
};

class RecordingHandler final : public core::ConnectionEvents, public core::RequestHandler {
  public:
    enum class Moment : std::uint8_t { kNever, kOnHead, kOnBodyComplete };

    // ---- scripting ----
    // Answer every request at `when`: start_response, then one final write_body.
    void respond_at(Moment when, Response r = Response::text("ok")) {
        when_ = when;
        script_ = std::move(r);
    }
    // Answer every request from on_request with respond_simple(status) and return nullptr.
    void refuse_with(int status, std::string body) {
        refuse_status_ = status;
        refuse_body_ = std::move(body);
    }
    // Runs at the end of on_request (after a kOnHead response, if any).
    std::function<void(core::HttpConnection&)> on_head_hook;

    // ---- answering the current request from the test ----
    core::WriteResult start(const Response& r) {
        std::vector<core::Header> hs;
        for (const auto& [name, value] : r.headers)
            hs.push_back({name, value});
        return record(conn->start_response(r.status, hs));
    }
    core::WriteResult write(std::string_view data, bool more) {
        return record(conn->write_body(data, more));
    }
    core::WriteResult respond(const Response& r) {
        core::WriteResult started = start(r);
        if (started != core::WriteResult::kOk) return started;
        return write(r.body, false);
    }

    // ---- what happened ----
    std::vector<std::string> events;
    std::vector<RecordedHead> heads;
    std::vector<core::WriteResult> results;  // of every start/write made through this class
    core::HttpConnection* conn = nullptr;    // of the latest request
    bool active() const { return active_; }
    int count(std::string_view event) const {
        int n = 0;
        for (const auto& e : events)
            n += e == event ? 1 : 0;
        return n;
    }

    // ---- core::ConnectionEvents ----
    core::RequestHandler* on_request(core::HttpConnection& c,
                                     const core::RequestHead& head) noexcept override {
        if (active_) events.push_back("BUG: on_request before the previous release");
        conn = &c;
        heads.push_back(copy(head));
        events.push_back(std::string("head ").append(head.method).append(" ").append(head.target));
        if (refuse_status_ != 0) {
            c.respond_simple(refuse_status_, refuse_body_);
            return nullptr;
        }
        active_ = true;
        if (when_ == Moment::kOnHead) respond(script_);
        if (on_head_hook) on_head_hook(c);
        return this;
    }
    void on_protocol_error(core::HttpConnection&, int status,
                           std::string_view detail) noexcept override {
        events.push_back("error " + std::to_string(status));
        last_error_detail = std::string(detail);
    }
    void on_timeout(core::HttpConnection&, int status, std::string_view detail) noexcept override {
        events.push_back("timeout " + std::to_string(status));
        last_error_detail = std::string(detail);
    }
    void on_connection_idle(core::HttpConnection&) noexcept override { events.push_back("idle"); }
    void on_connection_closed(core::HttpConnection&) noexcept override {
        events.push_back("closed");
    }
    void on_tls_error(core::HttpConnection&, std::string_view detail,
                      bool in_handshake) noexcept override {
        events.push_back(in_handshake ? "tls_error handshake" : "tls_error");
        last_error_detail = std::string(detail);
    }
    std::string last_error_detail;

    // ---- core::RequestHandler ----
    void on_body(std::string_view chunk) noexcept override {
        check_active("body");
        events.push_back(std::string("body ").append(chunk));
    }
    void on_body_complete() noexcept override {
        check_active("body_complete");
        events.push_back("body_complete");
        if (when_ == Moment::kOnBodyComplete) respond(script_);
    }
    void on_writable() noexcept override {
        check_active("writable");
        events.push_back("writable");
    }
    void on_disconnect() noexcept override {
        check_active("disconnect");
        events.push_back("disconnect");
    }
    void on_release() noexcept override {
        check_active("release");
        events.push_back("release");
        active_ = false;
    }

  private:
    void check_active(const char* what) {
        if (!active_) events.push_back(std::string("BUG: ") + what + " without an active request");
    }
    core::WriteResult record(core::WriteResult r) {
        results.push_back(r);
        return r;
    }
    static RecordedHead copy(const core::RequestHead& h) {
        RecordedHead r{
            std::string(h.method), std::string(h.target), {},        h.http_major, h.http_minor,
            h.keep_alive,          h.expect_continue,     h.upgrade, h.has_body};
        for (const auto& [name, value] : h.headers)
            r.headers.emplace_back(name, value);
        return r;
    }

    Moment when_ = Moment::kNever;
    Response script_;
    int refuse_status_ = 0;
    std::string refuse_body_;
    bool active_ = false;
};

}  // namespace cppuvicorn::test
