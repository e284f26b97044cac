"""The server lifecycle (``uvicorn.Server``'s API) around the native HTTP core ``cppuvicorn._core``."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import ipaddress
import logging
import os
import random
import signal
import socket
import stat
import sys
import threading
import time
from collections.abc import Callable, Generator
from email.utils import formatdate
from types import FrameType
from typing import Any

from cppuvicorn.config import DEFAULT_MAX_HEAD_SIZE, STARTUP_FAILURE, Config
from cppuvicorn.logging import TRACE_LOG_LEVEL, ansi_style

HANDLED_SIGNALS: tuple[int, ...] = (signal.SIGINT, signal.SIGTERM)
if sys.platform == "win32":
    HANDLED_SIGNALS += (signal.SIGBREAK,)

ACCESS_LOG_FORMAT = '%s - "%s %s HTTP/%s" %d'

logger = logging.getLogger("uvicorn.error")

# Seconds the app's leftover tasks get to finish after being cancelled at exit (less when
# --timeout-graceful-shutdown is smaller). Uvicorn gives them none: it dies by the re-raised
# signal.
LEFTOVER_TASKS_TIMEOUT = 1.0


class ServerState:
    """Uvicorn's ``ServerState``, read from the native server.

    ``connections`` and ``tasks`` are counts here (Uvicorn has sets of protocol objects and tasks).
    """

    def __init__(self, server: Server) -> None:
        self._server = server

    def _count(self, name: str) -> int:
        native = self._server._native
        return 0 if native is None else getattr(native, name)

    @property
    def total_requests(self) -> int:
        return self._count("total_requests")

    @property
    def connections(self) -> int:
        return self._count("connections")

    @property
    def tasks(self) -> int:
        return self._count("tasks")

    @property
    def default_headers(self) -> list[tuple[bytes, bytes]]:
        config = self._server.config
        date = [(b"date", formatdate(usegmt=True).encode())] if config.date_header else []
        return date + config.encoded_headers


class _Listener:
    """Stand-in for ``asyncio.Server`` in ``Server.servers``: only ``sockets`` is provided,
    so ``server.servers[0].sockets[0].getsockname()`` keeps working (e.g. with port 0)."""

    class _Address:
        def __init__(self, family: int, address: Any) -> None:
            self.family = family
            self._address = address

        def getsockname(self) -> Any:
            return self._address

    def __init__(self, sockets: list[Any]) -> None:
        self.sockets = sockets

    @classmethod
    def for_address(cls, family: int, address: Any) -> _Listener:
        return cls([cls._Address(family, address)])


class Server:
    def __init__(self, config: Config) -> None:
        self.config = config
        self.server_state = ServerState(self)
        self.started = False
        self.should_exit = False
        self.force_exit = False
        self.last_notified = 0.0
        self.servers: list[_Listener] = []

        self._native: Any = None
        self._native_closed = False
        self._fd_socket: socket.socket | None = None
        self._captured_signals: list[int] = []
        # Under the native supervisor: the heartbeat pipe (written from the event loop itself).
        self._heartbeat_fd = int(os.environ.get("CPPUVICORN_HEARTBEAT_FD", "-1"))
        # ... and with --metrics-port, its shared memory region and our slot in it.
        self._metrics_fd = int(os.environ.get("CPPUVICORN_METRICS_FD", "-1"))
        self._metrics_slot = int(os.environ.get("CPPUVICORN_METRICS_SLOT", "0"))

    @functools.cached_property
    def limit_max_requests(self) -> int | None:
        if self.config.limit_max_requests is None:
            return None
        return self.config.limit_max_requests + random.randint(0, self.config.limit_max_requests_jitter)

    def run(self, sockets: list[socket.socket] | None = None) -> None:
        with asyncio.Runner(loop_factory=self.config.get_loop_factory()) as runner:
            runner.run(self.serve(sockets=sockets))
            self._cancel_leftover_tasks(runner.get_loop())

    def _cancel_leftover_tasks(self, loop: asyncio.AbstractEventLoop) -> None:
        """Cancel the tasks the app left behind, waiting a bounded time for them.

        asyncio.Runner would cancel them too, then wait for ever: a task that swallows its
        CancelledError would keep the process alive after "Finished server process" (Uvicorn
        dies by the SIGTERM it re-raises at that point; cppuvicorn exits 0, so it must not
        hang). Tasks still running after the bound are abandoned and the process exits.
        """
        if loop.is_closed() or loop.is_running():
            return
        pending = [t for t in asyncio.all_tasks(loop) if not t.done()]
        if not pending:
            return
        for task in pending:
            task.cancel()
        timeout = self.config.timeout_graceful_shutdown
        bound = LEFTOVER_TASKS_TIMEOUT if timeout is None else min(float(timeout), LEFTOVER_TASKS_TIMEOUT)
        _, still = loop.run_until_complete(asyncio.wait(pending, timeout=max(bound, 0.1)))
        if still:
            logger.warning(
                "%d task(s) ignored cancellation at shutdown; exiting without waiting for them.", len(still)
            )
            logging.shutdown()
            os._exit(0)

    async def serve(self, sockets: list[socket.socket] | None = None) -> None:
        with self.capture_signals():
            await self._serve(sockets)

    async def _serve(self, sockets: list[socket.socket] | None = None) -> None:
        process_id = os.getpid()
        if not self.config.loaded:
            self.config.load()
        self.lifespan = self.config.lifespan_class(self.config)

        color = "Started server process [" + ansi_style("%d", fg="cyan") + "]"
        logger.info("Started server process [%d]", process_id, extra={"color_message": color})
        try:
            await self.startup(sockets=sockets)
            if not self.should_exit:
                await self.main_loop()
            if self.started:
                await self.shutdown(sockets=sockets)
                color = "Finished server process [" + ansi_style("%d", fg="cyan") + "]"
                logger.info("Finished server process [%d]", process_id, extra={"color_message": color})
        finally:
            self._close_native()

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await self.lifespan.startup()
        if self.lifespan.should_exit:
            sys.exit(STARTUP_FAILURE)

        from cppuvicorn import _core
        from cppuvicorn._asgi import run_asgi

        config = self.config
        max_head_size = config.h11_max_incomplete_event_size
        self._native = _core.Server(
            asyncio.get_running_loop(),
            config.loaded_app,
            run_asgi,
            state=self.lifespan.state,
            root_path=config.root_path,
            default_headers=config.encoded_headers,
            date_header=config.date_header,
            timeout_keep_alive=float(config.timeout_keep_alive),
            limit_concurrency=config.limit_concurrency,
            access_log=self._access_log(),
            access_log_timed=config.access_log_format is not None,
            trace=logger.isEnabledFor(TRACE_LOG_LEVEL),
            error_log=logger,
            max_head_size=DEFAULT_MAX_HEAD_SIZE if max_head_size is None else max_head_size,
            scheme="https" if config.ssl else "http",
            backlog=config.backlog,
            ws=config.ws != "none",
            ws_max_size=config.ws_max_size,
            ws_max_queue=config.ws_max_queue,
            ws_ping_interval=config.ws_ping_interval,
            ws_ping_timeout=config.ws_ping_timeout,
            ws_per_message_deflate=config.ws_per_message_deflate,
            asgi_version=config.asgi_version,
            tls=config.ssl,
            **self._proxy_headers_options(),
            timeout_request_head=float(config.timeout_request_head or 0),
            timeout_body_read=float(config.timeout_body_read or 0),
            limit_request_body=config.limit_request_body or 0,
            metrics_fd=self._metrics_fd,
            metrics_slot=self._metrics_slot,
        )
        try:
            bound_port = self._listen(sockets)
        except OSError as exc:
            logger.error(exc)
            self._close_native()
            await self.lifespan.shutdown()
            sys.exit(STARTUP_FAILURE)
        self._native.start()

        if sockets is None:  # with given sockets (workers), the parent already logged where it listens
            self._log_started_message(bound_port)
        self.started = True
        self._beat(b"R")  # ready: the supervisor may now retire the worker this one replaces

    def _proxy_headers_options(self) -> dict[str, Any]:
        if not self.config.proxy_headers:
            return {}
        from cppuvicorn.middleware.proxy_headers import native_trusted_hosts

        trust_all, entries = native_trusted_hosts(self.config.forwarded_allow_ips)
        return {"forwarded_allow_ips": entries, "forwarded_allow_all": trust_all}

    def _access_log(self) -> Callable[..., None] | None:
        access_logger = logging.getLogger("uvicorn.access")
        if not access_logger.hasHandlers() or not access_logger.isEnabledFor(logging.INFO):
            return None
        if self.config.access_log_format is not None:
            from cppuvicorn.logging import timed_access_logger

            return timed_access_logger(access_logger, self.config.access_log_format)
        return functools.partial(access_logger.info, ACCESS_LOG_FORMAT)

    def _listen(self, sockets: list[socket.socket] | None) -> int:
        """Start listening as configured; return the bound TCP port (0 for other kinds)."""
        config, native = self.config, self._native
        if sockets is not None:
            for sock in sockets:
                sock.listen(config.backlog)
                # The core owns (and closes) its copy. Given sockets are shared with other
                # processes (the supervisor's workers, gunicorn's): take one connection per
                # loop turn, after the requests already read have started, so a worker whose
                # handler blocks the loop leaves the queue to the others (uvloop's libuv
                # accepts one per turn too).
                native.listen_fd(os.dup(sock.fileno()), accepts_per_turn=1)
            self.servers = [_Listener(list(sockets))]
            return 0

        if config.fd is not None:
            self._fd_socket = socket.fromfd(config.fd, socket.AF_UNIX, socket.SOCK_STREAM)
            self._fd_socket.listen(config.backlog)
            native.listen_fd(config.fd)
            self.servers = [_Listener([self._fd_socket])]
            return 0

        if config.uds is not None:
            perms = 0o666
            if os.path.exists(config.uds):
                mode = os.stat(config.uds).st_mode
                perms = stat.S_IMODE(mode)
                if stat.S_ISSOCK(mode):  # a stale socket from an earlier run, as asyncio does
                    os.remove(config.uds)
            native.listen_unix(config.uds, config.backlog)
            os.chmod(config.uds, perms)
            self.servers = [_Listener.for_address(socket.AF_UNIX, config.uds)]
            return 0

        # Like asyncio's create_server: a name (or "" / None: every interface) listens on each
        # address it resolves to; with port 0 they all share the first address's port.
        port, addresses = config.port, []
        for host in _resolve(config.host, config.port):
            try:
                bound_host, port = native.listen_tcp(host, port, config.backlog)
            except OSError as exc:
                raise _bind_error(exc, host, port) from None
            if ":" in bound_host:
                addresses.append(_Listener._Address(socket.AF_INET6, (bound_host, port, 0, 0)))
            else:
                addresses.append(_Listener._Address(socket.AF_INET, (bound_host, port)))
        self.servers = [_Listener(addresses)]
        return port

    def _log_started_message(self, bound_port: int) -> None:
        config = self.config
        if config.fd is not None:
            assert self._fd_socket is not None
            logger.info("cppuvicorn running on socket %s (Press CTRL+C to quit)", self._fd_socket.getsockname())
        elif config.uds is not None:
            logger.info("cppuvicorn running on unix socket %s (Press CTRL+C to quit)", config.uds)
        else:
            host = "0.0.0.0" if config.host is None else config.host
            addr_format = "%s://[%s]:%d" if ":" in host else "%s://%s:%d"
            color = "cppuvicorn running on " + ansi_style(addr_format, bold=True) + " (Press CTRL+C to quit)"
            logger.info(
                f"cppuvicorn running on {addr_format} (Press CTRL+C to quit)",
                "https" if config.ssl else "http",
                host,
                config.port or bound_port,
                extra={"color_message": color},
            )

    async def main_loop(self) -> None:
        counter = 0
        should_exit = await self.on_tick(counter)
        while not should_exit:
            counter = (counter + 1) % 864000
            await asyncio.sleep(0.1)
            should_exit = await self.on_tick(counter)

    def _beat(self, data: bytes) -> None:
        if self._heartbeat_fd < 0:
            return
        try:
            os.write(self._heartbeat_fd, data)
        except (BlockingIOError, InterruptedError):
            pass
        except OSError:  # the supervisor is gone
            self._heartbeat_fd = -1

    async def on_tick(self, counter: int) -> bool:
        if counter % 5 == 0:
            self._beat(b".")
        # The native core refreshes the date header itself; only the notify callback is left here.
        if counter % 10 == 0 and self.config.callback_notify is not None:
            now = time.time()
            if now - self.last_notified > self.config.timeout_notify:
                self.last_notified = now
                await self.config.callback_notify()

        if self.should_exit:
            return True

        max_requests = self.limit_max_requests
        if max_requests is not None and self.server_state.total_requests >= max_requests:
            logger.info("Maximum request limit of %d exceeded. Terminating process.", max_requests)
            return True
        return False

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        if self.config.timeout_drain and not self.force_exit:
            # Keep serving while the load balancer notices we are going (--timeout-drain).
            logger.info("Draining: still serving for %gs before shutting down.", self.config.timeout_drain)
            deadline = time.monotonic() + self.config.timeout_drain
            while time.monotonic() < deadline and not self.force_exit:
                await asyncio.sleep(0.1)
        logger.info("Shutting down")

        native = self._native
        native.stop_listening()
        for sock in sockets or []:
            sock.close()
        if self._fd_socket is not None:
            self._fd_socket.close()

        # Connections accepted just before we stopped listening may not have had their request
        # read yet: let the loop read it first, or they would be closed as idle, unanswered.
        await asyncio.sleep(0.05)
        native.shutdown()  # idle connections close now, busy ones after their response
        await asyncio.sleep(0.1)

        try:
            await asyncio.wait_for(self._wait_tasks_to_complete(), timeout=self.config.timeout_graceful_shutdown)
        except TimeoutError:
            logger.error("Cancel %s running task(s), timeout graceful shutdown exceeded", native.tasks)
            native.cancel_tasks()

        if not self.force_exit:
            await self.lifespan.shutdown()

    async def _wait_tasks_to_complete(self) -> None:
        state = self.server_state
        if state.connections and not self.force_exit:
            logger.info("Waiting for connections to close. (CTRL+C to force quit)")
            while state.connections and not self.force_exit:
                await asyncio.sleep(0.1)

        if state.tasks and not self.force_exit:
            logger.info("Waiting for background tasks to complete. (CTRL+C to force quit)")
            while state.tasks and not self.force_exit:
                await asyncio.sleep(0.1)

    def _close_native(self) -> None:
        if self._native is not None and not self._native_closed:
            self._native_closed = True
            self._native.close()

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        # Signals can only be listened to from the main thread.
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        # signal.signal rather than loop.add_signal_handler, so the previous handlers can be restored.
        original_handlers = {sig: signal.signal(sig, self.handle_exit) for sig in HANDLED_SIGNALS}
        try:
            yield
        finally:
            for sig, handler in original_handlers.items():
                signal.signal(sig, handler)
        # Re-deliver the signals we swallowed (LIFO), as Uvicorn does, except SIGTERM: after a
        # graceful drain the process exits 0, which is what process managers read as a clean
        # stop (Uvicorn dies by the re-raised signal, exit 143). SIGINT raises
        # KeyboardInterrupt, which run() turns into exit 0.
        for captured_signal in reversed(self._captured_signals):
            if captured_signal != signal.SIGTERM:
                signal.raise_signal(captured_signal)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        self._captured_signals.append(sig)
        if self.should_exit and sig == signal.SIGINT:
            self.force_exit = True
        else:
            self.should_exit = True


def _resolve(host: str | None, port: int) -> list[str]:
    """The addresses to listen on: an IP literal as is, else what the resolver returns."""
    if host:
        try:
            ipaddress.ip_address(host)
            return [host]
        except ValueError:
            pass
    infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


def _bind_error(exc: OSError, host: str, port: int) -> OSError:
    """Reword a bind failure the way asyncio does, so the logged line matches Uvicorn's:
    ``[Errno 98] error while attempting to bind on address ('127.0.0.1', 8000): address already in use``."""
    if isinstance(exc, socket.gaierror) or not exc.errno:  # resolver errors are kept as they are
        return exc
    errno = abs(exc.errno)  # libuv reports -errno
    address = (host, port, 0, 0) if ":" in host else (host, port)
    return OSError(errno, f"error while attempting to bind on address {address!r}: {os.strerror(errno).lower()}")
