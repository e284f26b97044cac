"""Malformed requests, application errors and invalid ASGI messages.

After every case the same server must still serve a normal request."""

from __future__ import annotations

import pytest

from rawhttp import Conn, build_request, request
from support import strip_default_headers, wait_until

BAD_REQUEST_BODY = b"Invalid HTTP request received."
BAD_REQUEST_HEADERS = [(b"content-type", b"text/plain; charset=utf-8"), (b"content-length", b"30"),
                       (b"connection", b"close")]
ERROR_500_HEADERS = [(b"content-type", b"text/plain; charset=utf-8"), (b"content-length", b"21"),
                     (b"connection", b"close")]

# A request that must never be answered: it follows the malformed one on the same connection.
SMUGGLED = b"GET /hello?smuggled=1 HTTP/1.1\r\nHost: x\r\n\r\n"

MALFORMED = {
    "garbage-request-line": b"GARBAGE\r\n\r\n",
    "lowercase-method": b"get /hello HTTP/1.1\r\nHost: x\r\n\r\n",
    "unknown-method": b"FOO /hello HTTP/1.1\r\nHost: x\r\n\r\n",
    "space-in-target": b"GET /a b HTTP/1.1\r\nHost: x\r\n\r\n",
    "content-length-and-transfer-encoding":
        b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    "transfer-encoding-and-content-length":
        b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n",
    "two-different-content-lengths":
        b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhellox",
    "two-equal-content-lengths":
        b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\nhello",
    "content-length-list": b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5, 5\r\n\r\nhello",
    "negative-content-length": b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n",
    "plus-content-length": b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: +5\r\n\r\nhello",
    "non-hex-chunk-size":
        b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n",
    "overflowing-chunk-size":
        b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nffffffffffffffffff\r\nhello\r\n0\r\n\r\n",
    "chunk-data-longer-than-size":
        b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhelloXX\r\n0\r\n\r\n",
    "chunked-not-last-encoding":
        b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked, gzip\r\n\r\n0\r\n\r\n",
    "transfer-encoding-identity": b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: identity\r\n\r\n",
    "obs-fold": b"GET /hello HTTP/1.1\r\nHost: x\r\nX-A: a\r\n b\r\n\r\n",
    "space-before-colon": b"GET /hello HTTP/1.1\r\nHost: x\r\nX-A : a\r\n\r\n",
    "empty-header-name": b"GET /hello HTTP/1.1\r\nHost: x\r\n: v\r\n\r\n",
    "nul-in-header-value": b"GET /hello HTTP/1.1\r\nHost: x\r\nX-A: a\x00b\r\n\r\n",
    "bare-lf-line-endings": b"GET /hello HTTP/1.1\nHost: x\n\n",
    "bare-lf-in-headers": b"GET /hello HTTP/1.1\r\nHost: x\nX-A: b\r\n\r\n",
    "bare-cr-in-headers": b"GET /hello HTTP/1.1\r\nHost: x\rX-A: b\r\n\r\n",
    # The request target: printable ASCII only, in a form Uvicorn's URL parser takes.
    "tab-in-target": b"GET /hel\tlo HTTP/1.1\r\nHost: x\r\n\r\n",
    "tab-after-target": b"GET /hello\t HTTP/1.1\r\nHost: x\r\n\r\n",
    "form-feed-in-target": b"GET /hello\x0c HTTP/1.1\r\nHost: x\r\n\r\n",
    "utf8-in-path": b"GET /caf\xc3\xa9 HTTP/1.1\r\nHost: x\r\n\r\n",
    "utf8-in-query": b"GET /hello?q=\xc3\xa9 HTTP/1.1\r\nHost: x\r\n\r\n",
    "port-over-65535": b"GET http://x:65536/hello HTTP/1.1\r\nHost: x\r\n\r\n",
    "port-not-a-number": b"GET http://x:8a/hello HTTP/1.1\r\nHost: x\r\n\r\n",
    "empty-host": b"GET http://:80/hello HTTP/1.1\r\nHost: x\r\n\r\n",
    "underscore-in-host": b"GET http://x_y/hello HTTP/1.1\r\nHost: x\r\n\r\n",
}


def assert_still_serving(srv) -> None:
    r = request(srv, "GET", "/hello")
    assert r.status == 200 and r.body == b"Hello, world!"


@pytest.mark.parametrize("case", list(MALFORMED))
def test_malformed_request_gets_400_and_close(servers, case):
    def run(s):
        srv = s.get()
        mark = srv.mark()
        with Conn(srv) as c:
            c.send(MALFORMED[case] + SMUGGLED)
            r = c.read_response()
            assert r.status_line == b"HTTP/1.1 400 Bad Request"
            assert r.compare_headers() == BAD_REQUEST_HEADERS
            assert r.body == BAD_REQUEST_BODY
            assert c.is_closed(2), "connection left open after a 400"  # and nothing more was sent
        srv.wait_for_line(r"^WARNING:  Invalid HTTP request received\.$", after=mark, stream="stderr")
        assert_still_serving(srv)
        assert not any("smuggled" in line for line in srv.log_lines(after=mark)), "smuggled request reached the app"
        return r.norm()

    servers.compare(run)


def test_oversized_header_section(servers):
    """cppuvicorn answers 431 to a header section over its limit. uvicorn (httptools) has no limit
    and serves a 100 KiB header; that is asserted on the uvicorn side as documentation."""
    srv = servers.get()
    big = b"GET /hello HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * (100 * 1024) + b"\r\n\r\n"
    with Conn(srv) as c:
        c.send(big + SMUGGLED)
        r = c.read_response()
        if servers.is_oracle:
            assert r.status == 200  # uvicorn: no limit at all
            return
        assert r.status_line == b"HTTP/1.1 431 Request Header Fields Too Large", r
        assert r.header("connection") == b"close"
        assert c.is_closed(2)
    assert_still_serving(srv)


def test_too_many_headers(servers):
    """cppuvicorn-only limit on the header count (431); uvicorn accepts 1000 headers."""
    srv = servers.get()
    many = b"GET /hello HTTP/1.1\r\nHost: x\r\n" + b"".join(b"X-H%d: v\r\n" % i for i in range(1000)) + b"\r\n"
    with Conn(srv) as c:
        c.send(many)
        r = c.read_response()
        if servers.is_oracle:
            assert r.status == 200
            return
        assert r.status_line == b"HTTP/1.1 431 Request Header Fields Too Large", r
        assert c.is_closed(2)
    assert_still_serving(srv)


def test_pipelined_request_before_malformed_one(servers):
    """A valid request pipelined before garbage. uvicorn answers the garbage with 400 at once and
    closes, so the valid request's response is lost (documented on the uvicorn side).
    cppuvicorn parses one request at a time: it answers the first, then 400 and close."""
    srv = servers.get()
    with Conn(srv) as c:
        c.send(build_request("GET", "/sleep?t=0.2") + b"GARBAGE\r\n\r\n" + SMUGGLED)
        first = c.read_response()
        if servers.is_oracle:
            assert first.status == 400
            assert c.is_closed(2)
            return
        assert first.status == 200 and first.body == b"slept 0.2"
        second = c.read_response()
        assert second.status == 400 and second.body == BAD_REQUEST_BODY
        assert c.is_closed(2)


# ----------------------------------------------------------------------------- application errors


def test_exception_before_response_start_gives_500(servers):
    def run(s):
        srv = s.get()
        mark = srv.mark()
        with Conn(srv) as c:
            c.send(build_request("GET", "/raise-before"))
            r = c.read_response()
            assert r.status_line == b"HTTP/1.1 500 Internal Server Error"
            assert r.compare_headers() == ERROR_500_HEADERS
            assert r.body == b"Internal Server Error"
            assert c.is_closed(2)
        srv.wait_for_line(r"^ERROR:    Exception in ASGI application$", after=mark, stream="stderr")
        srv.wait_for_line(r"^Traceback \(most recent call last\):$", after=mark, stream="stderr")
        srv.wait_for_line(r"^RuntimeError: boom before start$", after=mark, stream="stderr")
        srv.wait_for_line(r'"GET /raise-before HTTP/1\.1" 500 Internal Server Error$', after=mark, stream="stdout")
        assert_still_serving(srv)
        return r.norm()

    servers.compare(run)


def test_exception_after_response_start_closes_connection(servers):
    def run(s):
        srv = s.get()
        mark = srv.mark()
        with Conn(srv) as c:
            c.send(build_request("GET", "/raise-after"))
            raw = c.read_until_close(5)
        # Headers and the first chunk went out; no terminating chunk, no second response.
        assert raw.endswith(b"\r\n\r\n7\r\npartial\r\n"), raw
        assert raw.count(b"HTTP/1.1 ") == 1
        srv.wait_for_line(r"^ERROR:    Exception in ASGI application$", after=mark, stream="stderr")
        srv.wait_for_line(r"^RuntimeError: boom after start$", after=mark, stream="stderr")
        assert_still_serving(srv)
        return strip_default_headers(raw)

    servers.compare(run)


def test_return_without_response_gives_500(servers):
    def run(s):
        srv = s.get()
        mark = srv.mark()
        with Conn(srv) as c:
            c.send(build_request("GET", "/no-response"))
            r = c.read_response()
            assert r.status == 500 and r.body == b"Internal Server Error"
            assert r.compare_headers() == ERROR_500_HEADERS
            assert c.is_closed(2)
        srv.wait_for_line(r"^ERROR:    ASGI callable returned without starting response\.$", after=mark)
        assert_still_serving(srv)
        return r.norm()

    servers.compare(run)


def test_return_with_incomplete_response_closes(servers):
    def run(s):
        srv = s.get()
        mark = srv.mark()
        with Conn(srv) as c:
            c.send(build_request("GET", "/incomplete"))
            raw = c.read_until_close(5)
        assert raw.endswith(b"content-length: 10\r\n\r\n12345"), raw
        srv.wait_for_line(r"^ERROR:    ASGI callable returned without completing response\.$", after=mark)
        assert_still_serving(srv)
        return strip_default_headers(raw)

    servers.compare(run)


# ----------------------------------------------------------------------------- invalid send() messages

FINE = b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nfine!"

# case -> (what send() raised inside the app, what the client receives, connection stays open)
INVALID = {
    "unknown-type-before-start": (
        "RuntimeError: Expected ASGI message 'http.response.start', but got 'http.response.bogus'.", FINE, True),
    "body-before-start": (
        "RuntimeError: Expected ASGI message 'http.response.start', but got 'http.response.body'.", FINE, True),
    "bad-header-name": ("RuntimeError: Invalid HTTP header name.", b"", False),
    "bad-header-name-colon": ("RuntimeError: Invalid HTTP header name.", b"", False),
    "bad-header-value-crlf": ("RuntimeError: Invalid HTTP header value.", b"", False),
    "bad-header-value-nul": ("RuntimeError: Invalid HTTP header value.", b"", False),
    "body-longer-than-content-length": ("RuntimeError: Response content longer than Content-Length", FINE, True),
    "body-shorter-than-content-length": (
        "RuntimeError: Response content shorter than Content-Length",
        b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nabc", False),
    "unknown-type-after-start": (
        "RuntimeError: Expected ASGI message 'http.response.body', but got 'http.response.bogus'.", FINE, True),
    "send-after-complete": (
        "RuntimeError: Unexpected ASGI message 'http.response.body' sent, after response already completed.",
        FINE, True),
}


@pytest.mark.parametrize("case", list(INVALID))
def test_invalid_send_raises_in_app_and_nothing_invalid_on_the_wire(servers, case):
    caught_expected, wire_expected, stays_open = INVALID[case]

    def run(s):
        srv = s.get()
        with Conn(srv) as c:
            c.send(build_request("GET", f"/invalid/{case}"))
            if stays_open:
                r = c.read_response()
                raw = strip_default_headers(r.raw_head) + r.body
                # Nothing extra after the response, and the connection is still usable.
                c.send(build_request("GET", "/hello"))
                assert c.read_response().body == b"Hello, world!"
            else:
                raw = strip_default_headers(c.read_until_close(5))
        assert raw == wire_expected
        assert b"evil" not in raw and b"\x00" not in raw
        caught = wait_until(lambda: request(srv, "GET", f"/caught/{case}").json(), timeout=2)
        assert caught == [caught_expected]
        assert_still_serving(srv)
        return raw, caught

    servers.compare(run)


def test_content_length_with_whitespace_frames_the_body(servers):
    # RFC 9110 §5.5: whitespace around a field value is not part of it; Uvicorn's int() agrees.
    def run(s):
        srv = s.get()
        with Conn(srv) as c:
            c.send(build_request("GET", "/invalid/content-length-with-whitespace"))
            r = c.read_response()
            raw = strip_default_headers(r.raw_head) + r.body
            c.send(build_request("GET", "/hello"))
            assert c.read_response().body == b"Hello, world!"
        assert raw == b"HTTP/1.1 200 OK\r\ncontent-length:  5\t\r\n\r\nfine!"
        return raw

    servers.compare(run)


# Where Uvicorn's answer is not valid HTTP, cppuvicorn's is checked on its own.


def test_head_refused_after_it_counts_as_started_closes_the_connection(cppuvicorn):
    """As in Uvicorn, a response counts as started before its headers are checked, so the app's
    error closes the connection rather than answering 500. An app that catches the error and
    ends the "response" with a body cannot produce a valid answer any more: the connection
    closes at once, with nothing on the wire. (Uvicorn writes nothing and then answers the
    pipelined request behind it, which the client takes for this one's answer.)"""
    case = "bad-header-then-body"
    with Conn(cppuvicorn) as c:
        c.send(build_request("GET", f"/invalid/{case}") + build_request("GET", "/hello"))
        assert c.is_closed(timeout=5)
    caught = wait_until(lambda: request(cppuvicorn, "GET", f"/caught/{case}").json(), timeout=2)
    assert caught == ["RuntimeError: Invalid HTTP header name."]
    assert_still_serving(cppuvicorn)


def test_interim_status_is_refused_and_a_real_response_follows(cppuvicorn):
    """A 1xx status is interim (RFC 9110 §15.2): sent as the response, a client would take the
    connection's next response for this request's. send() refuses it before the response
    starts. (Uvicorn writes the 1xx head with a chunked body after it.)"""
    case = "interim-status"
    with Conn(cppuvicorn) as c:
        c.send(build_request("GET", f"/invalid/{case}"))
        r = c.read_response(allow_interim=True)
        assert strip_default_headers(r.raw_head) + r.body == FINE
        c.send(build_request("GET", "/hello"))
        assert c.read_response().body == b"Hello, world!"
    caught = wait_until(lambda: request(cppuvicorn, "GET", f"/caught/{case}").json(), timeout=2)
    assert caught == ["RuntimeError: Invalid HTTP status code."]
    assert_still_serving(cppuvicorn)
