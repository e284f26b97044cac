"""Lifespan variants. Each app logs what it sees with an ``APP:`` prefix on stderr, so tests can
check the order of the app's events against the server's own log lines."""

from __future__ import annotations

import json
import sys


def _log(line: str) -> None:
    print(f"APP: {line}", file=sys.stderr, flush=True)


async def _hello(scope, receive, send, body: bytes = b"hello") -> None:
    while True:
        message = await receive()
        if message["type"] == "http.disconnect" or not message.get("more_body", False):
            break
    content_type = b"application/json" if body.startswith(b"{") else b"text/plain"
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", content_type), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


async def ok(scope, receive, send):
    """Startup and shutdown complete normally; state is filled at startup."""
    if scope["type"] == "lifespan":
        assert scope["asgi"]["spec_version"] == "2.0", scope
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                _log("startup")
                scope["state"]["db"] = "connected"
                scope["state"]["items"] = [1, 2]
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                _log("shutdown")
                await send({"type": "lifespan.shutdown.complete"})
                return
    body = json.dumps({"state": scope.get("state"), "has_state": "state" in scope}, sort_keys=True)
    await _hello(scope, receive, send, body.encode())


async def startup_failed(scope, receive, send):
    """Sends lifespan.startup.failed with a message."""
    if scope["type"] == "lifespan":
        message = await receive()
        assert message["type"] == "lifespan.startup"
        _log("startup (will fail)")
        await send({"type": "lifespan.startup.failed", "message": "database unreachable"})
        return
    await _hello(scope, receive, send)


async def startup_raises(scope, receive, send):
    """Raises while handling lifespan.startup."""
    if scope["type"] == "lifespan":
        message = await receive()
        assert message["type"] == "lifespan.startup"
        _log("startup (will raise)")
        raise ValueError("lifespan startup exploded")
    await _hello(scope, receive, send)


async def unsupported(scope, receive, send):
    """A typical app that only knows HTTP: raises on any other scope type."""
    if scope["type"] != "http":
        raise RuntimeError(f"unsupported scope type {scope['type']!r}")
    await _hello(scope, receive, send, json.dumps({"has_state": "state" in scope, "state": scope.get("state")}).encode())


async def shutdown_failed(scope, receive, send):
    """Starts fine, fails the shutdown."""
    if scope["type"] == "lifespan":
        message = await receive()
        await send({"type": "lifespan.startup.complete"})
        message = await receive()
        assert message["type"] == "lifespan.shutdown"
        _log("shutdown (will fail)")
        await send({"type": "lifespan.shutdown.failed", "message": "could not flush"})
        return
    await _hello(scope, receive, send)
