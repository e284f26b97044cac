"""A raw ASGI 3 application exercising every corner of the HTTP/1.1 and lifespan protocols.

Routing is by ``scope["path"]`` (after root_path is stripped, see ``_route``). Everything the app
catches while misbehaving on purpose is recorded in ``CAUGHT`` and can be read back with
``GET /caught/<name>`` on the same server process, so tests can see what happened inside ``send``.
"""

from __future__ import annotations

import asyncio
import json
import sys
import urllib.parse

CAUGHT: dict[str, list[str]] = {}
PROGRESS: dict[str, int] = {}


def _log(line: str) -> None:
    # Unbuffered, one line per event, on stderr next to the server's own log lines.
    print(f"APP: {line}", file=sys.stderr, flush=True)


def _jsonable(value):
    if isinstance(value, bytes):
        return value.decode("latin-1")
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    return value


def _query(scope) -> dict[str, str]:
    return dict(urllib.parse.parse_qsl(scope["query_string"].decode("latin-1")))


async def _read_body(receive) -> bytes:
    chunks = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            break
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            break
    return b"".join(chunks)


async def _respond(send, status=200, body=b"", headers=None, content_type=b"text/plain"):
    hdrs = [(b"content-type", content_type), (b"content-length", str(len(body)).encode())]
    hdrs += headers or []
    await send({"type": "http.response.start", "status": status, "headers": hdrs})
    await send({"type": "http.response.body", "body": body})


async def _respond_json(send, obj, status=200):
    await _respond(send, status, json.dumps(obj, sort_keys=True).encode(), content_type=b"application/json")


def _record(name: str, exc: BaseException) -> None:
    text = f"{type(exc).__name__}: {exc}"
    CAUGHT.setdefault(name, []).append(text)
    _log(f"caught in {name}: {text}")


# ---------------------------------------------------------------- invalid send() messages
# Each case sends something invalid, catches what send() raises, records it and then
# behaves as described. Nothing invalid may reach the wire.


async def _invalid(case: str, scope, receive, send) -> None:
    await _read_body(receive)
    ok_start = {"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"5")]}
    if case == "unknown-type-before-start":
        try:
            await send({"type": "http.response.bogus"})
        except RuntimeError as exc:
            _record(case, exc)
        # The response has not started: a normal response is still possible.
        await send(ok_start)
        await send({"type": "http.response.body", "body": b"fine!"})
    elif case == "body-before-start":
        try:
            await send({"type": "http.response.body", "body": b"early"})
        except RuntimeError as exc:
            _record(case, exc)
        await send(ok_start)
        await send({"type": "http.response.body", "body": b"fine!"})
    elif case in ("bad-header-name", "bad-header-name-colon", "bad-header-value-crlf", "bad-header-value-nul"):
        header = {
            "bad-header-name": (b"bad name", b"x"),
            "bad-header-name-colon": (b"bad:name", b"x"),
            "bad-header-value-crlf": (b"x-injected", b"a\r\nset-cookie: evil=1"),
            "bad-header-value-nul": (b"x-nul", b"a\x00b"),
        }[case]
        try:
            await send({"type": "http.response.start", "status": 200, "headers": [header, (b"content-length", b"0")]})
        except RuntimeError as exc:
            _record(case, exc)
        # Return here: what the server does with a half-started response is compared.
    elif case == "bad-header-then-body":
        try:
            await send({"type": "http.response.start", "status": 200, "headers": [(b"bad name", b"x")]})
        except RuntimeError as exc:
            _record(case, exc)
        # The app carries on as if the head had gone out: nothing valid can follow it.
        await send({"type": "http.response.body", "body": b"", "more_body": False})
    elif case == "interim-status":
        try:
            await send({"type": "http.response.start", "status": 103, "headers": [(b"link", b"</a.css>")]})
        except RuntimeError as exc:
            _record(case, exc)
        # A 1xx is not an answer: the response has not started, so a real one still can.
        await send(ok_start)
        await send({"type": "http.response.body", "body": b"fine!"})
    elif case == "content-length-with-whitespace":
        # Not invalid: whitespace around a field value is not part of it.
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b" 5\t")]})
        await send({"type": "http.response.body", "body": b"fine!"})
    elif case == "body-longer-than-content-length":
        await send(ok_start)
        try:
            await send({"type": "http.response.body", "body": b"much too long"})
        except RuntimeError as exc:
            _record(case, exc)
        # Nothing of the long body was written, so a correct body still completes the response.
        await send({"type": "http.response.body", "body": b"fine!"})
    elif case == "body-shorter-than-content-length":
        await send(ok_start)
        try:
            await send({"type": "http.response.body", "body": b"abc", "more_body": False})
        except RuntimeError as exc:
            _record(case, exc)
        # Return with the response incomplete: the server must close, not pad or reuse.
    elif case == "unknown-type-after-start":
        await send(ok_start)
        try:
            await send({"type": "http.response.bogus"})
        except RuntimeError as exc:
            _record(case, exc)
        await send({"type": "http.response.body", "body": b"fine!"})
    elif case == "send-after-complete":
        await send(ok_start)
        await send({"type": "http.response.body", "body": b"fine!"})
        try:
            await send({"type": "http.response.body", "body": b"extra"})
        except RuntimeError as exc:
            _record(case, exc)
    else:
        await _respond(send, 404, b"unknown invalid case")


# ---------------------------------------------------------------- lifespan


async def _lifespan(scope, receive, send) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            _log("lifespan startup")
            scope["state"]["counter"] = 0
            scope["state"]["started_by"] = "raw_app"
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            _log("lifespan shutdown")
            await send({"type": "lifespan.shutdown.complete"})
            return


# ---------------------------------------------------------------- HTTP routes


async def app(scope, receive, send) -> None:
    if scope["type"] == "lifespan":
        await _lifespan(scope, receive, send)
        return
    assert scope["type"] == "http", scope["type"]
    path = scope["path"]
    root = scope.get("root_path", "")
    if root and path.startswith(root):
        path = path[len(root):]
    q = _query(scope)

    if path == "/" or path == "/hello":
        await _respond(send, 200, b"Hello, world!")
    elif path == "/scope" or path.startswith("/scope/"):
        body = await _read_body(receive)
        data = {k: _jsonable(v) for k, v in scope.items() if k != "state"}
        data["body_length"] = len(body)
        await _respond_json(send, data)
    elif path == "/echo":
        body = await _read_body(receive)
        await _respond(send, 200, body, content_type=b"application/octet-stream")
    elif path == "/echo-chunked":
        # Echo the body back in the pieces it arrived in, without a content-length.
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/octet-stream")]})
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            await send({"type": "http.response.body", "body": message.get("body", b""), "more_body": True})
            if not message.get("more_body", False):
                break
        await send({"type": "http.response.body", "body": b"", "more_body": False})
    elif path == "/stream":
        # 100 chunks of 1 KiB, no content-length: chunked transfer-encoding.
        count = int(q.get("n", "100"))
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
        for i in range(count):
            await send({"type": "http.response.body", "body": bytes([65 + i % 26]) * 1024, "more_body": True})
        await send({"type": "http.response.body", "body": b""})
    elif path == "/big":
        size = int(q.get("size", str(1 << 20)))
        body = bytes(i % 251 for i in range(size))
        if q.get("chunked"):
            await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/octet-stream")]})
            for off in range(0, size, 65536):
                await send({"type": "http.response.body", "body": body[off:off + 65536], "more_body": True})
            await send({"type": "http.response.body", "body": b""})
        else:
            await _respond(send, 200, body, content_type=b"application/octet-stream")
    elif path == "/body-sha":
        import hashlib

        body = await _read_body(receive)
        await _respond_json(send, {"length": len(body), "sha256": hashlib.sha256(body).hexdigest()})
    elif path.startswith("/status/"):
        status = int(path.rsplit("/", 1)[1])
        await _read_body(receive)
        headers = [(b"x-status", str(status).encode())]
        if q.get("etag"):
            headers.append((b"etag", b'"abc"'))
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": b""})
    elif path == "/headers":
        # Mixed-case response header names and repeated names.
        await _read_body(receive)
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [
                    (b"Content-Type", b"text/plain"),
                    (b"X-Mixed-Case", b"Value-Keeps-Case"),
                    (b"Set-Cookie", b"a=1; Path=/"),
                    (b"set-cookie", b"b=2; Path=/"),
                    (b"x-tab", b"a\tb"),
                    (b"Content-Length", b"2"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": b"ok"})
    elif path == "/app-server-header":
        await _respond(send, 200, b"ok", headers=[(b"server", b"my-app"), (b"x-app", b"1")])
    elif path == "/close":
        # The app asks for the connection to be closed after this response.
        await _respond(send, 200, b"bye", headers=[(b"connection", b"close")])
    elif path == "/head-no-length":
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
        await send({"type": "http.response.body", "body": b"body only for GET"})
    elif path == "/sleep":
        await _read_body(receive)
        delay = float(q.get("t", "1"))
        _log(f"sleep start {delay}")
        await asyncio.sleep(delay)
        _log("sleep done")
        await _respond(send, 200, f"slept {delay}".encode())
    elif path == "/slow-body":
        # Reads the body slowly: the server must buffer a bounded amount (backpressure) and
        # still deliver every byte in order.
        import hashlib

        digest = hashlib.sha256()
        total = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            digest.update(message.get("body", b""))
            total += len(message.get("body", b""))
            await asyncio.sleep(0.005)
            if not message.get("more_body", False):
                break
        await _respond_json(send, {"length": total, "sha256": digest.hexdigest()})
    elif path == "/produce":
        # Streams ``total`` bytes in 64 KiB chunks and records how many send() calls returned, so a
        # test can see whether send() waits for a client that does not read (write backpressure).
        total = int(q.get("total", str(64 << 20)))
        chunk = b"p" * 65536
        PROGRESS["produce"] = 0
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-length", str(total).encode())]})
        sent = 0
        while sent < total:
            piece = chunk[: min(65536, total - sent)]
            sent += len(piece)
            await send({"type": "http.response.body", "body": piece, "more_body": sent < total})
            PROGRESS["produce"] = sent
    elif path == "/progress":
        await _respond_json(send, PROGRESS)
    elif path == "/continue":
        # 100-continue reader: waits before the first receive(), so a server that sends
        # "100 Continue" eagerly is caught.
        await asyncio.sleep(float(q.get("delay", "0.3")))
        body = await _read_body(receive)
        await _respond(send, 200, b"got %d bytes" % len(body))
    elif path == "/no-read":
        # Answers without ever calling receive().
        await _respond(send, 200, b"did not read")
    elif path == "/raise-before":
        raise RuntimeError("boom before start")
    elif path == "/raise-after":
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
        await send({"type": "http.response.body", "body": b"partial", "more_body": True})
        raise RuntimeError("boom after start")
    elif path == "/no-response":
        await _read_body(receive)
        return
    elif path == "/incomplete":
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"10")]})
        await send({"type": "http.response.body", "body": b"12345", "more_body": True})
        return
    elif path.startswith("/invalid/"):
        await _invalid(path[len("/invalid/"):], scope, receive, send)
    elif path.startswith("/caught/"):
        name = path[len("/caught/"):]
        await _respond_json(send, CAUGHT.pop(name, []))
    elif path == "/wait-disconnect":
        # Consume the body, then wait for the client to go away; record the event.
        await _read_body(receive)
        message = await asyncio.wait_for(receive(), timeout=10)
        CAUGHT.setdefault("wait-disconnect", []).append(message["type"])
        _log(f"wait-disconnect got {message['type']}")
    elif path == "/state":
        # Each request gets a shallow copy of the lifespan state: changing it here must not
        # leak into the next request.
        state = scope.get("state")
        snapshot = dict(state) if state is not None else None
        if state is not None:
            state["counter"] = state.get("counter", 0) + 1
            state["mutated"] = True
        await _respond_json(send, {"state": snapshot, "has_state": "state" in scope})
    else:
        await _read_body(receive)
        await _respond(send, 404, b"Not Found")


def create_app():
    """Zero-argument factory for --factory."""
    _log("factory called")

    async def factory_app(scope, receive, send):
        if scope["type"] == "http" and scope["path"] == "/factory":
            await _read_body(receive)
            await _respond(send, 200, b"made by factory")
            return
        await app(scope, receive, send)

    return factory_app
