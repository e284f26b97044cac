// SPDX-License-Identifier: BSD-3-Clause
// Interned Python strings used on the hot path (dict keys, message types), made once at import.
// GIL required for everything here.
#pragma once

#include <Python.h>

namespace cppuvicorn::asgi::py_names {

// Keys.
extern PyObject* type;
extern PyObject* asgi;
extern PyObject* version;
extern PyObject* spec_version;
extern PyObject* http_version;
extern PyObject* server;
extern PyObject* client;
extern PyObject* scheme;
extern PyObject* method;
extern PyObject* root_path;
extern PyObject* path;
extern PyObject* raw_path;
extern PyObject* query_string;
extern PyObject* headers;
extern PyObject* state;
extern PyObject* status;
extern PyObject* body;
extern PyObject* more_body;
extern PyObject* trailers;
extern PyObject* extensions;
extern PyObject* tls;
// Values.
extern PyObject* http;
extern PyObject* https;
extern PyObject* v1_0;
extern PyObject* v1_1;
extern PyObject* v3_0;
extern PyObject* http_request;
extern PyObject* http_disconnect;
extern PyObject* http_response_start;
extern PyObject* http_response_body;
extern PyObject* http_response_pathsend;
extern PyObject* empty_bytes;
extern PyObject* empty_str;
// Method names.
extern PyObject* create_future;
extern PyObject* set_result;
extern PyObject* done;
extern PyObject* cancel;
extern PyObject* warning;
extern PyObject* log;
extern PyObject* add_done_callback;
extern PyObject* error;
extern PyObject* debug;
extern PyObject* loop;
extern PyObject* eager_start;
extern PyObject* context;
extern PyObject* call_soon;

// Interned HTTP method names ("GET", "POST", …) or a new string for unknown ones.
PyObject* method_str(const char* data, Py_ssize_t len);  // new reference

bool init();  // false with a Python error set

}  // namespace cppuvicorn::asgi::py_names
