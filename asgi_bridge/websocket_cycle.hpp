// SPDX-License-Identifier: BSD-3-Clause
// WsCycle: one WebSocket session's ASGI side. It is core's WebSocketHandler for the session and
// the Python object the application awaits: the cycle object itself is `send`, and a small
// WebSocketReceive object is `receive`. Messages are queued as ready-made dicts; receive() and
// send() complete at once when they can and hand out an asyncio Future only when they must
// wait. The message protocol, errors and log lines are Uvicorn's websockets-sansio ones.
// GIL required everywhere.
#pragma once

#include "asgi_bridge/scope.hpp"
#include "core/http_connection.hpp"
#include "core/request_handler.hpp"

#include <Python.h>

namespace cppuvicorn::asgi {

class BridgeServer;

struct WsCycle;

// Creates the cycle for one upgrade request that core is about to validate. Core's reference
// to the handler is taken here and dropped in on_ws_release; the application starts only in
// on_ws_connect. Returns nullptr with a Python error set on failure.
WsCycle* ws_cycle_new(BridgeServer& server, core::HttpConnection& conn, PyObject* scope);
core::WebSocketHandler* ws_cycle_handler(WsCycle* c);
// Cancels the cycle's task if it is still running (graceful shutdown timeout).
void ws_cycle_cancel(WsCycle* c);

// Intrusive list links, owned by BridgeServer, of cycles whose task is still running.
struct WsCycleLinks {
    WsCycle* prev = nullptr;
    WsCycle* next = nullptr;
};
WsCycleLinks& ws_cycle_links(WsCycle* c);

// Builds the "websocket" scope (Uvicorn's keys and order); `in.asgi_template` and `in.scheme`
// must be the WebSocket ones ("2.4", "ws"/"wss"). New reference or nullptr.
PyObject* build_ws_scope(const core::RequestHead& head, const ScopeInputs& in);

bool register_ws_types(PyObject* module);

}  // namespace cppuvicorn::asgi
