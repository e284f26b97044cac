"""FastAPI on both servers: same status, headers (minus date/server) and body."""

from __future__ import annotations

import json
import uuid

import httpx
import pytest

from rawhttp import Conn, build_request, request
from support import wait_until

APP = "fastapi_app:app"
JSON = [("Content-Type", "application/json")]


def fastapi(s):
    return s.get(APP)


@pytest.mark.parametrize(
    "method,path,body,status,expected",
    [
        ("GET", "/", None, 200, {"message": "Hello World"}),
        ("GET", "/items/5?q=x&limit=3", None, 200, {"item_id": 5, "q": "x", "limit": 3}),
        ("GET", "/items/7", None, 200, {"item_id": 7, "q": None, "limit": 10}),
        ("GET", "/items/abc", None, 422, None),
        ("GET", "/items/1?limit=many", None, 422, None),
        ("POST", "/items", b'{"name": "apple", "price": 1.5, "tags": ["fruit"]}', 201,
         {"created": {"name": "apple", "price": 1.5, "tags": ["fruit"]}, "total": 3.0}),
        ("POST", "/items", b'{"name": "apple"}', 422, None),
        ("POST", "/items", b'{"name": "apple", "price": "cheap"}', 422, None),
        ("POST", "/items", b"{not json", 422, None),
        ("GET", "/text", None, 200, None),
        ("GET", "/nope", None, 404, {"detail": "Not Found"}),
        ("POST", "/", b"", 405, {"detail": "Method Not Allowed"}),
    ],
    ids=["root", "path-and-query", "query-defaults", "bad-path-param", "bad-query-param", "pydantic-ok",
         "pydantic-missing", "pydantic-wrong-type", "malformed-json", "plain-text", "404", "405"],
)
def test_endpoint(servers, method, path, body, status, expected):
    def run(s):
        r = request(fastapi(s), method, path, headers=JSON if body is not None else None, body=body)
        assert r.status == status, r
        assert r.header("x-middleware") == b"seen " + path.split("?")[0].encode()  # BaseHTTPMiddleware ran
        if expected is not None:
            assert r.json() == expected
        if status == 422:
            assert r.json()["detail"], r.body
        return r.norm()

    servers.compare(run)


def test_sync_def_endpoint_runs_in_threadpool(servers):
    def run(s):
        r = request(fastapi(s), "GET", "/sync/bob")
        assert r.json() == {"name": "bob", "in_main_thread": False}
        return r.norm()

    servers.compare(run)


def test_background_task_runs_after_response(servers):
    def run(s):
        srv = fastapi(s)
        label = f"job-{uuid.uuid4().hex}"  # same length on both servers: it is in the body
        r = request(srv, "POST", f"/background?label={label}")
        assert r.status == 200 and r.json() == {"scheduled": label}
        done = wait_until(lambda: label in request(srv, "GET", "/background").json()["done"], timeout=5)
        assert done, "background task never ran"
        return r.status_line, tuple(r.compare_headers())

    servers.compare(run)


def test_streaming_response_is_chunked(servers):
    def run(s):
        r = request(fastapi(s), "GET", "/stream?n=50")
        assert r.framing == "chunked"
        assert r.body == "".join(f"line {i}\n" for i in range(50)).encode()
        return r.norm()

    servers.compare(run)


def test_lifespan_state_reaches_request(servers):
    def run(s):
        r = request(fastapi(s), "GET", "/state")
        assert r.json() == {"greeting": "hello from lifespan"}
        return r.norm()

    servers.compare(run)


def test_http_exception_with_custom_header(servers):
    def run(s):
        r = request(fastapi(s), "GET", "/http-exception")
        assert r.status_line == b"HTTP/1.1 418 I'm a Teapot"
        assert r.header("x-teapot") == b"yes"
        assert r.json() == {"detail": "I'm a teapot"}
        return r.norm()

    servers.compare(run)


def test_endpoint_exception_gives_500_and_traceback(servers):
    def run(s):
        srv = fastapi(s)
        mark = srv.mark()
        with Conn(srv) as c:
            c.send(build_request("GET", "/raise"))
            r = c.read_response()
            assert r.status == 500 and r.body == b"Internal Server Error"
            # Starlette sent a complete response and re-raised: the server closes the connection.
            assert c.is_closed(2)
        srv.wait_for_line(r"^ERROR:    Exception in ASGI application$", after=mark, stream="stderr")
        srv.wait_for_line(r"^ValueError: endpoint exploded$", after=mark, stream="stderr")
        assert request(srv, "GET", "/").status == 200
        return r.norm()

    servers.compare(run)


def test_request_object_sees_url_client_and_headers(servers):
    def run(s):
        r = request(fastapi(s), "GET", "/request-info?a=1&b=two", headers=[("X-Custom", "v")])
        info = r.json()
        assert info["url"] == "http://example.test/request-info?a=1&b=two"
        assert info["client_host"] == "127.0.0.1"
        assert info["header_names"] == ["host", "x-custom"]
        assert info["query"] == {"a": "1", "b": "two"}
        return r.norm()

    servers.compare(run)


def test_httpx_client_keep_alive(servers):
    """A real client library on one pooled connection: JSON in and out, several requests."""

    def run(s):
        srv = fastapi(s)
        out = []
        with httpx.Client(base_url=srv.url, timeout=5) as client:
            for i in range(5):
                resp = client.post("/items", json={"name": f"n{i}", "price": i})
                assert resp.status_code == 201
                out.append(resp.json())
            assert client.get("/items/3", params={"q": "é"}).json() == {"item_id": 3, "q": "é", "limit": 10}
        return json.dumps(out)

    servers.compare(run)
