"""Starlette on both servers: same status, headers (minus date/server) and body."""

from __future__ import annotations

from pathlib import Path

import pytest

from rawhttp import Conn, build_request, request

APP = "starlette_app:app"
STATIC = (Path(__file__).parent / "apps" / "static.txt").read_bytes()


@pytest.mark.parametrize(
    "method,path,headers,body,status,expected_body",
    [
        ("GET", "/", [], None, 200, b"Hello, Starlette!"),
        ("GET", "/users/ann?x=1&x=2&y=", [], None, 200, b'{"user":"ann","query":{"x":"2","y":""}}'),
        ("POST", "/json", [("Content-Type", "application/json")], b'{"b": 1, "a": [1, 2]}', 200,
         b'{"received":{"b":1,"a":[1,2]},"keys":["a","b"]}'),
        ("GET", "/cookies", [("Cookie", "a=1; b=2")], None, 200, b'{"seen":{"a":"1","b":"2"}}'),
        ("GET", "/redirect", [], None, 307, b""),
        ("GET", "/stream", [], None, 200, b"alpha beta gamma"),
        ("GET", "/empty", [], None, 204, b""),
        ("GET", "/teapot", [], None, 418, b"short and stout"),
        ("PUT", "/echo", [("Content-Type", "text/x-custom")], b"payload \xe2\x82\xac", 200, b"payload \xe2\x82\xac"),
        ("GET", "/sub/where", [], None, 200, b'{"root_path":"/sub","path":"/sub/where"}'),
        ("GET", "/nope", [], None, 404, b"Not Found"),
        ("DELETE", "/", [], None, 405, b"Method Not Allowed"),
    ],
    ids=["plain-text", "path-params", "json-body", "cookies", "redirect", "stream", "204", "http-exception",
         "echo-put", "mount", "404", "405"],
)
def test_route(servers, method, path, headers, body, status, expected_body):
    def run(s):
        r = request(s.get(APP), method, path, headers=headers, body=body)
        assert r.status == status, r
        assert r.body == expected_body
        return r.norm()

    servers.compare(run)


def test_set_cookie_headers(servers):
    def run(s):
        r = request(s.get(APP), "GET", "/cookies")
        assert r.header_list("set-cookie") == [b"session=abc123; HttpOnly; Path=/; SameSite=lax",
                                               b"theme=dark; Max-Age=60; Path=/; SameSite=lax"]
        return r.norm()

    servers.compare(run)


def test_redirect_location(servers):
    def run(s):
        r = request(s.get(APP), "GET", "/redirect")
        assert r.status_line == b"HTTP/1.1 307 Temporary Redirect" and r.header("location") == b"/"
        return r.norm()

    servers.compare(run)


def test_file_response_get_head_and_range(servers):
    def run(s):
        srv = s.get(APP)
        with Conn(srv) as c:
            c.send(build_request("GET", "/file") + build_request("HEAD", "/file")
                   + build_request("GET", "/file", headers=[("Range", "bytes=10-19")]))
            full = c.read_response()
            head = c.read_response("HEAD")
            part = c.read_response()
        assert full.body == STATIC and full.header("content-length") == str(len(STATIC)).encode()
        assert full.header("etag") and full.header("last-modified") and full.header("accept-ranges") == b"bytes"
        assert head.body == b"" and head.compare_headers() == full.compare_headers()
        assert part.status == 206 and part.body == STATIC[10:20]
        assert part.header("content-range") == f"bytes 10-19/{len(STATIC)}".encode()
        return full.norm(), head.norm(), part.norm()

    servers.compare(run)


def test_unhandled_exception_gives_500_then_close(servers):
    def run(s):
        srv = s.get(APP)
        mark = srv.mark()
        with Conn(srv) as c:
            c.send(build_request("GET", "/crash"))
            r = c.read_response()
            assert r.status == 500 and r.body == b"Internal Server Error"
            assert c.is_closed(2)
        srv.wait_for_line(r"^ERROR:    Exception in ASGI application$", after=mark, stream="stderr")
        srv.wait_for_line(r"^KeyError: 'crash'$", after=mark, stream="stderr")
        assert request(srv, "GET", "/").status == 200
        return r.norm()

    servers.compare(run)
