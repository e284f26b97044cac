// SPDX-License-Identifier: BSD-3-Clause
#include "asgi_bridge/websocket_cycle.hpp"

#include "asgi_bridge/bridge_server.hpp"
#include "asgi_bridge/http_cycle.hpp"
#include "asgi_bridge/py_names.hpp"
#include "core/websocket_codec.hpp"
#include "core/websocket_connection.hpp"

#include <cstddef>
#include <memory>
#include <new>
#include <string>
#include <utility>
#include <vector>

namespace cppuvicorn::asgi {

namespace n = py_names;

namespace {

// Interned names of the WebSocket protocol, made in register_ws_types.
struct WsNames {
    PyObject* websocket;
    PyObject* subprotocols;
    PyObject* subprotocol;
    PyObject* text;
    PyObject* bytes;
    PyObject* code;
    PyObject* reason;
    PyObject* info;
    PyObject* ws_connect;
    PyObject* ws_receive;
    PyObject* ws_disconnect;
    PyObject* ws_accept;
    PyObject* ws_send;
    PyObject* ws_close;
    PyObject* ws_http_response_start;
    PyObject* ws_http_response_body;
    PyObject* ws_http_response;  // the extension's name in the scope
    PyObject* set_exception;
    PyObject* ready_none;  // a ReadyAwaitable of None
    // {"type": "websocket.receive", "text"/"bytes": None}: each message is a copy with its
    // value set (copying the keys is cheaper than inserting them into a new dict).
    PyObject* receive_text_template;
    PyObject* receive_bytes_template;
};
WsNames w{};

PyObject* client_disconnected_type = nullptr;  // cppuvicorn._exceptions.ClientDisconnected

// cppuvicorn._exceptions.ClientDisconnected (an OSError subclass, as Uvicorn's), imported on
// first use; OSError itself if that import fails. Borrowed.
PyObject* client_disconnected() {
    if (client_disconnected_type == nullptr) {
        PyObject* mod = PyImport_ImportModule("cppuvicorn._exceptions");
        if (mod != nullptr) {
            client_disconnected_type = PyObject_GetAttrString(mod, "ClientDisconnected");
            Py_DECREF(mod);
        }
        if (client_disconnected_type == nullptr) {
            PyErr_Clear();
            return PyExc_OSError;
        }
    }
    return client_disconnected_type;
}

PyObject* raise_client_disconnected() {
    PyErr_SetNone(client_disconnected());
    return nullptr;
}

PyObject* runtime_error(const char* fmt, PyObject* arg = nullptr) {
    if (arg != nullptr) {
        PyErr_Format(PyExc_RuntimeError, fmt, arg);
    } else {
        PyErr_SetString(PyExc_RuntimeError, fmt);
    }
    return nullptr;
}

// message.get(key) as a new reference (None when missing), or nullptr on error.
PyObject* message_get(PyObject* message, PyObject* key) {
    if (PyDict_CheckExact(message)) {
        PyObject* v = PyDict_GetItemWithError(message, key);
        if (v == nullptr) return PyErr_Occurred() ? nullptr : Py_NewRef(Py_None);
        return Py_NewRef(v);
    }
    PyObject* v = PyObject_GetItem(message, key);
    if (v == nullptr && PyErr_ExceptionMatches(PyExc_KeyError)) {
        PyErr_Clear();
        return Py_NewRef(Py_None);
    }
    return v;
}

bool is(PyObject* type, PyObject* name) {
    return PyUnicode_Check(type) && PyUnicode_Compare(type, name) == 0;
}

// Steals `value`; false (with an error set) if value is null or insertion fails.
bool set_item(PyObject* dict, PyObject* key, PyObject* value) {
    if (value == nullptr) return false;
    int rc = PyDict_SetItem(dict, key, value);
    Py_DECREF(value);
    return rc == 0;
}

// The application's header list as (name, value) views into objects kept alive in `keep`.
// False with a Python error set when it is not a sequence of pairs of bytes.
bool collect_headers(PyObject* headers, std::vector<core::Header>& out,
                     std::vector<PyObject*>& keep) {
    if (headers == Py_None) return true;
    PyObject* seq = PySequence_Fast(headers, "ASGI 'headers' must be an iterable");
    if (seq == nullptr) return false;
    keep.push_back(seq);
    Py_ssize_t count = PySequence_Fast_GET_SIZE(seq);
    for (Py_ssize_t i = 0; i < count; ++i) {
        PyObject* pair = PySequence_Fast(PySequence_Fast_GET_ITEM(seq, i),
                                         "ASGI header must be a (name, value) pair");
        if (pair == nullptr) return false;
        keep.push_back(pair);
        if (PySequence_Fast_GET_SIZE(pair) != 2) {
            PyErr_SetString(PyExc_TypeError, "ASGI header must be a (name, value) pair");
            return false;
        }
        PyObject* name = PySequence_Fast_GET_ITEM(pair, 0);
        PyObject* value = PySequence_Fast_GET_ITEM(pair, 1);
        if (!PyBytes_Check(name) || !PyBytes_Check(value)) {
            PyErr_SetString(PyExc_TypeError, "ASGI header names and values must be bytes");
            return false;
        }
        out.push_back(
            {{PyBytes_AS_STRING(name), static_cast<std::size_t>(PyBytes_GET_SIZE(name))},
             {PyBytes_AS_STRING(value), static_cast<std::size_t>(PyBytes_GET_SIZE(value))}});
    }
    return true;
}

void release_all(std::vector<PyObject*>& keep) {
    for (PyObject* o : keep)
        Py_DECREF(o);
    keep.clear();
}

PyObject* header_error(core::HeaderError e) {
    return runtime_error(e == core::HeaderError::kBadName ? "Invalid HTTP header name."
                                                          : "Invalid HTTP header value.");
}

class WsHandler;

// FIFO of owned references for receive(). std::deque would allocate a 512-byte block for every
// session, busy or idle; this is a vector (usually one or two slots) reused once drained.
class MessageQueue {
  public:
    bool empty() const { return head_ == items_.size(); }
    std::size_t size() const { return items_.size() - head_; }
    void push(PyObject* message) { items_.push_back(message); }
    PyObject* pop() {
        PyObject* m = items_[head_++];
        if (head_ == items_.size()) {
            items_.clear();
            head_ = 0;
        } else if (head_ >= 16 && head_ * 2 >= items_.size()) {
            // Never drained (the app stays behind): drop the consumed prefix now and then.
            items_.erase(items_.begin(), items_.begin() + static_cast<std::ptrdiff_t>(head_));
            head_ = 0;
        }
        return m;
    }
    template <typename F>
    void for_each(F f) const {
        for (std::size_t i = head_; i < items_.size(); ++i)
            f(items_[i]);
    }

  private:
    std::vector<PyObject*> items_;
    std::size_t head_ = 0;
};

}  // namespace

struct WsCycle {
    PyObject_HEAD vectorcallfunc vectorcall;
    WsHandler* handler;  // placement-constructed in `storage`
    alignas(std::max_align_t) unsigned char storage[1];
};

namespace {

// Where the application is in the ASGI WebSocket protocol.
enum class AppState : std::uint8_t {
    kConnecting,  // before websocket.accept / websocket.close / websocket.http.response.start
    kResponding,  // websocket.http.response.start sent, the body is still coming
    kAccepted,    // websocket.accept done
    kResponded,   // the websocket.http.response denial went out: as in Uvicorn, only more
                  // websocket.http.response.body is expected (and has nothing left to do)
    kClosed,      // websocket.close sent (after the accept), or the handshake was refused
};

// The C++ half of the cycle: core's WebSocketHandler plus the ASGI state machine.
class WsHandler final : public core::WebSocketHandler {
  public:
    WsHandler(WsCycle* self, BridgeServer& server, core::HttpConnection& conn, PyObject* scope)
        : self_(self),
          server_(server),
          ws_(conn.websocket()),
          scope_(Py_NewRef(scope)),
          max_queue_(std::max<std::size_t>(1, server.config().ws_max_queue)) {}

    ~WsHandler() { clear(); }

    int traverse(visitproc visit, void* arg) {
        Py_VISIT(scope_);
        Py_VISIT(task_);
        Py_VISIT(receive_waiter_);
        Py_VISIT(send_waiter_);
        Py_VISIT(disconnect_);
        int r = 0;
        queue_.for_each([&](PyObject* m) {
            if (r == 0 && m != nullptr) r = visit(m, arg);
        });
        return r;
    }

    void clear() {
        Py_CLEAR(scope_);
        Py_CLEAR(task_);
        Py_CLEAR(receive_waiter_);
        Py_CLEAR(send_waiter_);
        Py_CLEAR(disconnect_);
        while (!queue_.empty())
            Py_DECREF(queue_.pop());
    }

    // ---- core::WebSocketHandler ----
    void on_ws_connect() noexcept override;
    void on_ws_rejected(int status) noexcept override;
    void on_ws_message(bool text, std::string_view data) noexcept override;
    void on_ws_binary(const core::WsFrame& frame) noexcept override;
    void on_ws_closed(int code, std::string_view reason,
                      core::WsCloseCause cause) noexcept override;
    void on_ws_writable() noexcept override { wake_sender(nullptr); }
    void on_ws_release() noexcept override;

    // ---- Python-facing ----
    PyObject* receive();
    PyObject* send(PyObject* message);
    void finish(bool error);
    void cancel_task() {
        if (task_ != nullptr) {
            PyObject* r = PyObject_CallMethodNoArgs(task_, n::cancel);
            if (r == nullptr) PyErr_Clear();
            Py_XDECREF(r);
        }
    }
    void attach_task(PyObject* task) {
        // With eager start the task may already be done (and finish() called) by now.
        if (task_running_) {
            Py_XSETREF(task_, task);
        } else {
            Py_DECREF(task);
        }
    }
    bool handshake_complete() const {
        // Uvicorn also counts a lost connection as the end of the handshake.
        return ws_ == nullptr || state_ == AppState::kAccepted || state_ == AppState::kResponded ||
               state_ == AppState::kClosed;
    }

    WsCycleLinks links;
    BridgeServer& server() { return server_; }
    PyObject* task() const { return task_; }

  private:
    PyObject* send_connecting(PyObject* type, PyObject* message);
    PyObject* send_accepted(PyObject* type, PyObject* message);
    PyObject* send_response_body(PyObject* type, PyObject* message);
    PyObject* accept(PyObject* message);
    PyObject* close(PyObject* message);
    PyObject* send_data(PyObject* message);
    PyObject* after_write(core::WriteResult r);
    void push(PyObject* message);                             // steals
    void queue_message(bool text, PyObject* value) noexcept;  // steals value (null: error set)
    void queue_disconnect(int code, PyObject* reason);  // reason: borrowed, or nullptr for none
    void wake_receiver();
    void wake_sender(PyObject* exc_type);
    void log_info(const char* fmt, PyObject* arg);  // logger.info(fmt, client, path[, arg])
    void start_task();

    WsCycle* self_;
    BridgeServer& server_;
    core::WebSocketConnection* ws_;  // null once core released the handler
    PyObject* scope_;
    PyObject* task_ = nullptr;
    PyObject* receive_waiter_ = nullptr;
    PyObject* send_waiter_ = nullptr;
    PyObject* disconnect_ = nullptr;  // the disconnect message, handed out again and again
    MessageQueue queue_;              // messages for receive(), in order
    std::size_t max_queue_;
    // websocket.http.response.*: the response is sent whole once the body is complete. Made
    // at websocket.http.response.start only: an accepted session never needs it.
    struct Denial {
        int status = 0;
        std::vector<std::pair<std::string, std::string>> headers;
        std::string body;
    };
    std::unique_ptr<Denial> denial_;
    AppState state_ = AppState::kConnecting;
    bool reading_paused_ = false;
    bool task_running_ = false;
};

// ------------------------------------------------------------------------------------------
// Python types: WebSocketSend (the cycle) and WebSocketReceive

PyTypeObject WsCycleType = {PyVarObject_HEAD_INIT(nullptr, 0)};
PyTypeObject WsReceiveType = {PyVarObject_HEAD_INIT(nullptr, 0)};

struct WsReceive {
    PyObject_HEAD vectorcallfunc vectorcall;
    WsCycle* cycle;
};

WsHandler& H(PyObject* self) {
    return *reinterpret_cast<WsCycle*>(self)->handler;
}

// `await send(message)`; called by the application's task, never re-entered.
PyObject* ws_cycle_vectorcall(PyObject* self, PyObject* const* args, size_t nargsf,
                              PyObject* kwnames) {
    if (PyVectorcall_NARGS(nargsf) != 1 || (kwnames != nullptr && PyTuple_GET_SIZE(kwnames))) {
        PyErr_SetString(PyExc_TypeError, "send() takes exactly one argument (the message)");
        return nullptr;
    }
    // The session's Task calls its done callback, which is this object, with the Task itself
    // (see start_ws_task): no bound method per session.
    if (args[0] == H(self).task() && args[0] != nullptr) {
        H(self).server().ws_task_done(self, args[0]);
        Py_RETURN_NONE;
    }
    return H(self).send(args[0]);
}

// `await receive()`; called by the application's task, never re-entered.
PyObject* ws_receive_vectorcall(PyObject* self, PyObject* const*, size_t nargsf,
                                PyObject* kwnames) {
    if (PyVectorcall_NARGS(nargsf) != 0 || (kwnames != nullptr && PyTuple_GET_SIZE(kwnames))) {
        PyErr_SetString(PyExc_TypeError, "receive() takes no arguments");
        return nullptr;
    }
    return reinterpret_cast<WsReceive*>(self)->cycle->handler->receive();
}

int ws_cycle_traverse(PyObject* self, visitproc visit, void* arg) {
    auto* c = reinterpret_cast<WsCycle*>(self);
    return c->handler ? c->handler->traverse(visit, arg) : 0;
}

int ws_cycle_clear(PyObject* self) {
    auto* c = reinterpret_cast<WsCycle*>(self);
    if (c->handler) c->handler->clear();
    return 0;
}

void ws_cycle_dealloc(PyObject* self) {
    PyObject_GC_UnTrack(self);
    auto* c = reinterpret_cast<WsCycle*>(self);
    if (c->handler != nullptr) {
        c->handler->finish(false);  // a task dropped without running still stops counting
        c->handler->~WsHandler();
        c->handler = nullptr;
    }
    Py_TYPE(self)->tp_free(self);
}

int ws_receive_traverse(PyObject* self, visitproc visit, void* arg) {
    Py_VISIT(reinterpret_cast<PyObject*>(reinterpret_cast<WsReceive*>(self)->cycle));
    return 0;
}

int ws_receive_clear(PyObject* self) {
    Py_CLEAR(reinterpret_cast<WsReceive*>(self)->cycle);
    return 0;
}

void ws_receive_dealloc(PyObject* self) {
    PyObject_GC_UnTrack(self);
    ws_receive_clear(self);
    Py_TYPE(self)->tp_free(self);
}

PyObject* ws_get_handshake_complete(PyObject* self, void*) {
    return PyBool_FromLong(H(self).handshake_complete());
}

// send.finish(error): once the application returned or raised (from ws_task_done).
PyObject* ws_finish(PyObject* self, PyObject* const* args, Py_ssize_t nargs) {
    bool error = nargs > 0 && PyObject_IsTrue(args[0]) == 1;
    H(self).finish(error);
    Py_RETURN_NONE;
}

PyGetSetDef ws_cycle_getset[] = {
    {"handshake_complete", ws_get_handshake_complete, nullptr, nullptr, nullptr},
    {nullptr, nullptr, nullptr, nullptr, nullptr},
};

PyMethodDef ws_cycle_methods[] = {

    {"finish", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(ws_finish)),
     METH_FASTCALL,
     "The session's task is done (called by ws_task_done): finish(error) answers a handshake "
     "left open with a 500 and an open session with a close frame (1011 on error, else 1000)."},
    {nullptr, nullptr, 0, nullptr},
};

// ------------------------------------------------------------------------------------------
// WsHandler: core events

void WsHandler::on_ws_connect() noexcept {
    // Uvicorn queues websocket.connect before the application's task starts.
    PyObject* msg = PyDict_New();
    if (msg != nullptr && PyDict_SetItem(msg, n::type, w.ws_connect) != 0) Py_CLEAR(msg);
    if (msg == nullptr) {
        server_.report_python_error("the websocket.connect message");
        if (ws_ != nullptr) ws_->abort();
        return;
    }
    push(msg);
    start_task();
}

void WsHandler::start_task() {
    PyObject* send = reinterpret_cast<PyObject*>(self_);
    auto* r = PyObject_GC_New(WsReceive, &WsReceiveType);
    if (r == nullptr) {
        server_.report_python_error("creating the WebSocket receive()");
        if (ws_ != nullptr) ws_->abort();
        return;
    }
    r->vectorcall = ws_receive_vectorcall;
    r->cycle = reinterpret_cast<WsCycle*>(Py_NewRef(send));
    PyObject_GC_Track(r);
    PyObject* receive = reinterpret_cast<PyObject*>(r);
    // Counted before the task exists: with eager start it may finish inside start_ws_task.
    task_running_ = true;
    server_.on_ws_task_started(self_);
    PyObject* task = server_.start_ws_task(scope_, receive, send);
    Py_DECREF(receive);
    if (task != nullptr) {
        attach_task(task);
    } else {
        finish(true);  // answers the handshake with a 500
    }
}

void WsHandler::on_ws_rejected(int status) noexcept {
    // websockets' ServerProtocol.send_response log line (its logger is uvicorn.error).
    std::string_view line = server_.core().status_lines().line(status);  // "HTTP/1.1 403 X\r\n"
    std::string_view phrase = line.size() > 15 ? line.substr(13, line.size() - 15) : "";
    PyObject* text =
        PyUnicode_DecodeLatin1(phrase.data(), static_cast<Py_ssize_t>(phrase.size()), nullptr);
    PyObject* r = text ? PyObject_CallMethod(server_.error_logger(), "info", "siO",
                                             "connection rejected (%d %s)", status, text)
                       : nullptr;
    if (r == nullptr) PyErr_Clear();
    Py_XDECREF(r);
    Py_XDECREF(text);
}

void WsHandler::on_ws_message(bool text, std::string_view data) noexcept {
    PyObject* value =
        text ? PyUnicode_DecodeUTF8(data.data(), static_cast<Py_ssize_t>(data.size()), nullptr)
             : PyBytes_FromStringAndSize(data.data(), static_cast<Py_ssize_t>(data.size()));
    queue_message(text, value);
}

void WsHandler::on_ws_binary(const core::WsFrame& frame) noexcept {
    // NOTE(perf): the payload is unmasked from the read buffer straight into the bytes object.
    PyObject* value =
        PyBytes_FromStringAndSize(nullptr, static_cast<Py_ssize_t>(frame.payload.size()));
    if (value != nullptr) frame.unmask_to(PyBytes_AS_STRING(value));
    queue_message(false, value);
}

void WsHandler::queue_message(bool text, PyObject* value) noexcept {
    PyObject* msg = PyDict_Copy(text ? w.receive_text_template : w.receive_bytes_template);
    bool ok = msg != nullptr && value != nullptr &&
              PyDict_SetItem(msg, text ? w.text : w.bytes, value) == 0;
    Py_XDECREF(value);
    if (!ok) {
        Py_XDECREF(msg);
        server_.report_python_error("a WebSocket message");
        if (ws_ != nullptr) ws_->abort();
        return;
    }
    push(msg);
    if (queue_.size() >= max_queue_ && !reading_paused_ && ws_ != nullptr) {
        // --ws-max-queue: the application is behind; let TCP push back on the client.
        reading_paused_ = true;
        ws_->pause_reading();
    }
}

void WsHandler::on_ws_closed(int code, std::string_view reason, core::WsCloseCause cause) noexcept {
    if (cause == core::WsCloseCause::kInvalidText) {
        server_.log_error(n::error, "Invalid UTF-8 sequence received from client.");
    }
    if (disconnect_ != nullptr) return;  // the application's own close was queued already
    // Uvicorn's messages: a close frame (received or sent on error) carries its reason; a lost
    // connection and a server shutdown carry only the code.
    bool with_reason = cause != core::WsCloseCause::kLost && cause != core::WsCloseCause::kShutdown;
    PyObject* r = nullptr;
    if (with_reason) {
        r = PyUnicode_DecodeUTF8(reason.data(), static_cast<Py_ssize_t>(reason.size()), "replace");
        if (r == nullptr) {
            PyErr_Clear();
            r = Py_NewRef(n::empty_str);
        }
    }
    queue_disconnect(code, r);
    Py_XDECREF(r);
}

void WsHandler::on_ws_release() noexcept {
    ws_ = nullptr;
    if (disconnect_ == nullptr) queue_disconnect(core::ws_close::kAbnormal, nullptr);
    // A send() waiting for the buffer to drain learns that it never will (Uvicorn raises
    // ClientDisconnected once the transport is lost).
    if (send_waiter_ != nullptr) wake_sender(client_disconnected());
    Py_DECREF(reinterpret_cast<PyObject*>(self_));  // core's reference; may free us
}

// ------------------------------------------------------------------------------------------
// WsHandler: queue and waiters

void WsHandler::push(PyObject* message) {
    queue_.push(message);
    if (receive_waiter_ != nullptr) wake_receiver();
}

void WsHandler::queue_disconnect(int code, PyObject* reason) {
    PyObject* msg = PyDict_New();
    bool ok = msg != nullptr && PyDict_SetItem(msg, n::type, w.ws_disconnect) == 0 &&
              set_item(msg, w.code, PyLong_FromLong(code)) &&
              (reason == nullptr || PyDict_SetItem(msg, w.reason, reason) == 0);
    if (!ok) {
        Py_XDECREF(msg);
        server_.report_python_error("the websocket.disconnect message");
        return;
    }
    Py_XSETREF(disconnect_, Py_NewRef(msg));
    push(msg);
}

void WsHandler::wake_receiver() {
    PyObject* fut = receive_waiter_;
    if (fut == nullptr || queue_.empty()) return;
    receive_waiter_ = nullptr;
    // A cancelled receive() takes nothing: the message waits in the queue for the next call.
    if (server_.future_pending(fut, "receive()") == 1) {
        PyObject* msg = queue_.pop();
        server_.set_future_result_kept(fut, msg, "receive()");
        Py_DECREF(msg);
    }
    Py_DECREF(fut);
}

void WsHandler::wake_sender(PyObject* exc_type) {
    PyObject* fut = send_waiter_;
    if (fut == nullptr) return;
    send_waiter_ = nullptr;
    if (server_.future_pending(fut, "send()") == 1) {
        if (exc_type == nullptr) {
            server_.set_future_result(fut, Py_None, "send()");
        } else {
            PyObject* exc = PyObject_CallNoArgs(exc_type);
            PyObject* r = exc ? PyObject_CallMethodOneArg(fut, w.set_exception, exc) : nullptr;
            Py_XDECREF(exc);
            if (r == nullptr) server_.report_python_error("send()");
            Py_XDECREF(r);
        }
    }
    Py_DECREF(fut);
}

PyObject* WsHandler::receive() {
    if (!queue_.empty()) {
        PyObject* msg = queue_.pop();
        if (reading_paused_ && queue_.size() < max_queue_) {
            reading_paused_ = false;
            if (ws_ != nullptr) ws_->resume_reading();
        }
        return ready_awaitable_new(msg);
    }
    if (disconnect_ != nullptr) return ready_awaitable_new(Py_NewRef(disconnect_));
    if (receive_waiter_ == nullptr) receive_waiter_ = server_.create_future();
    return Py_XNewRef(receive_waiter_);
}

// ------------------------------------------------------------------------------------------
// WsHandler: send

void WsHandler::log_info(const char* fmt, PyObject* arg) {
    // Uvicorn: '%s - "WebSocket %s" …' with get_client_addr(scope) and the raw path.
    PyObject* client = PyDict_GetItemWithError(scope_, n::client);
    PyErr_Clear();
    PyObject* where = log_target(scope_);
    if (where == nullptr) {
        PyErr_Clear();
        return;
    }
    PyObject* addr = nullptr;
    if (client != nullptr && PyTuple_Check(client) && PyTuple_GET_SIZE(client) == 2) {
        addr =
            PyUnicode_FromFormat("%S:%S", PyTuple_GET_ITEM(client, 0), PyTuple_GET_ITEM(client, 1));
    } else {
        addr = Py_NewRef(n::empty_str);
    }
    PyObject* r = nullptr;
    if (addr != nullptr && where != nullptr) {
        r = arg != nullptr
                ? PyObject_CallMethod(server_.error_logger(), "info", "sOOO", fmt, addr, where, arg)
                : PyObject_CallMethod(server_.error_logger(), "info", "sOO", fmt, addr, where);
    }
    if (r == nullptr) PyErr_Clear();
    Py_XDECREF(r);
    Py_XDECREF(addr);
    Py_XDECREF(where);
}

PyObject* WsHandler::after_write(core::WriteResult r) {
    if (r == core::WriteResult::kWait && ws_ != nullptr) {
        Py_XSETREF(send_waiter_, server_.create_future());
        return Py_XNewRef(send_waiter_);
    }
    return Py_NewRef(w.ready_none);
}

PyObject* WsHandler::send(PyObject* message) {
    PyObject* type = PyDict_CheckExact(message)
                         ? Py_XNewRef(PyDict_GetItemWithError(message, n::type))
                         : PyObject_GetItem(message, n::type);
    if (type == nullptr) {
        if (!PyErr_Occurred()) PyErr_SetObject(PyExc_KeyError, n::type);
        return nullptr;
    }
    PyObject* result = nullptr;
    if (ws_ == nullptr) {
        raise_client_disconnected();  // Uvicorn checks this before anything else
    } else {
        switch (state_) {
            case AppState::kConnecting:
                result = send_connecting(type, message);
                break;
            case AppState::kResponding:
                result = send_response_body(type, message);
                break;
            case AppState::kAccepted:
                result = send_accepted(type, message);
                break;
            case AppState::kResponded:
                if (is(type, w.ws_http_response_body)) {
                    result = Py_NewRef(w.ready_none);
                } else {
                    runtime_error(
                        "Expected ASGI message 'websocket.http.response.body' but got '%S'.", type);
                }
                break;
            case AppState::kClosed:
                runtime_error("Unexpected ASGI message '%S', after sending 'websocket.close'.",
                              type);
                break;
        }
    }
    Py_DECREF(type);
    return result;
}

PyObject* WsHandler::send_connecting(PyObject* type, PyObject* message) {
    if (is(type, w.ws_accept)) return accept(message);
    if (is(type, w.ws_close)) {
        // ASGI: a close before the accept refuses the handshake with 403.
        queue_disconnect(core::ws_close::kAbnormal, nullptr);
        log_info("%s - \"WebSocket %s\" 403", nullptr);
        state_ = AppState::kClosed;
        ws_->respond(403, {}, "");
        return Py_NewRef(w.ready_none);
    }
    if (is(type, w.ws_http_response_start)) {
        PyObject* status_obj = message_get(message, n::status);
        if (status_obj == nullptr) return nullptr;
        long status = PyLong_Check(status_obj) ? PyLong_AsLong(status_obj) : -1;
        if (status == -1 && PyErr_Occurred()) {
            Py_DECREF(status_obj);
            return nullptr;
        }
        // Uvicorn's text. Unlike Uvicorn, a 1xx is refused too: a 101 would tell the client
        // its upgrade went through, any 1xx that the answer is still to come.
        if (status < 200 || status >= 600) {
            PyErr_Format(PyExc_RuntimeError, "Invalid HTTP status code '%S' in response.",
                         status_obj);
            Py_DECREF(status_obj);
            return nullptr;
        }
        PyObject* headers = message_get(message, n::headers);
        if (headers == nullptr) {
            Py_DECREF(status_obj);
            return nullptr;
        }
        std::vector<core::Header> list;
        std::vector<PyObject*> keep;
        bool ok = collect_headers(headers, list, keep);
        Py_DECREF(headers);
        if (ok) {
            denial_ = std::make_unique<Denial>();
            for (const auto& h : list)
                denial_->headers.emplace_back(h.name, h.value);
        }
        release_all(keep);
        if (!ok) {
            Py_DECREF(status_obj);
            return nullptr;
        }
        log_info("%s - \"WebSocket %s\" %d", status_obj);
        Py_DECREF(status_obj);
        denial_->status = static_cast<int>(status);
        state_ = AppState::kResponding;
        return Py_NewRef(w.ready_none);
    }
    return runtime_error(
        "Expected ASGI message 'websocket.accept', 'websocket.close' or "
        "'websocket.http.response.start' but got '%S'.",
        type);
}

PyObject* WsHandler::accept(PyObject* message) {
    PyObject* headers = message_get(message, n::headers);
    if (headers == nullptr) return nullptr;
    PyObject* subprotocol = message_get(message, w.subprotocol);
    if (subprotocol == nullptr) {
        Py_DECREF(headers);
        return nullptr;
    }
    std::vector<core::Header> list;
    std::vector<PyObject*> keep;
    std::string_view sp;
    bool ok = collect_headers(headers, list, keep);
    if (ok && subprotocol != Py_None && PyObject_IsTrue(subprotocol) == 1) {
        if (!PyUnicode_Check(subprotocol)) {
            PyErr_SetString(PyExc_TypeError, "ASGI 'subprotocol' must be a str");
            ok = false;
        } else if (PyObject* latin1 = PyUnicode_AsLatin1String(subprotocol)) {
            keep.push_back(latin1);
            sp = {PyBytes_AS_STRING(latin1), static_cast<std::size_t>(PyBytes_GET_SIZE(latin1))};
        } else {
            ok = false;
        }
    }
    Py_DECREF(headers);
    Py_DECREF(subprotocol);
    if (!ok) {
        release_all(keep);
        return nullptr;
    }
    log_info("%s - \"WebSocket %s\" [accepted]", nullptr);
    core::WriteResult r = ws_->accept(list, sp);
    release_all(keep);
    if (r == core::WriteResult::kInvalid) return header_error(ws_->last_header_error());
    if (r == core::WriteResult::kClosed) {
        // The connection is going (shutdown answered 500): nothing is sent, as in Uvicorn.
        return Py_NewRef(w.ready_none);
    }
    state_ = AppState::kAccepted;
    // websockets logs this once the 101 is handed to the transport.
    PyObject* lr = PyObject_CallMethod(server_.error_logger(), "info", "s", "connection open");
    if (lr == nullptr) PyErr_Clear();
    Py_XDECREF(lr);
    return after_write(r);
}

PyObject* WsHandler::send_response_body(PyObject* type, PyObject* message) {
    if (!is(type, w.ws_http_response_body)) {
        return runtime_error("Expected ASGI message 'websocket.http.response.body' but got '%S'.",
                             type);
    }
    PyObject* body = message_get(message, n::body);
    if (body == nullptr) return nullptr;
    if (body != Py_None) {
        Py_buffer view{};
        if (PyObject_GetBuffer(body, &view, PyBUF_SIMPLE) != 0) {
            Py_DECREF(body);
            return nullptr;
        }
        denial_->body.append(static_cast<const char*>(view.buf),
                             static_cast<std::size_t>(view.len));
        PyBuffer_Release(&view);
    }
    Py_DECREF(body);
    PyObject* more_obj = message_get(message, n::more_body);
    if (more_obj == nullptr) return nullptr;
    int more = PyObject_IsTrue(more_obj);
    Py_DECREF(more_obj);
    if (more < 0) return nullptr;
    if (more) return Py_NewRef(w.ready_none);
    std::vector<core::Header> list;
    list.reserve(denial_->headers.size());
    for (const auto& [name, value] : denial_->headers)
        list.push_back({name, value});
    core::WriteResult r = ws_->respond(denial_->status, list, denial_->body);
    if (r == core::WriteResult::kInvalid) return header_error(ws_->last_header_error());
    if (r == core::WriteResult::kTooLong || r == core::WriteResult::kTooShort) {
        // The body disagrees with the app's content-length: no valid answer can be made of it
        // (the HTTP cycle's errors, and the connection closes, as after a short HTTP body).
        state_ = AppState::kClosed;
        denial_.reset();
        ws_->abort();
        return runtime_error(r == core::WriteResult::kTooLong
                                 ? "Response content longer than Content-Length"
                                 : "Response content shorter than Content-Length");
    }
    queue_disconnect(core::ws_close::kAbnormal, nullptr);
    state_ = AppState::kResponded;
    denial_.reset();
    return Py_NewRef(w.ready_none);
}

PyObject* WsHandler::send_accepted(PyObject* type, PyObject* message) {
    if (is(type, w.ws_send)) return send_data(message);
    if (is(type, w.ws_close)) return close(message);
    return runtime_error(
        "Expected ASGI message 'websocket.send' or 'websocket.close', but got '%S'.", type);
}

PyObject* WsHandler::send_data(PyObject* message) {
    PyObject* bytes = message_get(message, w.bytes);
    if (bytes == nullptr) return nullptr;
    core::WriteResult r = core::WriteResult::kOk;
    if (bytes != Py_None) {
        Py_buffer view{};
        if (PyObject_GetBuffer(bytes, &view, PyBUF_SIMPLE) != 0) {
            Py_DECREF(bytes);
            return nullptr;
        }
        r = ws_->send(false,
                      {static_cast<const char*>(view.buf), static_cast<std::size_t>(view.len)});
        PyBuffer_Release(&view);
        Py_DECREF(bytes);
    } else {
        Py_DECREF(bytes);
        PyObject* text = message_get(message, w.text);
        if (text == nullptr) return nullptr;
        if (text == Py_None) {
            // Uvicorn sends nothing for a websocket.send with neither bytes nor text.
            Py_DECREF(text);
            return Py_NewRef(w.ready_none);
        }
        if (!PyUnicode_Check(text)) {
            Py_DECREF(text);
            PyErr_SetString(PyExc_TypeError, "ASGI 'text' must be a str");
            return nullptr;
        }
        Py_ssize_t len = 0;
        const char* utf8 = PyUnicode_AsUTF8AndSize(text, &len);
        if (utf8 == nullptr) {
            Py_DECREF(text);
            return nullptr;
        }
        r = ws_->send(true, {utf8, static_cast<std::size_t>(len)});
        Py_DECREF(text);
    }
    if (r == core::WriteResult::kClosed) return raise_client_disconnected();  // the client closed
    return after_write(r);
}

PyObject* WsHandler::close(PyObject* message) {
    PyObject* code_obj = message_get(message, w.code);
    if (code_obj == nullptr) return nullptr;
    long code = 1000;
    if (code_obj != Py_None) {
        code = PyLong_AsLong(code_obj);
        if (code == -1 && PyErr_Occurred()) {
            Py_DECREF(code_obj);
            return nullptr;
        }
    }
    Py_DECREF(code_obj);
    PyObject* reason = message_get(message, w.reason);
    if (reason == nullptr) return nullptr;
    if (reason == Py_None) Py_SETREF(reason, Py_NewRef(n::empty_str));
    if (!PyUnicode_Check(reason)) {
        Py_DECREF(reason);
        PyErr_SetString(PyExc_TypeError, "ASGI 'reason' must be a str");
        return nullptr;
    }
    if (ws_->state() != core::WebSocketConnection::State::kOpen) {
        // The client closed first and the connection is going: nothing to send (Uvicorn).
        Py_DECREF(reason);
        return Py_NewRef(w.ready_none);
    }
    if (!core::valid_close_code(static_cast<int>(code))) {
        // websockets' Close.check raises here too (ProtocolError "invalid status code").
        Py_DECREF(reason);
        return PyErr_Format(PyExc_RuntimeError, "Invalid WebSocket close code %ld.", code);
    }
    Py_ssize_t len = 0;
    const char* utf8 = PyUnicode_AsUTF8AndSize(reason, &len);
    if (utf8 == nullptr) {
        Py_DECREF(reason);
        return nullptr;
    }
    queue_disconnect(static_cast<int>(code), reason);
    state_ = AppState::kClosed;
    core::WriteResult r = ws_->close(static_cast<int>(code), {utf8, static_cast<std::size_t>(len)});
    Py_DECREF(reason);
    if (reading_paused_) {
        reading_paused_ = false;  // core reads on for the client's close frame
    }
    return after_write(r);
}

// ------------------------------------------------------------------------------------------
// WsHandler: end of the task

void WsHandler::finish(bool error) {
    if (task_running_) {
        task_running_ = false;
        server_.on_ws_task_finished(self_);
    }
    Py_CLEAR(task_);
    if (ws_ == nullptr) return;
    switch (state_) {
        case AppState::kConnecting:
            // Uvicorn's send_500_response: an error, or a return without an answer.
            state_ = AppState::kClosed;
            ws_->respond(500, {}, "Internal Server Error");
            break;
        case AppState::kResponding:
            // The denial response never completed: nothing sensible can follow.
            state_ = AppState::kClosed;
            ws_->abort();
            break;
        case AppState::kAccepted:
            // The application left an open session: close it properly (Uvicorn just drops
            // the TCP connection): 1011 after an exception (RFC 6455 §7.4.1), else 1000.
            state_ = AppState::kClosed;
            if (ws_->state() == core::WebSocketConnection::State::kOpen) {
                ws_->close(error ? core::ws_close::kInternalError : core::ws_close::kNormal, "");
            }
            break;
        case AppState::kResponded:
        case AppState::kClosed:
            break;  // the closing handshake (or the refusal) is under way
    }
}

}  // namespace

// ------------------------------------------------------------------------------------------
// Scope

namespace {

// Header names and values that nearly every handshake carries, as shared bytes objects: a
// session's scope holds its headers for its whole life, and with thousands of idle sessions one
// bytes object per name and per common value adds up (bytes are immutable, so sharing them is
// invisible to the application).
class CommonBytes {
  public:
    // A new reference to the shared object for `s`, or a fresh bytes object.
    PyObject* get(std::string_view s) {
        int i = find(s);
        if (i < 0) return PyBytes_FromStringAndSize(s.data(), static_cast<Py_ssize_t>(s.size()));
        Entry& e = entries_[i];
        if (e.bytes == nullptr) {
            e.bytes =
                PyBytes_FromStringAndSize(e.text.data(), static_cast<Py_ssize_t>(e.text.size()));
            if (e.bytes == nullptr) return nullptr;
        }
        return Py_NewRef(e.bytes);
    }

    // A new reference to a (name, value) tuple: a shared one when both are common (such as
    // (b"upgrade", b"websocket"); tuples are immutable too), else a fresh one.
    PyObject* pair(std::string_view name, std::string_view value) {
        int i = find(name);
        int j = i < 0 ? -1 : find(value);
        PyObject** slot = j < 0 ? nullptr : &pairs_[i][j];
        if (slot != nullptr && *slot != nullptr) return Py_NewRef(*slot);
        // A value that is not in the table but often repeats from client to client (one site's
        // Host, a browser's User-Agent): the last one's tuple is kept and shared while it
        // repeats. Never for per-user or per-session values (cookies, credentials, keys).
        Recent* recent = (slot == nullptr && i >= 0 && kRecent[i] && value.size() <= kMaxRecent)
                             ? &recent_[i]
                             : nullptr;
        if (recent != nullptr && recent->tuple != nullptr && recent->value == value) {
            return Py_NewRef(recent->tuple);
        }
        PyObject* n = get(name);
        PyObject* v = get(value);
        PyObject* t = (n != nullptr && v != nullptr) ? PyTuple_Pack(2, n, v) : nullptr;
        Py_XDECREF(n);
        Py_XDECREF(v);
        if (t != nullptr && slot != nullptr) *slot = Py_NewRef(t);  // kept for the process
        if (t != nullptr && recent != nullptr) {
            recent->value.assign(value);
            Py_XSETREF(recent->tuple, Py_NewRef(t));
        }
        return t;
    }

  private:
    int find(std::string_view s) const {
        if (s.size() > kMaxLength) return -1;
        for (int i = 0; i < kCount; ++i) {
            if (entries_[i].text == s) return i;
        }
        return -1;
    }

    struct Entry {
        std::string_view text;
        PyObject* bytes;  // created on first use, kept for the life of the process
    };
    static constexpr std::size_t kMaxLength = 48;
    static constexpr int kCount = 23;
    Entry entries_[kCount] = {
        {"host", nullptr},
        {"connection", nullptr},
        {"upgrade", nullptr},
        {"sec-websocket-key", nullptr},
        {"sec-websocket-version", nullptr},
        {"sec-websocket-extensions", nullptr},
        {"sec-websocket-protocol", nullptr},
        {"origin", nullptr},
        {"user-agent", nullptr},
        {"pragma", nullptr},
        {"cache-control", nullptr},
        {"accept-encoding", nullptr},
        {"accept-language", nullptr},
        {"cookie", nullptr},
        {"authorization", nullptr},
        {"websocket", nullptr},
        {"Upgrade", nullptr},
        {"keep-alive, Upgrade", nullptr},
        {"13", nullptr},
        {"no-cache", nullptr},
        {"permessage-deflate; client_max_window_bits", nullptr},
        {"gzip, deflate, br", nullptr},
        {"gzip, deflate, br, zstd", nullptr},
    };
    PyObject* pairs_[kCount][kCount] = {};  // created on first use, kept for the process

    // Names (by index above) whose last value is shared while it repeats.
    static constexpr bool kRecent[kCount] = {true,  false, false, false, true,  true,  true,  true,
                                             true,  true,  true,  true,  true,  false, false, false,
                                             false, false, false, false, false, false, false};
    static constexpr std::size_t kMaxRecent = 512;
    struct Recent {
        std::string value;
        PyObject* tuple = nullptr;
    };
    Recent recent_[kCount];
};

CommonBytes common_bytes;

PyObject* build_headers(const core::RequestHead& head) {
    PyObject* list = PyList_New(static_cast<Py_ssize_t>(head.headers.size()));
    if (list == nullptr) return nullptr;
    Py_ssize_t i = 0;
    for (const auto& h : head.headers) {
        PyObject* pair = common_bytes.pair(h.name, h.value);
        if (pair == nullptr) {
            Py_DECREF(list);
            return nullptr;
        }
        PyList_SET_ITEM(list, i++, pair);
    }
    return list;
}

// Uvicorn: every Sec-WebSocket-Protocol header, split on commas, each token stripped.
PyObject* build_subprotocols(const core::RequestHead& head) {
    PyObject* list = PyList_New(0);
    if (list == nullptr) return nullptr;
    for (const auto& h : head.headers) {
        if (h.name != "sec-websocket-protocol") continue;
        std::string_view v = h.value;
        while (true) {
            std::size_t comma = v.find(',');
            std::string_view token = v.substr(0, comma);
            while (!token.empty() && (token.front() == ' ' || token.front() == '\t')) {
                token.remove_prefix(1);
            }
            while (!token.empty() && (token.back() == ' ' || token.back() == '\t')) {
                token.remove_suffix(1);
            }
            PyObject* s = PyUnicode_DecodeLatin1(token.data(),
                                                 static_cast<Py_ssize_t>(token.size()), nullptr);
            if (s == nullptr || PyList_Append(list, s) != 0) {
                Py_XDECREF(s);
                Py_DECREF(list);
                return nullptr;
            }
            Py_DECREF(s);
            if (comma == std::string_view::npos) break;
            v.remove_prefix(comma + 1);
        }
    }
    return list;
}

}  // namespace

PyObject* build_ws_scope(const core::RequestHead& head, const ScopeInputs& in) {
    // Uvicorn's websockets-sansio scope: raw_path and query_string are the target split at
    // the first "?"; http_version is always "1.1".
    std::string_view target = head.target;
    std::size_t q = target.find('?');
    std::string_view raw_path = target.substr(0, q);
    std::string_view query =
        q == std::string_view::npos ? std::string_view() : target.substr(q + 1);
    std::string path(in.root_path_bytes);
    path.append(raw_path.find('%') == std::string_view::npos ? std::string(raw_path)
                                                             : percent_decode(raw_path));
    std::string raw(in.root_path_bytes);
    raw.append(raw_path);

    PyObject* scope = PyDict_New();
    if (scope == nullptr) return nullptr;
    PyObject* extensions = PyDict_New();
    bool ok =
        extensions != nullptr && set_item(extensions, w.ws_http_response, PyDict_New()) &&
        (in.tls == nullptr || PyDict_SetItem(extensions, n::tls, in.tls) == 0) &&
        PyDict_SetItem(scope, n::type, w.websocket) == 0 &&
        set_item(scope, n::asgi, PyDict_Copy(in.asgi_template)) &&
        PyDict_SetItem(scope, n::http_version, n::v1_1) == 0 &&
        PyDict_SetItem(scope, n::scheme, in.scheme) == 0 &&
        PyDict_SetItem(scope, n::server, in.server) == 0 &&
        PyDict_SetItem(scope, n::client, in.client) == 0 &&
        PyDict_SetItem(scope, n::root_path, in.root_path) == 0 &&
        set_item(
            scope, n::path,
            PyUnicode_DecodeUTF8(path.data(), static_cast<Py_ssize_t>(path.size()), "replace")) &&
        set_item(scope, n::raw_path,
                 PyBytes_FromStringAndSize(raw.data(), static_cast<Py_ssize_t>(raw.size()))) &&
        set_item(scope, n::query_string,
                 PyBytes_FromStringAndSize(query.data(), static_cast<Py_ssize_t>(query.size()))) &&
        set_item(scope, n::headers, build_headers(head)) &&
        set_item(scope, w.subprotocols, build_subprotocols(head)) &&
        (in.state == nullptr || set_item(scope, n::state, PyDict_Copy(in.state))) &&
        PyDict_SetItem(scope, n::extensions, extensions) == 0;
    Py_XDECREF(extensions);
    if (!ok) {
        Py_DECREF(scope);
        return nullptr;
    }
    return scope;
}

// ------------------------------------------------------------------------------------------
// BridgeServer's WebSocket half

core::WebSocketHandler* BridgeServer::on_websocket(core::HttpConnection& conn,
                                                   const core::RequestHead& head) noexcept {
    if (!options_.ws) return nullptr;  // on_request serves it and logs the warnings
    if (options_.trace_connections) {
        trace_connection(conn, "Upgrading to WebSocket");
        trace_connection(conn, "WebSocket connection made");
    }
    // Limit-concurrency does not apply to upgrades (Uvicorn returns before the check).
    ConnData& cd = conn_data(conn);
    if (ws_asgi_template_ == nullptr) {
        ws_asgi_template_ = PyDict_New();
        PyObject* spec = PyUnicode_FromString("2.4");
        if (ws_asgi_template_ == nullptr || spec == nullptr ||
            PyDict_SetItem(ws_asgi_template_, n::version,
                           PyDict_GetItem(asgi_template_, n::version)) != 0 ||
            PyDict_SetItem(ws_asgi_template_, n::spec_version, spec) != 0) {
            Py_CLEAR(ws_asgi_template_);
        }
        Py_XDECREF(spec);
        ws_scheme_ = PyUnicode_FromString(options_.scheme == "https" ? "wss" : "ws");
    }
    PyObject* scope = nullptr;
    if (ws_asgi_template_ != nullptr && ws_scheme_ != nullptr && cd.client != nullptr) {
        ScopeInputs in{ws_asgi_template_, cd.client,          cd.server, ws_scheme_,
                       root_path_,        options_.root_path, state_,    cd.tls};
        PyObject* forwarded_client = nullptr;
        if (!cd.proxy_trusted ||
            apply_proxy_headers(options_.forwarded_allow_ips, head, true, in, forwarded_client)) {
            scope = build_ws_scope(head, in);
        }
        Py_XDECREF(forwarded_client);
    }
    WsCycle* cycle = scope != nullptr ? ws_cycle_new(*this, conn, scope) : nullptr;
    Py_XDECREF(scope);
    if (cycle == nullptr) {
        // Out of memory or similar: the request is then served (and most likely refused) as
        // plain HTTP.
        report_python_error("starting a WebSocket session");
        return nullptr;
    }
    core::WebSocketHandler* handler = ws_cycle_handler(cycle);
    Py_DECREF(reinterpret_cast<PyObject*>(cycle));  // core holds its own reference
    return handler;
}

PyObject* BridgeServer::start_ws_task(PyObject* scope, PyObject* receive, PyObject* send) {
    // The session's Task runs the application's coroutine itself, with no wrapper coroutine
    // around it (its frame would stay alive, ~260 B, for as long as the session is idle): the
    // error policy runs in a done callback instead (ws_task_done).
    if (ws_task_done_ == nullptr) {
        PyObject* mod = PyImport_ImportModule("cppuvicorn._asgi");
        if (mod != nullptr) {
            ws_task_done_ = PyObject_GetAttrString(mod, "ws_task_done");
            await_ws_ = ws_task_done_ ? PyObject_GetAttrString(mod, "await_ws") : nullptr;
            Py_DECREF(mod);
        }
        callback_context_ = await_ws_ ? PyContext_New() : nullptr;
        if (callback_context_ == nullptr) {
            Py_CLEAR(ws_task_done_);
            Py_CLEAR(await_ws_);
            report_python_error("importing cppuvicorn._asgi");
            return nullptr;
        }
    }
    PyObject* args[] = {scope, receive, send};
    PyObject* coro = PyObject_Vectorcall(app_, args, 3, nullptr);
    if (coro == nullptr) {
        // The call itself raised (a plain function, say): the same log line and 500.
        PyObject *type, *value, *tb;
        PyErr_Fetch(&type, &value, &tb);
        PyErr_NormalizeException(&type, &value, &tb);
        if (tb != nullptr && value != nullptr) PyException_SetTraceback(value, tb);
        if (value != nullptr) ws_task_done(send, value);
        Py_XDECREF(type);
        Py_XDECREF(value);
        Py_XDECREF(tb);
        return nullptr;
    }
    if (!PyCoro_CheckExact(coro)) {
        // Any other awaitable (or not one at all: then await raises, as in Uvicorn).
        PyObject* wrapped = PyObject_CallOneArg(await_ws_, coro);
        Py_SETREF(coro, wrapped);
        if (coro == nullptr) {
            report_python_error("calling the ASGI application");
            return nullptr;
        }
    }
    PyObject* task = spawn(coro);
    Py_DECREF(coro);
    if (task == nullptr) {
        report_python_error("starting the ASGI task");
        return nullptr;
    }
    // The callback is `send` itself (called with the Task, it ends the session: see
    // ws_cycle_vectorcall), in one shared Context (it reads no context variable): nothing is
    // allocated per session for it.
    static PyObject* kwnames = Py_BuildValue("(s)", "context");
    PyObject* cargs[] = {task, send, callback_context_};
    PyObject* r = PyObject_VectorcallMethod(n::add_done_callback, cargs,
                                            2 | PY_VECTORCALL_ARGUMENTS_OFFSET, kwnames);
    if (r == nullptr) {
        report_python_error("watching the ASGI task");
        // The task runs on unwatched: cancel it rather than leave the session half-managed.
        PyObject* c = PyObject_CallMethodNoArgs(task, n::cancel);
        if (c == nullptr) PyErr_Clear();
        Py_XDECREF(c);
        Py_DECREF(task);
        return nullptr;
    }
    Py_DECREF(r);
    return task;
}

void BridgeServer::ws_task_done(PyObject* send, PyObject* outcome) {
    PyObject* args[] = {send, outcome};
    PyObject* r = PyObject_Vectorcall(ws_task_done_, args, 2, nullptr);
    if (r == nullptr) report_python_error("ending the WebSocket session");
    Py_XDECREF(r);
}

void BridgeServer::on_ws_task_started(WsCycle* c) {
    ++tasks_;
    live_ws_.push(c);
}

void BridgeServer::on_ws_task_finished(WsCycle* c) {
    --tasks_;
    live_ws_.remove(c);
}

// ------------------------------------------------------------------------------------------
// Public functions

WsCycle* ws_cycle_new(BridgeServer& server, core::HttpConnection& conn, PyObject* scope) {
    auto* c = PyObject_GC_New(WsCycle, &WsCycleType);
    if (c == nullptr) return nullptr;
    c->vectorcall = ws_cycle_vectorcall;
    c->handler = new (c->storage) WsHandler(c, server, conn, scope);
    PyObject_GC_Track(c);
    Py_INCREF(c);  // core's reference, dropped in on_ws_release
    return c;
}

core::WebSocketHandler* ws_cycle_handler(WsCycle* c) {
    return c->handler;
}
void ws_cycle_cancel(WsCycle* c) {
    c->handler->cancel_task();
}
WsCycleLinks& ws_cycle_links(WsCycle* c) {
    return c->handler->links;
}

bool register_ws_types(PyObject* module) {
    (void)module;
    auto intern = [](PyObject*& slot, const char* s) {
        slot = PyUnicode_InternFromString(s);
        return slot != nullptr;
    };
    bool ok = intern(w.websocket, "websocket") && intern(w.subprotocols, "subprotocols") &&
              intern(w.subprotocol, "subprotocol") && intern(w.text, "text") &&
              intern(w.bytes, "bytes") && intern(w.code, "code") && intern(w.reason, "reason") &&
              intern(w.info, "info") && intern(w.ws_connect, "websocket.connect") &&
              intern(w.ws_receive, "websocket.receive") &&
              intern(w.ws_disconnect, "websocket.disconnect") &&
              intern(w.ws_accept, "websocket.accept") && intern(w.ws_send, "websocket.send") &&
              intern(w.ws_close, "websocket.close") &&
              intern(w.ws_http_response_start, "websocket.http.response.start") &&
              intern(w.ws_http_response_body, "websocket.http.response.body") &&
              intern(w.ws_http_response, "websocket.http.response") &&
              intern(w.set_exception, "set_exception");
    if (!ok) return false;
    w.ready_none = ready_awaitable_new(Py_NewRef(Py_None));
    if (w.ready_none == nullptr) return false;
    for (auto [slot, key] : {std::pair{&w.receive_text_template, w.text},
                             std::pair{&w.receive_bytes_template, w.bytes}}) {
        *slot = PyDict_New();  // keys: the interned names the app's lookups use
        if (*slot == nullptr || PyDict_SetItem(*slot, n::type, w.ws_receive) != 0 ||
            PyDict_SetItem(*slot, key, Py_None) != 0) {
            return false;
        }
    }

    WsCycleType.tp_name = "cppuvicorn._core.WebSocketSend";
    WsCycleType.tp_basicsize = sizeof(WsCycle) + sizeof(WsHandler);
    WsCycleType.tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_HAVE_VECTORCALL;
    WsCycleType.tp_vectorcall_offset = offsetof(WsCycle, vectorcall);
    WsCycleType.tp_call = PyVectorcall_Call;
    WsCycleType.tp_dealloc = ws_cycle_dealloc;
    WsCycleType.tp_traverse = ws_cycle_traverse;
    WsCycleType.tp_clear = ws_cycle_clear;
    WsCycleType.tp_getset = ws_cycle_getset;
    WsCycleType.tp_methods = ws_cycle_methods;
    WsCycleType.tp_doc = "ASGI send() for one WebSocket session.";

    WsReceiveType.tp_name = "cppuvicorn._core.WebSocketReceive";
    WsReceiveType.tp_basicsize = sizeof(WsReceive);
    WsReceiveType.tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_HAVE_VECTORCALL;
    WsReceiveType.tp_vectorcall_offset = offsetof(WsReceive, vectorcall);
    WsReceiveType.tp_call = PyVectorcall_Call;
    WsReceiveType.tp_dealloc = ws_receive_dealloc;
    WsReceiveType.tp_traverse = ws_receive_traverse;
    WsReceiveType.tp_clear = ws_receive_clear;
    WsReceiveType.tp_doc = "ASGI receive() for one WebSocket session.";

    return PyType_Ready(&WsCycleType) == 0 && PyType_Ready(&WsReceiveType) == 0;
}

}  // namespace cppuvicorn::asgi
