"""Raw ASGI app for ``benchmarks/soak.py`` and ``benchmarks/chaos.py``.

Every response carries ``x-worker-pid`` (the pid of the worker that answered), so a client
knows which worker a keep-alive connection is bound to.

  ``GET /``               13-byte ``Hello, world!`` (text/plain)
  ``GET /json``           ``JSON_BODY``: a small JSON document, byte for byte
  ``POST /echo``          the request body, with content-length
  ``GET /pid``            the worker's pid as text
  ``GET /slow?t=S``       ``await asyncio.sleep(S)``, then the pid
  ``GET /block?t=S``      ``time.sleep(S)`` in ``block_the_loop``: blocks the worker's event loop
  ``GET /stream?size=N&chunk=K``
                          N bytes streamed in K-byte ``http.response.body`` messages (chunked);
                          each chunk is a fresh bytes object. The bytes handed to ``send`` so far
                          are kept per client port for ``/stats``
  ``GET /stats``          JSON: ``{"pid", "streams": {client port: bytes handed to send}, "leaked"}``
  ``GET /leak?n=N&stubborn=0|1``
                          starts N background tasks that never finish (stubborn ones swallow
                          cancellation and keep sleeping), answers at once
  ``GET /forever``        a handler that never finishes (no response): in flight at shutdown

The last ``SEEN_MAX`` ``x-request-id`` header values the app received are kept; at lifespan
shutdown they are logged as ``APP: seen [pid] id,id,...`` lines (at most 4000 bytes each, so
lines of several workers never interleave), which tells the harness whether a request the
client had to send again had reached the app the first time.

Lifespan: ``APP: startup [pid]`` / ``APP: shutdown [pid]`` on stderr; with ``CHAOS_LEAK_LIFESPAN=1``
the startup also leaves a background task that never finishes.
"""

from __future__ import annotations

import asyncio
import collections
import json
import os
import time
import urllib.parse

HELLO = b"Hello, world!"
JSON_BODY = json.dumps({"message": "Hello, world!", "id": 1, "ok": True, "items": [1, 2, 3]},
                       separators=(",", ":")).encode()

STREAMS: dict[int, int] = {}  # client port -> bytes handed to send() by /stream
_LEAKED: set[asyncio.Task] = set()  # strong references: the tasks must not be collected
SEEN_MAX = 4000
SEEN: collections.deque[str] = collections.deque(maxlen=SEEN_MAX)


def _log(line: str) -> None:
    # One write(2) per line: several workers share the parent's stderr pipe.
    os.write(2, f"APP: {line}\n".encode())


def _query(scope) -> dict[str, str]:
    return dict(urllib.parse.parse_qsl(scope.get("query_string", b"").decode("latin-1")))


async def _read_body(receive) -> bytes | None:
    chunks = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(chunks)


def _headers(content_type: bytes, length: int | None) -> list[tuple[bytes, bytes]]:
    headers = [(b"content-type", content_type), (b"x-worker-pid", str(os.getpid()).encode())]
    if length is not None:
        headers.append((b"content-length", str(length).encode()))
    return headers


async def _respond(send, body: bytes, content_type: bytes = b"text/plain", status: int = 200) -> None:
    await send({"type": "http.response.start", "status": status, "headers": _headers(content_type, len(body))})
    await send({"type": "http.response.body", "body": body})


def block_the_loop(seconds: float) -> None:
    """A handler mistake: a blocking call on the event loop thread."""
    time.sleep(seconds)


async def _never_finishes(stubborn: bool) -> None:
    while True:
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            if not stubborn:
                raise


def _leak(n: int, stubborn: bool) -> None:
    for _ in range(n):
        task = asyncio.get_running_loop().create_task(_never_finishes(stubborn))
        _LEAKED.add(task)


async def _stream(scope, send) -> None:
    query = _query(scope)
    size = int(query.get("size", 8 << 20))
    chunk = int(query.get("chunk", 16384))
    port = scope["client"][1] if scope.get("client") else 0
    STREAMS[port] = 0
    await send({"type": "http.response.start", "status": 200,
                "headers": _headers(b"application/octet-stream", None)})
    sent = 0
    try:
        while sent < size:
            n = min(chunk, size - sent)
            STREAMS[port] = sent + n  # counted before the await: a waiting send holds its chunk
            await send({"type": "http.response.body", "body": b"s" * n, "more_body": True})
            sent += n
        await send({"type": "http.response.body", "body": b""})
    finally:
        STREAMS.pop(port, None)


async def _lifespan(receive, send) -> None:
    pid = os.getpid()
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            if os.environ.get("CHAOS_LEAK_LIFESPAN") == "1":
                _leak(1, stubborn=False)
            _log(f"startup [{pid}]")
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            line = ""
            for rid in SEEN:
                if len(line) + len(rid) > 3900:
                    _log(f"seen [{pid}] {line}")
                    line = ""
                line += ("," if line else "") + rid
            if line:
                _log(f"seen [{pid}] {line}")
            _log(f"shutdown [{pid}]")
            await send({"type": "lifespan.shutdown.complete"})
            return


async def app(scope, receive, send) -> None:
    if scope["type"] == "lifespan":
        await _lifespan(receive, send)
        return
    if scope["type"] != "http":
        return
    for name, value in scope["headers"]:
        if name == b"x-request-id":
            SEEN.append(value.decode("latin-1"))
            break
    body = await _read_body(receive)
    if body is None:
        return
    path = scope["path"]
    if path == "/":
        await _respond(send, HELLO)
    elif path == "/json":
        await _respond(send, JSON_BODY, b"application/json")
    elif path == "/echo":
        await _respond(send, body, b"application/octet-stream")
    elif path == "/pid":
        await _respond(send, str(os.getpid()).encode())
    elif path == "/slow":
        await asyncio.sleep(float(_query(scope).get("t", "1")))
        await _respond(send, str(os.getpid()).encode())
    elif path == "/block":
        seconds = float(_query(scope).get("t", "3"))
        _log(f"block start {seconds} [{os.getpid()}]")
        block_the_loop(seconds)
        await _respond(send, str(os.getpid()).encode())
    elif path == "/stream":
        await _stream(scope, send)
    elif path == "/stats":
        stats = {"pid": os.getpid(), "streams": STREAMS, "leaked": len(_LEAKED)}
        await _respond(send, json.dumps(stats).encode(), b"application/json")
    elif path == "/leak":
        query = _query(scope)
        _leak(int(query.get("n", "1")), stubborn=query.get("stubborn") == "1")
        await _respond(send, b"leaked")
    elif path == "/forever":
        await asyncio.Event().wait()
    else:
        await _respond(send, b"not found", status=404)
