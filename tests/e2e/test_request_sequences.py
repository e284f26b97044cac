"""Random requests, the same on cppuvicorn and on Uvicorn: the scope the app sees, or the 400.

A seeded generator makes requests from parts that matter to the scope and to the parser:
methods (valid, lower-case, unknown to llhttp), request targets (percent-escapes valid and
not, an encoded slash, raw UTF-8, dot segments, empty and repeated queries, absolute-form),
HTTP/1.0 and 1.1, Host variants, header names in any case, repeated, with padded, empty,
tab-holding or obs-text values, the proxy headers, and bodies by content-length or chunked
(with extensions and trailers). Each request goes to ``/scope`` with ``GET /hello``
pipelined behind it. Both servers must answer alike: the same status line, headers (but date
and server), body (the scope, as JSON, with ports blanked), and the same answer, or none, to
the pipelined request.

One difference is deliberate: Uvicorn (httptools) appends a chunked body's trailer fields to
``scope["headers"]`` while the body is read; cppuvicorn discards trailers, as it says in
SECURITY.md. Trailers here are named ``x-trailer`` and left out of Uvicorn's scope.
"""

from __future__ import annotations

import json
import random
import socket
import time

from support import norm_scope

SEED = 20261205
REQUESTS = 300

METHODS = [b"GET", b"GET", b"POST", b"PUT", b"DELETE", b"OPTIONS", b"PATCH", b"PURGE", b"get", b"M-SEARCH"]
SEGMENTS = [b"", b"/a", b"/%41", b"/%2F", b"/%2f", b"/%", b"/%zz", b"/%E2%82%AC", b"/\xe2\x82\xac", b"//x",
            b"/./x", b"/../x", b"/;p=1", b"/a+b", b"/~u", b"/%00", b"/%25", b"/a%20b", b"/A", b"/a\tb"]
QUERIES = [b"", b"?", b"?a=1", b"?a=%20&b", b"?x=%zz", b"?\xc3\xa9", b"?a=1&a=2", b"?q=a+b", b"??", b"?a=/b?c",
           b"#frag", b"?a#frag"]
HOSTS = [b"example.test", b"example.test:8080", b"[::1]:80", None, b"", b"EXAMPLE.test"]
ABSOLUTE = [b"http://example.test", b"http://example.test:65536", b"http://:80", b"http://x_y", b"HTTP://X:0"]
NAMES = [b"X-Test", b"x-test", b"Accept", b"Cookie", b"User-Agent", b"X-Dup", b"x-dup", b"X-Forwarded-Proto",
         b"X-Forwarded-For", b"Forwarded"]
VALUES = [b"v", b"", b" padded ", b"a\tb", b"\x80\xff", b"a,b", b"https", b"1.2.3.4", b"for=1.2.3.4;proto=https",
          b"x" * 300]


def make_requests(seed: int = SEED, count: int = REQUESTS) -> list[bytes]:
    rng = random.Random(seed)
    requests = []
    for _ in range(count):
        version = rng.choice([b"HTTP/1.1"] * 4 + [b"HTTP/1.0"])
        method = rng.choice(METHODS)
        target = b"/scope" + b"".join(rng.choice(SEGMENTS) for _ in range(rng.randint(0, 2))) + rng.choice(QUERIES)
        if rng.random() < 0.1:
            target = rng.choice(ABSOLUTE) + target
        lines = [method + b" " + target + b" " + version]
        host = rng.choice(HOSTS)
        if host is not None:
            lines.append(b"Host: " + host)
        for _ in range(rng.randint(0, 4)):
            lines.append(rng.choice(NAMES) + b":" + rng.choice([b" ", b"", b"  "]) + rng.choice(VALUES))
        body = b""
        if method in (b"POST", b"PUT", b"PATCH") or rng.random() < 0.1:
            data = rng.choice([b"", b"hello", b"x" * 1000])
            if rng.random() < 0.5:
                lines.append(b"Content-Length: " + str(len(data)).encode())
                body = data
            else:
                lines.append(b"Transfer-Encoding: chunked")
                chunk = b"%x%s\r\n%s\r\n" % (len(data), rng.choice([b"", b";a=b", b";x"]), data) if data else b""
                body = chunk + b"0\r\n" + rng.choice([b"", b"X-Trailer: v\r\n"]) + b"\r\n"
        requests.append(b"\r\n".join(lines) + b"\r\n\r\n" + body)
    return requests


def exchange(srv, request: bytes) -> bytes:
    with socket.create_connection((srv.host, srv.port)) as sock:
        sock.sendall(request + b"GET /hello HTTP/1.1\r\nHost: x\r\n\r\n")
        data = b""
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and not data.endswith(b"Hello, world!"):
            sock.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                chunk = sock.recv(65536)
            except (socket.timeout, ConnectionResetError):
                break
            if not chunk:
                break
            data += chunk
    return data


def responses(data: bytes, uvicorn: bool) -> list:
    """The responses in `data`: (status line, headers but date and server, body), a /scope body
    as its normalised JSON (its content-length left out: cppuvicorn's scope is longer by the
    pathsend extension)."""
    out = []
    while data:
        if b"\r\n\r\n" not in data:
            out.append(("incomplete", data))
            break
        head, data = data.split(b"\r\n\r\n", 1)
        status, *lines = head.split(b"\r\n")
        headers = [tuple(line.split(b": ", 1)) for line in lines]
        headers = [(k.lower(), v) for k, v in headers if k.lower() not in (b"date", b"server")]
        length = [int(v) for k, v in headers if k == b"content-length"]
        if length:
            body, data = data[:length[0]], data[length[0]:]
        else:
            body, data = data, b""
        if body.startswith(b"{"):
            scope = norm_scope(json.loads(body))
            if uvicorn:
                scope["headers"] = [h for h in scope["headers"] if h[0] != "x-trailer"]
            body = scope
            headers = [(k, v) for k, v in headers if k != b"content-length"]
        out.append((status, headers, body))
    return out


def test_random_requests_get_uvicorn_s_scope_or_its_400(cppuvicorn_servers):
    ours_srv = cppuvicorn_servers.get()
    theirs_srv = cppuvicorn_servers.oracle.get()
    failures, scopes = [], 0
    for request in make_requests():
        ours = responses(exchange(ours_srv, request), uvicorn=False)
        theirs = responses(exchange(theirs_srv, request), uvicorn=True)
        if ours != theirs:
            failures.append(f"{request!r}\n  cppuvicorn: {ours!r}\n  uvicorn:    {theirs!r}")
        scopes += bool(ours) and isinstance(ours[0][2], dict)
    assert not failures, f"{len(failures)} request(s) differ:\n\n" + "\n\n".join(failures[:5])
    assert scopes >= REQUESTS // 3, scopes  # enough requests reach the app to mean something
