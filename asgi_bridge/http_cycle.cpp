// SPDX-License-Identifier: BSD-3-Clause
#include "asgi_bridge/http_cycle.hpp"

#include "asgi_bridge/bridge_server.hpp"
#include "asgi_bridge/py_names.hpp"

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <fcntl.h>
#include <new>
#include <sys/stat.h>
#include <unistd.h>
#include <utility>
#include <vector>

namespace cppuvicorn::asgi {

namespace n = py_names;

namespace {

class CycleHandler;

}  // namespace

struct HttpCycle {
    PyObject_HEAD vectorcallfunc vectorcall;
    CycleHandler* handler;  // placement-constructed in `storage`
    alignas(std::max_align_t) unsigned char storage[1];
};

namespace {

// Request body not yet handed to the app, gathered straight into a bytes object: receive()
// gives that object away instead of copying the bytes once more (64 KiB bodies are copied
// from the read buffer exactly once on their way to the app).
class BodyBuffer {
  public:
    BodyBuffer() = default;
    BodyBuffer(const BodyBuffer&) = delete;
    BodyBuffer& operator=(const BodyBuffer&) = delete;
    ~BodyBuffer() { Py_XDECREF(bytes_); }

    bool empty() const { return size_ == 0; }
    std::size_t size() const { return size_; }

    // False (with a Python error set) when memory runs out.
    bool append(std::string_view chunk, std::size_t high_water) {
        if (chunk.empty()) return true;
        std::size_t need = size_ + chunk.size();
        if (need > capacity_) {
            // A small first chunk is usually the whole body; a big one is followed by more
            // until the high-water mark pauses reading, so room for that much saves regrowth.
            std::size_t cap = need < 4096 ? need : std::max({need, high_water, capacity_ * 2});
            if (bytes_ == nullptr) {
                bytes_ = PyBytes_FromStringAndSize(nullptr, static_cast<Py_ssize_t>(cap));
            } else if (_PyBytes_Resize(&bytes_, static_cast<Py_ssize_t>(cap)) != 0) {
                bytes_ = nullptr;  // _PyBytes_Resize freed it
            }
            if (bytes_ == nullptr) {
                size_ = capacity_ = 0;
                return false;
            }
            capacity_ = cap;
        }
        std::memcpy(PyBytes_AS_STRING(bytes_) + size_, chunk.data(), chunk.size());
        size_ = need;
        return true;
    }

    // The gathered bytes as a new reference (b"" when empty); the buffer is empty after.
    PyObject* take() {
        if (size_ == 0) return Py_NewRef(n::empty_bytes);
        if (size_ != capacity_ && _PyBytes_Resize(&bytes_, static_cast<Py_ssize_t>(size_)) != 0) {
            bytes_ = nullptr;
            size_ = capacity_ = 0;
            return nullptr;
        }
        size_ = capacity_ = 0;
        return std::exchange(bytes_, nullptr);
    }

  private:
    PyObject* bytes_ = nullptr;  // refcount 1 and unshared until take(): resizable in place
    std::size_t size_ = 0;
    std::size_t capacity_ = 0;
};

// The C++ half of the cycle: core's RequestHandler plus the ASGI state machine.
class CycleHandler final : public core::RequestHandler {
  public:
    CycleHandler(HttpCycle* self, BridgeServer& server, ConnData& data, PyObject* scope)
        : self_(self), server_(server), conn_(data.conn), data_(&data), scope_(Py_NewRef(scope)) {
        data.retain();
        if (server.access_log_timed()) start_ns_ = BridgeServer::now_ns();
    }

    ~CycleHandler() {
        clear();
        data_->release();
    }

    int traverse(visitproc visit, void* arg) {
        Py_VISIT(scope_);
        Py_VISIT(task_);
        Py_VISIT(receive_waiter_);
        Py_VISIT(send_waiter_);
        Py_VISIT(response_headers_);
        return 0;
    }

    void clear() {
        Py_CLEAR(response_headers_);
        Py_CLEAR(scope_);
        Py_CLEAR(task_);
        Py_CLEAR(receive_waiter_);
        Py_CLEAR(send_waiter_);
    }

    // ---- core::RequestHandler ----
    void on_body(std::string_view chunk) noexcept override {
        if (!body_.append(chunk, server_.config().read_high_water)) {
            server_.report_python_error("buffering the request body");
            if (conn_ != nullptr) conn_->abort();
            return;
        }
        if (receive_waiter_ != nullptr) {
            wake_soon();
        } else if (body_.size() >= server_.config().read_high_water && conn_ != nullptr) {
            conn_->pause_body();
        }
    }
    void on_body_complete() noexcept override {
        body_complete_ = true;
        if (receive_waiter_ != nullptr) wake_soon();
    }
    void on_writable() noexcept override { wake_sender(); }
    void on_disconnect() noexcept override {
        disconnected_ = true;
        wake_receiver();
        wake_sender();
    }
    void on_release() noexcept override {
        conn_ = nullptr;
        if (receive_waiter_ != nullptr) wake_receiver();
        wake_sender();
        Py_DECREF(reinterpret_cast<PyObject*>(self_));  // core's reference; may free us
    }

    // ---- Python-facing ----
    PyObject* receive();
    PyObject* send(PyObject* message);
    void abort() {
        // After release the connection may carry the next request; Uvicorn closes it anyway.
        if (conn_ != nullptr) {
            conn_->abort();
        } else if (data_->conn != nullptr) {
            data_->conn->abort();
        }
    }
    void finish() {
        // A response that started but never ended (the app raised, or the client left) still
        // gets its line in the timed access log, with the bytes sent so far.
        if (response_started_ && !access_logged_ && server_.access_log_timed()) log_done();
        if (task_running_) {
            task_running_ = false;
            server_.on_task_finished(self_);
        }
        Py_CLEAR(task_);
    }
    void cancel_task() {
        if (task_ != nullptr) {
            PyObject* r = PyObject_CallMethodNoArgs(task_, n::cancel);
            if (r == nullptr) PyErr_Clear();
            Py_XDECREF(r);
        }
    }
    void begin_task() {
        task_running_ = true;
        server_.on_task_started(self_);
    }
    void attach_task(PyObject* task) {
        // With eager start the task may already be done (and finish() called) by now.
        if (task_running_) {
            Py_XSETREF(task_, task);
        } else {
            Py_DECREF(task);
        }
    }

    // BridgeServer::wake_later's call: the reads of this pass are done.
    void deferred_wake() {
        wake_queued_ = false;
        if (receive_waiter_ != nullptr) wake_receiver();
    }

    bool response_started() const { return response_started_; }
    bool response_complete() const { return response_complete_; }
    bool disconnected() const { return disconnected_; }

    CycleLinks links;

  private:
    PyObject* next_message();  // new reference
    void wake_receiver();
    // Body arrived for a waiting receive(): answer it once the reads of this pass are done (one
    // message for what they brought, as Uvicorn's task finds it), or now outside such a pass.
    void wake_soon() {
        if (wake_queued_) return;
        if (server_.wake_later(self_)) {
            wake_queued_ = true;
        } else {
            wake_receiver();
        }
    }
    void wake_sender();
    PyObject* send_start(PyObject* message);
    PyObject* send_body(PyObject* message);
    PyObject* send_path(PyObject* message);
    PyObject* body_sent(core::WriteResult r, bool more);
    void log_done() {
        access_logged_ = true;
        if (scope_ != nullptr) {
            server_.log_access_done(scope_, status_, response_headers_, body_bytes_, start_ns_);
        }
        Py_CLEAR(response_headers_);
    }

    HttpCycle* self_;
    BridgeServer& server_;
    core::HttpConnection* conn_;
    ConnData* data_;
    PyObject* scope_;
    PyObject* task_ = nullptr;
    PyObject* receive_waiter_ = nullptr;
    PyObject* send_waiter_ = nullptr;
    BodyBuffer body_;
    PyObject* response_headers_ = nullptr;  // kept for the timed access log only
    std::uint64_t start_ns_ = 0;            // timed access log: when the request head was read
    std::uint64_t body_bytes_ = 0;          // response body bytes the app sent
    int status_ = 0;
    bool access_logged_ = false;
    bool body_complete_ = false;
    bool final_body_delivered_ = false;
    bool disconnected_ = false;
    bool wake_queued_ = false;  // in BridgeServer's wake list (see wake_soon)
    bool response_started_ = false;
    bool response_complete_ = false;
    bool task_running_ = false;
};

// ------------------------------------------------------------------------------------------
// ReadyAwaitable

struct ReadyAwaitable {
    PyObject_HEAD PyObject* value;
};

PyTypeObject ReadyAwaitableType = {PyVarObject_HEAD_INIT(nullptr, 0)};
ReadyAwaitable* ready_none = nullptr;

void ready_dealloc(PyObject* self) {
    Py_XDECREF(reinterpret_cast<ReadyAwaitable*>(self)->value);
    Py_TYPE(self)->tp_free(self);
}

PyObject* ready_await(PyObject* self) {
    return Py_NewRef(self);
}

PyObject* ready_next(PyObject* self) {
    PyObject* v = reinterpret_cast<ReadyAwaitable*>(self)->value;
    if (v == Py_None) return nullptr;  // StopIteration(None)
    // A tuple value must be wrapped, or StopIteration would unpack it.
    PyObject* exc = PyObject_CallOneArg(PyExc_StopIteration, v);
    if (exc != nullptr) {
        PyErr_SetObject(PyExc_StopIteration, exc);
        Py_DECREF(exc);
    }
    return nullptr;
}

PySendResult ready_send(PyObject* self, PyObject*, PyObject** result) {
    // NOTE(perf): `await` reaches this through PyIter_Send: no StopIteration is created.
    *result = Py_NewRef(reinterpret_cast<ReadyAwaitable*>(self)->value);
    return PYGEN_RETURN;
}

PyAsyncMethods ready_async = {ready_await, nullptr, nullptr, ready_send};

// ------------------------------------------------------------------------------------------
// HttpCycle (the `send` callable) and HttpReceive

PyTypeObject HttpCycleType = {PyVarObject_HEAD_INIT(nullptr, 0)};
PyTypeObject HttpReceiveType = {PyVarObject_HEAD_INIT(nullptr, 0)};

struct HttpReceive {
    PyObject_HEAD vectorcallfunc vectorcall;
    HttpCycle* cycle;
};

CycleHandler& H(PyObject* self) {
    return *reinterpret_cast<HttpCycle*>(self)->handler;
}

PyObject* cycle_vectorcall(PyObject* self, PyObject* const* args, size_t nargsf,
                           PyObject* kwnames) {
    Py_ssize_t nargs = PyVectorcall_NARGS(nargsf);
    if (nargs != 1 || (kwnames != nullptr && PyTuple_GET_SIZE(kwnames) != 0)) {
        PyErr_SetString(PyExc_TypeError, "send() takes exactly one argument (the message)");
        return nullptr;
    }
    return H(self).send(args[0]);
}

PyObject* receive_vectorcall(PyObject* self, PyObject* const*, size_t nargsf, PyObject* kwnames) {
    if (PyVectorcall_NARGS(nargsf) != 0 || (kwnames != nullptr && PyTuple_GET_SIZE(kwnames))) {
        PyErr_SetString(PyExc_TypeError, "receive() takes no arguments");
        return nullptr;
    }
    auto* r = reinterpret_cast<HttpReceive*>(self);
    return r->cycle->handler->receive();
}

int cycle_traverse(PyObject* self, visitproc visit, void* arg) {
    auto* c = reinterpret_cast<HttpCycle*>(self);
    return c->handler ? c->handler->traverse(visit, arg) : 0;
}

int cycle_clear(PyObject* self) {
    auto* c = reinterpret_cast<HttpCycle*>(self);
    if (c->handler) c->handler->clear();
    return 0;
}

void cycle_dealloc(PyObject* self) {
    PyObject_GC_UnTrack(self);
    auto* c = reinterpret_cast<HttpCycle*>(self);
    if (c->handler != nullptr) {
        c->handler->finish();  // a task dropped without running still stops counting
        c->handler->~CycleHandler();
        c->handler = nullptr;
    }
    Py_TYPE(self)->tp_free(self);
}

int receive_traverse(PyObject* self, visitproc visit, void* arg) {
    Py_VISIT(reinterpret_cast<PyObject*>(reinterpret_cast<HttpReceive*>(self)->cycle));
    return 0;
}

int receive_clear(PyObject* self) {
    auto* r = reinterpret_cast<HttpReceive*>(self);
    Py_CLEAR(r->cycle);
    return 0;
}

void receive_dealloc(PyObject* self) {
    PyObject_GC_UnTrack(self);
    receive_clear(self);
    Py_TYPE(self)->tp_free(self);
}

PyObject* cycle_get_started(PyObject* self, void*) {
    return PyBool_FromLong(H(self).response_started());
}
PyObject* cycle_get_complete(PyObject* self, void*) {
    return PyBool_FromLong(H(self).response_complete());
}
PyObject* cycle_get_disconnected(PyObject* self, void*) {
    return PyBool_FromLong(H(self).disconnected());
}
PyObject* cycle_abort(PyObject* self, PyObject*) {
    H(self).abort();
    Py_RETURN_NONE;
}
PyObject* cycle_finish(PyObject* self, PyObject*) {
    H(self).finish();
    Py_RETURN_NONE;
}

PyGetSetDef cycle_getset[] = {
    {"response_started", cycle_get_started, nullptr, nullptr, nullptr},
    {"response_complete", cycle_get_complete, nullptr, nullptr, nullptr},
    {"disconnected", cycle_get_disconnected, nullptr, nullptr, nullptr},
    {nullptr, nullptr, nullptr, nullptr, nullptr},
};

PyMethodDef cycle_methods[] = {
    {"abort", cycle_abort, METH_NOARGS, "Close the connection now."},
    {"finish", cycle_finish, METH_NOARGS, "The request's task is done (called by run_asgi)."},
    {nullptr, nullptr, 0, nullptr},
};

PyObject* runtime_error(const char* fmt, PyObject* arg) {
    if (arg != nullptr) {
        PyErr_Format(PyExc_RuntimeError, fmt, arg);
    } else {
        PyErr_SetString(PyExc_RuntimeError, fmt);
    }
    return nullptr;
}

PyObject* message_type(PyObject* message) {
    // Borrowed-like: returns a new reference for uniformity.
    if (PyDict_CheckExact(message)) {
        PyObject* t = PyDict_GetItemWithError(message, n::type);
        if (t == nullptr && !PyErr_Occurred()) PyErr_SetObject(PyExc_KeyError, n::type);
        return Py_XNewRef(t);
    }
    return PyObject_GetItem(message, n::type);
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

}  // namespace

// ------------------------------------------------------------------------------------------
// CycleHandler: receive

PyObject* CycleHandler::next_message() {
    bool over = disconnected_ || response_complete_ || conn_ == nullptr;
    if (!over && (!body_.empty() || (body_complete_ && !final_body_delivered_))) {
        PyObject* msg = PyDict_New();
        if (msg == nullptr) return nullptr;
        PyObject* body = body_.take();
        bool ok = body != nullptr && PyDict_SetItem(msg, n::type, n::http_request) == 0 &&
                  PyDict_SetItem(msg, n::body, body) == 0 &&
                  PyDict_SetItem(msg, n::more_body, body_complete_ ? Py_False : Py_True) == 0;
        Py_XDECREF(body);
        if (!ok) {
            Py_DECREF(msg);
            return nullptr;
        }
        if (body_complete_) final_body_delivered_ = true;
        if (conn_ != nullptr) conn_->resume_body();
        return msg;
    }
    PyObject* msg = PyDict_New();
    if (msg != nullptr && PyDict_SetItem(msg, n::type, n::http_disconnect) != 0) Py_CLEAR(msg);
    return msg;
}

PyObject* CycleHandler::receive() {
    bool has_message = !body_.empty() || (body_complete_ && !final_body_delivered_) ||
                       disconnected_ || response_complete_ || conn_ == nullptr;
    if (has_message) {
        PyObject* msg = next_message();
        return msg ? ready_awaitable_new(msg) : nullptr;
    }
    if (receive_waiter_ != nullptr) return Py_NewRef(receive_waiter_);
    conn_->want_body();  // 100 Continue goes out only now (RFC 9110 §10.1.1)
    conn_->resume_body();
    receive_waiter_ = server_.create_future();
    return Py_XNewRef(receive_waiter_);
}

void CycleHandler::wake_receiver() {
    PyObject* fut = receive_waiter_;
    if (fut == nullptr) return;
    receive_waiter_ = nullptr;
    // A cancelled receive() takes nothing: the message waits for the next call.
    if (server_.future_pending(fut, "receive()") == 1) {
        if (PyObject* msg = next_message()) {
            server_.set_future_result_kept(fut, msg, "receive()");
            Py_DECREF(msg);
        } else {
            server_.report_python_error("receive()");
        }
    }
    Py_DECREF(fut);
}

void CycleHandler::wake_sender() {
    PyObject* fut = send_waiter_;
    if (fut == nullptr) return;
    send_waiter_ = nullptr;
    if (server_.future_pending(fut, "send()") == 1)
        server_.set_future_result(fut, Py_None, "send()");
    Py_DECREF(fut);
}

// ------------------------------------------------------------------------------------------
// CycleHandler: send

PyObject* CycleHandler::send(PyObject* message) {
    PyObject* type = message_type(message);
    if (type == nullptr) return nullptr;
    PyObject* result = nullptr;
    if (disconnected_) {
        // Uvicorn: send() after a client disconnect is a silent no-op for HTTP.
        result = Py_NewRef(reinterpret_cast<PyObject*>(ready_none));
    } else if (!response_started_) {
        if (PyUnicode_Check(type) && PyUnicode_Compare(type, n::http_response_start) == 0) {
            result = send_start(message);
        } else {
            runtime_error("Expected ASGI message 'http.response.start', but got '%S'.", type);
        }
    } else if (!response_complete_) {
        if (PyUnicode_Check(type) && PyUnicode_Compare(type, n::http_response_body) == 0) {
            result = send_body(message);
        } else if (PyUnicode_Check(type) &&
                   PyUnicode_Compare(type, n::http_response_pathsend) == 0) {
            result = send_path(message);
        } else {
            runtime_error("Expected ASGI message 'http.response.body', but got '%S'.", type);
        }
    } else {
        runtime_error("Unexpected ASGI message '%S' sent, after response already completed.", type);
    }
    Py_DECREF(type);
    return result;
}

PyObject* CycleHandler::send_start(PyObject* message) {
    PyObject* status_obj = message_get(message, n::status);
    if (status_obj == nullptr) return nullptr;
    long status = PyLong_Check(status_obj) ? PyLong_AsLong(status_obj) : -1;
    Py_DECREF(status_obj);
    if (status == -1 && PyErr_Occurred()) return nullptr;
    if (status < 200 || status > 599) {  // a 1xx is interim, never the response
        return runtime_error("Invalid HTTP status code.", nullptr);
    }
    PyObject* headers = message_get(message, n::headers);
    if (headers == nullptr) return nullptr;
    PyObject* seq = headers == Py_None
                        ? PyList_New(0)
                        : PySequence_Fast(headers, "ASGI 'headers' must be an iterable");
    Py_DECREF(headers);
    if (seq == nullptr) return nullptr;

    // The pairs (and their bytes) stay alive in `keep` while core copies them. Most responses
    // have a handful of headers: those lists live on the stack, not on the heap.
    constexpr Py_ssize_t kInline = 16;
    core::Header inline_list[kInline];
    PyObject* inline_keep[kInline];
    std::vector<core::Header> heap_list;
    std::vector<PyObject*> heap_keep;
    const Py_ssize_t count = PySequence_Fast_GET_SIZE(seq);
    core::Header* list = inline_list;
    PyObject** keep = inline_keep;
    if (count > kInline) {
        heap_list.resize(static_cast<std::size_t>(count));
        heap_keep.resize(static_cast<std::size_t>(count));
        list = heap_list.data();
        keep = heap_keep.data();
    }
    Py_ssize_t kept = 0;
    auto release = [&] {
        for (Py_ssize_t i = 0; i < kept; ++i)
            Py_DECREF(keep[i]);
    };
    PyObject** items = PySequence_Fast_ITEMS(seq);
    for (Py_ssize_t i = 0; i < count; ++i) {
        PyObject* pair = PySequence_Fast(items[i], "ASGI header must be a (name, value) pair");
        if (pair == nullptr || PySequence_Fast_GET_SIZE(pair) != 2) {
            Py_XDECREF(pair);
            release();
            Py_DECREF(seq);
            if (!PyErr_Occurred()) {
                PyErr_SetString(PyExc_TypeError, "ASGI header must be a (name, value) pair");
            }
            return nullptr;
        }
        keep[kept++] = pair;
        PyObject* name = PySequence_Fast_GET_ITEM(pair, 0);
        PyObject* value = PySequence_Fast_GET_ITEM(pair, 1);
        if (!PyBytes_Check(name) || !PyBytes_Check(value)) {
            release();
            Py_DECREF(seq);
            PyErr_SetString(PyExc_TypeError, "ASGI header names and values must be bytes");
            return nullptr;
        }
        list[i] = {{PyBytes_AS_STRING(name), static_cast<std::size_t>(PyBytes_GET_SIZE(name))},
                   {PyBytes_AS_STRING(value), static_cast<std::size_t>(PyBytes_GET_SIZE(value))}};
    }
    core::WriteResult r = conn_ ? conn_->start_response(static_cast<int>(status),
                                                        std::span<const core::Header>(
                                                            list, static_cast<std::size_t>(count)))
                                : core::WriteResult::kClosed;
    core::HeaderError err = conn_ ? conn_->last_header_error() : core::HeaderError::kNone;
    release();
    status_ = static_cast<int>(status);
    if (server_.access_log_timed()) {
        Py_XSETREF(response_headers_, seq);
    } else {
        Py_DECREF(seq);
    }
    if (r == core::WriteResult::kInvalid) {
        // As Uvicorn: the response counts as started (and is logged) before headers are
        // checked, so the app's error closes the connection instead of answering 500.
        // Unlike Uvicorn, the connection closes now: no valid response can follow on it, and
        // an app that caught the error and "finished" with a body would otherwise leave the
        // client waiting (or, in Uvicorn, reading the next response as this one's).
        response_started_ = true;
        if (conn_ != nullptr) {
            server_.log_access(scope_, *conn_, static_cast<int>(status));
            conn_->abort();
        }
        return runtime_error(err == core::HeaderError::kBadName ? "Invalid HTTP header name."
                                                                : "Invalid HTTP header value.",
                             nullptr);
    }
    response_started_ = true;
    if (r == core::WriteResult::kOk && conn_ != nullptr) {
        server_.log_access(scope_, *conn_, static_cast<int>(status));
    }
    return Py_NewRef(reinterpret_cast<PyObject*>(ready_none));
}

PyObject* CycleHandler::send_body(PyObject* message) {
    PyObject* body = message_get(message, n::body);
    if (body == nullptr) return nullptr;
    PyObject* more_obj = message_get(message, n::more_body);
    if (more_obj == nullptr) {
        Py_DECREF(body);
        return nullptr;
    }
    int more = PyObject_IsTrue(more_obj);
    Py_DECREF(more_obj);
    Py_buffer view{};
    bool have_view = false;
    std::string_view data;
    if (body == Py_None) {
        // no body
    } else if (PyBytes_Check(body)) {
        data = {PyBytes_AS_STRING(body), static_cast<std::size_t>(PyBytes_GET_SIZE(body))};
    } else if (PyObject_GetBuffer(body, &view, PyBUF_SIMPLE) == 0) {
        have_view = true;
        data = {static_cast<const char*>(view.buf), static_cast<std::size_t>(view.len)};
    } else {
        Py_DECREF(body);
        return nullptr;
    }
    if (more < 0) more = 0;
    core::WriteResult r = conn_ ? conn_->write_body(data, more != 0) : core::WriteResult::kClosed;
    if (r != core::WriteResult::kTooLong) body_bytes_ += data.size();
    if (have_view) PyBuffer_Release(&view);
    Py_DECREF(body);
    return body_sent(r, more != 0);
}

PyObject* CycleHandler::body_sent(core::WriteResult r, bool more) {
    switch (r) {  // the app's bytes disagree with its content-length: its error, as in Uvicorn
        case core::WriteResult::kTooLong:
            return runtime_error("Response content longer than Content-Length", nullptr);
        case core::WriteResult::kTooShort:
            return runtime_error("Response content shorter than Content-Length", nullptr);
        default:
            break;
    }
    if (!more) {
        response_complete_ = true;
        if (server_.access_log_timed()) log_done();
        server_.on_response_complete();
        wake_receiver();  // a pending receive() now answers http.disconnect, as in Uvicorn
    }
    if (r == core::WriteResult::kWait && conn_ != nullptr) {
        Py_XSETREF(send_waiter_, server_.create_future());
        return Py_XNewRef(send_waiter_);
    }
    return Py_NewRef(reinterpret_cast<PyObject*>(ready_none));
}

// http.response.pathsend (ASGI "Path Send" extension): the body is the file at `path`, sent
// by the core with sendfile(2). The file is opened here, so a missing or unreadable file is
// the app's OSError, as reading it itself would have been.
PyObject* CycleHandler::send_path(PyObject* message) {
    PyObject* path = message_get(message, n::path);
    if (path == nullptr) return nullptr;
    PyObject* encoded = nullptr;
    if (PyUnicode_FSConverter(path, &encoded) == 0) {
        Py_DECREF(path);
        return nullptr;
    }
    int fd = ::open(PyBytes_AS_STRING(encoded), O_RDONLY | O_CLOEXEC);
    Py_DECREF(encoded);
    struct stat st {};
    int err = 0;
    if (fd < 0 || ::fstat(fd, &st) != 0) {
        err = errno;
    } else if (!S_ISREG(st.st_mode)) {
        err = S_ISDIR(st.st_mode) ? EISDIR : EINVAL;  // sendfile needs a regular file
    }
    if (err != 0) {
        if (fd >= 0) ::close(fd);
        errno = err;
        PyErr_SetFromErrnoWithFilenameObject(PyExc_OSError, path);
        Py_DECREF(path);
        return nullptr;
    }
    Py_DECREF(path);
    auto size = static_cast<std::uint64_t>(st.st_size);
    core::WriteResult r = core::WriteResult::kClosed;
    if (conn_ != nullptr) {
        r = conn_->send_file(fd, size);  // owns fd now
    } else {
        ::close(fd);
    }
    if (r != core::WriteResult::kTooLong && r != core::WriteResult::kTooShort) body_bytes_ += size;
    return body_sent(r, false);
}

// ------------------------------------------------------------------------------------------
// Public functions

PyObject* ready_awaitable_new(PyObject* value) {
    auto* r = PyObject_New(ReadyAwaitable, &ReadyAwaitableType);
    if (r == nullptr) {
        Py_DECREF(value);
        return nullptr;
    }
    r->value = value;
    return reinterpret_cast<PyObject*>(r);
}

HttpCycle* http_cycle_new(BridgeServer& server, ConnData& conn, PyObject* scope,
                          PyObject** receive) {
    auto* c = PyObject_GC_New(HttpCycle, &HttpCycleType);
    if (c == nullptr) return nullptr;
    c->vectorcall = cycle_vectorcall;
    c->handler = new (c->storage) CycleHandler(c, server, conn, scope);
    auto* r = PyObject_GC_New(HttpReceive, &HttpReceiveType);
    if (r == nullptr) {
        Py_DECREF(c);
        return nullptr;
    }
    r->vectorcall = receive_vectorcall;
    r->cycle = reinterpret_cast<HttpCycle*>(Py_NewRef(reinterpret_cast<PyObject*>(c)));
    PyObject_GC_Track(r);
    PyObject_GC_Track(c);
    Py_INCREF(c);  // core's reference, dropped in on_release
    *receive = reinterpret_cast<PyObject*>(r);
    return c;
}

PyObject* http_cycle_as_object(HttpCycle* c) {
    return reinterpret_cast<PyObject*>(c);
}
core::RequestHandler* http_cycle_handler(HttpCycle* c) {
    return c->handler;
}
void http_cycle_begin_task(HttpCycle* c) {
    c->handler->begin_task();
}
void http_cycle_attach_task(HttpCycle* c, PyObject* task) {
    c->handler->attach_task(task);
}
void http_cycle_wake_receiver(HttpCycle* c) {
    c->handler->deferred_wake();
}
void http_cycle_cancel(HttpCycle* c) {
    c->handler->cancel_task();
}
CycleLinks& http_cycle_links(HttpCycle* c) {
    return c->handler->links;
}

bool register_cycle_types(PyObject* module) {
    ReadyAwaitableType.tp_name = "cppuvicorn._core.ReadyAwaitable";
    ReadyAwaitableType.tp_basicsize = sizeof(ReadyAwaitable);
    ReadyAwaitableType.tp_flags = Py_TPFLAGS_DEFAULT;
    ReadyAwaitableType.tp_dealloc = ready_dealloc;
    ReadyAwaitableType.tp_as_async = &ready_async;
    ReadyAwaitableType.tp_iter = PyObject_SelfIter;
    ReadyAwaitableType.tp_iternext = ready_next;
    ReadyAwaitableType.tp_doc = "An awaitable that is already complete.";

    HttpCycleType.tp_name = "cppuvicorn._core.HttpSend";
    HttpCycleType.tp_basicsize = sizeof(HttpCycle) + sizeof(CycleHandler);
    HttpCycleType.tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_HAVE_VECTORCALL;
    HttpCycleType.tp_vectorcall_offset = offsetof(HttpCycle, vectorcall);
    HttpCycleType.tp_call = PyVectorcall_Call;
    HttpCycleType.tp_dealloc = cycle_dealloc;
    HttpCycleType.tp_traverse = cycle_traverse;
    HttpCycleType.tp_clear = cycle_clear;
    HttpCycleType.tp_getset = cycle_getset;
    HttpCycleType.tp_methods = cycle_methods;
    HttpCycleType.tp_doc = "ASGI send() for one HTTP request.";

    HttpReceiveType.tp_name = "cppuvicorn._core.HttpReceive";
    HttpReceiveType.tp_basicsize = sizeof(HttpReceive);
    HttpReceiveType.tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_HAVE_VECTORCALL;
    HttpReceiveType.tp_vectorcall_offset = offsetof(HttpReceive, vectorcall);
    HttpReceiveType.tp_call = PyVectorcall_Call;
    HttpReceiveType.tp_dealloc = receive_dealloc;
    HttpReceiveType.tp_traverse = receive_traverse;
    HttpReceiveType.tp_clear = receive_clear;
    HttpReceiveType.tp_doc = "ASGI receive() for one HTTP request.";

    if (PyType_Ready(&ReadyAwaitableType) < 0 || PyType_Ready(&HttpCycleType) < 0 ||
        PyType_Ready(&HttpReceiveType) < 0) {
        return false;
    }
    ready_none = PyObject_New(ReadyAwaitable, &ReadyAwaitableType);
    if (ready_none == nullptr) return false;
    ready_none->value = Py_NewRef(Py_None);
    (void)module;
    return true;
}

}  // namespace cppuvicorn::asgi
