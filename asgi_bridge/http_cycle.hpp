// SPDX-License-Identifier: BSD-3-Clause
// HttpCycle: one HTTP request's ASGI side. It is the core's RequestHandler for the request and
// the Python object the application awaits: the cycle object itself is `send`, and a small
// HttpReceive object is `receive`. Both complete at once when they can (a ReadyAwaitable) and
// hand out an asyncio Future only when they must wait. GIL required everywhere.
#pragma once

#include "core/http_connection.hpp"
#include "core/request_handler.hpp"

#include <Python.h>

#include <string>

namespace cppuvicorn::asgi {

class BridgeServer;
struct ConnData;

struct HttpCycle;

// Creates the cycle for one request (new reference to the Python object `send`), plus
// `*receive` (new reference). Core's reference to the handler is taken here and dropped in
// on_release. Returns nullptr with a Python error set on failure.
HttpCycle* http_cycle_new(BridgeServer& server, ConnData& conn, PyObject* scope,
                          PyObject** receive);
PyObject* http_cycle_as_object(HttpCycle* c);
core::RequestHandler* http_cycle_handler(HttpCycle* c);
// Counts the task as running; call before the task is created (it may finish eagerly).
void http_cycle_begin_task(HttpCycle* c);
void http_cycle_attach_task(HttpCycle* c, PyObject* task);  // steals `task`
// Cancels the cycle's task if it is still running (graceful shutdown timeout).
void http_cycle_cancel(HttpCycle* c);
// Answers a receive() left waiting while the body came in (see BridgeServer::wake_later).
void http_cycle_wake_receiver(HttpCycle* c);

// A finished awaitable: `await ready` returns its value without suspending.
PyObject* ready_awaitable_new(PyObject* value);  // steals `value`

bool register_cycle_types(PyObject* module);

// Intrusive list links, owned by BridgeServer, of cycles whose task is still running.
struct CycleLinks {
    HttpCycle* prev = nullptr;
    HttpCycle* next = nullptr;
};
CycleLinks& http_cycle_links(HttpCycle* c);

}  // namespace cppuvicorn::asgi
