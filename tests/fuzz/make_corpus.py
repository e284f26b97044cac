#!/usr/bin/env python3
# SPDX-License-Identifier: BSD-3-Clause
"""Writes the seed corpus of the fuzz targets into tests/fuzz/corpus/<target>/seed-*.

Each target's input starts with a few control bytes (see the comment at the top of its .cpp);
this script is the readable form of those seeds. Regression inputs (fixed crashes) are added
to the corpus directories by hand as crash-* / regress-* files and are not touched here.
Run from anywhere: python3 tests/fuzz/make_corpus.py
"""
import struct
from pathlib import Path

HERE = Path(__file__).resolve().parent


def write(target: str, name: str, data: bytes) -> None:
    d = HERE / "corpus" / target
    d.mkdir(parents=True, exist_ok=True)
    (d / f"seed-{name}").write_bytes(data)


# ---- fuzz_http_parser: flags, split offset (u16 le), stream --------------------------------
PAUSE, BYTEWISE, SMALL, TINY = 0x04, 0x08, 0x01, 0x02


def parser(name: str, flags: int, offset: int, stream: bytes) -> None:
    write("fuzz_http_parser", name, bytes([flags]) + struct.pack("<H", offset) + stream)


parser("get", PAUSE, 10, b"GET /path?q=1 HTTP/1.1\r\nHost: example.com\r\nUser-Agent: x\r\n\r\n")
parser("pipelined", PAUSE, 40,
       b"GET /1 HTTP/1.1\r\nHost: a\r\n\r\n"
       b"POST /2 HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello"
       b"HEAD /3 HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
parser("chunked", PAUSE | BYTEWISE, 0,
       b"POST /up HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
       b"5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\nTrailer: x\r\n\r\n"
       b"GET /next HTTP/1.1\r\nHost: a\r\n\r\n")
parser("obs-fold", 0, 33, b"GET / HTTP/1.1\r\nHost: a\r\nX-Long: one\r\n two\r\n\r\n")
parser("smuggle-cl-te", PAUSE, 50,
       b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n"
       b"0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: a\r\n\r\n")
parser("upgrade-te-gzip", PAUSE, 70,
       b"POST / HTTP/1.1\r\nHost: a\r\nConnection: upgrade\r\nUpgrade: foo\r\n"
       b"Transfer-Encoding: gzip\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: a\r\n\r\n")
parser("limits", SMALL | PAUSE, 20,
       b"GET /" + b"a" * 80 + b" HTTP/1.1\r\nHost: a\r\n\r\n")
parser("http10-upgrade", PAUSE, 25,
       b"GET /ws HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
       b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
       b"GET /10 HTTP/1.0\r\nConnection: keep-alive\r\nExpect: 100-continue\r\n\r\n")


# ---- fuzz_http_connection: app flags, op count, ops, stream ----------------------------------
ON_HEAD, ON_BODY, DEFERRED, ALTERNATE = 0, 1, 2, 3
REFUSE, PAUSE_BODY, WANT_BODY, SMALL_LIMITS = 0x10, 0x20, 0x40, 0x80
DELIVER, TURN, DRAIN, STALL, APP, DEADLINE, MISC, PAUSE_OP = range(8)


def op(kind: int, param: int = 0) -> int:
    return (param << 3) | kind


def conn(name: str, flags: int, ops: list, stream: bytes) -> None:
    write("fuzz_http_connection", name, bytes([flags, len(ops)]) + bytes(ops) + stream)


GET = b"GET /%d HTTP/1.1\r\nHost: a\r\n\r\n"
conn("pipelined", ON_BODY, [op(DELIVER, 0), op(DELIVER, 8), op(TURN), op(DELIVER, 24), op(TURN)],
     (GET % 1) + (GET % 2) + (GET % 3))
conn("chunked-deferred", DEFERRED | (1 << 2),
     [op(DELIVER, 18), op(APP, 0), op(TURN), op(DRAIN), op(DELIVER, 20), op(APP, 0), op(TURN)],
     b"POST /up HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
     b"3\r\nabc\r\n0\r\n\r\n" + (GET % 2))
conn("expect-continue", ON_BODY | WANT_BODY | PAUSE_BODY,
     [op(DELIVER, 22), op(TURN), op(APP, 1), op(DELIVER, 31), op(TURN)],
     b"POST /e HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\nxyz")
conn("close-then-more", ALTERNATE, [op(DELIVER, 31), op(TURN)],
     (GET % 1) + b"GET /2 HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n" + (GET % 3))
conn("bad-after-good", ON_HEAD, [op(DELIVER, 31), op(TURN)],
     (GET % 1) + b"GET /2 HTTP/1.1\r\nHost : a\r\n\r\n")
conn("stalled-big", ON_HEAD | (3 << 2),
     [op(STALL), op(DELIVER, 31), op(TURN), op(DRAIN), op(TURN), op(STALL), op(DRAIN)],
     (GET % 1) + (GET % 2))
conn("upgrade-te-gzip", ON_BODY, [op(DELIVER, 31), op(TURN)],
     b"POST / HTTP/1.1\r\nHost: a\r\nConnection: upgrade\r\nUpgrade: foo\r\n"
     b"Transfer-Encoding: gzip\r\n\r\n" + (GET % 2))
conn("refuse", REFUSE, [op(DELIVER, 31), op(TURN)], (GET % 1) + (GET % 2))
conn("small-limits-timeout", SMALL_LIMITS | DEFERRED,
     [op(DEADLINE, 31), op(DELIVER, 5), op(DEADLINE, 6), op(DELIVER, 31), op(PAUSE_OP),
      op(APP, 0), op(MISC, 3), op(TURN)],
     b"POST /p HTTP/1.1\r\nHost: a\r\nContent-Length: 100\r\n\r\n" + b"b" * 100 + (GET % 2))


# ---- fuzz_websocket_codec: mode, then per mode ------------------------------------------------
def ws(name: str, data: bytes) -> None:
    write("fuzz_websocket_codec", name, data)


def masked(first: int, payload: bytes, key: bytes = b"\x37\xfa\x21\x3d") -> bytes:
    n = len(payload)
    if n < 126:
        head = bytes([first, 0x80 | n])
    elif n < 65536:
        head = bytes([first, 0x80 | 126]) + struct.pack(">H", n)
    else:
        head = bytes([first, 0x80 | 127]) + struct.pack(">Q", n)
    return head + key + bytes(b ^ key[i % 4] for i, b in enumerate(payload))


# decoder: mode 0, flags (allow rsv1, limit), split seed, frames
ws("decoder-frames", b"\x00\x05\x11" + masked(0x81, b"Hello") + masked(0x01, b"frag")
   + masked(0x89, b"ping") + masked(0x80, b"ment") + masked(0x82, b"B" * 300)
   + masked(0x88, b"\x03\xe8bye"))
ws("decoder-rsv1", b"\x00\x01\x42" + masked(0xC1, bytes.fromhex("f248cdc9c90700")))
ws("decoder-too-big", b"\x00\x00\x07" + bytes([0x82, 0xFF]) + struct.pack(">Q", 1 << 40))
# deflate: mode 1, params, cap, split seed, data ("Hello" as compressed by RFC 7692 §7.2.3.1)
ws("deflate-hello", b"\x01\x07\x03\x05" + bytes.fromhex("f248cdc9c90700"))
ws("deflate-bfinal", b"\x01\x0f\x02\x09" + bytes.fromhex("f348cdc9c90700") + b"trailing")
# negotiate: mode 2, bits, header value
ws("negotiate", b"\x02\x3c" + b"permessage-deflate; client_max_window_bits")
ws("negotiate-many", b"\x02\x24"
   + b"x-webkit-deflate-frame, permessage-deflate; server_max_window_bits=\"10\"; "
     b"client_no_context_takeover; server_no_context_takeover, permessage-deflate")


# ---- fuzz_websocket_connection: flags, op count, ops, frame descriptions ---------------------
DEFLATE, NO_TAKEOVER, UNMASK_SELF, ACCEPT_LATER = 0x01, 0x02, 0x04, 0x08
WS_SMALL, RAW, FAST_PING, PAUSE_EACH = 0x10, 0x20, 0x40, 0x80
(W_DELIVER, W_TURN, W_DRAIN, W_SEND, W_APP, W_DEADLINE, W_MISC, W_SEND_TURN) = range(8)
FIN_CLEAR, RSV1, UNMASKED, COMPRESS = 0x10, 0x20, 0x40, 0x80


def frame(first: int, payload: bytes = b"") -> bytes:
    """A frame description: opcode and flags, length, payload (the harness masks it)."""
    return bytes([first, len(payload)]) + payload


def big_frame(first: int, length: int, pattern: bytes) -> bytes:
    assert length % 2 == 0
    return bytes([first, 255]) + struct.pack(">H", length // 2) + pattern


def wsconn(name: str, flags: int, ops: list, frames: bytes) -> None:
    write("fuzz_websocket_connection", name, bytes([flags, len(ops)]) + bytes(ops) + frames)


wsconn("echo", 0, [op(W_DELIVER, 31), op(W_SEND, 0x9), op(W_TURN), op(W_DELIVER, 31),
                   op(W_TURN)],
       frame(0x1, b"hello") + frame(0x2, b"\x00\x01") + frame(0x9, b"ping")
       + frame(0x8, b"\x03\xe8bye"))
wsconn("fragments-split", UNMASK_SELF,
       [op(W_DELIVER, 3), op(W_DELIVER, 5), op(W_TURN), op(W_DELIVER, 1), op(W_DELIVER, 19)],
       frame(0x1 | FIN_CLEAR, b"frag") + frame(0x9, b"p") + frame(0x0, b"ment")
       + frame(0x2, b"B" * 200) + frame(0x2, b"tail"))
wsconn("deflate", DEFLATE, [op(W_DELIVER, 6), op(W_SEND, 0xA), op(W_SEND_TURN, 2),
                            op(W_DELIVER, 31), op(W_TURN)],
       frame(0x1 | COMPRESS, b"Hello, Hello, Hello") + frame(0x2 | COMPRESS, b"\x00" * 100)
       + frame(0x1, b"plain"))
wsconn("deflate-no-takeover", DEFLATE | NO_TAKEOVER, [op(W_DELIVER, 31), op(W_SEND, 0x4)],
       frame(0x1 | COMPRESS, b"abcabcabc") + frame(0x1 | COMPRESS, b"abcabcabc"))
wsconn("big-borrowed-tail", UNMASK_SELF,
       [op(W_DELIVER, 29), op(W_DELIVER, 30), op(W_DELIVER, 31), op(W_TURN), op(W_DELIVER, 31)],
       big_frame(0x2, 20000, b"0123456789abcdef") + big_frame(0x2, 70000 - 4096, b"xy")
       + frame(0x1, b"after"))
wsconn("paused-queue", PAUSE_EACH | ACCEPT_LATER,
       [op(W_DELIVER, 31), op(W_APP, 24), op(W_TURN), op(W_APP, 8), op(W_TURN), op(W_APP, 16),
        op(W_DELIVER, 10), op(W_APP, 8), op(W_TURN)],
       frame(0x1, b"one") + frame(0x1, b"two") + frame(0x2, b"three") + frame(0x1, b"four"))
wsconn("stalled-writes", WS_SMALL,
       [op(W_DELIVER, 31), op(W_DRAIN, 16), op(W_SEND, 4), op(W_SEND, 7), op(W_TURN),
        op(W_DRAIN), op(W_SEND, 2), op(W_DRAIN, 16), op(W_DRAIN), op(W_TURN)],
       frame(0x2, b"x" * 50))
wsconn("too-big-and-bad", WS_SMALL,
       [op(W_DELIVER, 31), op(W_TURN)],
       frame(0x1 | FIN_CLEAR, b"a" * 200) + frame(0x0 | FIN_CLEAR, b"b" * 200)
       + big_frame(0x0, 800, b"c"))
wsconn("bad-utf8-unmasked", 0, [op(W_DELIVER, 31), op(W_TURN)],
       frame(0x1, b"ok") + frame(0x1, b"\xc3\x28") + frame(0x2 | UNMASKED, b"no mask"))
wsconn("keepalive-timeout", FAST_PING,
       [op(W_DELIVER, 31), op(W_DEADLINE, 4), op(W_TURN), op(W_DEADLINE, 4), op(W_TURN),
        op(W_DEADLINE, 8), op(W_TURN)],
       frame(0xA, b"") + frame(0x1, b"still here"))
wsconn("app-close-then-frames", 0,
       [op(W_DELIVER, 31), op(W_APP, 4), op(W_TURN), op(W_DELIVER, 31), op(W_TURN)],
       frame(0x1, b"before") + frame(0x1, b"after close") + frame(0x8, b"\x03\xe8"))
wsconn("reject-shutdown", ACCEPT_LATER, [op(W_DELIVER, 31), op(W_APP, 28), op(W_TURN)],
       frame(0x1, b"never"))
wsconn("shutdown-open", 0, [op(W_DELIVER, 31), op(W_MISC, 2), op(W_TURN), op(W_DELIVER, 31)],
       frame(0x1, b"hi") + frame(0x8, b"\x03\xe8"))
wsconn("raw-garbage", RAW, [op(W_DELIVER, 3), op(W_DELIVER, 31)],
       b"\x81\x85\x00\x00\x00\x00hello\x8f\x80\x00\x00\x00\x00\xff\xff")


# ---- fuzz_proxy_headers: flags, --forwarded-allow-ips, '\n', one header per line -------------
WEBSOCKET, LIST_FORM = 0x01, 0x02
XFF, XFP, XFF_CASE, OTHER = b"\x00", b"\x01", b"\x02", b"\x03"


def proxy(name: str, flags: int, allow: bytes, *headers: bytes) -> None:
    write("fuzz_proxy_headers", name, bytes([flags]) + allow + b"\n" + b"\n".join(headers))


proxy("default", 0, b"127.0.0.1,::1", XFF + b"203.0.113.9, 127.0.0.1", XFP + b"https")
proxy("networks", 0, b"10.0.0.0/8, 192.168.0.0/255.255.0.0, fe80::%eth0/64, 2001:db8::/32",
      XFF + b"198.51.100.1:4321, 10.1.2.3", XFF + b"[2001:db8::5]:80, fe80::1%eth0", XFP + b" wss ")
proxy("star", 0, b"*", XFF + b"[::1]:8080, 1.1.1.1", XFP + b"http")
proxy("literals", LIST_FORM, b"proxy.sock,*, 10.0.0.1/8", XFF + b"unknown, proxy.sock, 10.0.0.1/8",
      OTHER + b"x", XFF_CASE + b"1.2.3.4")
proxy("ports", 0, b"127.0.0.1", XFF + b"h: -0_1 ,[::1]x,[::1,1.2.3.4:\xa080\x85, :80",
      XFF + b",", XFP + b"ws")
proxy("websocket", WEBSOCKET, b"::ffff:127.0.0.1, 0:0::1%lo",
      XFF + b"::ffff:7f00:1, ::1%lo, 9.9.9.9:99999999999999999999999", XFP + b"https")


# ---- fuzz_supervisor_args: the supervisor's argv, arguments separated by NUL bytes --------------
def sup(name: str, *args: str) -> None:
    write("fuzz_supervisor_args", name, b"\0".join(a.encode() for a in args))


WORKER = ["--", "/usr/bin/python3", "-m", "cppuvicorn._worker"]
# As cli/cppuvicorn/supervisor.py builds it: TCP, a UNIX socket, an inherited fd, metrics.
sup("tcp", "--workers", "2", "--backlog", "2048", "--healthcheck-timeout", "5",
    "--graceful-timeout", "-1", "--drain", "0", "--scheme", "http", "--host", "0.0.0.0",
    "--port", "8000", *WORKER)
sup("uds", "--workers", "4", "--backlog", "128", "--healthcheck-timeout", "2.5",
    "--graceful-timeout", "30", "--drain", "1.5", "--scheme", "https", "--uds", "/tmp/app.sock",
    "--log-info", "0", *WORKER)
sup("fd-metrics", "--workers", "1", "--fd", "3", "--metrics-port", "9100", "--metrics-host",
    "::1", "--healthcheck-timeout", "1e-3", *WORKER)
sup("bad-numbers", "--workers", "2x", "--port", "65536", "--drain", "nan", *WORKER)
sup("no-worker", "--workers", "3", "--")


# ---- fuzz_response_head: flags, a big-endian status, then "name:value" lines -------------------
def head(name: str, flags: int, status: int, *headers: bytes) -> None:
    write("fuzz_response_head", name, bytes([flags]) + status.to_bytes(2, "big") + b"\n".join(headers))


HEAD_METHOD, HTTP10, KEEP_ALIVE, BEFORE = 1, 2, 4, 8
head("plain", KEEP_ALIVE, 200, b"content-type:text/plain", b"content-length:13")
head("chunked", KEEP_ALIVE | BEFORE, 200, b"Transfer-Encoding:Chunked", b"X-Mixed-Case:v\tw")
head("close", KEEP_ALIVE, 404, b"Connection: keep-alive, CLOSE ", b"content-length:0")
head("http10", HTTP10, 200, b"x-a:b")
head("head-204", HEAD_METHOD | KEEP_ALIVE, 204, b"content-length:5", b"content-length:x")
head("bad-name", KEEP_ALIVE, 200, b"content-length:x", b"bad name:v")
head("bad-value", KEEP_ALIVE, 500, b"x:\r\nset-cookie: a", b"\x80\xff:\x7f")
head("bad-status", 0, 600, b"content-length:1")
