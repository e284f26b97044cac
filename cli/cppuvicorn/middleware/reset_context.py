from __future__ import annotations

import asyncio
import contextvars
from typing import Any


class ResetContextVarsMiddleware:
    """``--reset-contextvars``: run each HTTP/WebSocket request in a fresh ``contextvars.Context``.

    The lifespan keeps the current context. Cancelling the outer task cancels the request task.
    """

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            return await self.app(scope, receive, send)
        loop = asyncio.get_running_loop()
        await loop.create_task(self.app(scope, receive, send), context=contextvars.Context())
