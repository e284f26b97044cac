"""``--interface wsgi``: Flask, Django and raw PEP 3333 applications.

Exchanges are compared with uvicorn's (deprecated) WSGIMiddleware. Where cppuvicorn does better
(a streamed ``wsgi.input``, response backpressure, ``close()`` of the iterable, PEP 3333's
string SERVER_PORT, undecodable paths) the test is cppuvicorn-only and says what uvicorn does.
"""

from __future__ import annotations

import hashlib
import json
import time

import pytest

from rawhttp import Conn, build_request, request
from support import wait_until

WSGI = ("--interface", "wsgi")
FLASK = "flask_app:app"
DJANGO = "django_app:app"
RAW = "wsgi_apps:app"
BODY_1MIB = bytes(range(256)) * 4096


def flask(s, *args):
    return s.get(FLASK, *WSGI, *args)


def django(s):
    return s.get(DJANGO, *WSGI)


def raw(s, *args):
    return s.get(RAW, *WSGI, *args)


# ----------------------------------------------------------------------------- Flask


@pytest.mark.parametrize(
    "method,path,body,status",
    [
        ("GET", "/", None, 200),
        ("HEAD", "/", None, 200),
        ("GET", "/json?a=1&a=2&b=caf%C3%A9", None, 200),
        ("POST", "/upload", BODY_1MIB, 200),
        ("POST", "/upload", b"", 200),
        ("GET", "/stream?n=20", None, 200),
        ("GET", "/error", None, 500),
        ("GET", "/missing", None, 404),
        ("DELETE", "/", None, 405),
    ],
    ids=["hello", "head", "json-query", "post-1mib", "post-empty", "stream", "exception-500", "404", "405"],
)
def test_flask(servers, method, path, body, status):
    def run(s):
        headers = [("Content-Type", "application/octet-stream")] if body is not None else None
        r = request(flask(s), method, path, headers=headers, body=body, timeout=10)
        assert r.status == status, r
        if path == "/upload":
            assert r.json() == {"size": len(body), "sha256": hashlib.sha256(body).hexdigest(),
                                "content_type": "application/octet-stream"}
        if path.startswith("/stream"):
            assert r.framing == "chunked" and r.body == b"".join(b"line %d\n" % i for i in range(20))
        return r.norm()

    servers.compare(run)


def test_flask_exception_is_logged(servers):
    srv = servers.spawn(FLASK, *WSGI)
    mark = srv.mark()
    assert request(srv, "GET", "/error").status == 500
    srv.wait_for_line(r"ValueError: view exploded", after=mark)


def test_flask_streamed_response_is_sent_chunk_by_chunk(servers):
    """The first chunk reaches the client while the generator is still sleeping."""

    def run(s):
        with Conn(flask(s)) as conn:
            start = time.monotonic()
            conn.send(build_request("GET", "/slow-stream"))
            received = b""
            while b"first\n" not in received and time.monotonic() - start < 5:
                received += conn.read_available(0.05)
            first_after = time.monotonic() - start
            assert b"first\n" in received and first_after < 0.8, (first_after, received)
            received += conn.read_available(2.0)
            assert b"second\n" in received and received.endswith(b"0\r\n\r\n")
        return True

    servers.compare(run)


@pytest.mark.cppuvicorn_only
def test_flask_request_body_is_streamed(cppuvicorn_servers):
    """The view reads 5 bytes of a 1 MB body the client has not finished sending, and answers.

    uvicorn's WSGIMiddleware reads the whole body before calling the application: there the
    response would only come once the client had sent all of it."""
    srv = flask(cppuvicorn_servers)
    with Conn(srv, timeout=5) as conn:
        conn.send(build_request("POST", "/first-bytes?n=5", headers=[("Content-Length", "1000000")])
                  + b"hello, the rest never comes")
        r = conn.read_response()
    assert r.status == 200 and r.json() == {"first": "hello"}


@pytest.mark.cppuvicorn_only
def test_flask_response_backpressure_and_disconnect(cppuvicorn_servers):
    """A client that does not read pauses the generator; once it is gone, the iterable is closed.

    uvicorn's WSGIMiddleware queues chunks without limit: its generator runs to the end (here
    256 MiB held in memory) whether or not anyone reads, and close() is never called."""
    srv = flask(cppuvicorn_servers)
    state = lambda: request(srv, "GET", "/big/state").json()  # noqa: E731
    conn = Conn(srv)
    try:
        conn.send(build_request("GET", "/big?chunks=4096"))
        time.sleep(1.5)
        paused_at = state()["produced"]
        time.sleep(0.5)
        assert state()["produced"] == paused_at, "the generator kept running for a client that does not read"
        assert 1 <= paused_at < 512, paused_at  # < 32 MiB: socket buffers and the core's own
        assert state()["closed"] is False
    finally:
        conn.close()
    assert wait_until(lambda: state()["closed"], timeout=5), "close() not called after the client left"
    assert state()["produced"] < 4096


# ----------------------------------------------------------------------------- Django


@pytest.mark.parametrize(
    "method,path,headers,body,status",
    [
        ("GET", "/hello/bob?greeting=hey", None, None, 200),
        ("POST", "/form", [("Content-Type", "application/x-www-form-urlencoded")], b"a=1&a=2&name=caf%C3%A9", 200),
        ("GET", "/form", None, None, 405),
        ("GET", "/stream", None, None, 200),
        ("GET", "/missing", None, None, 404),
        ("GET", "/boom", None, None, 500),
    ],
    ids=["view", "form-post", "405", "streaming", "404", "exception-500"],
)
@pytest.mark.parametrize("handler", ["wsgi", "asgi"])
def test_django(servers, handler, method, path, headers, body, status):
    """The same views through Django's WSGI handler (--interface wsgi) and its ASGI handler."""
    def run(s):
        srv = django(s) if handler == "wsgi" else s.get("django_app:asgi_app")
        r = request(srv, method, path, headers=headers, body=body)
        assert r.status == status, r
        if path.startswith("/hello"):
            assert r.json() == {"hello": "bob", "greeting": "hey", "method": "GET", "path": "/hello/bob",
                                "host": "example.test", "secure": False}
        if method == "POST":
            assert r.json() == {"fields": {"a": ["1", "2"], "name": ["café"]}, "body_size": len(body)}
        return r.norm()

    servers.compare(run)


# ----------------------------------------------------------------------------- PEP 3333


@pytest.mark.parametrize(
    "path,status",
    [("/raise", 500), ("/no-start", 500), ("/closing", 200)],
    ids=["exception-500", "no-start-response-500", "closing"],
)
def test_raw_wsgi(servers, path, status):
    def run(s):
        r = request(raw(s), "GET", path)
        assert r.status == status, r
        return r.norm()

    servers.compare(run)


@pytest.mark.cppuvicorn_only
def test_start_response_exc_info_replaces_unsent_headers(cppuvicorn_servers):
    """PEP 3333: headers go out with the first body chunk, so start_response(..., exc_info) can
    still replace them. uvicorn sends them at the first start_response (here: 200 OK)."""
    r = request(raw(cppuvicorn_servers), "GET", "/exc-info")
    assert (r.status, r.header("x-error"), r.body) == (503, b"yes", b"unavailable")


@pytest.mark.cppuvicorn_only
def test_write_callable(cppuvicorn_servers):
    """The legacy write() start_response returns. uvicorn's start_response returns None."""
    r = request(raw(cppuvicorn_servers), "GET", "/write")
    assert (r.status, r.body) == (200, b"written, then returned")


def test_raw_wsgi_error_after_first_chunk_closes_connection(servers):
    def run(s):
        with Conn(raw(s)) as conn:
            conn.send(build_request("GET", "/late-error"))
            data = conn.read_until_close()
        assert b"first chunk\n" in data and not data.endswith(b"0\r\n\r\n"), data
        return data.split(b"\r\n\r\n", 1)[1]

    servers.compare(run)


def test_raw_wsgi_input_readline_and_iteration(servers):
    def run(s):
        body = b"first line\nabcdef\nthird\nlast without newline"
        r = request(raw(s), "POST", "/lines", body=body)
        assert r.json() == {"first": "first line\n", "limited": "abc",
                            "rest": ["def\n", "third\n", "last without newline"]}
        return r.norm()

    servers.compare(run)


@pytest.mark.cppuvicorn_only
def test_iterable_close_is_called(cppuvicorn_servers):
    """PEP 3333: the server calls close() of the iterable. uvicorn's WSGIMiddleware never does."""
    srv = raw(cppuvicorn_servers)
    before = request(srv, "GET", "/closed").json()["count"]
    assert request(srv, "GET", "/closing").body == b"closing body"
    assert wait_until(lambda: request(srv, "GET", "/closed").json()["count"] == before + 1, timeout=3)


@pytest.mark.cppuvicorn_only
def test_environ(cppuvicorn_servers):
    srv = cppuvicorn_servers.spawn(RAW, *WSGI, "--root-path", "/mount")  # path = root_path + request path
    mark = srv.mark()
    headers = [("X-Multi", "a"), ("X-Multi", "b"), ("Cookie", "a=1"), ("Cookie", "b=2"), ("X_Multi", "smuggled"),
               ("Content-Type", "text/plain")]
    with Conn(srv) as conn:
        r = conn.request("POST", "/environ/caf%C3%A9%20x/%E9?q=1&r=%20", headers=headers, body=b"payload")
        client_port = conn.local_port
    env = r.json()
    expected = {
        "REQUEST_METHOD": "POST",
        "SCRIPT_NAME": "/mount",
        "PATH_INFO": "/environ/caf\u00c3\u00a9 x/\u00e9",  # bytes as latin-1, %E9 is not UTF-8
        "QUERY_STRING": "q=1&r=%20",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "SERVER_NAME": "127.0.0.1",
        "SERVER_PORT": str(srv.port),
        "REMOTE_ADDR": "127.0.0.1",
        "REMOTE_PORT": str(client_port),
        "CONTENT_TYPE": "text/plain",
        "CONTENT_LENGTH": "7",
        "HTTP_HOST": "example.test",
        "HTTP_X_MULTI": "a,b",
        "HTTP_COOKIE": "a=1; b=2",
        "wsgi.version": [1, 0],
        "wsgi.url_scheme": "http",
        "wsgi.multithread": True,
        "wsgi.multiprocess": True,
        "wsgi.run_once": False,
        "wsgi.input_terminated": True,
        "body": "payload",
    }
    assert {key: env.get(key) for key in expected} == expected
    assert "HTTP_CONTENT_TYPE" not in env and "HTTP_CONTENT_LENGTH" not in env
    srv.wait_for_line(r"^(ERROR:\s+)?hello from wsgi\.errors$", after=mark)
    srv.wait_for_line(r"^(ERROR:\s+)?second line$", after=mark)


@pytest.mark.cppuvicorn_only
def test_chunked_request_body_reaches_flask(cppuvicorn_servers):
    """``wsgi.input_terminated``: Flask reads a chunked body (without it, werkzeug sees none, as with uvicorn)."""
    from rawhttp import chunked

    srv = flask(cppuvicorn_servers)
    r = request(srv, "POST", "/upload", headers=[("Transfer-Encoding", "chunked"), ("Content-Type", "a/b")],
                body=chunked(BODY_1MIB))
    assert r.json() == {"size": len(BODY_1MIB), "sha256": hashlib.sha256(BODY_1MIB).hexdigest(), "content_type": "a/b"}


def test_websocket_upgrade_is_plain_http(servers):
    """WSGI has no WebSocket: an upgrade request is answered as an ordinary request."""

    def run(s):
        headers = [("Upgrade", "websocket"), ("Connection", "Upgrade"), ("Sec-WebSocket-Version", "13"),
                   ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ==")]
        r = request(raw(s), "GET", "/closing", headers=headers)
        assert r.status == 200 and r.body == b"closing body"
        return r.norm()

    servers.compare(run)


def test_json_lifespan_log(servers):
    """Startup logs: lifespan is reported unsupported, as by uvicorn."""
    srv = servers.spawn(FLASK, *WSGI)
    srv.wait_for_line(r"ASGI 'lifespan' protocol appears unsupported\.")
    assert json.loads(request(srv, "GET", "/json").body)["message"] == "hello"
