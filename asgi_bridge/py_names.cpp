// SPDX-License-Identifier: BSD-3-Clause
#include "asgi_bridge/py_names.hpp"

#include <cstring>
#include <iterator>

namespace cppuvicorn::asgi::py_names {

PyObject *type, *asgi, *version, *spec_version, *http_version, *server, *client, *scheme, *method,
    *root_path, *path, *raw_path, *query_string, *headers, *state, *status, *body, *more_body,
    *trailers, *extensions, *tls;
PyObject *http, *https, *v1_0, *v1_1, *v3_0, *http_request, *http_disconnect, *http_response_start,
    *http_response_body, *http_response_pathsend, *empty_bytes, *empty_str;
PyObject *create_future, *set_result, *done, *cancel, *warning, *log, *add_done_callback, *error,
    *debug, *loop, *eager_start, *context, *call_soon;

namespace {

constexpr const char* kMethods[] = {"GET",     "POST",  "PUT",   "DELETE", "HEAD",
                                    "OPTIONS", "PATCH", "TRACE", "CONNECT"};
PyObject* method_objs[std::size(kMethods)];

bool intern(PyObject*& slot, const char* s) {
    slot = PyUnicode_InternFromString(s);
    return slot != nullptr;
}

}  // namespace

PyObject* method_str(const char* data, Py_ssize_t len) {
    for (std::size_t i = 0; i < std::size(kMethods); ++i) {
        if (static_cast<std::size_t>(len) == std::strlen(kMethods[i]) &&
            std::memcmp(data, kMethods[i], len) == 0) {
            return Py_NewRef(method_objs[i]);
        }
    }
    return PyUnicode_DecodeLatin1(data, len, nullptr);
}

bool init() {
    bool ok = intern(type, "type") && intern(asgi, "asgi") && intern(version, "version") &&
              intern(spec_version, "spec_version") && intern(http_version, "http_version") &&
              intern(server, "server") && intern(client, "client") && intern(scheme, "scheme") &&
              intern(method, "method") && intern(root_path, "root_path") && intern(path, "path") &&
              intern(raw_path, "raw_path") && intern(query_string, "query_string") &&
              intern(headers, "headers") && intern(state, "state") && intern(status, "status") &&
              intern(body, "body") && intern(more_body, "more_body") &&
              intern(trailers, "trailers") && intern(extensions, "extensions") &&
              intern(tls, "tls") && intern(http, "http") && intern(https, "https") &&
              intern(v1_0, "1.0") && intern(v1_1, "1.1") && intern(v3_0, "3.0") &&
              intern(http_request, "http.request") && intern(http_disconnect, "http.disconnect") &&
              intern(http_response_start, "http.response.start") &&
              intern(http_response_body, "http.response.body") &&
              intern(http_response_pathsend, "http.response.pathsend") && intern(empty_str, "") &&
              intern(create_future, "create_future") && intern(set_result, "set_result") &&
              intern(done, "done") && intern(cancel, "cancel") && intern(warning, "warning") &&
              intern(log, "log") && intern(add_done_callback, "add_done_callback") &&
              intern(error, "error") && intern(debug, "debug") && intern(loop, "loop") &&
              intern(eager_start, "eager_start") && intern(context, "context") &&
              intern(call_soon, "call_soon");
    if (!ok) return false;
    empty_bytes = PyBytes_FromStringAndSize("", 0);
    if (empty_bytes == nullptr) return false;
    for (std::size_t i = 0; i < std::size(kMethods); ++i) {
        if (!intern(method_objs[i], kMethods[i])) return false;
    }
    return true;
}

}  // namespace cppuvicorn::asgi::py_names
