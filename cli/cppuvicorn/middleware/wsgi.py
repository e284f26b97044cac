"""Serve a WSGI application (PEP 3333) over ASGI: ``--interface wsgi``.

Unlike Uvicorn's deprecated ``WSGIMiddleware``, which reads the whole request body into memory
before calling the application and queues every response chunk without limit, both directions
stream here with backpressure:

* the application runs in a bounded thread pool (``threads``, 40 by default);
* ``wsgi.input`` pulls the request body from ASGI ``receive()`` one chunk at a time: a read that
  needs more data hands a ``receive()`` to the event loop and blocks the thread until the chunk
  has arrived. Nothing is read ahead, so a slow reader leaves the body in the core's small
  buffer, which then stops reading from the socket;
* response chunks are handed to a sender task on the event loop, which ``send()``s them in
  order (the core's ``send()`` waits while the socket's write buffer is full). The thread may
  run ahead of it by ``SEND_WINDOW`` bytes at most, then waits: a slow client pauses the
  application's iterable, while small chunks do not each cost a round trip between the thread
  and the loop. Once the client is gone, the next chunk raises ``ClientDisconnected`` (an
  ``OSError``) in the thread and the iterable is closed.

``send``/``receive`` are only ever called on the event loop thread.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Any
from urllib.parse import unquote_to_bytes

from cppuvicorn._exceptions import ClientDisconnected

DEFAULT_THREADS = 40
SEND_WINDOW = 64 * 1024  # response bytes a thread may queue ahead of what the loop has sent
_HALT_POLL = 0.5  # how often a thread waiting for the request body checks that the request still exists

logger = logging.getLogger("uvicorn.error")

Environ = dict[str, Any]
StartResponse = Callable[..., Callable[[bytes], None]]
WSGIApp = Callable[[Environ, StartResponse], Iterable[bytes]]


class WSGIMiddleware:
    def __init__(self, app: WSGIApp, threads: int = DEFAULT_THREADS) -> None:
        self.app = app
        self.executor = concurrent.futures.ThreadPoolExecutor(max_workers=threads, thread_name_prefix="wsgi")

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":  # lifespan (reported as unsupported, as by Uvicorn) or websocket
            raise RuntimeError(f"WSGI applications only serve HTTP, not {scope['type']!r}.")
        await _Request(self.app, scope, receive, send).run(self.executor)


class ErrorStream:
    """``wsgi.errors``: what the application writes goes to the ``uvicorn.error`` log, a record per line."""

    def __init__(self) -> None:
        self._pending = ""

    def write(self, text: str) -> None:
        *lines, self._pending = (self._pending + text).split("\n")
        for line in lines:
            logger.error(line)

    def writelines(self, lines: Iterable[str]) -> None:
        for text in lines:
            self.write(text)

    def flush(self) -> None:
        if self._pending:
            logger.error(self._pending)
            self._pending = ""


class InputStream:
    """``wsgi.input``: the request body, fetched chunk by chunk as the application reads it.

    ``fetch()`` returns ``(chunk, more)``; ``fetch=None`` is a request without a body.
    """

    def __init__(self, fetch: Callable[[], tuple[bytes, bool]] | None) -> None:
        self._fetch = fetch
        self._buffer = bytearray()

    def _fill(self) -> bool:
        """Append the next non-empty chunk to the buffer; False once the body is over."""
        while self._fetch is not None:
            chunk, more = self._fetch()
            if not more:
                self._fetch = None
            if chunk:
                self._buffer += chunk
                return True
        return False

    def _take(self, size: int) -> bytes:
        if size >= len(self._buffer):
            data = bytes(self._buffer)
            self._buffer.clear()
        else:
            data = bytes(self._buffer[:size])
            del self._buffer[:size]
        return data

    def read(self, size: int | None = -1) -> bytes:
        if size is None or size < 0:
            while self._fill():
                pass
            return self._take(len(self._buffer))
        while len(self._buffer) < size and self._fill():
            pass
        return self._take(size)

    def readline(self, size: int | None = -1) -> bytes:
        limit = None if size is None or size < 0 else size
        scanned = 0
        while True:
            newline = self._buffer.find(b"\n", scanned)
            if newline >= 0:
                end = newline + 1
                break
            if limit is not None and len(self._buffer) >= limit:
                end = limit
                break
            scanned = len(self._buffer)
            if not self._fill():
                end = len(self._buffer)
                break
        return self._take(end if limit is None else min(end, limit))

    def readlines(self, hint: int | None = -1) -> list[bytes]:
        lines, total = [], 0
        for line in self:
            lines.append(line)
            total += len(line)
            if hint is not None and 0 < hint <= total:
                break
        return lines

    def __iter__(self) -> Iterator[bytes]:
        while line := self.readline():
            yield line


def build_environ(scope: Any, wsgi_input: InputStream, errors: ErrorStream) -> Environ:
    """The PEP 3333 environ of an ASGI HTTP scope. Strings are "bytes as latin-1"."""
    script_name = scope.get("root_path", "").encode("utf-8")
    path = scope["path"].encode("utf-8")
    raw_path = scope.get("raw_path")
    if raw_path and b"%" in raw_path:
        # The exact bytes the client sent, even when they are not UTF-8 (scope["path"] has
        # U+FFFD there), as long as no middleware rewrote the path.
        exact = unquote_to_bytes(raw_path)
        if exact.decode("utf-8", "replace").encode("utf-8") == path:
            path = exact
    if script_name and path.startswith(script_name):
        path = path[len(script_name) :]

    server = scope.get("server") or ("localhost", 80)
    environ: Environ = {
        "REQUEST_METHOD": scope["method"],
        "SCRIPT_NAME": script_name.decode("latin-1"),
        "PATH_INFO": path.decode("latin-1"),
        "QUERY_STRING": scope["query_string"].decode("latin-1"),
        "SERVER_NAME": str(server[0]),
        "SERVER_PORT": str(server[1]),
        "SERVER_PROTOCOL": f"HTTP/{scope['http_version']}",
        "wsgi.version": (1, 0),
        "wsgi.url_scheme": scope.get("scheme", "http"),
        "wsgi.input": wsgi_input,
        "wsgi.input_terminated": True,  # the stream ends with the body, chunked requests included
        "wsgi.errors": errors,
        "wsgi.multithread": True,
        "wsgi.multiprocess": True,
        "wsgi.run_once": False,
    }
    client = scope.get("client")
    if client:
        environ["REMOTE_ADDR"] = client[0]
        environ["REMOTE_PORT"] = str(client[1])

    for raw_name, raw_value in scope["headers"]:
        name = raw_name.decode("latin-1")
        if "_" in name:
            # "X_Forwarded_For" would become the same key as "X-Forwarded-For": dropped, as by
            # gunicorn and nginx, so a client cannot pass one off as the other.
            continue
        key = name.upper().replace("-", "_")
        if key not in ("CONTENT_TYPE", "CONTENT_LENGTH"):
            key = "HTTP_" + key
        value = raw_value.decode("latin-1")
        if key in environ:
            value = environ[key] + ("; " if key == "HTTP_COOKIE" else ",") + value
        environ[key] = value
    return environ


def _has_body(environ: Environ) -> bool:
    return environ.get("CONTENT_LENGTH", "0") not in ("", "0") or "HTTP_TRANSFER_ENCODING" in environ


class _Request:
    """One request: the loop side (``run``, ``_sender``) and the thread side (``call_app``)."""

    def __init__(self, app: WSGIApp, scope: Any, receive: Any, send: Any) -> None:
        self.app = app
        self.scope = scope
        self.receive = receive
        self.send = send
        self.loop = asyncio.get_running_loop()
        self.status: int | None = None
        self.headers: list[tuple[bytes, bytes]] = []
        self.headers_sent = False
        # Response messages go from the thread to the loop through `outbox`, sent in order by
        # `_sender`. `window` guards `unsent` (the cost of what is queued and not yet sent) and
        # `halted` (why the thread must stop: client gone, send() failed, request over).
        self.outbox: asyncio.Queue[list[dict[str, Any]] | None] = asyncio.Queue()
        self.window = threading.Condition()
        self.unsent = 0
        self.halted: BaseException | None = None

    # ---- event loop side

    async def run(self, executor: concurrent.futures.Executor) -> None:
        sender = self.loop.create_task(self._sender())
        error: BaseException | None = None
        try:
            await self.loop.run_in_executor(executor, self.call_app)
        except ClientDisconnected:
            pass
        except asyncio.CancelledError:  # e.g. at shutdown, while the thread may still be running
            self._halt(ClientDisconnected("The request is over."))
            sender.cancel()
            raise
        except BaseException as exc:  # the application's: what it produced is sent first, as by Uvicorn
            error = exc
        self.outbox.put_nowait(None)  # after all the thread queued: call_soon_threadsafe is FIFO
        await sender
        if error is not None:
            raise error

    async def _sender(self) -> None:
        while (messages := await self.outbox.get()) is not None:
            if self.halted is not None:
                continue
            try:
                for message in messages:
                    await self.send(message)
            except BaseException as exc:
                self._halt(exc)
                raise
            if getattr(self.send, "disconnected", False):
                self._halt(ClientDisconnected("The client disconnected."))
            with self.window:
                self.unsent -= _cost(messages)
                self.window.notify()

    def _halt(self, reason: BaseException) -> None:
        with self.window:
            if self.halted is None:
                self.halted = reason
            self.window.notify_all()

    async def _receive(self) -> Any:
        return await self.receive()

    # ---- thread side

    def _emit(self, messages: list[dict[str, Any]], bounded: bool = True) -> None:
        """Queue messages for the loop to send; first wait while too much is unsent (backpressure)."""
        cost = _cost(messages)
        with self.window:
            while bounded and self.halted is None and self.unsent and self.unsent + cost > SEND_WINDOW:
                self.window.wait()
            if self.halted is not None:
                raise ClientDisconnected("The response can no longer be sent.")
            self.unsent += cost
        try:
            self.loop.call_soon_threadsafe(self.outbox.put_nowait, messages)
        except RuntimeError:  # the loop is closed
            raise ClientDisconnected("The server is gone.") from None

    def _fetch_body(self) -> tuple[bytes, bool]:
        """The next ``http.request`` message's body: run ``receive()`` on the loop and wait for it."""
        try:
            future = asyncio.run_coroutine_threadsafe(self._receive(), self.loop)
        except RuntimeError:  # the loop is closed
            raise ClientDisconnected("The server is gone.") from None
        while True:
            try:
                message = future.result(timeout=_HALT_POLL)
                break
            except TimeoutError:
                if future.done():  # receive() itself raised TimeoutError
                    raise
                if self.halted is not None:
                    future.cancel()
                    raise ClientDisconnected("The request is over.") from None
        if message["type"] != "http.request":
            raise ClientDisconnected("The client disconnected while sending the request body.")
        return message.get("body", b""), message.get("more_body", False)

    def _take_start(self) -> list[dict[str, Any]]:
        """The ``http.response.start`` message, the first time only."""
        if self.headers_sent:
            return []
        if self.status is None:
            raise RuntimeError("The WSGI application did not call start_response().")
        self.headers_sent = True
        return [{"type": "http.response.start", "status": self.status, "headers": self.headers}]

    def start_response(
        self, status: str, headers: list[tuple[str, str]], exc_info: Any = None
    ) -> Callable[[bytes], None]:
        if exc_info is not None:
            try:
                if self.headers_sent:
                    raise exc_info[1].with_traceback(exc_info[2])
            finally:
                exc_info = None  # no reference cycle through the traceback
        elif self.status is not None:
            raise RuntimeError("start_response() called again without exc_info.")
        self.status = int(status.split(" ", 1)[0])
        self.headers = [(name.encode("latin-1"), value.encode("latin-1")) for name, value in headers]
        return self.write

    def write(self, data: bytes) -> None:
        """The legacy ``write()`` callable start_response returns."""
        self._emit([*self._take_start(), _body(data, more=True)])

    def call_app(self) -> None:
        errors = ErrorStream()
        environ = build_environ(self.scope, InputStream(None), errors)
        if _has_body(environ):
            environ["wsgi.input"] = InputStream(self._fetch_body)
        try:
            iterable = self.app(environ, self.start_response)
            try:
                self._respond(iterable)
            finally:
                close = getattr(iterable, "close", None)
                if close is not None:
                    try:
                        close()
                    except Exception:
                        logger.exception("Exception in close() of the WSGI response iterable")
        finally:
            errors.flush()

    def _respond(self, iterable: Iterable[bytes]) -> None:
        if isinstance(iterable, (list, tuple)):  # all in memory already: no need to pace it
            chunks = [chunk for chunk in iterable if chunk] or [b""]
            last = len(chunks) - 1
            self._emit([*self._take_start(), *(_body(chunk, more=i < last) for i, chunk in enumerate(chunks))],
                       bounded=False)
            return
        for chunk in iterable:
            if chunk:  # headers go out with the first non-empty chunk (PEP 3333)
                self._emit([*self._take_start(), _body(chunk, more=True)])
        self._emit([*self._take_start(), _body(b"", more=False)], bounded=False)


def _body(data: bytes, more: bool) -> dict[str, Any]:
    return {"type": "http.response.body", "body": data, "more_body": more}


def _cost(messages: list[dict[str, Any]]) -> int:
    """What queued messages count against SEND_WINDOW: their body, at least 1 KiB each."""
    return sum(max(len(message.get("body", b"")), 1024) for message in messages)
