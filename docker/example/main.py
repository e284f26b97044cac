"""The example app of the cppuvicorn image (docker/Dockerfile, target `example`), as compose.yaml
and docker/k8s run it behind a load balancer.

- ``GET /healthz``: the probe endpoint (image HEALTHCHECK, Kubernetes readiness and liveness).
- ``GET /``: who the server thinks the client is, so the proxy headers can be seen working:
  ``client`` and ``scheme`` come from X-Forwarded-For/-Proto when the peer is trusted
  (--forwarded-allow-ips); ``pid`` tells the replicas apart.
- ``WS /ws``: sends the same document, then echoes every message back.
"""

from __future__ import annotations

import os

from fastapi import FastAPI, Request, WebSocket, WebSocketDisconnect

app = FastAPI(title="cppuvicorn example")


def whoami(scope) -> dict:
    client = scope.get("client")
    return {"client": list(client) if client else None, "scheme": scope["scheme"], "pid": os.getpid()}


@app.get("/healthz")
async def healthz() -> dict:
    return {"status": "ok"}


@app.get("/")
async def root(request: Request) -> dict:
    return whoami(request.scope)


@app.websocket("/ws")
async def ws(websocket: WebSocket) -> None:
    await websocket.accept()
    await websocket.send_json(whoami(websocket.scope))
    try:
        while True:
            message = await websocket.receive()
            if message["type"] == "websocket.disconnect":
                return
            if message.get("text") is not None:
                await websocket.send_text(message["text"])
            else:
                await websocket.send_bytes(message["bytes"])
    except WebSocketDisconnect:
        pass
