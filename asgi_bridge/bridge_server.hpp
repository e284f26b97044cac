// SPDX-License-Identifier: BSD-3-Clause
// BridgeServer: a core::Server nested in the running asyncio loop, and the ConnectionEvents
// that turn each request into an HttpCycle running in its own asyncio Task. The libuv loop is
// driven from asyncio: add_reader(uv_backend_fd) runs one non-blocking libuv pass when its
// sockets are ready, call_soon when the core queued work outside uv_run, and a 0.1 s tick for
// idle deadlines. The GIL is held throughout; nothing here blocks.
#pragma once

#include "asgi_bridge/http_cycle.hpp"
#include "asgi_bridge/live_list.hpp"
#include "asgi_bridge/scope.hpp"
#include "asgi_bridge/websocket_cycle.hpp"
#include "core/server.hpp"
#include "core/tls.hpp"

#include <Python.h>
#include <uv.h>

#include <memory>
#include <string>
#include <vector>

namespace cppuvicorn::asgi {

struct BridgeOptions {
    core::ServerConfig core;
    std::string root_path;
    std::string scheme = "http";
    std::string asgi_version = "3.0";  // "2.0" for ASGI 2 apps (wrapped), as Uvicorn reports
    long limit_concurrency = 0;        // 0: no limit
    bool ws = true;                    // WebSocket upgrades (false: served as plain HTTP)
    // --access-log-format: the access log is called once the response ends, as
    // access_log(scope, status, response_headers, body_bytes, duration_ns), instead of at its
    // start with Uvicorn's five arguments.
    bool access_log_timed = false;
    // The error logger's own level is TRACE: log "HTTP connection made/lost" as Uvicorn does.
    bool trace_connections = false;
    std::shared_ptr<const core::TlsContext> tls;  // TLS on every listener, or null
    // --proxy-headers: X-Forwarded-* from peers in --forwarded-allow-ips rewrite scheme/client.
    bool proxy_headers = false;
    core::TrustedHosts forwarded_allow_ips;
};

// Per-connection Python values, shared by the connection and the cycles it carried (a cycle
// may outlive its place on the connection: an app that raises after its response completed
// still closes the connection, as in Uvicorn). Refcounted; `conn` is cleared on close.
struct ConnData {
    core::HttpConnection* conn = nullptr;
    PyObject* client = nullptr;  // (host, port) or None; made again after an idle spell
    PyObject* server = nullptr;  // (host, port) or (path, None)
    PyObject* tls = nullptr;     // the ASGI "tls" extension dict, or nullptr without TLS
    bool proxy_trusted = false;  // the peer may set X-Forwarded-* (decided once per connection)
    int refs = 1;
    void retain() { ++refs; }
    void release();
};

class BridgeServer final : public core::ConnectionEvents, public core::LoopHooks {
  public:
    // All Python arguments are borrowed and kept alive (new references taken).
    BridgeServer(PyObject* loop, PyObject* app, PyObject* run_asgi, PyObject* state,
                 PyObject* access_log, PyObject* error_log, BridgeOptions options);
    ~BridgeServer();

    // ---- Python-facing (pybind11) ----
    void start();
    void stop_listening() { server_.stop_listening(); }
    void shutdown() { server_.shutdown(); }
    void close();
    void cancel_tasks();
    core::Server& core() { return server_; }
    std::size_t connections() const { return server_.connection_count(); }
    std::size_t tasks() const { return tasks_; }
    std::uint64_t total_requests() const { return total_requests_; }
    // The loop callbacks (bound as Python callables in module.cpp).
    void run_from_loop();
    void tick_from_loop();
    void accept_from_loop();
    void release_from_loop();

    // ---- for HttpCycle ----
    PyObject* create_future();  // new reference or nullptr
    // fut.done() is False: 1; True: 0; an error: -1 (reported).
    int future_pending(PyObject* fut, const char* where);
    // fut.set_result(value); false on an error (reported).
    bool set_future_result(PyObject* fut, PyObject* value, const char* where);
    // The same; inside a read pass, the callbacks it schedules (the waiting Task's wakeup) are
    // kept and run by after_reads() instead of a loop turn later.
    bool set_future_result_kept(PyObject* fut, PyObject* value, const char* where);
    void log_access(PyObject* scope, core::HttpConnection& conn, int status);
    // With access_log_timed: one line at the end of a response (see BridgeOptions).
    bool access_log_timed() const { return access_log_ != nullptr && options_.access_log_timed; }
    void log_access_done(PyObject* scope, int status, PyObject* headers, std::uint64_t body_bytes,
                         std::uint64_t start_ns);
    static std::uint64_t now_ns();
    // Uvicorn's "<client> - HTTP connection made" style lines, at TRACE (with trace_connections).
    void trace_connection(core::HttpConnection& conn, const char* what);
    void log_error(PyObject* level, const char* message);
    void report_python_error(const char* where);  // logs or stashes the current Python error
    void on_task_started(HttpCycle* c);
    void on_task_finished(HttpCycle* c);
    void on_response_complete() { ++total_requests_; }
    // Inside a read pass: keeps the cycle (a reference) to answer its waiting receive() in
    // after_reads(), and returns true; elsewhere false (answer now).
    bool wake_later(HttpCycle* c);
    const core::ServerConfig& config() const { return server_.config(); }

    // ---- core::ConnectionEvents ----
    core::RequestHandler* on_request(core::HttpConnection& conn,
                                     const core::RequestHead& head) noexcept override;
    void on_protocol_error(core::HttpConnection& conn, int status,
                           std::string_view detail) noexcept override;
    void on_timeout(core::HttpConnection& conn, int status,
                    std::string_view detail) noexcept override;
    void on_connection_opened(core::HttpConnection& conn) noexcept override;
    void on_connection_idle(core::HttpConnection& conn) noexcept override;
    void on_connection_closed(core::HttpConnection& conn) noexcept override;
    void on_tls_error(core::HttpConnection& conn, std::string_view detail,
                      bool in_handshake) noexcept override;
    // ---- core::LoopHooks ----
    void request_run() noexcept override;
    void request_accept() noexcept override;
    void request_release() noexcept override;
    bool after_reads() noexcept override;

    // ---- WebSocket sessions (defined in websocket_cycle.cpp) ----
    core::WebSocketHandler* on_websocket(core::HttpConnection& conn,
                                         const core::RequestHead& head) noexcept override;
    // The session's Task running app(scope, receive, send), watched by ws_task_done: new
    // reference, or nullptr once the failure is logged (the caller then finishes the session).
    PyObject* start_ws_task(PyObject* scope, PyObject* receive, PyObject* send);
    // send._task_done(task): the session's Task ended; Uvicorn's run_asgi policy in Python.
    void ws_task_done(PyObject* send, PyObject* outcome);
    void on_ws_task_started(WsCycle* c);
    void on_ws_task_finished(WsCycle* c);
    PyObject* error_logger() const { return error_log_; }

    void set_callbacks(PyObject* run_cb, PyObject* tick_cb, PyObject* accept_cb,
                       PyObject* release_cb);
    // False once this server is destroyed; held by the loop callbacks.
    std::shared_ptr<bool> alive_token() const { return alive_; }

  private:
    ConnData& conn_data(core::HttpConnection& conn);
    // New references: the scope's "server" tuple (shared by the connections of a listener) and
    // "client" tuple (its host str shared with the previous connection's when equal).
    PyObject* server_tuple(const core::PeerAddress& local);
    PyObject* client_tuple(const core::PeerAddress& peer);
    void after_run();
    void schedule_tick();
    void reraise_stashed();
    PyObject* spawn(PyObject* coro);  // new reference to the Task, or nullptr
    // Inside the loop's callbacks (the window): Task() with its first step kept back (see
    // spawn_stepped), run by after_reads(). New reference to the Task, or nullptr.
    PyObject* spawn_stepped(PyObject* const* args, PyObject* kwnames, PyObject* context);
    void wake_kept_receivers();  // answers the receive() calls wake_later kept
    void run_kept_calls();       // runs the callbacks set_future_result_kept kept
    // Sets the loop instance's call_soon to the catcher: the loop's instance dict (a new
    // reference, for unshadow_call_soon), or nullptr (and no error) when that is not possible.
    PyObject* shadow_call_soon();
    void unshadow_call_soon(PyObject* dict);
    void after_reads_elsewhere();  // on close: wakes now, and hands the steps to the loop

  public:
    // The loop's call_soon while spawn_stepped makes a Task: keeps the Task's first step.
    PyObject* catch_call_soon(PyObject* const* args, std::size_t nargsf, PyObject* kwnames);

  private:
    PyObject* call_soon_catcher_ = nullptr;  // a builtin calling catch_call_soon; null: off
    PyObject* stepped_context_ = nullptr;    // the context of the Task being made (borrowed)
    PyObject* captured_step_ = nullptr;      // its first step, kept by catch_call_soon
    PyObject* waking_future_ = nullptr;      // the future set_future_result_kept sets (borrowed)
    // A call_soon(callback[, arg], context=context) kept from the loop (owned references).
    struct KeptCall {
        PyObject* callback;
        PyObject* arg;  // nullptr: none
        PyObject* context;
    };
    void run_kept(KeptCall k);       // runs it in its context, then releases it
    void schedule_kept(KeptCall k);  // hands it to the loop's call_soon, then releases it
    void release_kept(const KeptCall& k);
    std::vector<KeptCall> kept_calls_;   // the done callbacks of waking_future_
    std::vector<KeptCall> kept_batch_;   // the ones run_kept_calls runs
    std::vector<KeptCall> first_steps_;  // Tasks' first steps, in the order the Tasks were made
    std::vector<HttpCycle*> wakes_;      // see wake_later (each holds a reference)
    bool running_steps_ = false;
    bool waking_kept_ = false;  // after_reads() is in wake_kept_receivers()
    // True inside the loop's callbacks into this server (run, tick, accept, release): no Task
    // is current there, and after_reads() runs before they return.
    bool in_window_ = false;
    struct Window {
        explicit Window(BridgeServer& s) : s_(s) { s_.in_window_ = true; }
        ~Window() { s_.in_window_ = false; }
        Window(const Window&) = delete;
        Window& operator=(const Window&) = delete;
        BridgeServer& s_;
    };
    // loop.call_soon(callback, context=context): new reference to the Handle, or nullptr.
    PyObject* call_soon(PyObject* callback, PyObject* context);
    PyObject* call_soon(PyObject* callback) { return call_soon(callback, base_context_); }

    uv_loop_t uv_loop_{};
    core::Server server_;
    PyObject* loop_;
    PyObject* app_;
    PyObject* run_asgi_;
    PyObject* state_;
    PyObject* access_log_;
    PyObject* error_log_;
    PyObject* loop_create_future_ = nullptr;
    // NOTE(perf): asyncio.Future and its done / set_result descriptors, called directly on
    // futures of exactly that type (no method lookup per call); and with `direct_futures_`
    // (the loop's create_future is asyncio's or uvloop's own, both Future(loop=loop)), futures
    // are made without the loop's Python-level method.
    PyObject* future_type_ = nullptr;
    PyObject* future_done_ = nullptr;
    PyObject* future_set_result_ = nullptr;
    PyObject* kw_loop_ = nullptr;
    bool direct_futures_ = false;
    PyObject* loop_call_soon_ = nullptr;
    PyObject* loop_call_later_ = nullptr;
    PyObject* task_type_ = nullptr;    // asyncio.Task
    PyObject* create_task_ = nullptr;  // loop.create_task, when the app set a task factory
    PyObject* loop_get_task_factory_ = nullptr;
    // The context the server was made in (the serving task's). Every request's Task runs in a
    // copy of it, and the loop callbacks scheduled here run in it, wherever they were scheduled
    // from: a request's contextvars never reach the next request or a log line made for it.
    PyObject* base_context_ = nullptr;
    PyObject* kw_context_ = nullptr;  // ("context",), vectorcall keyword names
    PyObject* asgi_template_ = nullptr;
    PyObject* scheme_ = nullptr;
    PyObject* root_path_ = nullptr;
    PyObject* http_template_ = nullptr;  // make_http_scope_template(scheme_, root_path_, …)
    PyObject* server_cert_ = nullptr;    // with TLS: the server's certificate (PEM str)
    PyObject* run_cb_ = nullptr;
    PyObject* tick_cb_ = nullptr;
    PyObject* accept_cb_ = nullptr;
    PyObject* release_cb_ = nullptr;
    PyObject* tick_handle_ = nullptr;
    PyObject* stashed_type_ = nullptr;  // KeyboardInterrupt/SystemExit raised in a callback
    PyObject* stashed_value_ = nullptr;
    PyObject* stashed_tb_ = nullptr;
    BridgeOptions options_;
    std::shared_ptr<bool> alive_ = std::make_shared<bool>(true);
    LiveList<HttpCycle, CycleLinks, http_cycle_links> live_;  // tasks still running
    LiveList<WsCycle, WsCycleLinks, ws_cycle_links> live_ws_;
    PyObject* ws_task_done_ = nullptr;      // cppuvicorn._asgi.ws_task_done
    PyObject* await_ws_ = nullptr;          // cppuvicorn._asgi.await_ws
    PyObject* callback_context_ = nullptr;  // one Context for every session's done callback
    PyObject* ws_asgi_template_ = nullptr;  // {"version": "3.0", "spec_version": "2.4"}
    PyObject* ws_scheme_ = nullptr;         // "ws" / "wss"
    // Shared scope values (see server_tuple / client_tuple): the last ones made.
    PyObject* server_tuple_ = nullptr;
    std::string server_tuple_host_;
    int server_tuple_port_ = 0;
    bool server_tuple_unix_ = false;
    PyObject* client_host_ = nullptr;
    std::string client_host_text_;
    std::size_t tasks_ = 0;
    std::uint64_t total_requests_ = 0;
    int backend_fd_ = -1;
    bool run_scheduled_ = false;
    bool started_ = false;
    bool closed_ = false;
};

}  // namespace cppuvicorn::asgi
