"""run_asgi: the coroutine each request's asyncio Task runs around the application; ws_task_done:
the same policy for a WebSocket session, as its Task's done callback.

Error policy as Uvicorn's (``protocols/http/httptools_impl.py``): an exception before the
response started becomes a 500; after it, the connection is closed; either way the traceback
goes to the ``uvicorn.error`` log and the worker carries on.
"""

from __future__ import annotations

import logging

from ._exceptions import ClientDisconnected

logger = logging.getLogger("uvicorn.error")

_500_START = {
    "type": "http.response.start",
    "status": 500,
    "headers": [
        (b"content-type", b"text/plain; charset=utf-8"),
        (b"content-length", b"21"),
        (b"connection", b"close"),
    ],
}
_500_BODY = {"type": "http.response.body", "body": b"Internal Server Error", "more_body": False}


async def _send_500(send) -> None:
    await send(_500_START)
    await send(_500_BODY)


async def run_asgi(app, scope, receive, send) -> None:
    try:
        result = await app(scope, receive, send)
    except BaseException as exc:  # noqa: BLE001 - Uvicorn logs and survives everything here
        logger.error("Exception in ASGI application\n", exc_info=exc)
        if not send.response_started:
            await _send_500(send)
        else:
            send.abort()
    else:
        if result is not None:
            logger.error("ASGI callable should return None, but returned '%s'.", result)
            send.abort()
        elif not send.response_started and not send.disconnected:
            logger.error("ASGI callable returned without starting response.")
            await _send_500(send)
        elif not send.response_complete and not send.disconnected:
            logger.error("ASGI callable returned without completing response.")
            send.abort()
    finally:
        send.finish()


def ws_task_done(send, outcome) -> None:
    """The end of one WebSocket session's app call (Uvicorn's ``websockets_sansio_impl.run_asgi``
    policy). The session's Task runs the app's coroutine directly and calls this when done;
    ``outcome`` is that Task, or the exception the call raised before any Task existed.

    An exception before the handshake was answered becomes a 500 response; after the accept,
    the session is closed with 1011. ``ClientDisconnected`` escaping the app is not an error.
    ``send.finish`` also closes a session the app left open (1000).
    """
    result = exc = None
    if isinstance(outcome, BaseException):
        exc = outcome
    elif outcome.cancelled():
        try:
            outcome.result()
        except BaseException as cancelled:  # noqa: BLE001 - CancelledError, logged as Uvicorn does
            exc = cancelled
    else:
        exc = outcome.exception()
        if exc is None:
            result = outcome.result()
    error = False
    if exc is not None:
        if not isinstance(exc, ClientDisconnected):
            logger.error("Exception in ASGI application\n", exc_info=exc)
            error = True
    elif not send.handshake_complete:
        logger.error("ASGI callable returned without completing handshake.")
        error = True
    elif result is not None:
        logger.error("ASGI callable should return None, but returned '%s'.", result)
    send.finish(error)


async def await_ws(awaitable):
    """A coroutine for an app call that returned another kind of awaitable (or none at all:
    awaiting it raises TypeError, which ws_task_done logs as Uvicorn would)."""
    return await awaitable
