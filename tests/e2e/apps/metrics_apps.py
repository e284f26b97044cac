"""App for the ``--metrics-port`` tests: known statuses, a slow request and a WebSocket echo.

Routes: ``/ok`` 200, ``/missing`` 404, ``/error`` raises (the server answers 500),
``/slow?t=S`` sleeps S seconds then 200, ``/block?t=S`` blocks the event loop (``time.sleep``);
any WebSocket path echoes text messages. Lifespan logs ``APP: startup [pid]`` like
``supervisor_apps`` (its test helpers wait for that line).
"""

from __future__ import annotations

import asyncio
import os
import time
import urllib.parse


async def _lifespan(receive, send) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            os.write(2, f"APP: startup [{os.getpid()}]\n".encode())
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


async def _text(send, status: int, body: bytes) -> None:
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"text/plain"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


async def app(scope, receive, send) -> None:
    if scope["type"] == "lifespan":
        await _lifespan(receive, send)
        return
    if scope["type"] == "websocket":
        await receive()  # websocket.connect
        await send({"type": "websocket.accept"})
        while True:
            message = await receive()
            if message["type"] == "websocket.disconnect":
                return
            await send({"type": "websocket.send", "text": message.get("text") or ""})
    path = scope["path"]
    query = dict(urllib.parse.parse_qsl(scope["query_string"].decode("latin-1")))
    if path == "/ok":
        await _text(send, 200, b"ok")
    elif path == "/error":
        raise RuntimeError("metrics test: a failing handler")
    elif path == "/slow":
        await asyncio.sleep(float(query.get("t", "1")))
        await _text(send, 200, b"slow")
    elif path == "/block":
        time.sleep(float(query.get("t", "10")))
        await _text(send, 200, b"blocked")
    else:
        await _text(send, 404, b"missing")
