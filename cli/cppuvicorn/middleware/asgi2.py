from __future__ import annotations

from typing import Any


class ASGI2Middleware:
    """Adapts an ASGI2 application (``app(scope)`` returning ``instance(receive, send)``) to ASGI3."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        instance = self.app(scope)
        await instance(receive, send)
