#!/usr/bin/env python3
"""Calls an ASGI app N times with no server around it: the floor a server's per-request cost
sits on (benchmarks/callgrind.py's `*-alone` arms run this under callgrind).

    python benchmarks/app_alone.py MODULE:ATTR N

Each call runs in its own asyncio Task on uvloop (as every server here runs requests), with a
copy of the scope cppuvicorn builds for `GET / HTTP/1.1` from benchmarks/callgrind.py's client;
receive() returns an empty body, send() keeps the status. Exits 1 unless every call answered
200. A Task whose app never answers makes the driver spin: use it with apps that answer.
"""
from __future__ import annotations

import asyncio
import importlib
import sys

import uvloop

SCOPE = {
    "type": "http", "asgi": {"version": "3.0", "spec_version": "2.3"}, "http_version": "1.1",
    "server": ("127.0.0.1", 8000), "client": ("127.0.0.1", 50000), "scheme": "http",
    "root_path": "", "headers": [(b"host", b"127.0.0.1")], "method": "GET", "path": "/",
    "raw_path": b"/", "query_string": b"", "extensions": {"http.response.pathsend": {}},
}
REQUEST = {"type": "http.request", "body": b"", "more_body": False}


STATUSES: list[int] = []  # one per http.response.start
DONE = [0]  # responses whose last body message was sent


async def receive():
    return REQUEST


async def send(message):
    if message["type"] == "http.response.start":
        STATUSES.append(message["status"])
    elif not message.get("more_body", False):
        DONE[0] += 1


async def main(app, n: int) -> None:
    # As lean as the driver can be: one Task per call straight on the app's coroutine, nothing
    # awaits it; the driver yields once per batch. Its own cost per call is the scope copy.
    loop = asyncio.get_running_loop()
    batch = 64
    for i in range(0, n, batch):
        for _ in range(min(batch, n - i)):
            loop.create_task(app(dict(SCOPE, state={}), receive, send))
        while DONE[0] < min(i + batch, n):
            await asyncio.sleep(0)


if __name__ == "__main__":
    module, _, attr = sys.argv[1].partition(":")
    n = int(sys.argv[2])
    app = getattr(importlib.import_module(module), attr or "app")
    uvloop.run(main(app, n))
    if len(STATUSES) != n or set(STATUSES) != {200}:
        sys.exit(f"expected {n} answers of 200, got {len(STATUSES)}: {sorted(set(STATUSES))}")
