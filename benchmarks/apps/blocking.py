"""Raw ASGI, for ``benchmarks/blocking_demo.py``: a handler that takes ``?t=S`` seconds (default 10).

``blocking``:     ``time.sleep(S)`` — the worker's event loop, and so the whole worker, is busy.
``nonblocking``:  ``await asyncio.sleep(S)`` — the worker keeps serving other requests meanwhile.

Both answer with the pid of the worker that served the request.
"""
import asyncio
import os
import time
import urllib.parse


def _seconds(scope) -> float:
    query = dict(urllib.parse.parse_qsl(scope["query_string"].decode("latin-1")))
    return float(query.get("t", "10"))


async def _lifespan(receive, send):
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


async def _respond(send):
    body = str(os.getpid()).encode()
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"text/plain"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


async def blocking(scope, receive, send):
    if scope["type"] == "lifespan":
        await _lifespan(receive, send)
        return
    time.sleep(_seconds(scope))
    await _respond(send)


async def nonblocking(scope, receive, send):
    if scope["type"] == "lifespan":
        await _lifespan(receive, send)
        return
    await asyncio.sleep(_seconds(scope))
    await _respond(send)
