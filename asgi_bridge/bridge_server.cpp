// SPDX-License-Identifier: BSD-3-Clause
#include "asgi_bridge/bridge_server.hpp"

#include "asgi_bridge/py_names.hpp"
#include "core/metrics.hpp"

#include <pybind11/pybind11.h>

#include <chrono>
#include <cstring>
#include <string>
#include <utility>
#include <vector>

namespace cppuvicorn::asgi {

namespace n = py_names;

namespace {
constexpr double kTickSeconds = 0.1;

// True if `loop`'s class takes create_future from asyncio.BaseEventLoop or uvloop.Loop: both
// return Future(loop=loop). A loop class of its own (or a subclass that overrides the method)
// is called as it is.
bool standard_create_future(PyObject* loop) {
    PyObject* mine =
        PyObject_GetAttrString(reinterpret_cast<PyObject*>(Py_TYPE(loop)), "create_future");
    if (mine == nullptr) {
        PyErr_Clear();
        return false;
    }
    bool standard = false;
    for (auto [module, cls] :
         {std::pair{"asyncio", "BaseEventLoop"}, std::pair{"uvloop", "Loop"}}) {
        // Only a module already imported (borrowed from sys.modules): the loop's own is.
        PyObject* mod = PyDict_GetItemString(PyImport_GetModuleDict(), module);
        PyObject* type = mod != nullptr ? PyObject_GetAttrString(mod, cls) : nullptr;
        PyObject* theirs =
            type != nullptr ? PyObject_GetAttrString(type, "create_future") : nullptr;
        PyErr_Clear();
        standard = standard || (theirs != nullptr && theirs == mine);
        Py_XDECREF(theirs);
        Py_XDECREF(type);
    }
    Py_DECREF(mine);
    return standard;
}

// A builtin standing in for loop.call_soon while BridgeServer::spawn_stepped makes a Task or
// set_future_result_kept wakes a waiter; its self is a capsule holding the server (which owns
// the builtin).
PyObject* call_soon_catcher(PyObject* self, PyObject* const* args, Py_ssize_t nargs,
                            PyObject* kwnames) {
    auto* server = static_cast<BridgeServer*>(PyCapsule_GetPointer(self, nullptr));
    if (server == nullptr) return nullptr;
    return server->catch_call_soon(args, static_cast<std::size_t>(nargs), kwnames);
}

PyMethodDef kCallSoonCatcherDef{
    "call_soon", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(call_soon_catcher)),
    METH_FASTCALL | METH_KEYWORDS,
    "cppuvicorn: keeps a new Task's first step, or a woken Task's wakeup, to run it at once."};

PyObject* make_call_soon_catcher(BridgeServer* server) {
    PyObject* capsule = PyCapsule_New(server, nullptr, nullptr);
    if (capsule == nullptr) return nullptr;
    PyObject* fn = PyCFunction_New(&kCallSoonCatcherDef, capsule);
    Py_DECREF(capsule);
    return fn;
}
}  // namespace

void ConnData::release() {
    if (--refs > 0) return;
    Py_XDECREF(client);
    Py_XDECREF(server);
    Py_XDECREF(tls);
    delete this;
}

BridgeServer::BridgeServer(PyObject* loop, PyObject* app, PyObject* run_asgi, PyObject* state,
                           PyObject* access_log, PyObject* error_log, BridgeOptions options)
    : server_(&uv_loop_, options.core, *this, *this),
      loop_(Py_NewRef(loop)),
      app_(Py_NewRef(app)),
      run_asgi_(Py_NewRef(run_asgi)),
      state_(state == Py_None ? nullptr : Py_NewRef(state)),
      access_log_(access_log == Py_None ? nullptr : Py_NewRef(access_log)),
      error_log_(Py_NewRef(error_log)),
      options_(std::move(options)) {
    uv_loop_init(&uv_loop_);
    loop_create_future_ = PyObject_GetAttrString(loop, "create_future");
    loop_call_soon_ = PyObject_GetAttrString(loop, "call_soon");
    loop_call_later_ = PyObject_GetAttrString(loop, "call_later");
    if (PyObject* asyncio = PyImport_ImportModule("asyncio")) {
        task_type_ = PyObject_GetAttrString(asyncio, "Task");
        future_type_ = PyObject_GetAttrString(asyncio, "Future");
        Py_DECREF(asyncio);
    }
    if (future_type_ != nullptr) {
        future_done_ = PyObject_GetAttrString(future_type_, "done");
        future_set_result_ = PyObject_GetAttrString(future_type_, "set_result");
        kw_loop_ = PyTuple_Pack(1, n::loop);
        direct_futures_ = future_done_ != nullptr && future_set_result_ != nullptr &&
                          kw_loop_ != nullptr && standard_create_future(loop);
    }
    create_task_ = PyObject_GetAttrString(loop, "create_task");
    loop_get_task_factory_ = PyObject_GetAttrString(loop, "get_task_factory");
    base_context_ = PyContext_CopyCurrent();
    kw_context_ = PyTuple_Pack(1, n::context);
    if (loop_create_future_ == nullptr || loop_call_soon_ == nullptr ||
        loop_call_later_ == nullptr || task_type_ == nullptr || create_task_ == nullptr ||
        loop_get_task_factory_ == nullptr || base_context_ == nullptr || kw_context_ == nullptr) {
        // Not an asyncio loop (or out of memory): fail here, with Python's error, rather than
        // at the first request.
        throw pybind11::error_already_set();
    }
    asgi_template_ = PyDict_New();
    PyObject* version = PyUnicode_FromStringAndSize(
        options_.asgi_version.data(), static_cast<Py_ssize_t>(options_.asgi_version.size()));
    PyDict_SetItem(asgi_template_, n::version, version);
    Py_XDECREF(version);
    PyObject* spec = PyUnicode_FromString("2.3");
    PyDict_SetItem(asgi_template_, n::spec_version, spec);
    Py_XDECREF(spec);
    scheme_ = PyUnicode_FromStringAndSize(options_.scheme.data(),
                                          static_cast<Py_ssize_t>(options_.scheme.size()));
    root_path_ = PyUnicode_FromStringAndSize(options_.root_path.data(),
                                             static_cast<Py_ssize_t>(options_.root_path.size()));
    http_template_ = scheme_ != nullptr && root_path_ != nullptr
                         ? make_http_scope_template(scheme_, root_path_, state_ != nullptr)
                         : nullptr;
    if (http_template_ == nullptr) throw pybind11::error_already_set();  // out of memory
    call_soon_catcher_ = make_call_soon_catcher(this);
    if (call_soon_catcher_ == nullptr) throw pybind11::error_already_set();
    if (options_.tls != nullptr) {
        server_.set_tls(options_.tls);
        const std::string& pem = options_.tls->server_cert_pem();
        server_cert_ = pem.empty() ? Py_NewRef(Py_None)
                                   : PyUnicode_FromStringAndSize(
                                         pem.data(), static_cast<Py_ssize_t>(pem.size()));
    }
}

BridgeServer::~BridgeServer() {
    *alive_ = false;
    if (!closed_) close();
    uv_loop_close(&uv_loop_);
    for (PyObject* o : {loop_,
                        app_,
                        run_asgi_,
                        state_,
                        access_log_,
                        error_log_,
                        loop_create_future_,
                        future_type_,
                        future_done_,
                        future_set_result_,
                        kw_loop_,
                        loop_call_soon_,
                        loop_call_later_,
                        task_type_,
                        create_task_,
                        loop_get_task_factory_,
                        base_context_,
                        kw_context_,
                        asgi_template_,
                        scheme_,
                        root_path_,
                        http_template_,
                        server_cert_,
                        run_cb_,
                        tick_cb_,
                        accept_cb_,
                        release_cb_,
                        tick_handle_,
                        stashed_type_,
                        stashed_value_,
                        stashed_tb_,
                        server_tuple_,
                        client_host_,
                        ws_task_done_,
                        await_ws_,
                        callback_context_,
                        ws_asgi_template_,
                        ws_scheme_}) {
        Py_XDECREF(o);
    }
    Py_XDECREF(call_soon_catcher_);
}

void BridgeServer::set_callbacks(PyObject* run_cb, PyObject* tick_cb, PyObject* accept_cb,
                                 PyObject* release_cb) {
    Py_XSETREF(release_cb_, Py_NewRef(release_cb));
    Py_XSETREF(run_cb_, Py_NewRef(run_cb));
    Py_XSETREF(tick_cb_, Py_NewRef(tick_cb));
    Py_XSETREF(accept_cb_, Py_NewRef(accept_cb));
}

// ---------------------------------------------------------------------------------------------
// Loop nesting

void BridgeServer::start() {
    if (started_) return;
    started_ = true;
    backend_fd_ = uv_backend_fd(&uv_loop_);
    PyObject* r = PyObject_CallMethod(loop_, "add_reader", "iO", backend_fd_, run_cb_);
    if (r == nullptr) throw pybind11::error_already_set();
    Py_DECREF(r);
    schedule_tick();
    request_run();  // the listeners' epoll registrations happen inside uv_run
}

PyObject* BridgeServer::call_soon(PyObject* callback, PyObject* context) {
    PyObject* args[] = {callback, context};
    return PyObject_Vectorcall(loop_call_soon_, args, 1, kw_context_);
}

void BridgeServer::request_run() noexcept {
    if (run_scheduled_ || closed_ || run_cb_ == nullptr) return;
    run_scheduled_ = true;
    PyObject* r = call_soon(run_cb_);
    if (r == nullptr) {
        run_scheduled_ = false;
        report_python_error("scheduling the libuv loop");
    }
    Py_XDECREF(r);
}

void BridgeServer::request_accept() noexcept {
    // call_soon is FIFO: this runs after the first steps of the tasks this turn created.
    if (closed_ || accept_cb_ == nullptr) return;
    PyObject* r = call_soon(accept_cb_);
    if (r == nullptr) report_python_error("scheduling an accept");
    Py_XDECREF(r);
}

void BridgeServer::request_release() noexcept {
    // Not deduplicated: each release must come after the first steps queued before it.
    if (closed_ || release_cb_ == nullptr) return;
    PyObject* r = call_soon(release_cb_);
    if (r == nullptr) report_python_error("scheduling a flush");
    Py_XDECREF(r);
}

void BridgeServer::release_from_loop() {
    Window window(*this);
    if (closed_) return;
    server_.release_held();
    after_run();
}

void BridgeServer::accept_from_loop() {
    Window window(*this);
    if (closed_) return;
    server_.accept_turn();
    after_run();
}

void BridgeServer::run_from_loop() {
    Window window(*this);
    run_scheduled_ = false;
    if (closed_) return;
    server_.run_once();
    after_run();
}

void BridgeServer::tick_from_loop() {
    Window window(*this);
    Py_CLEAR(tick_handle_);
    if (closed_) return;
    // Read what arrived first: a connection whose bytes wait unread (the loop was blocked by
    // a handler) is not idle and must not be closed by its deadline.
    server_.run_once();
    server_.sweep();
    schedule_tick();
    after_run();
}

void BridgeServer::schedule_tick() {
    PyObject* delay = PyFloat_FromDouble(kTickSeconds);
    PyObject* args[] = {delay, tick_cb_, base_context_};
    tick_handle_ = PyObject_Vectorcall(loop_call_later_, args, 2, kw_context_);
    Py_DECREF(delay);
    if (tick_handle_ == nullptr) report_python_error("scheduling the server tick");
}

void BridgeServer::after_run() {
    // Steps kept outside Server::run_deferred (which runs them) would wait for nothing: run
    // them, and come back for the writes they make.
    if (after_reads()) request_run();
    // Work queued by libuv itself for the next iteration (pending write callbacks, closing
    // handles) does not make the epoll fd readable: come back at once for it.
    if (!closed_ && uv_loop_alive(&uv_loop_) && uv_backend_timeout(&uv_loop_) == 0) {
        request_run();
    }
    reraise_stashed();
}

void BridgeServer::reraise_stashed() {
    if (stashed_type_ == nullptr) return;
    PyErr_Restore(stashed_type_, stashed_value_, stashed_tb_);
    stashed_type_ = stashed_value_ = stashed_tb_ = nullptr;
    throw pybind11::error_already_set();
}

void BridgeServer::close() {
    if (closed_) return;
    // Nothing is kept here unless a loop callback failed half-way: never lose it.
    after_reads_elsewhere();
    if (started_) {
        PyObject* r = PyObject_CallMethod(loop_, "remove_reader", "i", backend_fd_);
        if (r == nullptr) PyErr_Clear();
        Py_XDECREF(r);
    }
    if (tick_handle_ != nullptr) {
        PyObject* r = PyObject_CallMethodNoArgs(tick_handle_, n::cancel);
        if (r == nullptr) PyErr_Clear();
        Py_XDECREF(r);
        Py_CLEAR(tick_handle_);
    }
    server_.stop_listening();
    server_.close_all();
    closed_ = true;
    // Let libuv run the close callbacks (bounded: each pass finishes what is closing).
    for (int i = 0; i < 16 && uv_loop_alive(&uv_loop_); ++i)
        uv_run(&uv_loop_, UV_RUN_NOWAIT);
    if (stashed_type_ != nullptr) {
        Py_CLEAR(stashed_type_);
        Py_CLEAR(stashed_value_);
        Py_CLEAR(stashed_tb_);
    }
}

// ---------------------------------------------------------------------------------------------
// Requests

ConnData& BridgeServer::conn_data(core::HttpConnection& conn) {
    const core::PeerAddress& peer = conn.peer();
    if (conn.user_data != nullptr) {
        auto& d = *static_cast<ConnData*>(conn.user_data);
        // Null after an idle spell (on_connection_idle) or when making it failed: the callers
        // check, and answer 500 if it fails again.
        if (d.client == nullptr)
            d.client = peer.unix_socket ? Py_NewRef(Py_None) : client_tuple(peer);
        return d;
    }
    auto* d = new ConnData;
    d->conn = &conn;
    const core::PeerAddress& local = conn.local();
    d->client = peer.unix_socket ? Py_NewRef(Py_None) : client_tuple(peer);
    d->server = server_tuple(local);
    if (const core::TlsSession* tls = conn.tls(); tls != nullptr && server_cert_ != nullptr) {
        // Once per connection: every request (and a WebSocket session) on it shares the dict.
        d->tls = build_tls_extension(*tls, server_cert_);
        if (d->tls == nullptr) report_python_error("building the ASGI tls extension");
    }
    // Uvicorn checks the scope's client host, None on a UNIX socket: trusted only under "*".
    d->proxy_trusted = options_.proxy_headers &&
                       options_.forwarded_allow_ips.contains(peer.unix_socket ? "" : peer.host);
    conn.user_data = d;
    return *d;
}

PyObject* BridgeServer::server_tuple(const core::PeerAddress& local) {
    // Every connection of a listener has the same local address: one tuple for them all (a
    // tuple of a str and an int is immutable, so the sharing is invisible to the application;
    // with many idle WebSockets it is 140 bytes each).
    if (server_tuple_ == nullptr || local.host != server_tuple_host_ ||
        local.port != server_tuple_port_ || local.unix_socket != server_tuple_unix_) {
        PyObject* t = local.unix_socket ? Py_BuildValue("(sO)", local.host.c_str(), Py_None)
                                        : Py_BuildValue("(si)", local.host.c_str(), local.port);
        if (t == nullptr) return nullptr;
        Py_XSETREF(server_tuple_, t);
        server_tuple_host_ = local.host;
        server_tuple_port_ = local.port;
        server_tuple_unix_ = local.unix_socket;
    }
    return Py_NewRef(server_tuple_);
}

PyObject* BridgeServer::client_tuple(const core::PeerAddress& peer) {
    // The port differs, the host often does not (a proxy, a load balancer): the last host's
    // str is shared.
    if (client_host_ == nullptr || peer.host != client_host_text_) {
        PyObject* h = PyUnicode_FromStringAndSize(peer.host.data(),
                                                  static_cast<Py_ssize_t>(peer.host.size()));
        if (h == nullptr) return nullptr;
        Py_XSETREF(client_host_, h);
        client_host_text_ = peer.host;
    }
    PyObject* port = PyLong_FromLong(peer.port);
    if (port == nullptr) return nullptr;
    PyObject* t = PyTuple_Pack(2, client_host_, port);
    Py_DECREF(port);
    return t;
}

void BridgeServer::on_connection_opened(core::HttpConnection& conn) noexcept {
    if (options_.trace_connections) trace_connection(conn, "HTTP connection made");
}

void BridgeServer::trace_connection(core::HttpConnection& conn, const char* what) {
    // Uvicorn: "%s:%d - " % client (nothing on a UNIX socket), then the event.
    const core::PeerAddress& peer = conn.peer();
    std::string line =
        peer.unix_socket ? std::string() : peer.host + ":" + std::to_string(peer.port) + " - ";
    line += what;
    PyObject* msg = PyUnicode_FromStringAndSize(line.data(), static_cast<Py_ssize_t>(line.size()));
    PyObject* level = PyLong_FromLong(5);  // TRACE
    PyObject* r = nullptr;
    if (msg != nullptr && level != nullptr) {
        PyObject* args[] = {error_log_, level, msg};
        r = PyObject_VectorcallMethod(n::log, args, 3 | PY_VECTORCALL_ARGUMENTS_OFFSET, nullptr);
    }
    if (r == nullptr) PyErr_Clear();
    Py_XDECREF(r);
    Py_XDECREF(msg);
    Py_XDECREF(level);
}

void BridgeServer::on_connection_idle(core::HttpConnection& conn) noexcept {
    // An idle keep-alive connection keeps no per-connection Python state: the scopes that used
    // it hold their own references, and the next request makes it again (a TLS connection
    // keeps its "tls" extension dict, which is dearer to make).
    auto* d = static_cast<ConnData*>(conn.user_data);
    if (d == nullptr) return;
    if (d->refs == 1 && d->tls == nullptr) {
        conn.user_data = nullptr;
        d->conn = nullptr;
        d->release();
        return;
    }
    Py_CLEAR(d->client);  // a finished request's cycle still holds the rest
}

void BridgeServer::on_connection_closed(core::HttpConnection& conn) noexcept {
    if (options_.trace_connections) {
        trace_connection(conn, conn.websocket() != nullptr ? "WebSocket connection lost"
                                                           : "HTTP connection lost");
    }
    auto* d = static_cast<ConnData*>(std::exchange(conn.user_data, nullptr));
    if (d == nullptr) return;
    d->conn = nullptr;
    d->release();
}

PyObject* BridgeServer::spawn(PyObject* coro) {
    // A task factory the app installed (loop.set_task_factory, in lifespan startup say) makes
    // every request's Task, as loop.create_task does under Uvicorn. Without one the Task is
    // made here: the same Task (its own copy of the context, a "Task-N" name), without the
    // loop method's wrapper around it (net of the factory check, 287 instructions fewer per
    // hello request under callgrind on 3.11 with uvloop).
    // Either way the Task gets a copy of base_context_, not of the current context: spawn runs
    // inside the previous request's Task when that one's response lets a pipelined request in.
    PyObject* factory = PyObject_CallNoArgs(loop_get_task_factory_);
    if (factory == nullptr) return nullptr;
    const bool custom = factory != Py_None;
    Py_DECREF(factory);
    PyObject* context = PyContext_Copy(base_context_);
    if (context == nullptr) return nullptr;
    PyObject* task = nullptr;
    if (custom) {
        // Factories are called as Uvicorn calls them, (loop, coro): the copy is made current
        // for the call, and create_task copies it again for the Task.
        if (PyContext_Enter(context) == 0) {
            task = PyObject_CallOneArg(create_task_, coro);
            if (PyContext_Exit(context) != 0) Py_CLEAR(task);
        }
    } else {
#if PY_VERSION_HEX >= 0x030C0000
        // 3.12+: run the app to its first real suspension right here (eager_start). Not the
        // loop-wide eager task factory (it crashed with StreamingResponse on 3.12.1). Cheaper
        // than spawn_stepped there: an eager Task that finishes in its first step is never
        // added to asyncio's WeakSet of scheduled tasks (26,306 against 30,638 instructions
        // per hello request under callgrind on 3.12).
        static PyObject* kwnames = Py_BuildValue("(OOO)", n::loop, n::context, n::eager_start);
        PyObject* args[] = {coro, loop_, context, Py_True};
        task = PyObject_Vectorcall(task_type_, args, 1, kwnames);
#else
        static PyObject* kwnames = Py_BuildValue("(OO)", n::loop, n::context);
        PyObject* args[] = {coro, loop_, context};
        task = in_window_ && call_soon_catcher_ != nullptr
                   ? spawn_stepped(args, kwnames, context)
                   : PyObject_Vectorcall(task_type_, args, 1, kwnames);
#endif
    }
    Py_DECREF(context);
    return task;
}

// NOTE(perf): 3.11 has no eager_start. A new Task's first step, which Task() schedules with
// loop.call_soon(step, context=ctx), is kept back and run by after_reads() once the read that
// started it is parsed (a body that came with its head is then in hand, as under Uvicorn), or
// after the pipelined requests of a pass; in either case before the pass's writes, so what the
// step answers leaves at once. Left to the loop, the step waits for its next turn (one Handle
// made and run per request) and the response for the turn after: 33,103 against 27,337
// instructions per hello request under callgrind (benchmarks/results/callgrind-2026-12-05-c.md).
// Running the steps only after all the reads of a pass doubled p99 at 256 connections: every Task
// of the pass stayed alive meanwhile, and the GC promoted them and ran full collections
// (benchmarks/results/ab-2026-12-05-first-steps.md). To keep the step, the loop's call_soon is
// shadowed by an instance attribute for the length of Task(). Any other call_soon made meanwhile
// (from a finalizer run by the GC, say) goes on to the loop's own method: only the call with this
// Task's context is kept. A loop without an instance dict turns this off; a loop whose call_soon is
// already an instance attribute (a patch) keeps it, and its Tasks are scheduled as usual.
PyObject* BridgeServer::spawn_stepped(PyObject* const* args, PyObject* kwnames, PyObject* context) {
    PyObject* dict = shadow_call_soon();
    if (dict == nullptr) return PyObject_Vectorcall(task_type_, args, 1, kwnames);
    stepped_context_ = context;
    PyObject* task = PyObject_Vectorcall(task_type_, args, 1, kwnames);
    stepped_context_ = nullptr;
    unshadow_call_soon(dict);
    PyObject* step = std::exchange(captured_step_, nullptr);
    if (step != nullptr) {
        // Also when Task() failed after scheduling: the loop would have run that step too.
        first_steps_.push_back({step, nullptr, Py_NewRef(context)});
    }
    return task;
}

PyObject* BridgeServer::shadow_call_soon() {
    if (call_soon_catcher_ == nullptr) return nullptr;
    PyObject* dict = PyObject_GenericGetDict(loop_, nullptr);
    if (dict == nullptr) {
        PyErr_Clear();
        Py_CLEAR(call_soon_catcher_);  // a loop without an instance dict: off for good
        return nullptr;
    }
    PyObject* prior = PyDict_SetDefault(dict, n::call_soon, call_soon_catcher_);  // borrowed
    if (prior != call_soon_catcher_) {
        // The loop has a call_soon attribute of its own (someone patched it): leave it be.
        PyErr_Clear();
        Py_DECREF(dict);
        return nullptr;
    }
    return dict;
}

void BridgeServer::unshadow_call_soon(PyObject* dict) {
    PyObject *type, *value, *tb;
    PyErr_Fetch(&type, &value, &tb);  // the shadowed call's error, if any, survives the removal
    if (PyDict_DelItem(dict, n::call_soon) != 0) PyErr_Clear();
    PyErr_Restore(type, value, tb);
    Py_DECREF(dict);
}

PyObject* BridgeServer::catch_call_soon(PyObject* const* args, std::size_t nargsf,
                                        PyObject* kwnames) {
    const Py_ssize_t nargs = PyVectorcall_NARGS(nargsf);
    const bool with_context = kwnames != nullptr && PyTuple_GET_SIZE(kwnames) == 1;
    if (stepped_context_ != nullptr && captured_step_ == nullptr && nargs == 1 && with_context &&
        args[1] == stepped_context_) {
        captured_step_ = Py_NewRef(args[0]);
        Py_RETURN_NONE;  // Task() drops call_soon's Handle unread
    }
    if (waking_future_ != nullptr && nargs == 2 && with_context && args[1] == waking_future_) {
        // Future.set_result schedules each done callback as call_soon(cb, fut, context=ctx)
        // and drops the Handle.
        kept_calls_.push_back({Py_NewRef(args[0]), Py_NewRef(args[1]), Py_NewRef(args[2])});
        Py_RETURN_NONE;
    }
    return PyObject_Vectorcall(loop_call_soon_, args, nargsf, kwnames);
}

// NOTE(perf): a Task waiting in receive() is woken by the result its future gets. Left to the
// loop, its wakeup (a done callback, scheduled with call_soon) runs a loop turn later, through
// one Handle; inside a read pass it is kept instead, as a new Task's first step is, and run by
// after_reads() once the read is parsed. Only the calls that schedule this future's callbacks
// are kept; they run in the order set_result scheduled them, each in its own context.
bool BridgeServer::set_future_result_kept(PyObject* fut, PyObject* value, const char* where) {
    if (!in_window_ || (running_steps_ && !waking_kept_)) {
        return set_future_result(fut, value, where);
    }
    PyObject* dict = shadow_call_soon();
    if (dict == nullptr) return set_future_result(fut, value, where);
    waking_future_ = fut;
    bool ok = set_future_result(fut, value, where);
    waking_future_ = nullptr;
    unshadow_call_soon(dict);
    return ok;
}

void BridgeServer::run_kept_calls() {
    // set_future_result_kept keeps no calls while these run (running_steps_): a wake made by
    // one of them goes through the loop. The two vectors swap (no allocation per pass).
    kept_batch_.swap(kept_calls_);
    for (const KeptCall& k : kept_batch_)
        run_kept(k);
    kept_batch_.clear();
}

bool BridgeServer::after_reads() noexcept {
    if (running_steps_ || (wakes_.empty() && first_steps_.empty() && kept_calls_.empty())) {
        return false;
    }
    running_steps_ = true;
    // First the receive() calls kept by wake_later: they waited longest. Their Tasks' wakeups
    // are kept too, and run with the others kept in this pass.
    waking_kept_ = true;
    wake_kept_receivers();
    waking_kept_ = false;
    run_kept_calls();
    // A step may start another Task (a pipelined request let in by a response): its step joins
    // the list and runs in this same pass, in order.
    for (std::size_t i = 0; i < first_steps_.size(); ++i)
        run_kept(first_steps_[i]);  // a copy: the step may grow the list
    first_steps_.clear();
    running_steps_ = false;
    return true;
}

bool BridgeServer::wake_later(HttpCycle* c) {
    if (!in_window_ || running_steps_) return false;
    wakes_.push_back(c);
    Py_INCREF(http_cycle_as_object(c));
    return true;
}

void BridgeServer::run_kept(KeptCall k) {
    // As the loop's Handle runs it: in its context; a Task's step or wakeup lets only
    // KeyboardInterrupt and SystemExit out (stashed, raised when this loop callback returns).
    PyObject* r = nullptr;
    if (PyContext_Enter(k.context) == 0) {
        r = k.arg != nullptr ? PyObject_CallOneArg(k.callback, k.arg)
                             : PyObject_CallNoArgs(k.callback);
        if (PyContext_Exit(k.context) != 0) Py_CLEAR(r);
    }
    if (r == nullptr) report_python_error("running an ASGI task");
    Py_XDECREF(r);
    release_kept(k);
}

void BridgeServer::schedule_kept(KeptCall k) {
    // loop.call_soon(callback[, arg], context=context): what the kept call_soon would have done
    // (without an arg, the context moves up to follow the callback).
    PyObject* args[] = {k.callback, k.arg != nullptr ? k.arg : k.context, k.context};
    PyObject* r = PyObject_Vectorcall(loop_call_soon_, args, k.arg != nullptr ? 2 : 1, kw_context_);
    if (r == nullptr) report_python_error("scheduling an ASGI task");
    Py_XDECREF(r);
    release_kept(k);
}

void BridgeServer::release_kept(const KeptCall& k) {
    Py_DECREF(k.callback);
    Py_XDECREF(k.arg);
    Py_DECREF(k.context);
}

void BridgeServer::wake_kept_receivers() {
    // Each cycle is answered with everything the read brought.
    for (HttpCycle* c : std::exchange(wakes_, {})) {
        http_cycle_wake_receiver(c);
        Py_DECREF(http_cycle_as_object(c));
    }
}

void BridgeServer::after_reads_elsewhere() {
    // Everything goes to the loop, in the order after_reads() would have run it; the wakes made
    // here are not kept (running_steps_).
    const bool was_running = std::exchange(running_steps_, true);
    for (const KeptCall& k : std::exchange(kept_calls_, {}))
        schedule_kept(k);
    wake_kept_receivers();
    for (const KeptCall& s : std::exchange(first_steps_, {}))
        schedule_kept(s);
    running_steps_ = was_running;
}

core::RequestHandler* BridgeServer::on_request(core::HttpConnection& conn,
                                               const core::RequestHead& head) noexcept {
    if (head.upgrade) {
        // Uvicorn (httptools_impl._unsupported_upgrade_warning): an upgrade that does not
        // become a WebSocket session is served as plain HTTP, with a warning.
        log_error(n::warning, "Unsupported upgrade request.");
        if (!options_.ws) {
            log_error(n::warning,
                      "No supported WebSocket library detected. Please use \"pip install "
                      "'uvicorn[standard]'\", or install 'websockets' or 'wsproto' manually.");
        }
    }
    ConnData& cd = conn_data(conn);
    ScopeInputs in{.asgi_template = asgi_template_,
                   .client = cd.client,
                   .server = cd.server,
                   .scheme = scheme_,
                   .root_path = root_path_,
                   .root_path_bytes = options_.root_path,
                   .state = state_,
                   .tls = cd.tls,
                   .http_template = http_template_,
                   .template_scheme = scheme_};
    PyObject* forwarded_client = nullptr;
    PyObject* scope = nullptr;
    if (cd.client != nullptr &&
        (!cd.proxy_trusted ||
         apply_proxy_headers(options_.forwarded_allow_ips, head, false, in, forwarded_client))) {
        scope = build_http_scope(head, in);
    }
    Py_XDECREF(forwarded_client);  // the scope holds it now
    if (scope == nullptr) {
        report_python_error("building the ASGI scope");
        conn.respond_simple(500, "Internal Server Error");
        return nullptr;
    }
    long limit = options_.limit_concurrency;
    if (limit > 0 && (server_.connection_count() >= static_cast<std::size_t>(limit) ||
                      tasks_ >= static_cast<std::size_t>(limit))) {
        if (core::MetricsSlot* m = server_.config().metrics) m->add(core::kLimitRejections);
        log_error(n::warning, "Exceeded concurrency limit.");
        // Uvicorn answers this with an app that its proxy-headers middleware does not wrap:
        // its access line names the peer, not the forwarded client.
        if (in.client != cd.client && PyDict_SetItem(scope, n::client, cd.client) != 0) {
            PyErr_Clear();
        }
        if (access_log_timed()) {
            log_access_done(scope, 503, nullptr, sizeof("Service Unavailable") - 1, now_ns());
        } else {
            log_access(scope, conn, 503);
        }
        conn.respond_simple(503, "Service Unavailable");
        Py_DECREF(scope);
        return nullptr;
    }
    PyObject* receive = nullptr;
    HttpCycle* cycle = http_cycle_new(*this, cd, scope, &receive);
    if (cycle == nullptr) {
        Py_DECREF(scope);
        report_python_error("creating the request cycle");
        conn.respond_simple(500, "Internal Server Error");
        return nullptr;
    }
    PyObject* send = http_cycle_as_object(cycle);
    PyObject* args[] = {app_, scope, receive, send};
    PyObject* coro = PyObject_Vectorcall(run_asgi_, args, 4, nullptr);
    Py_DECREF(scope);
    Py_DECREF(receive);
    core::RequestHandler* handler = http_cycle_handler(cycle);
    if (coro != nullptr) {
        http_cycle_begin_task(cycle);
        PyObject* task = spawn(coro);
        Py_DECREF(coro);
        if (task != nullptr) {
            http_cycle_attach_task(cycle, task);
        } else {
            report_python_error("starting the ASGI task");
            PyObject* r = PyObject_CallMethod(send, "finish", nullptr);
            Py_XDECREF(r);
            conn.abort();
        }
    } else {
        report_python_error("calling the ASGI application");
        conn.abort();
    }
    Py_DECREF(send);  // the coroutine and core hold their own references
    return handler;
}

void BridgeServer::on_protocol_error(core::HttpConnection& conn, int status,
                                     std::string_view detail) noexcept {
    // The wire body stays Uvicorn's; the parser's reason goes to the debug log. A body over
    // --limit-request-body is a valid request refused by the operator's policy: no warning.
    if (status != 413) log_error(n::warning, "Invalid HTTP request received.");
    std::string msg = (status == 413 ? "Request refused (" : "Invalid HTTP request (") +
                      std::to_string(status) + ") from " + conn.peer().host + ": ";
    msg.append(detail);
    if (status == 413) {
        msg += " (" + std::to_string(server_.config().max_body_size) + " bytes)";
    }
    log_error(n::debug, msg.c_str());
}

void BridgeServer::on_timeout(core::HttpConnection& conn, int status,
                              std::string_view detail) noexcept {
    // Uvicorn logs nothing when it closes a connection for a timeout; the reason goes to the
    // debug log only.
    std::string msg = "Connection from " + conn.peer().host + " closed";
    if (status != 0) msg += " with " + std::to_string(status);
    msg += ": ";
    msg.append(detail);
    log_error(n::debug, msg.c_str());
}

void BridgeServer::on_tls_error(core::HttpConnection& conn, std::string_view detail,
                                bool in_handshake) noexcept {
    // asyncio (and so Uvicorn) reports these only in its debug mode; a debug line here.
    const core::PeerAddress& peer = conn.peer();
    std::string msg = in_handshake ? "TLS handshake failed with " : "TLS error with ";
    msg += peer.host + ":" + std::to_string(peer.port) + ": ";
    msg.append(detail);
    log_error(n::debug, msg.c_str());
}

void BridgeServer::on_task_started(HttpCycle* c) {
    ++tasks_;
    live_.push(c);
}

void BridgeServer::on_task_finished(HttpCycle* c) {
    --tasks_;
    live_.remove(c);
}

void BridgeServer::cancel_tasks() {
    live_.for_each(http_cycle_cancel);
    live_ws_.for_each(ws_cycle_cancel);
}

PyObject* BridgeServer::create_future() {
    PyObject* f = nullptr;
    if (direct_futures_) {
        PyObject* args[] = {loop_};
        f = PyObject_Vectorcall(future_type_, args, 0, kw_loop_);
    } else {
        f = PyObject_CallNoArgs(loop_create_future_);
    }
    if (f == nullptr) report_python_error("creating a future");
    return f;
}

int BridgeServer::future_pending(PyObject* fut, const char* where) {
    PyObject* done = Py_IS_TYPE(fut, reinterpret_cast<PyTypeObject*>(future_type_))
                         ? PyObject_Vectorcall(future_done_, &fut, 1, nullptr)
                         : PyObject_CallMethodNoArgs(fut, n::done);
    if (done == nullptr) {
        report_python_error(where);
        return -1;
    }
    int pending = done == Py_False ? 1 : 0;
    Py_DECREF(done);
    return pending;
}

bool BridgeServer::set_future_result(PyObject* fut, PyObject* value, const char* where) {
    PyObject* r = nullptr;
    if (Py_IS_TYPE(fut, reinterpret_cast<PyTypeObject*>(future_type_))) {
        PyObject* args[] = {fut, value};
        r = PyObject_Vectorcall(future_set_result_, args, 2, nullptr);
    } else {
        r = PyObject_CallMethodOneArg(fut, n::set_result, value);
    }
    if (r == nullptr) {
        report_python_error(where);
        return false;
    }
    Py_DECREF(r);
    return true;
}

// ---------------------------------------------------------------------------------------------
// Logging

std::uint64_t BridgeServer::now_ns() {
    return static_cast<std::uint64_t>(std::chrono::duration_cast<std::chrono::nanoseconds>(
                                          std::chrono::steady_clock::now().time_since_epoch())
                                          .count());
}

void BridgeServer::log_access_done(PyObject* scope, int status, PyObject* headers,
                                   std::uint64_t body_bytes, std::uint64_t start_ns) {
    if (access_log_ == nullptr) return;
    std::uint64_t now = now_ns();
    PyObject* st = PyLong_FromLong(status);
    PyObject* nb = PyLong_FromUnsignedLongLong(body_bytes);
    PyObject* dur = PyLong_FromUnsignedLongLong(now > start_ns ? now - start_ns : 0);
    if (st && nb && dur) {
        PyObject* args[] = {scope, st, headers != nullptr ? headers : Py_None, nb, dur};
        PyObject* r = PyObject_Vectorcall(access_log_, args, 5, nullptr);
        if (r == nullptr) report_python_error("the access log");
        Py_XDECREF(r);
    } else {
        PyErr_Clear();
    }
    Py_XDECREF(st);
    Py_XDECREF(nb);
    Py_XDECREF(dur);
}

void BridgeServer::log_access(PyObject* scope, core::HttpConnection&, int status) {
    if (access_log_ == nullptr || options_.access_log_timed) return;
    // Uvicorn's arguments: client_addr, method, raw path[?query], http_version, status.
    PyObject* client = PyDict_GetItemWithError(scope, n::client);
    PyObject* method = PyDict_GetItemWithError(scope, n::method);
    PyObject* version = PyDict_GetItemWithError(scope, n::http_version);
    if (!method || !version) {
        PyErr_Clear();
        return;
    }
    std::string addr;
    if (client != nullptr && PyTuple_Check(client) && PyTuple_GET_SIZE(client) == 2) {
        PyObject* s =
            PyUnicode_FromFormat("%S:%S", PyTuple_GET_ITEM(client, 0), PyTuple_GET_ITEM(client, 1));
        if (s != nullptr) {
            Py_ssize_t len = 0;
            const char* u = PyUnicode_AsUTF8AndSize(s, &len);
            if (u != nullptr) addr.assign(u, static_cast<std::size_t>(len));
            Py_DECREF(s);
        }
    }
    PyObject* a2 = log_target(scope);
    if (a2 == nullptr) {
        PyErr_Clear();
        return;
    }
    PyObject* a0 = PyUnicode_FromStringAndSize(addr.data(), static_cast<Py_ssize_t>(addr.size()));
    PyObject* a4 = PyLong_FromLong(status);
    if (a0 && a2 && a4) {
        PyObject* args[] = {a0, method, a2, version, a4};
        PyObject* r = PyObject_Vectorcall(access_log_, args, 5, nullptr);
        if (r == nullptr) report_python_error("the access log");
        Py_XDECREF(r);
    } else {
        PyErr_Clear();
    }
    Py_XDECREF(a0);
    Py_XDECREF(a2);
    Py_XDECREF(a4);
}

void BridgeServer::log_error(PyObject* level, const char* message) {
    PyObject* msg = PyUnicode_FromString(message);
    if (msg == nullptr) {
        PyErr_Clear();
        return;
    }
    PyObject* r = PyObject_CallMethodOneArg(error_log_, level, msg);
    Py_DECREF(msg);
    if (r == nullptr) PyErr_Clear();
    Py_XDECREF(r);
}

void BridgeServer::report_python_error(const char* where) {
    if (!PyErr_Occurred()) return;
    if (PyErr_ExceptionMatches(PyExc_KeyboardInterrupt) ||
        PyErr_ExceptionMatches(PyExc_SystemExit)) {
        // Raised by a signal handler while we were inside libuv: re-raise after uv_run.
        if (stashed_type_ == nullptr) {
            PyErr_Fetch(&stashed_type_, &stashed_value_, &stashed_tb_);
        } else {
            PyErr_Clear();
        }
        return;
    }
    PyObject *type, *value, *tb;
    PyErr_Fetch(&type, &value, &tb);
    PyErr_NormalizeException(&type, &value, &tb);
    if (tb != nullptr && value != nullptr) PyException_SetTraceback(value, tb);
    PyObject* msg = PyUnicode_FromFormat("Exception in %s", where);
    PyObject* kwargs = Py_BuildValue("{sO}", "exc_info", value ? value : Py_None);
    PyObject* meth = PyObject_GetAttr(error_log_, n::error);
    PyObject* args = msg ? PyTuple_Pack(1, msg) : nullptr;
    PyObject* r = (meth && args && kwargs) ? PyObject_Call(meth, args, kwargs) : nullptr;
    if (r == nullptr) PyErr_Clear();
    Py_XDECREF(r);
    Py_XDECREF(args);
    Py_XDECREF(meth);
    Py_XDECREF(kwargs);
    Py_XDECREF(msg);
    Py_XDECREF(type);
    Py_XDECREF(value);
    Py_XDECREF(tb);
}

}  // namespace cppuvicorn::asgi
