"""fastapi_app's FastAPI application plus what the gunicorn worker tests need: the worker's
pid, a handler that blocks the event loop and a slow one that does not."""

from __future__ import annotations

import asyncio
import os
import time

from fastapi_app import app


@app.get("/pid")
async def pid():
    return {"pid": os.getpid()}


@app.get("/block")
async def block(seconds: float = 1.0):
    time.sleep(seconds)  # blocks the event loop: no heartbeat to the arbiter meanwhile
    return {"pid": os.getpid(), "blocked": seconds}


@app.get("/slow")
async def slow(seconds: float = 1.0):
    await asyncio.sleep(seconds)
    return {"pid": os.getpid(), "slept": seconds}
