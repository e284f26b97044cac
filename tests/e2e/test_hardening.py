"""Hardening: slow-client timeouts, size limits, slowloris, and a request-smuggling table.

Timeouts and the body limit are cppuvicorn's own options (Uvicorn has none of them), so those
tests run against cppuvicorn only. The smuggling table runs against both servers: where both
reject an input, the exchanges are compared; where cppuvicorn is deliberately stricter (or, in
one documented case, more lenient without any framing ambiguity), the test says so and asserts
each server's behaviour separately. More CL/TE cases (both orders of CL+TE, duplicate
Content-Length, obs-fold, bare CR/LF in header lines, space before the colon, chunk-size
overflow, `chunked, gzip`, `identity`) live in test_errors.py's MALFORMED table and are not
repeated here.
"""

from __future__ import annotations

import selectors
import socket
import statistics
import threading
import time

import pytest

from rawhttp import Conn, ProtocolError, build_request, request

HARDENING_APP = "hardening_app:app"
# Short values so each timeout is seen within a second; keep-alive (whole seconds, as Uvicorn's
# option) stays longer so the head and body timers are the ones that fire.
SHORT = ("--timeout-keep-alive", "2", "--timeout-request-head", "0.6", "--timeout-body-read", "0.6",
         "--limit-request-body", "1000", "--log-level", "debug")
SMUGGLED = b"GET /hello?smuggled=1 HTTP/1.1\r\nHost: x\r\n\r\n"
REQUEST_TIMEOUT_408 = b"HTTP/1.1 408 Request Timeout"
TOO_LARGE_413 = b"HTTP/1.1 413 Request Entity Too Large"


def short_server(servers):
    return servers.get(HARDENING_APP, *SHORT)


def read_closing_response(c: Conn, timeout: float):
    """The one response the server sends before it closes, and the seconds that took."""
    start = time.monotonic()
    r = c.read_response(timeout=timeout)
    assert c.is_closed(timeout), "the connection stayed open after the response"
    return r, time.monotonic() - start


# ----------------------------------------------------------------------------- request head


def test_trickled_request_head_gets_408_at_the_head_timeout(cppuvicorn_servers):
    """A client sending its head a line every 0.2 s (never silent for the 2 s keep-alive timeout)
    is cut off 0.6 s after the head's first byte with 408, and the app never hears of it."""
    srv = short_server(cppuvicorn_servers)
    mark = srv.mark()
    with Conn(srv) as c:
        start = time.monotonic()
        c.send(b"GET /trickle HTTP/1.1\r\n")
        lines = iter([b"Host: x\r\n"] + [b"X-Slow-%d: y\r\n" % i for i in range(20)])
        data = b""
        while not data:
            time.sleep(0.2)
            try:
                c.send(next(lines))
            except OSError:  # already closed
                pass
            data = c.read_available(0.05)
        elapsed = time.monotonic() - start
        c.buf[:0] = data
        r = c.read_response(timeout=2)
        assert r.status_line == REQUEST_TIMEOUT_408, r
        assert r.header("connection") == b"close"
        assert r.body == b"Request Timeout"
        assert c.is_closed(2)
    assert 0.5 <= elapsed <= 2.0, f"closed after {elapsed:.2f} s, head timeout is 0.6 s"
    srv.wait_for_line(r"closed with 408: request head not complete within the request head timeout",
                      after=mark, stream="stderr")
    assert not any("/trickle" in line for line in srv.log_lines(after=mark)), "the app saw the request"


@pytest.mark.parametrize("case", ["never-sends", "partial-head", "crlfs-only"])
def test_silence_before_or_inside_a_head_is_the_keep_alive_timeout(cppuvicorn_servers, case):
    """Silence is never free: before the first request, or in the middle of a head, the
    connection is closed after --timeout-keep-alive (1 s here; the head timeout is 30 s). An
    idle connection is closed silently, as Uvicorn's keep-alive timeout does; a started
    request line gets 408."""
    srv = cppuvicorn_servers.get(HARDENING_APP, "--timeout-keep-alive", "1", "--timeout-request-head", "30")
    with Conn(srv) as c:
        start = time.monotonic()
        if case == "partial-head":
            c.send(b"GET /stalled HTTP/1.1\r\nHost: x\r\nX-Half: ")
        elif case == "crlfs-only":
            c.send(b"\r\n\r\n")
        data = c.read_until_close(5.0)
        elapsed = time.monotonic() - start
    assert 0.9 <= elapsed <= 3.0, elapsed
    if case == "partial-head":
        assert data.startswith(REQUEST_TIMEOUT_408 + b"\r\n"), data
    else:
        assert data == b""


# ----------------------------------------------------------------------------- request body


def test_stalled_body_gets_408_and_the_app_hears_disconnect(cppuvicorn_servers):
    srv = short_server(cppuvicorn_servers)
    mark = srv.mark()
    with Conn(srv) as c:
        c.send(b"POST /stall HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n" + b"x" * 10)
        r, elapsed = read_closing_response(c, 3.0)
    assert r.status_line == REQUEST_TIMEOUT_408, r
    assert 0.4 <= elapsed <= 2.0, elapsed
    srv.wait_for_line(r"^APP: /stall disconnect after 10 bytes$", after=mark, stream="stderr")
    srv.wait_for_line(r"closed with 408: request body stalled for the body read timeout", after=mark,
                      stream="stderr")


def test_stalled_chunked_body_after_the_response_started_is_closed_without_408(cppuvicorn_servers):
    """/echo-chunked starts its response at the first piece of body; a client that then stops
    sending is closed (no 408 can follow a started response) and the app hears disconnect."""
    srv = cppuvicorn_servers.get("raw_app:app", "--timeout-body-read", "0.6")
    with Conn(srv) as c:
        c.send(b"POST /echo-chunked HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n")
        start = time.monotonic()
        data = c.read_until_close(4.0)
        elapsed = time.monotonic() - start
    assert data.startswith(b"HTTP/1.1 200 OK\r\n") and b"hello" in data, data
    assert REQUEST_TIMEOUT_408 not in data
    assert not data.endswith(b"0\r\n\r\n"), "the response was completed although the body never was"
    assert 0.4 <= elapsed <= 2.5, elapsed


def test_a_body_trickled_faster_than_the_timeout_is_served(cppuvicorn_servers):
    """The body timeout measures silence, not total time: 12 pieces 0.2 s apart (2.4 s, four
    times the 0.6 s timeout) are read to the end."""
    srv = short_server(cppuvicorn_servers)
    with Conn(srv) as c:
        c.send(b"POST /trickle-body HTTP/1.1\r\nHost: x\r\nContent-Length: 120\r\n\r\n")
        for _ in range(12):
            time.sleep(0.2)
            c.send(b"y" * 10)
        r = c.read_response(timeout=3)
    assert r.status == 200 and r.body == b"120 bytes", r


def test_an_app_that_does_not_read_is_not_the_clients_fault(cppuvicorn_servers):
    """The body timer runs only while the server wants the body: a client waiting for
    100 Continue, from an app that takes 1.5 s before it reads, is not timed out."""
    srv = cppuvicorn_servers.get("raw_app:app", "--timeout-body-read", "0.6")
    with Conn(srv) as c:
        c.send(b"POST /continue?delay=1.5 HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n")
        interim = c.read_response(timeout=4, allow_interim=True)
        assert interim.status == 100, interim
        c.send(b"hello")
        r = c.read_response(timeout=3)
    assert r.status == 200 and r.body == b"got 5 bytes", r


# ----------------------------------------------------------------------------- limits


def test_content_length_over_the_limit_gets_413_before_the_body(cppuvicorn_servers):
    srv = short_server(cppuvicorn_servers)
    mark = srv.mark()
    with Conn(srv) as c:
        # Only the head: the answer must not wait for the body.
        c.send(b"POST /big HTTP/1.1\r\nHost: x\r\nContent-Length: 1001\r\n\r\n")
        r, _ = read_closing_response(c, 3.0)
    assert r.status_line == TOO_LARGE_413, r
    assert r.header("connection") == b"close"
    srv.wait_for_line(r"Request refused \(413\) from 127\.0\.0\.1: content-length over the request body "
                      r"limit \(1000 bytes\)", after=mark, stream="stderr")
    assert not any("/big" in line for line in srv.log_lines(after=mark)), "the app saw the request"
    assert not any("Invalid HTTP request received" in line for line in srv.log_lines(after=mark))


def test_body_limit_with_expect_continue_answers_413_instead_of_100(cppuvicorn_servers):
    srv = short_server(cppuvicorn_servers)
    with Conn(srv) as c:
        c.send(b"POST /big HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 50000\r\n\r\n")
        r = c.read_response(timeout=3, allow_interim=True)
        assert r.status_line == TOO_LARGE_413, r
        assert c.is_closed(2)


def test_body_at_the_limit_is_served(cppuvicorn_servers):
    srv = short_server(cppuvicorn_servers)
    r = request(srv, "POST", "/exact", body=b"z" * 1000)
    assert r.status == 200 and r.body == b"1000 bytes", r
    with Conn(srv) as c:
        c.send(b"POST /exact-chunked HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
               b"1f4\r\n" + b"a" * 500 + b"\r\n1f4\r\n" + b"b" * 500 + b"\r\n0\r\n\r\n")
        r = c.read_response(timeout=3)
    assert r.status == 200 and r.body == b"1000 bytes", r


def test_chunked_body_going_over_the_limit_gets_413_mid_stream(cppuvicorn_servers):
    srv = short_server(cppuvicorn_servers)
    mark = srv.mark()
    with Conn(srv) as c:
        c.send(b"POST /chunks HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n1f4\r\n" + b"a" * 500 + b"\r\n")
        srv.wait_for_line(r"^APP: request POST /chunks$", after=mark, stream="stderr")
        c.send(b"1f5\r\n" + b"b" * 501 + b"\r\n")  # 1001 bytes in all: nothing after this is sent
        r, _ = read_closing_response(c, 3.0)
    assert r.status_line == TOO_LARGE_413, r
    srv.wait_for_line(r"^APP: /chunks disconnect after 500 bytes$", after=mark, stream="stderr")
    srv.wait_for_line(r"Request refused \(413\) from 127\.0\.0\.1: chunked request body over the request "
                      r"body limit", after=mark, stream="stderr")


def test_request_target_over_64_kib(servers):
    """cppuvicorn answers 414 to a request target over 64 KiB; uvicorn (httptools) answers 400
    (asserted on the uvicorn side as documentation). Both close and never serve it."""
    srv = servers.get()
    with Conn(srv) as c:
        c.send(b"GET /hello?" + b"a" * (70 * 1024) + b" HTTP/1.1\r\nHost: x\r\n\r\n" + SMUGGLED)
        r = c.read_response()
        assert c.is_closed(2)
    if servers.is_oracle:
        assert r.status == 400
    else:
        assert r.status_line == b"HTTP/1.1 414 Request-URI Too Long", r
        assert r.header("connection") == b"close"


def test_header_section_limit_follows_the_option(cppuvicorn_servers):
    """--h11-max-incomplete-event-size sets the head limit (431 above it), logged at debug with
    the reason; a head just under the limit is served."""
    srv = cppuvicorn_servers.get(HARDENING_APP, "--h11-max-incomplete-event-size", "2048", "--log-level", "debug")
    mark = srv.mark()
    ok = request(srv, "GET", "/small", headers=[("x-pad", "p" * 1900)])
    assert ok.status == 200
    with Conn(srv) as c:
        c.send(build_request("GET", "/large", headers=[("x-pad", "p" * 2100)]) + SMUGGLED)
        r, _ = read_closing_response(c, 3.0)
    assert r.status_line == b"HTTP/1.1 431 Request Header Fields Too Large", r
    srv.wait_for_line(r"Invalid HTTP request \(431\) from 127\.0\.0\.1: request head too large", after=mark,
                      stream="stderr")
    assert not any("smuggled" in line or "/large" in line for line in srv.log_lines(after=mark))


# ----------------------------------------------------------------------------- slowloris


SLOWLORIS_CONNECTIONS = 5000
SLOWLORIS_HEAD_TIMEOUT = 4.0


@pytest.mark.cppuvicorn_only
def test_slowloris_connections_are_closed_and_normal_clients_still_served(cppuvicorn_servers):
    """5,000 connections each trickle a request head at one byte a second (never silent for the
    3 s keep-alive timeout) from one non-blocking selector loop. Meanwhile a normal client makes
    requests on fresh connections and must be served about as fast as before the attack; every
    trickling connection is closed with 408 by the 4 s head timeout, none earlier."""
    srv = cppuvicorn_servers.spawn("raw_app:app", "--timeout-keep-alive", "3", "--timeout-request-head",
                                   str(SLOWLORIS_HEAD_TIMEOUT), "--no-access-log")

    def latency() -> float:
        start = time.monotonic()
        r = request(srv, "GET", "/hello", timeout=5)
        assert r.status == 200 and r.body == b"Hello, world!"
        return time.monotonic() - start

    baseline = sorted(latency() for _ in range(30))

    head = b"GET /slowloris HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 100
    sel = selectors.DefaultSelector()
    state: dict[socket.socket, dict] = {}
    closed_after: list[float] = []
    got_408 = 0
    connect_errors = 0
    stop = threading.Event()
    under_attack: list[float] = []
    errors: list[BaseException] = []

    def normal_client():
        try:
            while not stop.is_set():
                under_attack.append(latency())
                time.sleep(0.05)
        except BaseException as exc:  # reported in the main thread
            errors.append(exc)

    t0 = time.monotonic()
    deadline = t0 + 15.0
    to_open = SLOWLORIS_CONNECTIONS
    client = threading.Thread(target=normal_client, daemon=True)
    try:
        while time.monotonic() < deadline:
            now = time.monotonic()
            # Open connections in batches so the accept queue is never flooded.
            for _ in range(min(250, to_open)):
                s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                s.setblocking(False)
                err = s.connect_ex((srv.host, srv.port))
                if err not in (0, 115):  # EINPROGRESS
                    connect_errors += 1
                    s.close()
                    continue
                state[s] = {"sent": 0, "first": None, "next": now, "data": b""}
                sel.register(s, selectors.EVENT_READ)
                to_open -= 1
            if to_open == 0 and not client.is_alive() and not stop.is_set():
                client.start()
            # One byte a second on each open connection.
            for s, st in state.items():
                if st["next"] <= now and st["sent"] < len(head):
                    try:
                        if s.send(head[st["sent"]:st["sent"] + 1]) == 1:
                            if st["first"] is None:
                                st["first"] = now
                            st["sent"] += 1
                            st["next"] = now + 1.0
                    except (BlockingIOError, InterruptedError):
                        pass  # still connecting: next turn
                    except OSError:
                        pass  # reset: seen as a close below
            for key, _ in sel.select(timeout=0.05):
                s = key.fileobj
                st = state[s]
                try:
                    chunk = s.recv(4096)
                except (BlockingIOError, InterruptedError):
                    continue
                except OSError:
                    chunk = b""
                if chunk:
                    st["data"] += chunk
                    continue
                closed_after.append(time.monotonic() - (st["first"] or t0))
                got_408 += st["data"].startswith(REQUEST_TIMEOUT_408)
                sel.unregister(s)
                s.close()
                del state[s]
            if to_open == 0 and not state:
                break
    finally:
        stop.set()
        if client.is_alive():
            client.join(10)
        for s in list(state):
            s.close()
        sel.close()
    total = time.monotonic() - t0

    assert not errors, errors
    assert connect_errors == 0
    assert not state, f"{len(state)} trickling connections still open after {total:.1f} s"
    assert len(closed_after) == SLOWLORIS_CONNECTIONS
    assert got_408 == SLOWLORIS_CONNECTIONS, f"only {got_408} of the closes came with a 408"
    # Closed by the head timeout: not before it (the keep-alive timer never fired), and soon after.
    assert min(closed_after) >= SLOWLORIS_HEAD_TIMEOUT - 0.3, min(closed_after)
    assert max(closed_after) <= SLOWLORIS_HEAD_TIMEOUT + 3.0, max(closed_after)
    # The normal client was served throughout, about as fast as before.
    assert len(under_attack) >= 10, under_attack
    base_p50 = statistics.median(baseline)
    p50 = statistics.median(under_attack)
    print(f"slowloris: {SLOWLORIS_CONNECTIONS} connections, all closed by {total:.1f} s; normal client "
          f"p50 {p50 * 1000:.1f} ms (baseline {base_p50 * 1000:.1f} ms), max {max(under_attack) * 1000:.1f} ms, "
          f"{len(under_attack)} requests")
    assert p50 <= max(0.05, 5 * base_p50), (p50, base_p50)
    assert max(under_attack) < 1.0, max(under_attack)


# ----------------------------------------------------------------------------- request smuggling


TE = b"Transfer-Encoding: chunked\r\n"


def post(headers: bytes, body: bytes = b"", version: bytes = b"HTTP/1.1") -> bytes:
    return b"POST /echo " + version + b"\r\nHost: x\r\n" + headers + b"\r\n" + body


# Each input is followed on the same connection by SMUGGLED. Expectations:
#   "400"       both servers answer 400 and close; nothing after it is answered (compared).
#   "ok"        both servers read one message with the body b"hello" and then answer SMUGGLED as
#               the next, separate request (compared).
#   "ok-close"  one response with the body b"hello", then close: SMUGGLED is never answered.
#   "strict"    cppuvicorn answers 400 and closes (deliberately stricter, see the comment);
#               uvicorn's behaviour is asserted as documentation.
#   "lenient"   cppuvicorn reads it as one message with the body b"hello" (no framing ambiguity);
#               uvicorn rejects it.
SMUGGLING = {
    # Transfer-Encoding values other than a final chunked, and duplicates.
    "te-gzip": (post(b"Transfer-Encoding: gzip\r\n", b"5\r\nhello\r\n0\r\n\r\n"), "400"),
    "te-gzip-with-cl": (post(b"Transfer-Encoding: gzip\r\nContent-Length: 5\r\n", b"hello"), "400"),
    "te-chunked-q": (post(b"Transfer-Encoding: chunked;q=1\r\n", b"5\r\nhello\r\n0\r\n\r\n"), "400"),
    "te-xchunked": (post(b"Transfer-Encoding: xchunked\r\n", b"5\r\nhello\r\n0\r\n\r\n"), "400"),
    "te-chunked-comma": (post(b"Transfer-Encoding: chunked,\r\n", b"5\r\nhello\r\n0\r\n\r\n"), "400"),
    "te-chunked-chunked": (post(b"Transfer-Encoding: chunked, chunked\r\n", b"5\r\nhello\r\n0\r\n\r\n"), "400"),
    "duplicate-te-chunked": (post(TE + TE, b"5\r\nhello\r\n0\r\n\r\n"), "400"),
    "te-chunked-then-te-gzip": (post(TE + b"Transfer-Encoding: gzip\r\n", b"5\r\nhello\r\n0\r\n\r\n"), "400"),
    "te-empty-then-te-chunked": (post(b"Transfer-Encoding:\r\n" + TE, b"5\r\nhello\r\n0\r\n\r\n"), "400"),
    "te-chunked-then-te-empty": (post(TE + b"Transfer-Encoding:\r\n", b"5\r\nhello\r\n0\r\n\r\n"), "400"),
    "te-vertical-tab": (post(b"Transfer-Encoding: \x0bchunked\r\n", b"5\r\nhello\r\n0\r\n\r\n"), "400"),
    "te-space-before-colon": (post(b"Transfer-Encoding : chunked\r\n", b"5\r\nhello\r\n0\r\n\r\n"), "400"),
    "te-obs-fold": (post(b"X: a\r\nTransfer-Encoding:\r\n chunked\r\n", b"5\r\nhello\r\n0\r\n\r\n"), "400"),
    "te-gzip-then-te-chunked": (post(b"Transfer-Encoding: gzip\r\n" + TE, b"5\r\nhello\r\n0\r\n\r\n"), "ok"),
    "te-uppercase": (post(b"Transfer-Encoding: CHUNKED\r\n", b"5\r\nhello\r\n0\r\n\r\n"), "ok"),
    "te-tab-before-value": (post(b"Transfer-Encoding:\tchunked\r\n", b"5\r\nhello\r\n0\r\n\r\n"), "ok"),
    # Content-Length variants not in test_errors.py.
    "cl-tab-before-colon": (post(b"Content-Length\t: 5\r\n", b"hello"), "400"),
    "cl-space-inside": (post(b"Content-Length: 1 0\r\n", b"0123456789"), "400"),
    "cl-hex": (post(b"Content-Length: 0x5\r\n", b"hello"), "400"),
    "cl-empty": (post(b"Content-Length: \r\n"), "400"),
    "cl-duplicate-other-case": (post(b"Content-Length: 5\r\ncontent-length: 5\r\n", b"hello"), "400"),
    "cl-obs-fold": (post(b"Content-Length:\r\n 5\r\n", b"hello"), "400"),
    "cl-leading-zeros": (post(b"Content-Length: 005\r\n", b"hello"), "ok"),
    # HTTP/1.0 with Transfer-Encoding (RFC 9112 §6.1: process it, then close).
    "http10-te-chunked": (post(TE, b"5\r\nhello\r\n0\r\n\r\n", b"HTTP/1.0"), "ok-close"),
    "http10-te-chunked-and-cl": (post(TE + b"Content-Length: 5\r\n", b"5\r\nhello\r\n0\r\n\r\n", b"HTTP/1.0"), "400"),
    "http10-te-gzip": (post(b"Transfer-Encoding: gzip\r\n", b"hello", b"HTTP/1.0"), "400"),
    # Invalid chunk sizes.
    "chunk-size-negative": (post(TE, b"-5\r\nhello\r\n0\r\n\r\n"), "400"),
    "chunk-size-empty": (post(TE, b"\r\nhello\r\n0\r\n\r\n"), "400"),
    "chunk-size-junk": (post(TE, b"5x\r\nhello\r\n0\r\n\r\n"), "400"),
    "chunk-size-0x": (post(TE, b"0x5\r\nhello\r\n0\r\n\r\n"), "400"),
    "chunk-size-trailing-space": (post(TE, b"5 \r\nhello\r\n0\r\n\r\n"), "400"),
    "chunk-size-17-hex-digits": (post(TE, b"10000000000000005\r\nhello\r\n0\r\n\r\n"), "400"),
    "chunk-size-bare-lf": (post(TE, b"5\nhello\r\n0\r\n\r\n"), "400"),
    "chunk-data-bare-lf": (post(TE, b"5\r\nhello\n0\r\n\r\n"), "400"),
    "chunk-missing-final-crlf": (post(TE, b"5\r\nhello\r\n0\r\n"), "400"),
    "chunk-size-leading-zeros": (post(TE, b"0005\r\nhello\r\n0\r\n\r\n"), "ok"),
    # Chunk extensions: valid ones are accepted (and dropped), invalid ones rejected.
    "ext-name-value": (post(TE, b"5;name=value\r\nhello\r\n0;last\r\n\r\n"), "ok"),
    "ext-quoted-value": (post(TE, b"5;name=\"a b;c\"\r\nhello\r\n0\r\n\r\n"), "ok"),
    "ext-name-only-then-other": (post(TE, b"5;n;m=1\r\nhello\r\n0\r\n\r\n"), "ok"),
    "ext-empty-quoted-value": (post(TE, b"5;n=\"\"\r\nhello\r\n0\r\n\r\n"), "ok"),
    "ext-semicolon-only": (post(TE, b"5;\r\nhello\r\n0\r\n\r\n"), "400"),
    "ext-space-in-name": (post(TE, b"5;na me=v\r\nhello\r\n0\r\n\r\n"), "400"),
    "ext-two-equals": (post(TE, b"5;n=a=b\r\nhello\r\n0\r\n\r\n"), "400"),
    "ext-unterminated-quote": (post(TE, b"5;n=\"abc\r\nhello\r\n0\r\n\r\n"), "400"),
    "ext-bare-cr": (post(TE, b"5;n=a\rb\r\nhello\r\n0\r\n\r\n"), "400"),
    "ext-bare-lf": (post(TE, b"5;n=a\nhello\r\n0\r\n\r\n"), "400"),
    "ext-nul": (post(TE, b"5;n=a\x00\r\nhello\r\n0\r\n\r\n"), "400"),
    "ext-space-before-semicolon": (post(TE, b"5 ;n=v\r\nhello\r\n0\r\n\r\n"), "400"),
    # cppuvicorn is stricter: RFC 9112 §7.1.1 chunk-ext-name is a non-empty token; llhttp 8.1
    # (cppuvicorn's) lets ";=v" through and cppuvicorn refuses it itself. Uvicorn accepts it.
    "ext-empty-name": (post(TE, b"5;=v\r\nhello\r\n0\r\n\r\n"), "strict"),
    "ext-empty-name-on-last-chunk": (post(TE, b"5\r\nhello\r\n0;=x\r\n\r\n"), "strict"),
    # cppuvicorn's llhttp 8.1 refuses quoted-pairs and a second name=value extension, both valid
    # (RFC 9112 §7.1.1); a refusal cannot desynchronise anything. Uvicorn accepts them.
    "ext-quoted-pair": (post(TE, b"5;n=\"a\\\"b\"\r\nhello\r\n0\r\n\r\n"), "strict"),
    "ext-two-name-values": (post(TE, b"5;a=1;b=2\r\nhello\r\n0\r\n\r\n"), "strict"),
    # cppuvicorn's llhttp 8.1 takes "n=v;" (an empty extension after the last) as ending at the
    # CRLF, as any parser must: the chunk is still framed by its size. Uvicorn refuses it.
    "ext-trailing-semicolon": (post(TE, b"5;n=v;\r\nhello\r\n0\r\n\r\n"), "lenient"),
    # Trailers: parsed and dropped; their lines must end in CRLF too.
    "trailer-field": (post(TE, b"5\r\nhello\r\n0\r\nX-Trailer: 1\r\n\r\n"), "ok"),
    "trailer-bare-lf-end": (post(TE, b"5\r\nhello\r\n0\r\nX-Trailer: 1\r\n\n"), "400"),
    # Bare CR / LF in the head (more in test_errors.py).
    "bare-cr-after-request-line": (b"GET /hello HTTP/1.1\rHost: x\r\n\r\n", "400"),
    "bare-lf-after-request-line": (b"GET /hello HTTP/1.1\nHost: x\r\n\r\n", "400"),
    "bare-lf-request-line-no-headers": (b"GET /hello HTTP/1.1\n\r\n", "400"),
    "bare-lf-ending-the-head": (b"GET /hello HTTP/1.1\r\nHost: x\r\n\n", "400"),
    "cr-cr-lf-after-request-line": (b"GET /hello HTTP/1.1\r\r\nHost: x\r\n\r\n", "400"),
    "space-before-first-header": (b"GET /hello HTTP/1.1\r\n Host: x\r\n\r\n", "400"),
    "space-after-version": (b"GET /hello HTTP/1.1 \r\nHost: x\r\n\r\n", "400"),
    # cppuvicorn is stricter: an HTTP/0.9-style request line gets 505 (Uvicorn serves it).
    "http09-request-line": (b"GET /hello\r\n\r\n", "strict"),
}


def smuggling_exchange(srv, data: bytes, expect: str):
    """What the server answered; asserts the expectation's framing. Returns a comparable summary."""
    mark = srv.mark()
    with Conn(srv, timeout=5) as c:
        c.send(data + SMUGGLED)
        first = c.read_response()
        if expect in ("ok", "lenient"):
            assert first.status == 200 and first.body == b"hello", first
            second = c.read_response()  # SMUGGLED, as a separate, legitimate next request
            assert second.status == 200 and second.body == b"Hello, world!", second
            assert c.read_available(0.2) == b""
            return first.norm(), second.norm(), "open"
        if expect == "ok-close":
            assert first.status == 200 and first.body == b"hello", first
        else:
            assert first.status >= 400, first
        assert c.is_closed(2), "nothing may follow the response but a close"
    time.sleep(0.05)
    assert not any("smuggled" in line for line in srv.log_lines(after=mark)), "the smuggled request was answered"
    return first.norm(), "closed"


@pytest.mark.parametrize("case", list(SMUGGLING))
def test_request_smuggling(servers, case):
    data, expect = SMUGGLING[case]
    srv = servers.get()
    if expect in ("400", "ok", "ok-close"):
        def run(s):
            return smuggling_exchange(s.get(), data, expect)

        result = servers.compare(run)
        if expect == "400":
            assert result[0][0] == b"HTTP/1.1 400 Bad Request"
        return
    if expect == "strict":
        if servers.is_oracle:
            with Conn(srv) as c:  # documentation: uvicorn serves it
                c.send(data)
                assert c.read_response().status == 200
            return
        result = smuggling_exchange(srv, data, "400")
        assert result[0][0] in (b"HTTP/1.1 400 Bad Request", b"HTTP/1.1 505 HTTP Version Not Supported")
        return
    assert expect == "lenient"
    if servers.is_oracle:
        smuggling_exchange(srv, data, "400")
        return
    smuggling_exchange(srv, data, "lenient")
