"""ASGI app for tests/e2e/test_hardening.py: reports what the application saw of a request body
(how many bytes, and whether it ended in http.disconnect) on stderr."""

from __future__ import annotations

import sys


def _log(line: str) -> None:
    print(f"APP: {line}", file=sys.stderr, flush=True)


async def app(scope, receive, send) -> None:
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    path = scope["path"]
    _log(f"request {scope['method']} {path}")
    total = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            _log(f"{path} disconnect after {total} bytes")
            return
        total += len(message.get("body", b""))
        if not message.get("more_body", False):
            break
    body = b"%d bytes" % total
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"text/plain"), (b"content-length", b"%d" % len(body))]})
    await send({"type": "http.response.body", "body": body})
