"""HTTP/1.1 wire behaviour, differential: every exchange runs against the server under test and,
for cppuvicorn, against uvicorn too (``servers.compare``); the concrete assertions hold for both."""

from __future__ import annotations

import email.utils
import hashlib
import http.client
import signal
import time

import pytest

from rawhttp import Conn, build_request, chunked, request
from support import RFC1123_RE, norm_scope

HELLO = b"Hello, world!"


def get_scope(srv, path="/scope", headers=None, body=None, method="GET", version="1.1", conn=None):
    own = conn is None
    conn = conn or Conn(srv)
    try:
        r = conn.request(method, path, headers=headers, body=body, version=version)
        assert r.status == 200, r
        scope = r.json()
        if srv.port is not None:
            assert scope["client"] == ["127.0.0.1", conn.local_port]
            assert scope["server"] == ["127.0.0.1", srv.port]
        return r, scope
    finally:
        if own:
            conn.close()


# ----------------------------------------------------------------------------- basics


def test_get_default_headers_first(servers):
    def run(s):
        r = request(s.get(), "GET", "/hello")
        assert r.status_line == b"HTTP/1.1 200 OK"
        assert r.body == HELLO
        # date, then server, then the app's headers, in that order.
        assert [k for k, _ in r.headers[:2]] == [b"date", b"server"]
        assert r.headers[1][1] == s.kind.encode()
        assert RFC1123_RE.match(r.headers[0][1]), r.headers[0]
        sent = email.utils.parsedate_to_datetime(r.headers[0][1].decode()).timestamp()
        assert abs(sent - time.time()) < 5
        assert r.compare_headers() == [(b"content-type", b"text/plain"), (b"content-length", b"13")]
        return r.norm()

    servers.compare(run)


def scope_echo_headers(r) -> list:
    """The headers of a /scope echo, but its content-length: cppuvicorn's scope is longer by
    the "http.response.pathsend" extension it advertises."""
    return [(k, v) for k, v in r.compare_headers() if k != b"content-length"]


def test_scope_of_simple_get(servers):
    def run(s):
        _, scope = get_scope(s.get(), "/scope")
        scope = norm_scope(scope)
        assert set(scope) == {"type", "asgi", "http_version", "server", "client", "scheme", "method", "root_path",
                              "path", "raw_path", "query_string", "headers", "body_length"}  # no "extensions"
        assert scope["asgi"] == {"version": "3.0", "spec_version": "2.3"}
        assert scope["type"] == "http" and scope["http_version"] == "1.1" and scope["scheme"] == "http"
        assert scope["method"] == "GET" and scope["root_path"] == ""
        assert scope["path"] == "/scope" and scope["raw_path"] == "/scope" and scope["query_string"] == ""
        assert scope["headers"] == [["host", "example.test"]]
        return norm_scope(scope)

    servers.compare(run)


def test_post_body_echo(servers):
    body = b"posted \x00\xff bytes" * 10

    def run(s):
        r = request(s.get(), "POST", "/echo", headers=[("Content-Type", "application/octet-stream")], body=body)
        assert r.status == 200 and r.body == body
        assert r.header("content-length") == str(len(body)).encode()
        return r.norm()

    servers.compare(run)


@pytest.mark.parametrize("method", ["PUT", "PATCH", "DELETE", "OPTIONS"])
def test_other_methods_reach_the_app(servers, method):
    def run(s):
        _, scope = get_scope(s.get(), "/scope", method=method, body=b"x" if method != "OPTIONS" else None)
        assert scope["method"] == method
        return norm_scope(scope)

    servers.compare(run)


# ----------------------------------------------------------------------------- bodiless responses


def test_head_has_headers_but_no_body(servers):
    def run(s):
        with Conn(s.get()) as c:
            # Pipelined HEAD then GET: a body wrongly sent for HEAD would corrupt the second response.
            c.send(build_request("HEAD", "/hello") + build_request("HEAD", "/head-no-length")
                   + build_request("GET", "/hello"))
            head1 = c.read_response("HEAD")
            head2 = c.read_response("HEAD")
            get = c.read_response("GET")
            assert head1.status == 200 and head1.header("content-length") == b"13"
            # No content-length from the app and HEAD: no transfer-encoding either.
            assert head2.header("transfer-encoding") is None and head2.header("content-length") is None
            assert get.body == HELLO
            assert c.read_available(0.1) == b""
            return head1.norm(), head2.norm(), get.norm()

    servers.compare(run)


@pytest.mark.parametrize("status", [204, 304])
def test_204_and_304_have_no_body_and_no_framing_headers(servers, status):
    def run(s):
        with Conn(s.get()) as c:
            c.send(build_request("GET", f"/status/{status}?etag=1") + build_request("GET", "/hello"))
            r = c.read_response()
            assert r.status == status
            assert r.header("transfer-encoding") is None and r.header("content-length") is None
            nxt = c.read_response()
            assert nxt.body == HELLO
            return r.norm(), r.raw_head.split(b"\r\n", 1)[0]

    servers.compare(run)


def test_unknown_status_code_has_empty_reason_phrase(servers):
    def run(s):
        r = request(s.get(), "GET", "/status/599")
        # Exact bytes: "HTTP/1.1 599 " with the trailing space, then CRLF.
        assert r.raw_head.startswith(b"HTTP/1.1 599 \r\n")
        assert r.framing == "chunked" and r.body == b""
        return r.norm()

    servers.compare(run)


# ----------------------------------------------------------------------------- framing


@pytest.mark.parametrize("size", [0, 1, 5000, 70000])
def test_chunked_request_body(servers, size):
    body = bytes(i % 256 for i in range(size))
    encoded = chunked(body)

    def run(s):
        r = request(s.get(), "POST", "/body-sha", headers=[("Transfer-Encoding", "chunked")], body=encoded)
        assert r.status == 200
        assert r.json() == {"length": size, "sha256": hashlib.sha256(body).hexdigest()}
        return r.norm()

    servers.compare(run)


def test_chunked_request_with_extensions_and_trailers(servers):
    raw = (b"POST /body-sha HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
           b"5;name=value\r\nhello\r\n6\r\n world\r\n0\r\nX-Trailer: yes\r\n\r\n")

    def run(s):
        with Conn(s.get()) as c:
            c.send(raw + build_request("GET", "/hello"))
            r = c.read_response()
            assert r.json() == {"length": 11, "sha256": hashlib.sha256(b"hello world").hexdigest()}
            assert c.read_response().body == HELLO  # the trailer did not desynchronise the parser
            return r.norm()

    servers.compare(run)


def test_content_length_response_vs_chunked_response(servers):
    def run(s):
        srv = s.get()
        fixed = request(srv, "GET", "/hello")
        assert fixed.framing == "length"
        streamed = request(srv, "GET", "/stream")
        assert streamed.framing == "chunked"
        assert streamed.header("content-length") is None
        assert len(streamed.body) == 100 * 1024
        assert streamed.body == b"".join(bytes([65 + i % 26]) * 1024 for i in range(100))
        return fixed.norm(), streamed.norm()

    servers.compare(run)


def test_streamed_echo_of_chunked_request(servers):
    body = b"0123456789" * 1000

    def run(s):
        r = request(s.get(), "POST", "/echo-chunked", headers=[("Transfer-Encoding", "chunked")],
                    body=chunked(body, sizes=(1000,)))
        assert r.framing == "chunked" and r.body == body
        return r.norm()

    servers.compare(run)


# ----------------------------------------------------------------------------- connection management


def test_http10_closes_and_reports_version(servers):
    def run(s):
        with Conn(s.get()) as c:
            c.send(b"GET /scope HTTP/1.0\r\n\r\n")
            r = c.read_response()
            assert r.header("connection") == b"close"
            scope = r.json()
            assert scope["http_version"] == "1.0" and scope["headers"] == []
            assert c.is_closed(2)
        srv = s.get()
        with Conn(srv) as c:
            # HTTP/1.0 has no chunked coding (RFC 9112 §7): cppuvicorn ends a body without a
            # length by closing the connection; uvicorn sends chunked anyway (its flaw).
            c.send(b"GET /stream?n=2 HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
            streamed = c.read_response()
            expected = "close" if srv.kind == "cppuvicorn" else "chunked"
            assert streamed.framing == expected and len(streamed.body) == 2048
            assert streamed.header("connection") == b"close"
            assert streamed.header("transfer-encoding") == (None if expected == "close" else b"chunked")
            assert c.is_closed(2)
        return norm_scope(scope), scope_echo_headers(r), streamed.body

    servers.compare(run)


def test_keep_alive_serves_many_requests_on_one_connection(servers):
    def run(s):
        srv = s.get()
        with Conn(srv) as c:
            ports = set()
            for i in range(5):
                r, scope = get_scope(srv, f"/scope?i={i}", conn=c)
                assert r.header("connection") is None
                assert scope["query_string"] == f"i={i}"
                ports.add(scope["client"][1])
            assert len(ports) == 1
            assert not c.is_closed(0.2)
        return scope_echo_headers(r)

    servers.compare(run)


@pytest.mark.parametrize("value", ["close", "Close", "keep-alive, close"])
def test_request_connection_close(servers, value):
    def run(s):
        with Conn(s.get()) as c:
            c.send(build_request("GET", "/hello", headers=[("Connection", value)]))
            r = c.read_response()
            assert r.body == HELLO and r.header("connection") == b"close"
            assert c.is_closed(2)
            return r.norm()

    servers.compare(run)


def test_app_connection_close_header_closes(servers):
    def run(s):
        with Conn(s.get()) as c:
            c.send(build_request("GET", "/close"))
            r = c.read_response()
            assert r.header_list("connection") == [b"close"]  # not duplicated by the server
            assert c.is_closed(2)
            return r.norm()

    servers.compare(run)


def test_pipelining_ten_requests_in_one_write(servers):
    def run(s):
        reqs = [build_request("GET", "/sleep?t=0.05")]  # a slow first one must not be overtaken
        for i in range(1, 10):
            if i % 3 == 0:
                reqs.append(build_request("POST", f"/scope?i={i}", body=b"b" * i))
            else:
                reqs.append(build_request("GET", f"/scope?i={i}"))
        with Conn(s.get()) as c:
            c.send(b"".join(reqs))
            first = c.read_response()
            assert first.body == b"slept 0.05"
            out = []
            for i in range(1, 10):
                scope = c.read_response().json()
                assert scope["query_string"] == f"i={i}"
                assert scope["body_length"] == (i if i % 3 == 0 else 0)
                out.append((scope["method"], scope["query_string"], scope["body_length"]))
            assert not c.is_closed(0.2)
        return out

    servers.compare(run)


# ----------------------------------------------------------------------------- 100-continue


def test_expect_100_continue_sent_only_when_app_reads(servers):
    def run(s):
        with Conn(s.get()) as c:
            c.send(b"POST /continue?delay=0.4 HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n"
                   b"Expect: 100-continue\r\n\r\n")
            assert c.read_available(0.2) == b""  # the app has not called receive() yet
            interim = c.read_response(allow_interim=True)
            assert interim.raw_head == b"HTTP/1.1 100 Continue\r\n\r\n"
            c.send(b"hello")
            r = c.read_response()
            assert r.body == b"got 5 bytes"
            return interim.raw_head, r.norm()

    servers.compare(run)


def test_expect_100_continue_not_sent_when_app_never_reads(servers):
    def run(s):
        with Conn(s.get()) as c:
            c.send(b"POST /no-read HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n")
            r = c.read_response(allow_interim=True)
            assert r.status == 200 and r.body == b"did not read"
            # The client sends the body anyway: it is discarded and the connection stays usable.
            c.send(b"hello" + build_request("GET", "/hello"))
            assert c.read_response().body == HELLO
            return r.norm()

    servers.compare(run)


# ----------------------------------------------------------------------------- lingering close (cppuvicorn improves)

# Far more than the socket buffers hold: the client is still writing when the answer comes.
UPLOAD = 8 * 1024 * 1024


def _upload(srv, path: str, headers: list[tuple[str, str]], body: bytes) -> tuple[int, bytes]:
    """POST with the standard library's client, which writes the whole body before it reads:
    a reset while it writes costs it the answer (BrokenPipeError instead)."""
    c = http.client.HTTPConnection(srv.host, srv.port, timeout=10)
    try:
        c.putrequest("POST", path, skip_accept_encoding=True)
        for name, value in headers:
            c.putheader(name, value)
        c.endheaders()
        c.send(body)
        r = c.getresponse()
        return r.status, r.read()
    finally:
        c.close()


@pytest.mark.cppuvicorn_only
@pytest.mark.parametrize("path,args,framing,status,answer", [
    # The reason phrase is the running Python's (3.13 renamed it "Content Too Large").
    ("/echo", ("--limit-request-body", "1000"), "length", 413, http.HTTPStatus(413).phrase.encode()),
    ("/close", (), "length", 200, b"bye"),
    ("/raise-before", (), "length", 500, b"Internal Server Error"),
    ("/echo", (), "bad-chunk", 400, b"Invalid HTTP request received."),
], ids=["limit-request-body", "app-closes", "app-raises", "malformed-body"])
def test_client_still_sending_its_body_reads_the_early_answer(cppuvicorn_servers, path, args, framing,
                                                             status, answer):
    """The answer comes, with a close, while the client is still sending a large body. Closed
    with the client's bytes unread, the socket would answer them with a reset, and a client that
    writes before it reads fails on write: Uvicorn's clients get BrokenPipeError in the three
    cases it has. cppuvicorn half-closes, then reads and drops the rest (a lingering close)."""
    srv = cppuvicorn_servers.get("raw_app:app", *args)
    if framing == "length":
        headers, body = [("Content-Length", str(UPLOAD))], b"x" * UPLOAD
    else:
        headers, body = [("Transfer-Encoding", "chunked")], b"zz\r\n" + b"x" * UPLOAD
    for _ in range(3):
        assert _upload(srv, path, headers, body) == (status, answer)
    assert request(srv, "GET", "/hello").body == HELLO


@pytest.mark.cppuvicorn_only
def test_large_answer_then_close_while_the_client_uploads(cppuvicorn_servers):
    """A 4 MB answer with connection: close to a client still writing an 8 MiB body: the answer
    fills the socket while the client, writing, reads nothing. Had the server stopped reading
    to finish its answer before closing, each would wait for the other (Uvicorn does: the
    client times out)."""
    srv = cppuvicorn_servers.get("raw_app:app")
    status, body = _upload(srv, "/big?size=4000000", [("Content-Length", str(UPLOAD)), ("Connection", "close")],
                           b"x" * UPLOAD)
    assert status == 200 and body == bytes(i % 251 for i in range(4000000))


def _reset_on_write(sock) -> bool:
    """Writes to a connection whose answer and FIN were read: a lingering server drops the
    bytes, a closed socket answers them with a reset."""
    try:
        sock.sendall(b"x" * 1000)
        time.sleep(0.2)
        sock.settimeout(1)
        if sock.recv(1) != b"":
            raise AssertionError("bytes after the FIN")
        sock.sendall(b"x")
    except (ConnectionResetError, BrokenPipeError):
        return True
    return False


@pytest.mark.cppuvicorn_only
def test_lingering_ends_when_the_client_goes_quiet(cppuvicorn_servers):
    srv = cppuvicorn_servers.get("raw_app:app")
    with Conn(srv) as c:
        c.send(b"POST /close HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000\r\n\r\n" + b"x" * 1000)
        r = c.read_response()
        assert (r.status, r.body) == (200, b"bye")
        assert c.read_until_close(2) == b""
        assert not _reset_on_write(c.sock), "no lingering: the rest of the body got a reset"
        time.sleep(2.6)  # quiet for longer than the 2 s a lingering close waits
        assert _reset_on_write(c.sock), "still lingering after the client went quiet"


@pytest.mark.cppuvicorn_only
def test_lingering_connections_count_for_no_limit_and_hold_no_shutdown(cppuvicorn_servers):
    srv = cppuvicorn_servers.spawn("raw_app:app", "--limit-concurrency", "2")
    lingering = []
    for _ in range(3):
        c = Conn(srv)
        c.send(b"POST /close HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\nxx")
        assert c.read_response().body == b"bye"
        assert c.read_until_close(2) == b""
        lingering.append(c)
    # One connection open, three lingering: under a limit of two, still served.
    assert request(srv, "GET", "/hello").status == 200
    started = time.monotonic()
    srv.send_signal(signal.SIGTERM)
    assert srv.wait_exit(5) == 0
    assert time.monotonic() - started < 1.5, "shutdown waited for lingering connections"
    for c in lingering:
        c.close()


# ----------------------------------------------------------------------------- large bodies, flow control


@pytest.mark.parametrize("encoding", ["content-length", "chunked"])
def test_one_mib_request_body(servers, encoding):
    body = bytes((i * 7) % 256 for i in range(1 << 20))
    digest = hashlib.sha256(body).hexdigest()

    def run(s):
        if encoding == "chunked":
            r = request(s.get(), "POST", "/body-sha", headers=[("Transfer-Encoding", "chunked")],
                        body=chunked(body, sizes=(65536, 1, 30000)), timeout=10)
        else:
            r = request(s.get(), "POST", "/body-sha", body=body, timeout=10)
        assert r.json() == {"length": len(body), "sha256": digest}
        return r.norm()

    servers.compare(run)


@pytest.mark.parametrize("chunked_response", [False, True])
def test_one_mib_response_body(servers, chunked_response):
    expected = bytes(i % 251 for i in range(1 << 20))

    def run(s):
        path = "/big?chunked=1" if chunked_response else "/big"
        with Conn(s.get(), timeout=10) as c:
            c.send(build_request("GET", path))
            time.sleep(0.2)  # let the server hit write backpressure before the client reads
            r = c.read_response()
        assert r.body == expected
        assert r.framing == ("chunked" if chunked_response else "length")
        return r.status_line, tuple(r.compare_headers()), hashlib.sha256(r.body).hexdigest()

    servers.compare(run)


def test_slow_body_reader_gets_every_byte(servers):
    body = bytes((i * 13) % 256 for i in range(512 * 1024))

    def run(s):
        r = request(s.get(), "POST", "/slow-body", body=body, timeout=15)
        assert r.json() == {"length": len(body), "sha256": hashlib.sha256(body).hexdigest()}
        return r.norm()

    servers.compare(run)


BACKPRESSURE_TOTAL = 64 << 20
BACKPRESSURE_BOUND = 16 << 20  # socket buffers plus the server's high-water marks stay well below


def test_read_backpressure_when_app_does_not_read(servers):
    """While the app is not calling receive(), the server stops reading the socket: the client can
    push only about the kernel's buffers, not the whole 64 MiB body."""

    def run(s):
        with Conn(s.get(), timeout=15) as c:
            c.sock.setblocking(False)
            c.sock.send(b"POST /continue?delay=1.0 HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n"
                        % BACKPRESSURE_TOTAL)
            sent, chunk = 0, b"x" * 65536
            deadline = time.monotonic() + 0.6
            while time.monotonic() < deadline and sent < BACKPRESSURE_TOTAL:
                try:
                    sent += c.sock.send(chunk)
                except BlockingIOError:
                    time.sleep(0.01)
            assert sent < BACKPRESSURE_BOUND, f"server buffered {sent} bytes for an app that was not reading"
            c.sock.setblocking(True)
            c.sock.settimeout(15)
            while sent < BACKPRESSURE_TOTAL:
                sent += c.sock.send(chunk[: BACKPRESSURE_TOTAL - sent])
            r = c.read_response(timeout=15)
        assert r.body == b"got %d bytes" % BACKPRESSURE_TOTAL
        return r.norm()

    servers.compare(run)


def test_write_backpressure_when_client_does_not_read(servers):
    """send() waits while the client is not reading, instead of queueing the whole response."""

    def run(s):
        srv = s.get()
        with Conn(srv, timeout=15) as c:
            c.send(build_request("GET", f"/produce?total={BACKPRESSURE_TOTAL}"))
            time.sleep(0.5)
            progress = request(srv, "GET", "/progress").json()["produce"]
            assert 0 < progress < BACKPRESSURE_BOUND, f"app sent {progress} bytes to a client that was not reading"
            r = c.read_response(timeout=15)
        assert len(r.body) == BACKPRESSURE_TOTAL and r.body.count(b"p") == BACKPRESSURE_TOTAL
        assert request(srv, "GET", "/progress").json()["produce"] == BACKPRESSURE_TOTAL
        return r.status_line, tuple(r.compare_headers())

    servers.compare(run)


def test_app_sees_http_disconnect_when_client_closes(servers):
    def run(s):
        srv = s.get()
        c = Conn(srv)
        c.send(build_request("POST", "/wait-disconnect", body=b"abc"))
        time.sleep(0.2)
        c.close()
        from support import wait_until

        seen = wait_until(lambda: request(srv, "GET", "/caught/wait-disconnect").json(), timeout=5)
        assert seen == ["http.disconnect"]
        return seen

    servers.compare(run)


@pytest.mark.cppuvicorn_only
def test_app_sees_http_disconnect_with_a_request_pipelined_behind(cppuvicorn_servers):
    """As above with a second request pipelined behind the first. Uvicorn hands the connection's
    disconnect to the pipelined request, which never ran: the first app's receive() waits on
    (here until its own 10 s timeout)."""
    from support import wait_until

    srv = cppuvicorn_servers.get("raw_app:app")
    c = Conn(srv)
    c.send(build_request("POST", "/wait-disconnect", body=b"abc") + build_request("GET", "/hello"))
    time.sleep(0.2)
    c.close()
    seen = wait_until(lambda: request(srv, "GET", "/caught/wait-disconnect").json(), timeout=5)
    assert seen == ["http.disconnect"]


# ----------------------------------------------------------------------------- paths, query, headers


def test_path_is_percent_decoded_and_raw_path_is_not(servers):
    target = "/scope/a%20b/%E2%82%AC/c%2Fd?x=%20y&z=1&e="

    def run(s):
        _, scope = get_scope(s.get(), target)
        assert scope["path"] == "/scope/a b/\u20ac/c/d"
        assert scope["raw_path"] == "/scope/a%20b/%E2%82%AC/c%2Fd"
        assert scope["query_string"] == "x=%20y&z=1&e="
        return norm_scope(scope)

    servers.compare(run)


def test_absolute_form_request_target(servers):
    def run(s):
        _, scope = get_scope(s.get(), "http://example.com/scope/abs?q=1")
        assert scope["path"] == "/scope/abs" and scope["query_string"] == "q=1"
        return norm_scope(scope)

    servers.compare(run)


def test_root_path_is_prepended(servers):
    def run(s):
        srv = s.get("raw_app:app", "--root-path", "/api")
        _, scope = get_scope(srv, "/scope/x%20y?a=b")
        assert scope["root_path"] == "/api"
        assert scope["path"] == "/api/scope/x y"
        assert scope["raw_path"] == "/api/scope/x%20y"
        assert scope["query_string"] == "a=b"
        return norm_scope(scope)

    servers.compare(run)


def test_request_headers_lowercased_repeats_kept_in_order(servers):
    headers = [("X-Foo", "First"), ("Accept", "*/*"), ("x-FOO", "Second Value"), ("Cookie", "a=1"),
               ("Cookie", "b=2"), ("X-Empty", ""), ("X-Tab", "a\tb")]

    def run(s):
        _, scope = get_scope(s.get(), "/scope", headers=headers)
        assert scope["headers"] == [["host", "example.test"], ["x-foo", "First"], ["accept", "*/*"],
                                    ["x-foo", "Second Value"], ["cookie", "a=1"], ["cookie", "b=2"],
                                    ["x-empty", ""], ["x-tab", "a\tb"]]
        return norm_scope(scope)

    servers.compare(run)


def test_response_headers_lowercased_repeats_kept(servers):
    def run(s):
        r = request(s.get(), "GET", "/headers")
        assert r.compare_headers() == [
            (b"content-type", b"text/plain"), (b"x-mixed-case", b"Value-Keeps-Case"),
            (b"set-cookie", b"a=1; Path=/"), (b"set-cookie", b"b=2; Path=/"), (b"x-tab", b"a\tb"),
            (b"content-length", b"2")]
        return r.norm()

    servers.compare(run)


def test_app_server_header_does_not_replace_default(servers):
    def run(s):
        r = request(s.get(), "GET", "/app-server-header")
        assert r.header_list("server") == [s.kind.encode(), b"my-app"]
        return r.norm()

    servers.compare(run)


# ----------------------------------------------------------------------------- timeouts (cppuvicorn improves)


def test_idle_connection_before_first_request(servers):
    """A connection that never sends a byte. uvicorn never closes it (its keep-alive timer is
    armed only after a response: the slowloris flaw); cppuvicorn closes it after
    --timeout-keep-alive. cppuvicorn-only check; uvicorn's behaviour is asserted as documentation."""
    srv = servers.get("raw_app:app", "--timeout-keep-alive", "1")
    with Conn(srv) as c:
        if servers.is_oracle:
            assert not c.is_closed(1.6)
        else:
            assert c.is_closed(3.0), "cppuvicorn kept a silent connection open past --timeout-keep-alive"


def test_stalled_request_head(servers):
    """A client that sends half a request head and stalls. uvicorn waits forever (no header read
    timeout); cppuvicorn must not. cppuvicorn-only check; uvicorn's behaviour is documented."""
    srv = servers.get("raw_app:app", "--timeout-keep-alive", "1")
    with Conn(srv) as c:
        c.send(b"GET /hello HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        if servers.is_oracle:
            assert not c.is_closed(1.6)
            return
        try:
            data = c.read_until_close(4.0)
        except TimeoutError:
            pytest.fail("cppuvicorn kept a stalled request head open for 4 s with --timeout-keep-alive 1")
        # Either a silent close or a 408, never a response from the app.
        assert data == b"" or data.startswith(b"HTTP/1.1 408 "), data
