// SPDX-License-Identifier: BSD-3-Clause
#include "asgi_bridge/scope.hpp"

#include "asgi_bridge/py_names.hpp"

#include <iterator>
#include <optional>
#include <utility>
#include <vector>

namespace cppuvicorn::asgi {

namespace {

int hex_value(char c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

// Steals `value`; false (with an error set) if value is null or insertion fails.
bool set_item(PyObject* dict, PyObject* key, PyObject* value) {
    if (value == nullptr) return false;
    int rc = PyDict_SetItem(dict, key, value);
    Py_DECREF(value);
    return rc == 0;
}

PyObject* build_headers(const core::RequestHead& head) {
    PyObject* list = PyList_New(static_cast<Py_ssize_t>(head.headers.size()));
    if (list == nullptr) return nullptr;
    Py_ssize_t i = 0;
    for (const auto& h : head.headers) {
        PyObject* name = PyBytes_FromStringAndSize(h.name.data(), h.name.size());
        PyObject* value = PyBytes_FromStringAndSize(h.value.data(), h.value.size());
        PyObject* pair = (name && value) ? PyTuple_Pack(2, name, value) : nullptr;
        Py_XDECREF(name);
        Py_XDECREF(value);
        if (pair == nullptr) {
            Py_DECREF(list);
            return nullptr;
        }
        PyList_SET_ITEM(list, i++, pair);
    }
    return list;
}

PyObject* build_path(std::string_view root_path, std::string_view raw_path) {
    // Uvicorn: path = root_path + unquote(raw_path), decoded as UTF-8 with replacement.
    std::string decoded(root_path);
    if (raw_path.find('%') == std::string_view::npos) {
        decoded.append(raw_path);
    } else {
        decoded.append(percent_decode(raw_path));
    }
    return PyUnicode_DecodeUTF8(decoded.data(), static_cast<Py_ssize_t>(decoded.size()), "replace");
}

PyObject* str_or_none(const std::optional<std::string>& s) {
    if (!s) return Py_NewRef(Py_None);
    return PyUnicode_DecodeUTF8(s->data(), static_cast<Py_ssize_t>(s->size()), "replace");
}

// The interned scheme string for read_forwarded_headers' static names; borrowed.
PyObject* scheme_object(std::string_view scheme) {
    static constexpr std::string_view kNames[] = {"http", "https", "ws", "wss"};
    static PyObject* objects[std::size(kNames)] = {};
    for (std::size_t i = 0; i < std::size(kNames); ++i) {
        if (scheme != kNames[i]) continue;
        if (objects[i] == nullptr) objects[i] = PyUnicode_InternFromString(kNames[i].data());
        return objects[i];
    }
    return nullptr;
}

// The port as Python's int() gave it to Uvicorn (any size, any sign).
PyObject* port_object(const std::string& canonical) {
    if (canonical.size() <= 18) {
        long long v = 0;
        for (char c : canonical)
            v = c == '-' ? v : v * 10 + (c - '0');
        return PyLong_FromLongLong(canonical[0] == '-' ? -v : v);
    }
    PyObject* port = PyLong_FromString(canonical.c_str(), nullptr, 10);
    if (port == nullptr) {
        // Only if PYTHONINTMAXSTRDIGITS was set below 4300 digits, where Uvicorn's int() fails.
        PyErr_Clear();
        port = PyLong_FromLong(0);
    }
    return port;
}

}  // namespace

PyObject* build_tls_extension(const core::TlsSession& tls, PyObject* server_cert) {
    std::vector<std::string> chain = tls.peer_chain_pem();
    PyObject* pems = PyList_New(static_cast<Py_ssize_t>(chain.size()));
    if (pems == nullptr) return nullptr;
    for (std::size_t i = 0; i < chain.size(); ++i) {
        PyObject* pem = PyUnicode_DecodeASCII(chain[i].data(),
                                              static_cast<Py_ssize_t>(chain[i].size()), nullptr);
        if (pem == nullptr) {
            Py_DECREF(pems);
            return nullptr;
        }
        PyList_SET_ITEM(pems, static_cast<Py_ssize_t>(i), pem);
    }
    PyObject* ext = PyDict_New();
    bool ok = ext != nullptr && PyDict_SetItemString(ext, "server_cert", server_cert) == 0 &&
              PyDict_SetItemString(ext, "client_cert_chain", pems) == 0;
    Py_DECREF(pems);
    const std::pair<const char*, PyObject*> items[] = {
        {"client_cert_name", ok ? str_or_none(tls.peer_subject()) : nullptr},
        {"client_cert_error", ok ? str_or_none(tls.peer_verify_error()) : nullptr},
        {"tls_version", ok ? PyLong_FromLong(tls.protocol_version()) : nullptr},
        {"cipher_suite", ok ? PyLong_FromLong(tls.cipher_suite()) : nullptr},
    };
    for (const auto& [key, value] : items) {
        ok = ok && value != nullptr && PyDict_SetItemString(ext, key, value) == 0;
        Py_XDECREF(value);
    }
    if (!ok) {
        Py_XDECREF(ext);
        return nullptr;
    }
    return ext;
}

bool apply_proxy_headers(const core::TrustedHosts& trusted, const core::RequestHead& head,
                         bool websocket, ScopeInputs& in, PyObject*& owned_client) {
    core::ForwardedValues v = core::read_forwarded_headers(trusted, head.headers, websocket);
    if (!v.scheme.empty()) {
        PyObject* scheme = scheme_object(v.scheme);
        if (scheme == nullptr) return false;
        in.scheme = scheme;
    }
    if (v.has_client) {
        PyObject* host = PyUnicode_DecodeLatin1(
            v.client_host.data(), static_cast<Py_ssize_t>(v.client_host.size()), nullptr);
        PyObject* port = host != nullptr ? port_object(v.client_port) : nullptr;
        owned_client = port != nullptr ? PyTuple_Pack(2, host, port) : nullptr;
        Py_XDECREF(host);
        Py_XDECREF(port);
        if (owned_client == nullptr) return false;
        in.client = owned_client;
    }
    return true;
}

void split_target(std::string_view target, std::string_view& path, std::string_view& query) {
    std::string_view t = target;
    if (!t.empty() && t.front() != '/' && t != "*") {
        // absolute-form (RFC 9112 §3.2.2): skip "scheme://authority".
        auto scheme_end = t.find("://");
        if (scheme_end != std::string_view::npos) {
            auto slash = t.find('/', scheme_end + 3);
            t = slash == std::string_view::npos ? std::string_view("/") : t.substr(slash);
        }
    }
    auto hash = t.find('#');
    if (hash != std::string_view::npos) t = t.substr(0, hash);
    auto q = t.find('?');
    if (q == std::string_view::npos) {
        path = t;
        query = {};
    } else {
        path = t.substr(0, q);
        query = t.substr(q + 1);
    }
}

std::string percent_decode(std::string_view raw) {
    std::string out;
    out.reserve(raw.size());
    for (std::size_t i = 0; i < raw.size(); ++i) {
        if (raw[i] == '%' && i + 2 < raw.size()) {
            int hi = hex_value(raw[i + 1]);
            int lo = hex_value(raw[i + 2]);
            if (hi >= 0 && lo >= 0) {
                out.push_back(static_cast<char>(hi * 16 + lo));
                i += 2;
                continue;
            }
        }
        out.push_back(raw[i]);
    }
    return out;
}

PyObject* log_target(PyObject* scope) {
    namespace n = py_names;
    PyObject* raw = PyDict_GetItemWithError(scope, n::raw_path);
    PyObject* query = PyDict_GetItemWithError(scope, n::query_string);
    if (raw == nullptr || !PyBytes_Check(raw)) {
        PyErr_Clear();
        return nullptr;
    }
    std::string out;
    auto append = [&out](PyObject* b) {
        const char* p = PyBytes_AS_STRING(b);
        for (Py_ssize_t i = 0, len = PyBytes_GET_SIZE(b); i < len; ++i) {
            if (p[i] == '"') {
                out += "%22";
            } else {
                out.push_back(p[i]);
            }
        }
    };
    append(raw);
    if (query != nullptr && PyBytes_Check(query) && PyBytes_GET_SIZE(query) > 0) {
        out.push_back('?');
        append(query);
    }
    PyErr_Clear();
    return PyUnicode_DecodeLatin1(out.data(), static_cast<Py_ssize_t>(out.size()), nullptr);
}

// The HTTP scope's keys, in the order of Uvicorn's scope (its trace log prints the dict as it
// is): a request's scope starts as a copy of the server's template. Copying a dict is one block
// copy of its key table; building it key by key grew and rehashed it twice.
PyObject* make_http_scope_template(PyObject* scheme, PyObject* root_path, bool with_state) {
    namespace n = py_names;
    PyObject* keys[] = {n::type,   n::asgi,      n::http_version, n::server,    n::client,
                        n::scheme, n::root_path, n::headers,      n::state,     n::method,
                        n::path,   n::raw_path,  n::query_string, n::extensions};
    PyObject* d = PyDict_New();
    if (d == nullptr) return nullptr;
    for (PyObject* key : keys) {
        if (key == n::state && !with_state) continue;
        PyObject* value = key == n::type           ? n::http
                          : key == n::http_version ? n::v1_1
                          : key == n::scheme       ? scheme
                          : key == n::root_path    ? root_path
                                                   : Py_None;
        if (PyDict_SetItem(d, key, value) != 0) {
            Py_DECREF(d);
            return nullptr;
        }
    }
    return d;
}

PyObject* build_http_scope(const core::RequestHead& head, const ScopeInputs& in) {
    namespace n = py_names;
    std::string_view raw_path;
    std::string_view query;
    split_target(head.target, raw_path, query);

    // Every value below replaces one of the template's: no key is added. type, "1.1",
    // root_path and the server's scheme are in the template already.
    PyObject* scope = PyDict_Copy(in.http_template);
    if (scope == nullptr) return nullptr;
    bool ok =
        set_item(scope, n::asgi, PyDict_Copy(in.asgi_template)) &&
        (head.http_minor != 0 || PyDict_SetItem(scope, n::http_version, n::v1_0) == 0) &&
        PyDict_SetItem(scope, n::server, in.server) == 0 &&
        PyDict_SetItem(scope, n::client, in.client) == 0 &&
        (in.scheme == in.template_scheme || PyDict_SetItem(scope, n::scheme, in.scheme) == 0) &&
        set_item(scope, n::headers, build_headers(head));
    if (ok && in.state != nullptr) ok = set_item(scope, n::state, PyDict_Copy(in.state));
    ok = ok &&
         set_item(scope, n::method,
                  n::method_str(head.method.data(), static_cast<Py_ssize_t>(head.method.size()))) &&
         set_item(scope, n::path, build_path(in.root_path_bytes, raw_path));
    if (ok) {
        PyObject* raw = nullptr;
        if (in.root_path_bytes.empty()) {
            raw = PyBytes_FromStringAndSize(raw_path.data(), raw_path.size());
        } else {
            std::string joined(in.root_path_bytes);
            joined.append(raw_path);
            raw = PyBytes_FromStringAndSize(joined.data(), joined.size());
        }
        ok = set_item(scope, n::raw_path, raw) &&
             set_item(scope, n::query_string,
                      query.empty() ? Py_NewRef(n::empty_bytes)
                                    : PyBytes_FromStringAndSize(query.data(), query.size()));
    }
    if (ok) {
        // {"http.response.pathsend": {}} (the app may answer with a file path: sendfile), and
        // with TLS {"tls": ...}, the connection's dict, built once. Uvicorn has neither.
        PyObject* extensions = PyDict_New();
        PyObject* pathsend = PyDict_New();
        ok = extensions != nullptr && pathsend != nullptr &&
             PyDict_SetItem(extensions, n::http_response_pathsend, pathsend) == 0 &&
             (in.tls == nullptr || PyDict_SetItem(extensions, n::tls, in.tls) == 0);
        Py_XDECREF(pathsend);
        ok = ok && set_item(scope, n::extensions, extensions);
        if (!ok) Py_XDECREF(extensions);
    }
    if (!ok) {
        Py_DECREF(scope);
        return nullptr;
    }
    return scope;
}

}  // namespace cppuvicorn::asgi
