// SPDX-License-Identifier: BSD-3-Clause
// cppuvicorn._core: the extension module. Registration only; each type lives in its own file.
#include "asgi_bridge/bridge_server.hpp"
#include "asgi_bridge/http_cycle.hpp"
#include "asgi_bridge/py_names.hpp"
#include "asgi_bridge/scope.hpp"
#include "asgi_bridge/websocket_cycle.hpp"
#include "core/metrics.hpp"

#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstring>
#include <memory>

namespace py = pybind11;
using cppuvicorn::asgi::BridgeOptions;
using cppuvicorn::asgi::BridgeServer;
using cppuvicorn::core::TlsConfig;
using cppuvicorn::core::TlsContext;

namespace {

[[noreturn]] void raise_uv_error(int rc) {
    errno = -rc;
    PyErr_SetFromErrno(PyExc_OSError);
    throw py::error_already_set();
}

// The callbacks the asyncio loop calls (its reader on the libuv backend fd, call_soon,
// call_later): plain METH_NOARGS builtins whose self is a capsule holding the server. The
// loop calls them a few times per turn; through pybind11's dispatcher each call cost about
// 1,900 instructions more (callgrind, hello on 3.11).
struct LoopCallback {
    BridgeServer* server;
    std::shared_ptr<bool> alive;  // false once the server is freed
    void (BridgeServer::*method)();
};

PyObject* call_loop_callback(PyObject* self, PyObject* /*unused*/) {
    auto* cb = static_cast<LoopCallback*>(PyCapsule_GetPointer(self, nullptr));
    if (cb == nullptr) return nullptr;
    try {
        if (*cb->alive) (cb->server->*cb->method)();
    } catch (py::error_already_set& e) {
        e.restore();  // KeyboardInterrupt/SystemExit stashed during uv_run, re-raised here
        return nullptr;
    } catch (const std::exception& e) {
        PyErr_SetString(PyExc_RuntimeError, e.what());
        return nullptr;
    }
    Py_RETURN_NONE;
}

PyMethodDef kRunDef{"_cppuvicorn_run", call_loop_callback, METH_NOARGS,
                    "Run the libuv loop once (non-blocking) and the deferred flushes."};
PyMethodDef kTickDef{"_cppuvicorn_tick", call_loop_callback, METH_NOARGS,
                     "The server's periodic sweep: timeouts, paused listeners."};
PyMethodDef kAcceptDef{"_cppuvicorn_accept", call_loop_callback, METH_NOARGS,
                       "Accept the connections the listeners hold back."};
PyMethodDef kReleaseDef{"_cppuvicorn_release", call_loop_callback, METH_NOARGS,
                        "Flush output held back for pipelined requests."};

py::object loop_callback(BridgeServer* server, std::shared_ptr<bool> alive,
                         void (BridgeServer::*method)(), PyMethodDef* def) {
    auto* cb = new LoopCallback{server, std::move(alive), method};
    PyObject* capsule = PyCapsule_New(cb, nullptr, [](PyObject* c) {
        delete static_cast<LoopCallback*>(PyCapsule_GetPointer(c, nullptr));
    });
    if (capsule == nullptr) {
        delete cb;
        throw py::error_already_set();
    }
    PyObject* fn = PyCFunction_New(def, capsule);
    Py_DECREF(capsule);
    if (fn == nullptr) throw py::error_already_set();
    return py::reinterpret_steal<py::object>(fn);
}

std::unique_ptr<BridgeServer> make_server(
    py::object loop, py::object app, py::object run_asgi, py::object state, std::string root_path,
    py::list default_headers, bool date_header, double timeout_keep_alive,
    std::optional<long> limit_concurrency, py::object access_log, py::object error_log,
    std::size_t max_head_size, std::string scheme, int backlog, bool ws, std::uint64_t ws_max_size,
    std::size_t ws_max_queue, std::optional<double> ws_ping_interval,
    std::optional<double> ws_ping_timeout, bool ws_per_message_deflate, std::string asgi_version,
    std::optional<std::vector<std::string>> forwarded_allow_ips, bool forwarded_allow_all,
    std::shared_ptr<TlsContext> tls, double timeout_request_head, double timeout_body_read,
    std::uint64_t limit_request_body, int metrics_fd, std::size_t metrics_slot,
    bool access_log_timed, bool trace) {
    BridgeOptions opts;
    if (metrics_fd >= 0) {
        // Under the supervisor with --metrics-port: count into our slot of its shared region.
        opts.core.metrics = cppuvicorn::core::attach_metrics_slot(metrics_fd, metrics_slot);
    }
    if (forwarded_allow_ips) {
        opts.proxy_headers = true;
        opts.forwarded_allow_ips =
            cppuvicorn::core::TrustedHosts(forwarded_allow_all, *forwarded_allow_ips);
    }
    opts.root_path = std::move(root_path);
    opts.scheme = std::move(scheme);
    opts.asgi_version = std::move(asgi_version);
    opts.limit_concurrency = limit_concurrency.value_or(0);
    opts.core.timeout_keep_alive = timeout_keep_alive;
    opts.core.timeout_request_head = timeout_request_head;  // <= 0: none
    opts.core.timeout_body_read = timeout_body_read;        // <= 0: none
    opts.core.max_body_size = limit_request_body;           // 0: none
    opts.core.date_header = date_header;
    opts.core.max_head_size = max_head_size;
    opts.core.backlog = backlog;
    opts.ws = ws;
    opts.access_log_timed = access_log_timed;
    opts.trace_connections = trace;
    opts.core.ws_max_size = ws_max_size;
    opts.core.ws_max_queue = ws_max_queue;
    opts.core.ws_ping_interval = ws_ping_interval.value_or(0.0);  // None: no keepalive pings
    opts.core.ws_ping_timeout = ws_ping_timeout.value_or(0.0);    // None: no pong deadline
    opts.core.ws_per_message_deflate = ws_per_message_deflate;
    opts.tls = std::move(tls);
    std::string defaults;
    for (py::handle item : default_headers) {
        auto pair = item.cast<py::tuple>();
        auto name = pair[0].cast<std::string>();
        auto value = pair[1].cast<std::string>();
        for (char& c : name)
            c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
        defaults += name + ": " + value + "\r\n";
    }
    opts.core.default_headers = std::move(defaults);
    auto server =
        std::make_unique<BridgeServer>(loop.ptr(), app.ptr(), run_asgi.ptr(), state.ptr(),
                                       access_log.ptr(), error_log.ptr(), std::move(opts));
    // Reason phrases from this Python's http.HTTPStatus, as Uvicorn's status lines use them.
    py::object http_status = py::module_::import("http").attr("HTTPStatus");
    for (py::handle s : http_status) {
        server->core().status_lines().set_reason(s.attr("value").cast<int>(),
                                                 s.attr("phrase").cast<std::string>());
    }
    // A callback still queued in asyncio when the server is freed must not touch it.
    BridgeServer* raw = server.get();
    std::shared_ptr<bool> alive = raw->alive_token();
    py::object run_cb = loop_callback(raw, alive, &BridgeServer::run_from_loop, &kRunDef);
    py::object tick_cb = loop_callback(raw, alive, &BridgeServer::tick_from_loop, &kTickDef);
    py::object accept_cb = loop_callback(raw, alive, &BridgeServer::accept_from_loop, &kAcceptDef);
    py::object release_cb =
        loop_callback(raw, alive, &BridgeServer::release_from_loop, &kReleaseDef);
    raw->set_callbacks(run_cb.ptr(), tick_cb.ptr(), accept_cb.ptr(), release_cb.ptr());
    return server;
}

}  // namespace

PYBIND11_MODULE(_core, m) {
    m.doc() = "cppuvicorn's native core: HTTP/1.1 on libuv + llhttp, driven from asyncio.";
    if (!cppuvicorn::asgi::py_names::init() || !cppuvicorn::asgi::register_cycle_types(m.ptr()) ||
        !cppuvicorn::asgi::register_ws_types(m.ptr())) {
        throw py::error_already_set();
    }
    m.def("version", []() { return std::string("0.1.0"); });
    // For tests: what the native proxy-headers step makes of one request, as
    // (peer trusted, scheme or None, client or None). Same code path as a served request.
    m.def(
        "_proxy_headers",
        [](bool trust_all, const std::vector<std::string>& entries, const std::string& peer,
           const std::vector<std::pair<std::string, std::string>>& headers, bool websocket) {
            cppuvicorn::core::TrustedHosts trusted(trust_all, entries);
            cppuvicorn::core::RequestHead head;
            for (const auto& [name, value] : headers)
                head.headers.push_back({name, value});
            cppuvicorn::asgi::ScopeInputs in{};
            in.client = Py_None;
            in.scheme = Py_None;
            PyObject* client = nullptr;
            bool peer_trusted = trusted.contains(peer);
            if (peer_trusted &&
                !cppuvicorn::asgi::apply_proxy_headers(trusted, head, websocket, in, client)) {
                throw py::error_already_set();
            }
            py::object owned = py::reinterpret_steal<py::object>(client);
            return py::make_tuple(peer_trusted, py::reinterpret_borrow<py::object>(in.scheme),
                                  py::reinterpret_borrow<py::object>(in.client));
        },
        py::arg("trust_all"), py::arg("entries"), py::arg("peer"), py::arg("headers"),
        py::arg("websocket") = false);

    // The SSL_CTX of one server, from Uvicorn's --ssl-* options. Building it checks them all:
    // RuntimeError with OpenSSL's reason (unreadable file, bad key or password, mismatch).
    py::class_<TlsContext, std::shared_ptr<TlsContext>>(m, "TlsContext")
        .def(py::init([](std::string certfile, std::string keyfile,
                         std::optional<std::string> password, int version, int cert_reqs,
                         std::string ca_certs, std::string ciphers) {
                 TlsConfig c;
                 c.certfile = std::move(certfile);
                 c.keyfile = std::move(keyfile);
                 c.password = std::move(password);
                 c.version = version;
                 c.cert_reqs = cert_reqs;
                 c.ca_certs = std::move(ca_certs);
                 c.ciphers = std::move(ciphers);
                 return std::make_shared<TlsContext>(c);
             }),
             py::arg("certfile"), py::kw_only(), py::arg("keyfile") = "",
             py::arg("password") = py::none(), py::arg("version") = 17, py::arg("cert_reqs") = 0,
             py::arg("ca_certs") = "", py::arg("ciphers") = "")
        .def_property_readonly("server_cert",
                               [](const TlsContext& c) { return c.server_cert_pem(); });

    py::class_<BridgeServer>(m, "Server")
        .def(py::init(&make_server), py::arg("loop"), py::arg("app"), py::arg("run_asgi"),
             py::kw_only(), py::arg("state") = py::none(), py::arg("root_path") = "",
             py::arg("default_headers") = py::list(), py::arg("date_header") = true,
             py::arg("timeout_keep_alive") = 5.0, py::arg("limit_concurrency") = py::none(),
             py::arg("access_log") = py::none(), py::arg("error_log"),
             py::arg("max_head_size") = 65536, py::arg("scheme") = "http",
             py::arg("backlog") = 2048, py::arg("ws") = true, py::arg("ws_max_size") = 16777216,
             py::arg("ws_max_queue") = 32, py::arg("ws_ping_interval") = 20.0,
             py::arg("ws_ping_timeout") = 20.0, py::arg("ws_per_message_deflate") = true,
             py::arg("asgi_version") = "3.0", py::arg("forwarded_allow_ips") = py::none(),
             py::arg("forwarded_allow_all") = false, py::arg("tls") = nullptr,
             py::arg("timeout_request_head") = 10.0, py::arg("timeout_body_read") = 30.0,
             py::arg("limit_request_body") = 0, py::arg("metrics_fd") = -1,
             py::arg("metrics_slot") = 0, py::arg("access_log_timed") = false,
             py::arg("trace") = false)
        .def(
            "listen_tcp",
            [](BridgeServer& s, const std::string& host, int port, int backlog) {
                cppuvicorn::core::PeerAddress bound;
                int rc = s.core().listen_tcp(host, port, backlog, &bound);
                if (rc != 0) raise_uv_error(rc);
                return py::make_tuple(bound.host, bound.port);
            },
            py::arg("host"), py::arg("port"), py::arg("backlog") = 2048)
        .def(
            "listen_unix",
            [](BridgeServer& s, const std::string& path, int backlog) {
                int rc = s.core().listen_unix(path, backlog);
                if (rc != 0) raise_uv_error(rc);
            },
            py::arg("path"), py::arg("backlog") = 2048)
        .def(
            "listen_fd",
            [](BridgeServer& s, int fd, std::size_t accepts_per_turn) {
                cppuvicorn::core::PeerAddress bound;
                int rc = s.core().listen_fd(fd, &bound, accepts_per_turn);
                if (rc != 0) raise_uv_error(rc);
                return py::make_tuple(bound.host, bound.port);
            },
            py::arg("fd"), py::arg("accepts_per_turn") = 0)
        .def("start", &BridgeServer::start)
        .def("stop_listening", &BridgeServer::stop_listening)
        .def("shutdown", &BridgeServer::shutdown)
        .def("close", &BridgeServer::close)
        .def("cancel_tasks", &BridgeServer::cancel_tasks)
        .def_property_readonly("connections", &BridgeServer::connections)
        .def_property_readonly("tasks", &BridgeServer::tasks)
        .def_property_readonly("total_requests", &BridgeServer::total_requests);
}
