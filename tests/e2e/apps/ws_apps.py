"""Raw ASGI WebSocket applications for the e2e suite (run by cppuvicorn and by uvicorn alike).

Routing is by ``scope["path"]``. What the app observes (disconnect codes, exceptions raised by
``send``) is printed as ``APP: ...`` lines on stderr, next to the server's own log lines, so tests
can compare what both servers delivered to the application.
"""

from __future__ import annotations

import asyncio
import json
import sys
import urllib.parse


def _log(line: str) -> None:
    print(f"APP: {line}", file=sys.stderr, flush=True)


def _query(scope) -> dict[str, str]:
    return dict(urllib.parse.parse_qsl(scope["query_string"].decode("latin-1")))


def _jsonable(value):
    if isinstance(value, bytes):
        return value.decode("latin-1")
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    return value


async def _connect(receive) -> None:
    message = await receive()
    assert message == {"type": "websocket.connect"}, message


async def _echo_until_disconnect(receive, send) -> dict:
    while True:
        message = await receive()
        if message["type"] == "websocket.disconnect":
            _log(f"disconnect code={message.get('code')} reason={message.get('reason', '')!r}")
            return message
        if message.get("text") is not None:
            await send({"type": "websocket.send", "text": message["text"]})
        else:
            await send({"type": "websocket.send", "bytes": message["bytes"]})


async def _send_after(receive, send, msg) -> None:
    try:
        await send(msg)
    except Exception as exc:  # noqa: BLE001 - what is raised is the point of the test
        _log(f"send raised {type(exc).__name__} isinstance(OSError)={isinstance(exc, OSError)} "
             f"str={str(exc)!r}")
    else:
        _log("send returned")


async def app(scope, receive, send) -> None:
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                scope["state"]["from_lifespan"] = "yes"
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    if scope["type"] == "http":
        body = b"plain http " + scope["path"].encode()
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"text/plain"), (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})
        return
    assert scope["type"] == "websocket", scope["type"]
    path = scope["path"]
    root = scope.get("root_path", "")
    if root and path.startswith(root):
        path = path[len(root):]
    q = _query(scope)

    if path == "/echo":
        await _connect(receive)
        await send({"type": "websocket.accept"})
        await _echo_until_disconnect(receive, send)

    elif path == "/scope":
        await _connect(receive)
        await send({"type": "websocket.accept"})
        doc = {k: _jsonable(v) for k, v in scope.items() if k not in ("state",)}
        doc["state"] = sorted(scope.get("state", {}))
        await send({"type": "websocket.send", "text": json.dumps(doc, sort_keys=True)})
        await _echo_until_disconnect(receive, send)

    elif path == "/subprotocol":
        await _connect(receive)
        offered = scope["subprotocols"]
        await send({"type": "websocket.accept", "subprotocol": offered[-1] if offered else None,
                    "headers": [(b"x-extra", b"yes"), (b"Set-Cookie", b"a=b")]})
        await send({"type": "websocket.send", "text": json.dumps(offered)})
        await _echo_until_disconnect(receive, send)

    elif path == "/reject":
        await _connect(receive)
        await send({"type": "websocket.close"})
        msg = await receive()
        _log(f"after reject receive {msg}")

    elif path == "/reject-no-receive":
        await send({"type": "websocket.close", "code": 4001})

    elif path == "/raise-before-accept":
        await _connect(receive)
        raise RuntimeError("boom before accept")

    elif path == "/raise-after-accept":
        await _connect(receive)
        await send({"type": "websocket.accept"})
        raise RuntimeError("boom after accept")

    elif path == "/return-before-accept":
        await _connect(receive)
        return

    elif path == "/return-after-accept":
        await _connect(receive)
        await send({"type": "websocket.accept"})
        return

    elif path == "/return-value":
        await _connect(receive)
        await send({"type": "websocket.accept"})
        await send({"type": "websocket.send", "text": "hi"})
        return 42  # noqa: B901 - deliberately wrong

    elif path == "/deny":
        await _connect(receive)
        status = int(q.get("status", "401"))
        headers = [(b"x-denied", b"1"), (b"content-type", b"application/json")]
        if "length" in q:
            headers.append((b"content-length", q["length"].encode()))
        await send({"type": "websocket.http.response.start", "status": status, "headers": headers})
        await send({"type": "websocket.http.response.body", "body": b'{"denied":', "more_body": True})
        if "length" in q:
            await _send_after(receive, send, {"type": "websocket.http.response.body", "body": b"true}"})
        else:
            await send({"type": "websocket.http.response.body", "body": b"true}"})
        if q.get("then") == "send":
            await _send_after(receive, send, {"type": "websocket.send", "text": "late"})

    elif path == "/close":
        await _connect(receive)
        await send({"type": "websocket.accept"})
        msg = {"type": "websocket.close"}
        if "code" in q:
            msg["code"] = int(q["code"])
        if "reason" in q:
            msg["reason"] = q["reason"]
        await send(msg)
        if q.get("then") == "send":
            await _send_after(receive, send, {"type": "websocket.send", "text": "late"})
        message = await receive()
        _log(f"after close receive {message}")

    elif path == "/send-after-disconnect":
        await _connect(receive)
        await send({"type": "websocket.accept"})
        message = await receive()
        _log(f"received {message}")
        await asyncio.sleep(float(q.get("sleep", "0.2")))
        await _send_after(receive, send, {"type": "websocket.send", "text": "late"})

    elif path == "/bad-message":
        await _connect(receive)
        if q.get("when") == "after":
            await send({"type": "websocket.accept"})
        await _send_after(receive, send, {"type": "websocket.bogus"})
        if q.get("when") == "after":
            await send({"type": "websocket.close"})
        else:
            await send({"type": "websocket.accept"})
            await send({"type": "websocket.close"})

    elif path == "/stream":
        # Sends `n` messages of `size` bytes as fast as send() lets it, then closes.
        await _connect(receive)
        await send({"type": "websocket.accept"})
        n, size = int(q.get("n", "100")), int(q.get("size", "65536"))
        chunk = b"x" * size
        for _ in range(n):
            await send({"type": "websocket.send", "bytes": chunk})
        await send({"type": "websocket.close", "code": 1000, "reason": "done"})
        _log("stream done")

    elif path == "/slow-reader":
        # Accepts, then reads nothing for `sleep` seconds, then counts what arrived.
        await _connect(receive)
        await send({"type": "websocket.accept"})
        await asyncio.sleep(float(q.get("sleep", "1")))
        count = 0
        while True:
            message = await receive()
            if message["type"] == "websocket.disconnect":
                break
            count += 1
            if message.get("text") == "end":
                await send({"type": "websocket.send", "text": f"count={count}"})
        _log(f"slow reader got {count}")

    elif path == "/wait":
        # Accepts and waits for the disconnect (shutdown and keepalive tests).
        await _connect(receive)
        if q.get("accept", "1") == "1":
            await send({"type": "websocket.accept"})
        else:
            await asyncio.sleep(float(q.get("sleep", "1")))
            await _send_after(receive, send, {"type": "websocket.accept"})
            return
        message = await receive()
        _log(f"wait got {message}")

    else:
        await _connect(receive)
        await send({"type": "websocket.close", "code": 1008})


# ---------------------------------------------------------------- frameworks

from fastapi import FastAPI, WebSocket, WebSocketDisconnect  # noqa: E402
from starlette.applications import Starlette  # noqa: E402
from starlette.endpoints import WebSocketEndpoint  # noqa: E402
from starlette.routing import WebSocketRoute  # noqa: E402

fastapi_app = FastAPI()


@fastapi_app.websocket("/chat/{room}")
async def fastapi_chat(websocket: WebSocket, room: str, token: str = "none"):
    await websocket.accept(subprotocol="chat" if "chat" in websocket.scope["subprotocols"] else None)
    await websocket.send_json({"room": room, "token": token})
    try:
        while True:
            data = await websocket.receive_text()
            if data == "close":
                await websocket.close(code=4000, reason="asked")
                return
            await websocket.send_text(f"{room}: {data}")
    except WebSocketDisconnect as exc:
        _log(f"fastapi disconnect code={exc.code}")


@fastapi_app.websocket("/deny")
async def fastapi_deny(websocket: WebSocket):
    await websocket.close(code=1008)


@fastapi_app.websocket("/boom")
async def fastapi_boom(websocket: WebSocket):
    await websocket.accept()
    raise ValueError("fastapi boom")


class Echo(WebSocketEndpoint):
    encoding = "bytes"

    async def on_receive(self, websocket, data):
        await websocket.send_bytes(data[::-1])

    async def on_disconnect(self, websocket, close_code):
        _log(f"starlette disconnect code={close_code}")


async def starlette_json(websocket):
    await websocket.accept()
    async for message in websocket.iter_json():
        await websocket.send_json({"got": message})


starlette_app = Starlette(routes=[WebSocketRoute("/echo", Echo), WebSocketRoute("/json", starlette_json)])


def sync_app(scope, receive, send):
    """Served with --interface asgi3: a plain function, so the call itself raises (HTTP and
    lifespan too), or, for /future, returns an awaitable that is not a coroutine."""
    if scope["type"] == "websocket" and scope["path"] == "/future":
        return _accept_and_close(receive, send).__await__()  # an iterator: not awaitable
    if scope["type"] == "websocket" and scope["path"] == "/task":
        return asyncio.ensure_future(_accept_and_close(receive, send))
    raise RuntimeError(f"sync boom {scope['type']}")


async def _accept_and_close(receive, send):
    assert (await receive())["type"] == "websocket.connect"
    await send({"type": "websocket.accept"})
    await send({"type": "websocket.close", "code": 4001})
