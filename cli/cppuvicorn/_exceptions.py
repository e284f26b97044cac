"""Exceptions cppuvicorn raises into applications.

``ClientDisconnected`` is what ``await send(...)`` raises on a WebSocket whose client is gone
(or closed the session first), as Uvicorn's ``uvicorn.protocols.utils.ClientDisconnected``. It
is an ``OSError`` subclass, which is what the ASGI spec (2.4) lets servers raise and what
Starlette turns into ``WebSocketDisconnect(1006)``.
"""

from __future__ import annotations


class ClientDisconnected(OSError):
    """The client is no longer connected; the message was not sent."""
