"""Apps for the multi-process supervisor tests (``--workers N``).

``app`` routes:
  ``/pid``            the worker's pid as text (which worker served the request)
  ``/block?t=S``      blocks the event loop with ``time.sleep(S)`` in ``block_the_loop``
                      (the function name the blocked-loop test looks for in the stack dump)
  ``/slow?t=S``       ``await asyncio.sleep(S)``, then answers with the pid
Lifespan: logs ``APP: startup [pid]`` / ``APP: shutdown [pid]``; fails the startup (with
``lifespan.startup.failed``) when the environment variable ``SUPERVISOR_APP_FAIL_STARTUP`` is set,
or when the file named by ``SUPERVISOR_APP_FAIL_FILE`` exists (a broken deploy, for SIGHUP).

``blocking_sleep`` / ``async_sleep`` are the two handlers of ``benchmarks/blocking_demo.py``
(``?t=S`` seconds, default 10).
"""

from __future__ import annotations

import asyncio
import os
import time
import urllib.parse


def _log(line: str) -> None:
    # One write(2) per line: several workers share the parent's stderr pipe.
    os.write(2, f"APP: {line}\n".encode())


def _seconds(scope, default: float) -> float:
    query = dict(urllib.parse.parse_qsl(scope.get("query_string", b"").decode("latin-1")))
    return float(query.get("t", default))


async def _drain(receive) -> None:
    while True:
        message = await receive()
        if message["type"] == "http.disconnect" or not message.get("more_body", False):
            return


async def _respond(send, body: bytes, status: int = 200) -> None:
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"text/plain"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


def block_the_loop(seconds: float) -> None:
    """A handler mistake: a blocking call on the event loop thread."""
    time.sleep(seconds)


async def _lifespan(scope, receive, send) -> None:
    pid = os.getpid()
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            fail_file = os.environ.get("SUPERVISOR_APP_FAIL_FILE")
            if os.environ.get("SUPERVISOR_APP_FAIL_STARTUP") or (fail_file and os.path.exists(fail_file)):
                _log(f"startup failing [{pid}]")
                await send({"type": "lifespan.startup.failed", "message": "startup failed on purpose"})
                return
            _log(f"startup [{pid}]")
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            _log(f"shutdown [{pid}]")
            await send({"type": "lifespan.shutdown.complete"})
            return


async def app(scope, receive, send) -> None:
    if scope["type"] == "lifespan":
        await _lifespan(scope, receive, send)
        return
    assert scope["type"] == "http"
    await _drain(receive)
    path = scope["path"]
    pid = str(os.getpid()).encode()
    if path == "/pid":
        await _respond(send, pid)
    elif path == "/block":
        t = _seconds(scope, 3.0)
        _log(f"block start {t} [{os.getpid()}]")
        block_the_loop(t)
        await _respond(send, pid)
    elif path == "/slow":
        t = _seconds(scope, 1.0)
        _log(f"slow start {t} [{os.getpid()}]")
        await asyncio.sleep(t)
        _log(f"slow done [{os.getpid()}]")
        await _respond(send, b"slow " + pid)
    else:
        await _respond(send, b"not found", 404)


async def blocking_sleep(scope, receive, send) -> None:
    """``time.sleep``: the whole worker is busy for the duration."""
    if scope["type"] != "http":
        return
    await _drain(receive)
    time.sleep(_seconds(scope, 10.0))
    await _respond(send, b"done")


async def async_sleep(scope, receive, send) -> None:
    """``await asyncio.sleep``: the worker keeps serving other requests meanwhile."""
    if scope["type"] != "http":
        return
    await _drain(receive)
    await asyncio.sleep(_seconds(scope, 10.0))
    await _respond(send, b"done")
