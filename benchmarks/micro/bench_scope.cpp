// SPDX-License-Identifier: BSD-3-Clause
// Microbenchmark of ASGI HTTP scope building: asgi_bridge/scope.cpp's build_http_scope, the
// function BridgeServer::on_request calls for every request, run in an embedded interpreter
// with the same inputs the bridge passes (asgi template dict, shared server tuple, per-
// connection client tuple, interned scheme, root path "", the lifespan state dict). The head
// comes from the real HttpParser. Each iteration builds the scope and frees it, as a request
// that finished does.
#define CATCH_CONFIG_RUNNER
#include "asgi_bridge/py_names.hpp"
#include "asgi_bridge/scope.hpp"
#include "core/config.hpp"
#include "core/http_parser.hpp"

#include <Python.h>
#include <catch2/catch.hpp>

#include <cstdio>
#include <string>
#include <string_view>

namespace {

using namespace cppuvicorn;

// Keeps a copy of the last head (the parser's views stay valid until the next execute()).
class HeadSink final : public core::ParserSink {
  public:
    core::RequestHead head;
    void on_head(const core::RequestHead& h) override { head = h; }
    void on_body(std::string_view) override {}
    int on_message_end() override { return kPause; }
};

const std::string kCurlGet =
    "GET /api/items?id=42 HTTP/1.1\r\n"
    "Host: localhost:8000\r\n"
    "User-Agent: curl/7.88.1\r\n"
    "Accept: */*\r\n"
    "\r\n";

const std::string kBrowserGet =
    "GET /static/app/main.css?v=3f2a9c HTTP/1.1\r\n"
    "Host: www.example.com\r\n"
    "Connection: keep-alive\r\n"
    "sec-ch-ua: \"Chromium\";v=\"124\", \"Google Chrome\";v=\"124\", \"Not-A.Brand\";v=\"99\"\r\n"
    "sec-ch-ua-mobile: ?0\r\n"
    "User-Agent: Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/124.0.0.0 Safari/537.36\r\n"
    "sec-ch-ua-platform: \"Linux\"\r\n"
    "Accept: text/css,*/*;q=0.1\r\n"
    "Sec-Fetch-Site: same-origin\r\n"
    "Sec-Fetch-Mode: no-cors\r\n"
    "Referer: https://www.example.com/\r\n"
    "Accept-Encoding: gzip, deflate, br, zstd\r\n"
    "Accept-Language: en-GB,en;q=0.9,de;q=0.8\r\n"
    "Cookie: session=6b1f0a0e2d4c4f8e9a7b3c2d1e0f9a8b; theme=dark; "
    "_ga=GA1.1.123456789.1700000000\r\n"
    "\r\n";

// The bridge's per-server and per-connection objects (BridgeServer's constructor,
// server_tuple(), client_tuple(); lifespan state is {} as with Uvicorn's LifespanOn).
struct Inputs {
    PyObject* asgi_template = Py_BuildValue("{s:s,s:s}", "version", "3.0", "spec_version", "2.3");
    PyObject* server = Py_BuildValue("(si)", "127.0.0.1", 8000);
    PyObject* client = Py_BuildValue("(si)", "127.0.0.1", 51234);
    PyObject* scheme = PyUnicode_InternFromString("http");
    PyObject* root_path = PyUnicode_FromString("");
    PyObject* state = PyDict_New();
    PyObject* http_template = asgi::make_http_scope_template(scheme, root_path, true);

    asgi::ScopeInputs scope_inputs() const {
        return asgi::ScopeInputs{.asgi_template = asgi_template,
                                 .client = client,
                                 .server = server,
                                 .scheme = scheme,
                                 .root_path = root_path,
                                 .root_path_bytes = "",
                                 .state = state,
                                 .http_template = http_template,
                                 .template_scheme = scheme};
    }
};

void bench_scope(const char* name, const std::string& request) {
    core::ServerConfig config;
    HeadSink sink;
    core::HttpParser parser{sink, config};
    REQUIRE(parser.execute(request).kind == core::ParseResult::Kind::kPaused);
    static const Inputs inputs;
    const asgi::ScopeInputs in = inputs.scope_inputs();

    PyObject* scope = asgi::build_http_scope(sink.head, in);
    REQUIRE(scope != nullptr);
    PyObject* headers = PyDict_GetItemString(scope, "headers");
    REQUIRE(headers != nullptr);
    REQUIRE(static_cast<std::size_t>(PyList_Size(headers)) == sink.head.headers.size());
    Py_DECREF(scope);

    BENCHMARK(std::string(name) + ", " + std::to_string(sink.head.headers.size()) + " headers") {
        PyObject* s = asgi::build_http_scope(sink.head, in);
        Py_ssize_t n = PyDict_Size(s);
        Py_DECREF(s);
        return n;
    };
}

}  // namespace

TEST_CASE("build_http_scope", "[scope]") {
    bench_scope("scope for curl GET", kCurlGet);
    bench_scope("scope for browser GET", kBrowserGet);
}

int main(int argc, char* argv[]) {
    Py_Initialize();
    if (!asgi::py_names::init()) {
        PyErr_Print();
        return 2;
    }
    int rc = Catch::Session().run(argc, argv);
    Py_FinalizeEx();
    return rc;
}
