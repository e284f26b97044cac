"""WebSocket sessions, against uvicorn --ws websockets-sansio as the oracle.

Interop with the ``websockets`` client (with and without permessage-deflate) and with
``websocket-client``; raw frames for every protocol error and its close code and reason; the
handshake's answers (101, 400, 403, 405, 426, 500, denial responses); the ASGI message protocol
and its errors; keepalive pings, backpressure, the read pause, graceful shutdown; FastAPI and
Starlette endpoints. Where cppuvicorn deliberately differs from uvicorn the test is cppuvicorn-only
and says why.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import struct
import time

import pytest
import websocket as wsclient  # websocket-client
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import connect

from support import wait_until

APP = "ws_apps:app"
WS = ("--ws", "websockets-sansio")
KEY = b"dGhlIHNhbXBsZSBub25jZQ=="
ACCEPT = b"s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
TIMEOUT = float(os.environ.get("E2E_IO_TIMEOUT", "5"))


# ----------------------------------------------------------------------------- raw client


def frame(opcode: int, payload: bytes = b"", fin: bool = True, rsv: int = 0, mask: bool = True) -> bytes:
    """A client frame (RFC 6455 §5.2), masked unless told otherwise."""
    head = bytes([(0x80 if fin else 0) | (rsv << 4) | opcode])
    n = len(payload)
    bit = 0x80 if mask else 0
    if n < 126:
        head += bytes([bit | n])
    elif n < 65536:
        head += bytes([bit | 126]) + struct.pack("!H", n)
    else:
        head += bytes([bit | 127]) + struct.pack("!Q", n)
    if not mask:
        return head + payload
    key = os.urandom(4)
    return head + key + bytes(b ^ key[i & 3] for i, b in enumerate(payload))


def close_payload(code: int, reason: bytes = b"") -> bytes:
    return struct.pack("!H", code) + reason


class RawWS:
    """A WebSocket client on a plain socket that sends exactly what it is told."""

    def __init__(self, srv, path: str = "/echo", extra: bytes = b"", request: bytes | None = None):
        self.sock = socket.create_connection((srv.host, srv.port), timeout=TIMEOUT)
        if request is None:
            request = (b"GET " + path.encode() + b" HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
                       b"Connection: Upgrade\r\nSec-WebSocket-Key: " + KEY + b"\r\n"
                       b"Sec-WebSocket-Version: 13\r\n" + extra + b"\r\n")
        self.sock.sendall(request)
        self.buf = b""
        self.eof = False

    def _fill(self, deadline: float) -> bool:
        if self.eof:
            return False
        self.sock.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            data = self.sock.recv(65536)
        except socket.timeout:
            return False
        except ConnectionResetError:
            data = b""
        if not data:
            self.eof = True
            return False
        self.buf += data
        return True

    def read_head(self) -> bytes:
        deadline = time.monotonic() + TIMEOUT
        while b"\r\n\r\n" not in self.buf:
            if not self._fill(deadline):
                raise AssertionError(f"no response head; got {self.buf!r}")
        head, _, self.buf = self.buf.partition(b"\r\n\r\n")
        return head

    def read_http(self) -> tuple[bytes, list[tuple[bytes, bytes]], bytes]:
        """A non-101 answer: status line, headers (as sent), body (by content-length)."""
        lines = self.read_head().split(b"\r\n")
        headers = [tuple(line.split(b": ", 1)) for line in lines[1:]]
        length = next((int(v) for k, v in headers if k.lower() == b"content-length"), 0)
        deadline = time.monotonic() + TIMEOUT
        while len(self.buf) < length and self._fill(deadline):
            pass
        return lines[0], headers, self.buf[:length]

    def read_frame(self, timeout: float = TIMEOUT):
        """(fin, rsv, opcode, payload) of the next server frame, or None at EOF/timeout."""
        deadline = time.monotonic() + timeout
        while True:
            if len(self.buf) >= 2:
                n, off = self.buf[1] & 0x7F, 2
                if n == 126 and len(self.buf) >= 4:
                    n, off = struct.unpack("!H", self.buf[2:4])[0], 4
                elif n == 127 and len(self.buf) >= 10:
                    n, off = struct.unpack("!Q", self.buf[2:10])[0], 10
                if (self.buf[1] & 0x7F) < 126 or off > 2:
                    if len(self.buf) >= off + n:
                        b0 = self.buf[0]
                        payload, self.buf = self.buf[off:off + n], self.buf[off + n:]
                        return b0 >> 7, (b0 >> 4) & 7, b0 & 15, payload
            if not self._fill(deadline):
                return None

    def read_close(self, timeout: float = TIMEOUT):
        """The close frame as (code, reason), skipping other frames; None if none came."""
        while True:
            f = self.read_frame(timeout)
            if f is None:
                return None
            if f[2] == 8:
                p = f[3]
                return (struct.unpack("!H", p[:2])[0], p[2:].decode("utf-8", "replace")) if p else (1005, "")

    def closed_by_server(self, timeout: float = 2.0) -> bool:
        deadline = time.monotonic() + timeout
        while not self.eof and time.monotonic() < deadline:
            self.buf = b""
            self._fill(deadline)
        return self.eof

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def close(self) -> None:
        self.sock.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def strip_date_server(headers):
    return [(k, v) for k, v in headers if k.lower() not in (b"date", b"server")]


def ws_url(srv, path: str) -> str:
    return f"ws://{srv.host}:{srv.port}{path}"


def app_lines(srv, after: int) -> list[str]:
    return [line[5:] for line in srv.log_lines(stream="stderr", after=after) if line.startswith("APP: ")]


def server_lines(srv, after: int) -> list[str]:
    """uvicorn.error lines (no tracebacks, no app lines), ports normalised."""
    out = []
    for line in srv.log_lines(stream="stderr", after=after):
        if re.match(r"^(INFO|WARNING|ERROR):\s", line):
            out.append(re.sub(r"127\.0\.0\.1:\d+", "127.0.0.1:PORT", line))
    return out


def wait_app_line(srv, pattern: str, after: int, timeout: float = TIMEOUT) -> str:
    m = srv.wait_for_line(r"^APP: " + pattern, timeout=timeout, stream="stderr", after=after)
    return m.string[5:]


# ----------------------------------------------------------------------------- handshake

HANDSHAKES = {
    "valid": {},
    "no-key": {"nokey": True},
    "key-not-base64": {"key": b"abc"},
    "key-bad-char": {"key": b"ab!d"},
    "key-wrong-length": {"key": b"AAAAAAAAAAAAAAAAAAAA"},
    "empty-key": {"key": b""},
    "two-keys": {"extra": b"Sec-WebSocket-Key: " + KEY + b"\r\n"},
    "no-version": {"noversion": True},
    "version-8": {"version": b"8"},
    "two-versions": {"extra": b"Sec-WebSocket-Version: 13\r\n"},
    "two-origins": {"extra": b"Origin: http://a\r\nOrigin: http://b\r\n"},
    "post": {"method": b"POST"},
    "upgrade-token-list": {"pre": b"Upgrade: h2c\r\n"},
    "http-1.0": {"http": b"HTTP/1.0"},
    "upgrade-mixed-case": {"upgrade": b"WebSocket"},
    "connection-list": {"connection": b"keep-alive, Upgrade"},
    "content-length-0": {"extra": b"Content-Length: 0\r\n"},
    "protocol-empty-elements": {"extra": b"Sec-WebSocket-Protocol: a,\t ,b \r\n"},
    "extensions-quoted-escape": {
        "extra": b'Sec-WebSocket-Extensions: permessage-deflate; server_max_window_bits="1\\0"\r\n'},
}
# Malformed header lists: websockets parses them with the RFC 6455 §9.1 / RFC 9110 grammar and
# answers 400 with the position of the first error (values are ISO-8859-1).
MALFORMED_LISTS = {
    "connection-malformed": {"connection": b"Upgrade, a b"},
    "connection-earlier-header-malformed": {"pre": b"Connection: a b\r\n"},
    "extensions-trailing-semicolon": {"extra": b"Sec-WebSocket-Extensions: permessage-deflate;\r\n"},
    "extensions-only-commas": {"extra": b"Sec-WebSocket-Extensions: , ,\r\n"},
    "extensions-empty": {"extra": b"Sec-WebSocket-Extensions:\r\n"},
    "extensions-quoted-not-a-token": {
        "extra": b'Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits="1 0"\r\n'},
    "extensions-quoted-comma": {"extra": b'Sec-WebSocket-Extensions: foo; a="b,c", permessage-deflate\r\n'},
    "extensions-unterminated-quote": {"extra": b'Sec-WebSocket-Extensions: permessage-deflate; a="b\r\n'},
    "extensions-missing-comma": {"extra": b"Sec-WebSocket-Extensions: x, y=\r\n"},
    "extensions-missing-value": {"extra": b"Sec-WebSocket-Extensions: permessage-deflate; a=\r\n"},
    "extensions-latin1": {"extra": b'Sec-WebSocket-Extensions: permessage-deflate; a="\xe9"\r\n'},
    "extensions-second-header": {"extra": b"Sec-WebSocket-Extensions: permessage-deflate\r\n"
                                          b"Sec-WebSocket-Extensions: a b\r\n"},
    "protocol-space": {"extra": b"Sec-WebSocket-Protocol: a b\r\n"},
    "protocol-empty": {"extra": b"Sec-WebSocket-Protocol:\r\n"},
    "protocol-only-commas": {"extra": b"Sec-WebSocket-Protocol: ,\r\n"},
    "protocol-semicolon": {"extra": b"Sec-WebSocket-Protocol: chat;x\r\n"},
    "protocol-latin1": {"extra": b"Sec-WebSocket-Protocol: chat, \xe9\r\n"},
    "protocol-and-extensions-malformed": {"extra": b"Sec-WebSocket-Protocol: a b\r\n"
                                                   b"Sec-WebSocket-Extensions: ;\r\n"},
}
HANDSHAKES.update(MALFORMED_LISTS)


def handshake_request(method=b"GET", path=b"/echo", http=b"HTTP/1.1", upgrade=b"websocket",
                      connection=b"Upgrade", key=KEY, version=b"13", nokey=False, noversion=False,
                      extra=b"", pre=b"") -> bytes:
    req = method + b" " + path + b" " + http + b"\r\nHost: x\r\n" + pre + b"Upgrade: " + upgrade + \
        b"\r\nConnection: " + connection + b"\r\n"
    if not nokey:
        req += b"Sec-WebSocket-Key: " + key + b"\r\n"
    if not noversion:
        req += b"Sec-WebSocket-Version: " + version + b"\r\n"
    return req + extra + b"\r\n"


@pytest.mark.parametrize("case", list(HANDSHAKES))
def test_handshake_answer(servers, case):
    def run(s):
        srv = s.get(APP, *WS)
        mark = srv.mark()
        with RawWS(srv, request=handshake_request(**HANDSHAKES[case])) as c:
            status, headers, body = c.read_http()
            accepted = status.startswith(b"HTTP/1.1 101")
            if accepted:
                body = b""
                srv.wait_for_line(r"connection open", after=mark, stream="stderr")
            else:
                assert c.closed_by_server(), "a refused handshake must close the connection"
                srv.wait_for_line(r"connection rejected", after=mark, stream="stderr")
        return status, strip_date_server(headers), body, server_lines(srv, mark)

    status, headers, body, _ = servers.compare(run, "handshake answer")
    if case in ("valid", "protocol-empty-elements", "extensions-quoted-escape"):
        assert status == b"HTTP/1.1 101 Switching Protocols"
        assert (b"Sec-WebSocket-Accept", ACCEPT) in headers
    elif case in MALFORMED_LISTS:
        assert status == b"HTTP/1.1 400 Bad Request"
        assert re.fullmatch(rb"Failed to open a WebSocket connection: invalid [\w-]+ header: "
                            rb"(expected|invalid) [a-z ]+ at \d+ in .*\.\n", body, re.S), body


@pytest.mark.parametrize("extensions", [b"permessage-deflate;", b"a b", b""])
def test_malformed_extensions_are_ignored_without_deflate(servers, extensions):
    # With no extension configured, websockets never parses Sec-WebSocket-Extensions.
    def run(s):
        srv = s.get(APP, *WS, "--ws-per-message-deflate", "false")
        with RawWS(srv, extra=b"Sec-WebSocket-Extensions: " + extensions + b"\r\n") as c:
            status, headers, _ = c.read_http()
        return status, [k for k, _ in strip_date_server(headers)]

    status, names = servers.compare(run, "handshake answer")
    assert status == b"HTTP/1.1 101 Switching Protocols"
    assert b"Sec-WebSocket-Extensions" not in names


def test_handshake_with_a_body_is_refused(cppuvicorn):
    # websockets refuses a handshake carrying a body and uvicorn then never answers (the client
    # hangs until it gives up); cppuvicorn answers 400 and closes.
    with RawWS(cppuvicorn, request=handshake_request(extra=b"Content-Length: 3\r\n") + b"abc") as c:
        status, _, body = c.read_http()
        assert status == b"HTTP/1.1 400 Bad Request"
        assert body == b"Failed to open a WebSocket connection: did not receive a valid HTTP request.\n"
        assert c.closed_by_server()


def test_accept_headers_subprotocol_and_log_lines(servers):
    def run(s):
        srv = s.get(APP, *WS)
        mark = srv.mark()
        with RawWS(srv, "/subprotocol?x=1",
                   extra=b"Sec-WebSocket-Protocol: a, b\r\nSec-WebSocket-Protocol: c\r\n") as c:
            lines = c.read_head().split(b"\r\n")
            first = c.read_frame()
            c.send(frame(8, close_payload(1000)))
            assert c.read_close() == (1000, "")
        wait_app_line(srv, "disconnect", after=mark)
        headers = [tuple(line.split(b": ", 1)) for line in lines[1:]]
        return lines[0], strip_date_server(headers), first, server_lines(srv, mark), app_lines(srv, mark)

    status, headers, first, logs, app = servers.compare(run, "accepted handshake")
    assert headers[-3:] == [(b"x-extra", b"yes"), (b"set-cookie", b"a=b"), (b"Sec-WebSocket-Protocol", b"c")]
    assert first == (1, 0, 1, b'["a", "b", "c"]')
    assert logs == ['INFO:     127.0.0.1:PORT - "WebSocket /subprotocol?x=1" [accepted]',
                    "INFO:     connection open"]
    assert app == ["disconnect code=1000 reason=''"]


@pytest.mark.parametrize("root_path", [None, "/api"])
def test_scope(servers, root_path):
    def run(s):
        args = WS + (("--root-path", root_path) if root_path else ())
        srv = s.get(APP, *args)
        with RawWS(srv, "/scope?q=%20x&r=1",
                   extra=b"X-Custom: v\r\nSec-WebSocket-Protocol: p1 , p2\r\n") as c:
            c.read_head()
            scope = json.loads(c.read_frame()[3])
        scope["client"][1] = scope["server"][1] = "PORT"
        scope["headers"] = [h for h in scope["headers"] if h[0] != "host"]
        return scope

    scope = servers.compare(run, "websocket scope")
    assert scope["type"] == "websocket"
    assert scope["asgi"] == {"version": "3.0", "spec_version": "2.4"}
    assert scope["subprotocols"] == ["p1", "p2"]
    assert scope["extensions"] == {"websocket.http.response": {}}
    assert scope["query_string"] == "q=%20x&r=1"
    assert scope["path"] == (root_path or "") + "/scope"


@pytest.mark.parametrize("offer", [
    "permessage-deflate",
    "permessage-deflate; client_max_window_bits",
    "permessage-deflate; client_max_window_bits=9",
    "permessage-deflate; server_max_window_bits=10; client_no_context_takeover",
    "permessage-deflate; server_no_context_takeover",
    "permessage-deflate; server_max_window_bits=8",
    "permessage-deflate; bogus, permessage-deflate; client_max_window_bits",
    "x-webkit-deflate-frame",
])
def test_permessage_deflate_negotiation(servers, offer):
    def run(s):
        with RawWS(s.get(APP, *WS), extra=b"Sec-WebSocket-Extensions: " + offer.encode() + b"\r\n") as c:
            head = c.read_head()
        return [line for line in head.split(b"\r\n") if line.startswith(b"Sec-WebSocket-Extensions")]

    servers.compare(run, "negotiated extension")


def test_permessage_deflate_off(servers):
    def run(s):
        srv = s.get(APP, *WS, "--ws-per-message-deflate", "false")
        with RawWS(srv, extra=b"Sec-WebSocket-Extensions: permessage-deflate\r\n") as c:
            head = c.read_head()
            c.send(frame(1, b"x", rsv=4))  # RSV1 is now a protocol error
            return b"Sec-WebSocket-Extensions" in head, c.read_close()

    assert servers.compare(run) == (False, (1002, "reserved bits must be 0"))


# ----------------------------------------------------------------------------- frames and close codes

FRAME_CASES = {
    "unmasked": [frame(1, b"hi", mask=False)],
    "rsv2": [frame(1, b"hi", rsv=2)],
    "rsv1-without-deflate": [frame(1, b"hi", rsv=4)],
    "opcode-3": [frame(3, b"hi")],
    "opcode-11": [frame(11, b"hi")],
    "ping-126-bytes": [frame(9, b"x" * 126)],
    "fragmented-ping": [frame(9, b"x", fin=False)],
    "continuation-first": [frame(0, b"x")],
    "text-inside-fragments": [frame(1, b"a", fin=False), frame(1, b"b")],
    "invalid-utf8": [frame(1, b"\xff\xfe")],
    "invalid-utf8-across-fragments": [frame(1, b"ok\xe2\x82", fin=False), frame(0, b"\x28")],
    "close-code-999": [frame(8, close_payload(999))],
    "close-code-1005": [frame(8, close_payload(1005))],
    "close-code-1015": [frame(8, close_payload(1015))],
    "close-one-byte": [frame(8, b"\x03")],
    "close-reason-invalid-utf8": [frame(8, close_payload(1000, b"ab\xc3\x28"))],
    "close-reason-truncated-utf8": [frame(8, close_payload(1000, b"ab\xe2\x82"))],
    "close-4000-bye": [frame(8, close_payload(4000, b"bye"))],
    "close-empty": [frame(8)],
    "close-inside-fragments": [frame(1, b"a", fin=False), frame(8, close_payload(1000))],
    "message-then-close": [frame(1, b"one"), frame(8, close_payload(1001, b"gone"))],
    "data-after-close": [frame(8, close_payload(1000)), frame(1, b"zzz")],
    "too-big": [frame(2, b"x" * 2000)],
    "too-big-fragmented": [frame(2, b"x" * 600, fin=False), frame(0, b"x" * 600)],
}


@pytest.mark.parametrize("case", list(FRAME_CASES))
def test_frames_close_codes(servers, case):
    """What the client gets back (frames up to the close) and what the app is told."""
    def run(s):
        srv = s.get(APP, *WS, "--ws-max-size", "1000")
        mark = srv.mark()
        with RawWS(srv) as c:
            c.read_head()
            c.send(b"".join(FRAME_CASES[case]))
            frames = []
            while (f := c.read_frame(2.0)) is not None:
                frames.append(f)
                if f[2] == 8:
                    break
            assert c.closed_by_server(), "the server must close the TCP connection after a close"
        app = []
        if case != "message-then-close":  # there the app's echo meets a closed session
            app = [wait_app_line(srv, "disconnect", after=mark)]
        return frames, app

    frames, app = servers.compare(run, "close frames")
    assert frames[-1][2] == 8


def test_valid_fragments_pings_and_pongs(servers):
    def run(s):
        with RawWS(s.get(APP, *WS)) as c:
            c.read_head()
            c.send(frame(1, b"ok\xe2\x82", fin=False) + frame(9, b"mid") + frame(0, b"\xac!") +
                   frame(10, b"unsolicited") + frame(2, b"ab", fin=False) + frame(0, b"", fin=False) +
                   frame(0, b"cd"))
            return [c.read_frame() for _ in range(3)]

    assert servers.compare(run) == [(1, 0, 10, b"mid"), (1, 0, 1, "ok€!".encode()), (1, 0, 2, b"abcd")]


def test_a_burst_of_large_and_small_messages_echoes_whole_and_in_order(servers):
    """Many messages in flight at once, around the size where a send is written at once rather
    than corked (16 KiB): echoed in one turn they share writes, and none may be lost, reordered,
    cut or overtaken by the pong."""
    sizes = [16384, 16384, 20000, 100, 16384, 65536, 16384, 1, 70000, 16384, 16383, 16385, 0, 16384]
    msgs = [(2 if i % 3 else 1, bytes([97 + i % 26]) * n) for i, n in enumerate(sizes)]

    def run(s):
        with RawWS(s.get(APP, *WS)) as c:
            c.read_head()
            burst = b"".join(frame(op, payload) for op, payload in msgs[:8])
            burst += frame(9, b"between") + b"".join(frame(op, p) for op, p in msgs[8:])
            c.send(burst)
            got = [c.read_frame() for _ in range(len(msgs) + 1)]
            assert None not in got, got
            # Where the pong lands among the echoes is timing (the core answers it at once).
            pongs = [f[3] for f in got if f[2] == 10]
            return [(f[2], len(f[3]), f[3]) for f in got if f[2] != 10], pongs

    echoes, pongs = servers.compare(run)
    assert echoes == [(op, len(p), p) for op, p in msgs]
    assert pongs == [b"between"]


def test_compressed_message_over_the_limit_after_inflating(servers):
    import zlib

    def run(s):
        srv = s.get(APP, *WS, "--ws-max-size", "1000")
        with RawWS(srv, extra=b"Sec-WebSocket-Extensions: permessage-deflate\r\n") as c:
            c.read_head()
            z = zlib.compressobj(wbits=-15)
            bomb = z.compress(b"\0" * 100000) + z.flush(zlib.Z_SYNC_FLUSH)
            c.send(frame(2, bomb[:-4], rsv=4))
            return c.read_close()

    assert servers.compare(run) == (1009, "frame exceeds limit of 1000 bytes")


# ----------------------------------------------------------------------------- real clients


@pytest.mark.parametrize("compression", ["deflate", None])
def test_websockets_client_echo(servers, compression):
    messages = ["hello", "é" * 1000, b"\x00\x01" * 50000, "x" * 200000, b"", "", "after empty"]

    def run(s):
        srv = s.get(APP, *WS)
        mark = srv.mark()
        with connect(ws_url(srv, "/echo"), compression=compression, max_size=None) as ws:
            ext = ws.response.headers.get("Sec-WebSocket-Extensions")
            for m in messages:
                ws.send(m)
                assert ws.recv() == m
            ws.send(["frag", "mented", "é"])
            assert ws.recv() == "fragmentedé"
            ws.send([b"a", b"", b"b"])
            assert ws.recv() == b"ab"
            assert ws.ping(b"pp").wait(TIMEOUT)
            ws.close(4001, "done")
        return ext, wait_app_line(srv, "disconnect", after=mark)

    ext, app = servers.compare(run)
    assert app == "disconnect code=4001 reason='done'"
    assert (ext is not None) == (compression is not None)


@pytest.mark.parametrize("compression", ["deflate", None])
def test_websockets_asyncio_client(servers, compression):
    import asyncio

    from websockets.asyncio.client import connect as aconnect

    async def session(url):
        async with aconnect(url, compression=compression, max_size=None) as ws:
            await asyncio.gather(*(ws.send(f"m{i}" * (i * 100)) for i in range(20)))
            got = [await ws.recv() for _ in range(20)]
            await ws.send([b"x" * 70000, b"y"])  # fragmented, over two reads
            big = await ws.recv()
            latency = await ws.ping()
            await asyncio.wait_for(latency, TIMEOUT)
            await ws.close(1000)
            return got, len(big), ws.close_code

    def run(s):
        srv = s.get(APP, *WS)
        mark = srv.mark()
        got, big, code = asyncio.run(session(ws_url(srv, "/echo")))
        return got, big, code, wait_app_line(srv, "disconnect", after=mark)

    got, big, code, app = servers.compare(run)
    assert got == [f"m{i}" * (i * 100) for i in range(20)]
    assert (big, code, app) == (70001, 1000, "disconnect code=1000 reason=''")


def test_websocket_client_library(servers):
    def run(s):
        srv = s.get(APP, *WS)
        mark = srv.mark()
        c = wsclient.create_connection(ws_url(srv, "/echo"), timeout=TIMEOUT)
        try:
            c.send("hi")
            text = c.recv()
            c.send_binary(b"\xff" * 70000)
            binary = c.recv()
            c.ping(b"x")
            opcode, data = c.recv_data(control_frame=True)
        finally:
            c.close(status=1001)
        return text, len(binary), opcode, data, wait_app_line(srv, "disconnect", after=mark)

    assert servers.compare(run) == ("hi", 70000, 10, b"x", "disconnect code=1001 reason=''")


@pytest.mark.parametrize("query,expected", [
    ("code=4321&reason=bye", (4321, "bye")),
    ("", (1000, "")),
    ("code=1001", (1001, "")),
])
def test_server_close_reaches_the_client(servers, query, expected):
    def run(s):
        srv = s.get(APP, *WS)
        mark = srv.mark()
        with connect(ws_url(srv, "/close?" + query)) as ws:
            with pytest.raises(ConnectionClosed) as info:
                ws.recv(timeout=TIMEOUT)
        rcvd = info.value.rcvd
        return (rcvd.code, rcvd.reason), wait_app_line(srv, "after close receive", after=mark)

    got, app = servers.compare(run)
    assert got == expected
    assert app.startswith("after close receive {'type': 'websocket.disconnect', 'code': %d" % expected[0])


# ----------------------------------------------------------------------------- ASGI protocol


def test_close_before_accept_is_403(servers):
    def run(s):
        srv = s.get(APP, *WS)
        mark = srv.mark()
        with RawWS(srv, "/reject") as c:
            status, headers, body = c.read_http()
        app = wait_app_line(srv, "after reject", after=mark)
        srv.wait_for_line("connection rejected", after=mark, stream="stderr")
        return status, strip_date_server(headers), body, app, server_lines(srv, mark)

    status, headers, body, app, logs = servers.compare(run)
    assert status == b"HTTP/1.1 403 Forbidden"
    assert app == "after reject receive {'type': 'websocket.disconnect', 'code': 1006}"
    assert logs == ['INFO:     127.0.0.1:PORT - "WebSocket /reject" 403',
                    "INFO:     connection rejected (403 Forbidden)"]


@pytest.mark.parametrize("path,log", [
    ("/raise-before-accept", "ERROR:    Exception in ASGI application"),
    ("/return-before-accept", "ERROR:    ASGI callable returned without completing handshake."),
])
def test_no_accept_is_500(servers, path, log):
    def run(s):
        srv = s.get(APP, *WS)
        mark = srv.mark()
        with RawWS(srv, path) as c:
            status, headers, body = c.read_http()
            assert c.closed_by_server()
        srv.wait_for_line("connection rejected", after=mark, stream="stderr")
        return status, strip_date_server(headers), body, server_lines(srv, mark)

    status, headers, body, logs = servers.compare(run)
    assert (status, body) == (b"HTTP/1.1 500 Internal Server Error", b"Internal Server Error")
    assert logs[0] == log
    assert logs[-1] == "INFO:     connection rejected (500 Internal Server Error)"


@pytest.mark.parametrize("path", ["/raises", "/future", "/task"])
def test_app_call_that_is_not_a_coroutine(servers, path):
    """An ASGI 3 app that is a plain function: its call raises (500, logged), returns an
    iterator (awaiting it raises TypeError: 500), or returns a Future that runs the session."""
    def run(s):
        srv = s.get("ws_apps:sync_app", *WS, "--interface", "asgi3", "--lifespan", "off")
        mark = srv.mark()
        with RawWS(srv, path) as c:
            if path == "/task":
                assert c.read_head().startswith(b"HTTP/1.1 101 ")
                assert c.read_close() == (4001, "")
                c.send(frame(8, close_payload(4001)))
                assert c.closed_by_server()
                srv.wait_for_line("connection open", after=mark, stream="stderr")
                return server_lines(srv, mark)[:2]  # accepted, connection open
            status, headers, body = c.read_http()
            assert c.closed_by_server()
        srv.wait_for_line("connection rejected", after=mark, stream="stderr")
        assert any(line in ("RuntimeError: sync boom websocket", "TypeError: object generator can't be used in "
                            "'await' expression", "TypeError: 'coroutine_wrapper' object can't be awaited")
                   or line.startswith("TypeError: ") for line in srv.log_lines(after=mark)), srv.log_text(mark)
        return status, body, server_lines(srv, mark)

    result = servers.compare(run)
    if path != "/task":
        assert result[:2] == (b"HTTP/1.1 500 Internal Server Error", b"Internal Server Error")
        assert result[2][0] == "ERROR:    Exception in ASGI application"


@pytest.mark.parametrize("status", ["401", "599"])
def test_denial_response(servers, status):
    def run(s):
        srv = s.get(APP, *WS)
        mark = srv.mark()
        with RawWS(srv, "/deny?status=" + status) as c:
            got = c.read_http()
            assert c.closed_by_server()
        srv.wait_for_line("connection rejected", after=mark, stream="stderr")
        # uvicorn then logs a spurious "returned without completing handshake" (the denial is a
        # complete answer); cppuvicorn does not, so only the lines before it are compared.
        logs = [line for line in server_lines(srv, mark) if "without completing" not in line]
        return got[0], strip_date_server(got[1]), got[2], logs

    line, headers, body, logs = servers.compare(run)
    assert body == b'{"denied":true}'
    assert headers[:2] == [(b"x-denied", b"1"), (b"content-type", b"application/json")]
    assert logs[0] == f'INFO:     127.0.0.1:PORT - "WebSocket /deny?status={status}" {status}'


@pytest.mark.cppuvicorn_only
@pytest.mark.parametrize("status", ["101", "103"])
def test_denial_with_an_interim_status_is_refused(cppuvicorn_servers, status):
    # A 101 "denial" would tell the client its upgrade went through, any 1xx that the answer
    # is still to come. Uvicorn sends it (with the body after it); cppuvicorn's send() raises
    # and the app's error is answered 500.
    srv = cppuvicorn_servers.get(APP, *WS)
    mark = srv.mark()
    with RawWS(srv, "/deny?status=" + status) as c:
        assert c.read_http()[0] == b"HTTP/1.1 500 Internal Server Error"
    srv.wait_for_line(f"RuntimeError: Invalid HTTP status code '{status}' in response.", after=mark,
                      stream="stderr")


@pytest.mark.cppuvicorn_only
@pytest.mark.parametrize("length, error", [
    ("14", "Response content longer than Content-Length"),
    ("16", "Response content shorter than Content-Length"),
    ("abc", "Invalid HTTP header value."),
])
def test_denial_body_that_disagrees_with_its_content_length(cppuvicorn_servers, length, error):
    # The body is 15 bytes. Uvicorn sends the app's content-length whatever it says, and the
    # client reads a different response; cppuvicorn raises in send() (the HTTP cycle's errors)
    # and closes the connection without an answer.
    srv = cppuvicorn_servers.get(APP, *WS)
    mark = srv.mark()
    with RawWS(srv, f"/deny?length={length}") as c:
        c.sock.settimeout(2)
        assert c.sock.recv(4096) == b""
    assert wait_app_line(srv, "send r", after=mark) == (
        f"send raised RuntimeError isinstance(OSError)=False str='{error}'")


def test_messages_after_the_denial_response(servers):
    # As Uvicorn: once the denial went out, only more of its body is expected.
    def run(s):
        srv = s.get(APP, *WS)
        mark = srv.mark()
        with RawWS(srv, "/deny?then=send") as c:
            status = c.read_http()[0]
            assert c.closed_by_server()
        return status, wait_app_line(srv, "send r", after=mark)

    assert servers.compare(run) == (
        b"HTTP/1.1 401 Unauthorized",
        "send raised RuntimeError isinstance(OSError)=False str=\"Expected ASGI message "
        "'websocket.http.response.body' but got 'websocket.send'.\"")


def test_send_after_client_close_raises_client_disconnected(servers):
    def run(s):
        srv = s.get(APP, *WS)
        mark = srv.mark()
        with RawWS(srv, "/send-after-disconnect") as c:
            c.read_head()
            c.send(frame(8, close_payload(1000)))
            c.read_close()
        return wait_app_line(srv, "send raised", after=mark)

    assert servers.compare(run) == "send raised ClientDisconnected isinstance(OSError)=True str=''"


def test_ping_after_the_server_close_frame_is_answered(servers):
    # RFC 6455 forbids only data frames after a close frame (5.5.1) and asks for the pong
    # (5.5.2); the websockets library under Uvicorn answers it too.
    def run(s):
        srv = s.get(APP, *WS)
        with RawWS(srv, "/close?code=4321&reason=bye") as c:
            c.read_head()
            closing = c.read_close()
            c.send(frame(0x9, b"late"))
            pong = c.read_frame()
            c.send(frame(0x8, close_payload(4321)))
            return closing, pong, c.closed_by_server()

    assert servers.compare(run) == ((4321, "bye"), (1, 0, 0xA, b"late"), True)


def test_send_after_own_close_is_a_runtime_error(servers):
    def run(s):
        srv = s.get(APP, *WS)
        mark = srv.mark()
        with RawWS(srv, "/close?code=1000&then=send") as c:
            c.read_head()
            return wait_app_line(srv, "send ", after=mark), c.read_close()

    assert servers.compare(run) == (
        "send raised RuntimeError isinstance(OSError)=False str=\"Unexpected ASGI message "
        "'websocket.send', after sending 'websocket.close'.\"", (1000, ""))


@pytest.mark.parametrize("when", ["before", "after"])
def test_unexpected_message_type(servers, when):
    def run(s):
        srv = s.get(APP, *WS)
        mark = srv.mark()
        with RawWS(srv, "/bad-message?when=" + when) as c:
            c.read_head()
            return wait_app_line(srv, "send ", after=mark), c.read_close()

    line, close = servers.compare(run)
    assert line.startswith("send raised RuntimeError")


@pytest.mark.cppuvicorn_only
def test_abrupt_disconnect_is_1006(cppuvicorn_servers):
    # RFC 6455 §7.1.5: no close frame means code 1006. uvicorn's sansio implementation reports
    # 1005 here (its wsproto and legacy implementations report 1006).
    srv = cppuvicorn_servers.get(APP, *WS)
    mark = srv.mark()
    with RawWS(srv) as c:
        c.read_head()
    assert wait_app_line(srv, "disconnect", after=mark) == "disconnect code=1006 reason=''"


@pytest.mark.cppuvicorn_only
@pytest.mark.parametrize("path,code", [("/raise-after-accept", 1011), ("/return-after-accept", 1000)])
def test_app_leaving_an_open_session_closes_it(cppuvicorn_servers, path, code):
    # uvicorn drops the TCP connection without a close frame (the client sees 1006); cppuvicorn
    # runs the closing handshake: 1011 after an exception (RFC 6455 §7.4.1), else 1000.
    srv = cppuvicorn_servers.get(APP, *WS)
    with connect(ws_url(srv, path)) as ws:
        with pytest.raises(ConnectionClosed) as info:
            ws.recv(timeout=TIMEOUT)
    assert info.value.rcvd.code == code


def test_return_value_is_logged(servers):
    def run(s):
        srv = s.get(APP, *WS)
        mark = srv.mark()
        with RawWS(srv, "/return-value") as c:
            c.read_head()
            first = c.read_frame()
        srv.wait_for_line("should return None", after=mark, stream="stderr")
        return first, [line for line in server_lines(srv, mark) if "should return None" in line]

    first, logs = servers.compare(run)
    assert logs == ["ERROR:    ASGI callable should return None, but returned '42'."]


# ----------------------------------------------------------------------------- flow control and timers


def test_keepalive_ping_timeout(servers):
    def run(s):
        srv = s.get(APP, *WS, "--ws-ping-interval", "0.3", "--ws-ping-timeout", "0.4")
        with RawWS(srv, "/wait") as c:
            c.read_head()
            ping = c.read_frame(3.0)
            start = time.monotonic()
            close = c.read_close(3.0)
            waited = time.monotonic() - start
            assert 0.2 < waited < 1.5, waited
            assert c.closed_by_server()
        return ping[2], len(ping[3]), close

    assert servers.compare(run) == (9, 4, (1011, "keepalive ping timeout"))


def test_keepalive_with_a_client_that_answers(servers):
    def run(s):
        srv = s.get(APP, *WS, "--ws-ping-interval", "0.2", "--ws-ping-timeout", "0.3")
        with connect(ws_url(srv, "/echo")) as ws:
            time.sleep(1.2)  # several ping rounds, all answered by the client library
            ws.send("still here")
            return ws.recv(timeout=TIMEOUT)

    assert servers.compare(run) == "still here"


def test_send_waits_while_the_client_does_not_read(servers):
    """200 x 64 KiB cannot all fit in socket buffers: the app's send() must wait."""
    def run(s):
        srv = s.get(APP, *WS)
        mark = srv.mark()
        with RawWS(srv, "/stream?n=200&size=65536") as c:
            c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
            c.read_head()
            time.sleep(1.0)
            early = [line for line in app_lines(srv, mark) if "stream done" in line]
            total = 0
            while (f := c.read_frame()) is not None and f[2] == 2:
                total += len(f[3])
            close = (struct.unpack("!H", f[3][:2])[0], f[3][2:])
        wait_app_line(srv, "stream done", after=mark)
        return early, total, close

    assert servers.compare(run) == ([], 200 * 65536, (1000, b"done"))


def test_reading_pauses_while_the_app_does_not_receive(servers):
    def run(s):
        srv = s.get(APP, *WS)
        mark = srv.mark()
        with RawWS(srv, "/slow-reader?sleep=3") as c:
            c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 65536)
            c.read_head()
            message = frame(2, b"m" * 65536)
            c.sock.settimeout(0.5)  # blocked this long: the server stopped reading
            sent = 0
            try:
                for _ in range(400):
                    c.sock.sendall(message)
                    sent += 1
            except socket.timeout:
                pass
            assert sent < 400, "the server kept reading while the app took nothing"
        # The client goes away mid-frame; the app wakes, drains its queue and hears the end.
        return wait_app_line(srv, "slow reader got", after=mark, timeout=15).startswith("slow reader got")

    assert servers.compare(run) is True


def test_graceful_shutdown_sends_1012(servers):
    def run(s):
        srv = s.spawn(APP, *WS)
        mark = srv.mark()
        with RawWS(srv, "/wait") as c:
            c.read_head()
            srv.wait_for_line("connection open", after=mark, stream="stderr")
            srv.send_signal(signal.SIGTERM)
            close = c.read_close()
            assert c.closed_by_server()
        line = wait_app_line(srv, "wait got", after=mark)
        assert srv.wait_exit(10) is not None  # uvicorn re-raises SIGTERM: no fixed exit code
        return close, line

    assert servers.compare(run) == ((1012, ""), "wait got {'type': 'websocket.disconnect', 'code': 1012}")


def test_graceful_shutdown_before_accept_answers_500(servers):
    def run(s):
        srv = s.spawn(APP, *WS)
        mark = srv.mark()
        with RawWS(srv, "/wait?accept=0&sleep=1") as c:
            time.sleep(0.3)
            srv.send_signal(signal.SIGTERM)
            status, headers, body = c.read_http()
        line = wait_app_line(srv, "send ", after=mark)
        assert srv.wait_exit(10) is not None
        return status, body, line

    assert servers.compare(run) == (b"HTTP/1.1 500 Internal Server Error", b"Internal Server Error",
                                    "send raised ClientDisconnected isinstance(OSError)=True str=''")


# ----------------------------------------------------------------------------- configuration


def test_ws_none_serves_upgrades_as_http(servers):
    def run(s):
        srv = s.get(APP, "--ws", "none")
        mark = srv.mark()
        with RawWS(srv) as c:
            status, headers, body = c.read_http()
        srv.wait_for_line("No supported WebSocket library", after=mark, stream="stderr")
        logs = [line for line in server_lines(srv, mark) if "WARNING" in line]
        return status, body, logs

    status, body, logs = servers.compare(run)
    assert (status, body) == (b"HTTP/1.1 200 OK", b"plain http /echo")
    assert logs[0] == "WARNING:  Unsupported upgrade request."


def test_other_upgrades_are_plain_http_with_a_warning(servers):
    def run(s):
        srv = s.get(APP, *WS)
        mark = srv.mark()
        with RawWS(srv, request=handshake_request(upgrade=b"h2c")) as c:
            status, _, body = c.read_http()
        srv.wait_for_line("Unsupported upgrade request", after=mark, stream="stderr")
        return status, body

    assert servers.compare(run) == (b"HTTP/1.1 200 OK", b"plain http /echo")


def test_limit_concurrency_does_not_apply_to_upgrades(servers):
    def run(s):
        srv = s.get(APP, *WS, "--limit-concurrency", "1")
        with RawWS(srv, request=b"GET /plain HTTP/1.1\r\nHost: x\r\n\r\n") as c:
            http_status = c.read_http()[0]
        with connect(ws_url(srv, "/echo")) as ws:
            ws.send("through")
            return http_status, ws.recv(timeout=TIMEOUT)

    assert servers.compare(run) == (b"HTTP/1.1 503 Service Unavailable", "through")


# ----------------------------------------------------------------------------- frameworks


def test_fastapi_websocket(servers):
    def run(s):
        srv = s.get("ws_apps:fastapi_app", *WS)
        mark = srv.mark()
        with connect(ws_url(srv, "/chat/lobby?token=t1"), subprotocols=["chat"]) as ws:
            subprotocol = ws.subprotocol
            first = json.loads(ws.recv(timeout=TIMEOUT))
            ws.send("hi")
            echo = ws.recv(timeout=TIMEOUT)
            ws.send("close")
            with pytest.raises(ConnectionClosed) as info:
                ws.recv(timeout=TIMEOUT)
        with connect(ws_url(srv, "/chat/x")) as ws:
            ws.recv(timeout=TIMEOUT)
        line = wait_app_line(srv, "fastapi disconnect", after=mark)
        with pytest.raises(InvalidStatus) as denied:
            connect(ws_url(srv, "/deny"))
        with connect(ws_url(srv, "/boom")) as ws:
            with pytest.raises(ConnectionClosed):
                ws.recv(timeout=TIMEOUT)
        return first, subprotocol, echo, info.value.rcvd.code, info.value.rcvd.reason, line, \
            denied.value.response.status_code

    result = servers.compare(run)
    assert result[:5] == ({"room": "lobby", "token": "t1"}, "chat", "lobby: hi", 4000, "asked")
    assert result[6] == 403


def test_starlette_websocket(servers):
    def run(s):
        srv = s.get("ws_apps:starlette_app", *WS)
        mark = srv.mark()
        with connect(ws_url(srv, "/echo")) as ws:
            ws.send(b"abc")
            reversed_ = ws.recv(timeout=TIMEOUT)
            ws.close(1000)
        with connect(ws_url(srv, "/json")) as ws:
            ws.send(json.dumps({"a": [1, 2]}))
            got = json.loads(ws.recv(timeout=TIMEOUT))
        return reversed_, got, wait_app_line(srv, "starlette disconnect", after=mark)

    assert servers.compare(run) == (b"cba", {"got": {"a": [1, 2]}}, "starlette disconnect code=1000")
