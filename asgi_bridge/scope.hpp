// SPDX-License-Identifier: BSD-3-Clause
// Builds ASGI HTTP scopes from a parsed request head with the raw CPython API (a scope built
// from pybind11 objects measured 3x slower). GIL required.
#pragma once

#include "core/proxy_headers.hpp"
#include "core/request_handler.hpp"
#include "core/tls.hpp"

#include <Python.h>

#include <string>
#include <string_view>

namespace cppuvicorn::asgi {

// Per-server constants and per-connection values the scope needs.
struct ScopeInputs {
    PyObject* asgi_template;  // {"version": "3.0", "spec_version": "2.3"}, copied per scope
    PyObject* client;         // (host, port) tuple or None
    PyObject* server;         // (host, port) tuple, or (path, None) for UNIX sockets
    PyObject* scheme;         // "http" / "https"
    PyObject* root_path;      // str
    std::string_view root_path_bytes;
    PyObject* state;          // lifespan state dict (shallow-copied) or nullptr
    PyObject* tls = nullptr;  // the connection's ASGI "tls" extension dict, or nullptr
    // HTTP only: the server's make_http_scope_template() and the scheme it holds (a scheme
    // X-Forwarded-Proto changed is set in the scope; the template's is not set again).
    PyObject* http_template = nullptr;
    PyObject* template_scheme = nullptr;
};

// A scope template for one server: every key of an HTTP scope, with type "http",
// http_version "1.1", `scheme` and `root_path` set and None elsewhere (a `state` key only if
// with_state). build_http_scope copies it and sets only what differs. New reference.
PyObject* make_http_scope_template(PyObject* scheme, PyObject* root_path, bool with_state);

// The ASGI "tls" extension of one connection (server_cert, client_cert_chain,
// client_cert_name, client_cert_error, tls_version, cipher_suite): new reference, or nullptr
// with a Python error set. `server_cert` is the server's PEM (str) or None.
PyObject* build_tls_extension(const core::TlsSession& tls, PyObject* server_cert);

// New reference, or nullptr with a Python error set. Needs in.http_template.
PyObject* build_http_scope(const core::RequestHead& head, const ScopeInputs& in);

// Uvicorn's ProxyHeadersMiddleware, before the scope exists: for a request whose peer is in
// `trusted` (the caller checked, once per connection), points in.scheme and in.client at what
// X-Forwarded-Proto / X-Forwarded-For say. A new client tuple goes to `owned_client` (a new
// reference the caller releases once the scope is built); false with a Python error set if it
// could not be made.
bool apply_proxy_headers(const core::TrustedHosts& trusted, const core::RequestHead& head,
                         bool websocket, ScopeInputs& in, PyObject*& owned_client);

// Splits a request-target into path and query (origin-form, absolute-form and "*").
void split_target(std::string_view target, std::string_view& path, std::string_view& query);

// Percent-decodes `raw` (invalid escapes are kept as they are).
std::string percent_decode(std::string_view raw);

// The path and query of a log line, as the newest Uvicorn's get_path_with_query_string(scope):
// raw_path (latin-1) and "?" query, with '"' written %22. New reference, or nullptr without an
// exception when the scope has no bytes raw_path.
PyObject* log_target(PyObject* scope);

}  // namespace cppuvicorn::asgi
