from __future__ import annotations

import logging
from typing import Any

from cppuvicorn.logging import TRACE_LOG_LEVEL

_PLACEHOLDERS = {
    "body": "<{length} bytes>",
    "bytes": "<{length} bytes>",
    "text": "<{length} chars>",
    "headers": "<...>",
}


def message_with_placeholders(message: Any) -> Any:
    """Copy of an ASGI message (or scope) with bodies and headers replaced by placeholders."""
    new_message = message.copy()
    for key, placeholder in _PLACEHOLDERS.items():
        if message.get(key) is not None:
            new_message[key] = placeholder.format(length=len(message[key]))
    return new_message


class MessageLoggerMiddleware:
    """``--log-level trace``: log every ASGI scope and message on the ``uvicorn.asgi`` logger."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.task_counter = 0
        self.logger = logging.getLogger("uvicorn.asgi")

    def trace(self, msg: str, *args: Any) -> None:
        self.logger.log(TRACE_LOG_LEVEL, msg, *args)

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        self.task_counter += 1
        task_id = self.task_counter
        client = scope.get("client")
        prefix = f"{client[0]}:{client[1]} - ASGI" if client else "ASGI"

        async def inner_receive() -> Any:
            message = await receive()
            self.trace("%s [%d] Receive %s", prefix, task_id, message_with_placeholders(message))
            return message

        async def inner_send(message: Any) -> None:
            self.trace("%s [%d] Send %s", prefix, task_id, message_with_placeholders(message))
            await send(message)

        self.trace("%s [%d] Started scope=%s", prefix, task_id, message_with_placeholders(scope))
        try:
            await self.app(scope, inner_receive, inner_send)
        except BaseException as exc:
            self.trace("%s [%d] Raised exception", prefix, task_id)
            raise exc from None
        else:
            self.trace("%s [%d] Completed", prefix, task_id)
