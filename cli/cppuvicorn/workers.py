"""Gunicorn worker classes: ``gunicorn -k cppuvicorn.workers.CppUvicornWorker app:app``.

Modelled on uvicorn-worker's ``UvicornWorker`` (the names ``UvicornWorker`` and
``UvicornH11Worker`` are provided too, so only the module name changes). Gunicorn's arbiter binds
the sockets, forks, and watches each worker's heartbeat; the worker serves gunicorn's sockets
with cppuvicorn's ``Server`` and its native core.

Settings mapped onto ``Config``: ``keepalive``, ``timeout`` (the heartbeat, sent from the event
loop, so a worker whose loop is blocked stops notifying and gets replaced), ``max_requests``
(jitter included), ``forwarded_allow_ips``, the SSL options, ``backlog`` and
``access_log_format`` (when given: Gunicorn's atoms, with the response's duration and size). Subclasses adjust
the rest with ``CONFIG_KWARGS``.

Signals: SIGTERM graceful shutdown and SIGINT (both handled by ``Server``), SIGQUIT quick exit
(open connections are dropped at once), SIGUSR1 reopens the log files, SIGABRT (the arbiter's
timeout) runs the ``worker_abort`` hook and exits at once.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
from types import FrameType
from typing import Any

from gunicorn.arbiter import Arbiter
from gunicorn.workers.base import Worker

from cppuvicorn.config import Config
from cppuvicorn.server import Server


class CppUvicornWorker(Worker):
    """A gunicorn worker serving an ASGI application (or, with ``CONFIG_KWARGS``, WSGI)."""

    CONFIG_KWARGS: dict[str, Any] = {"loop": "auto", "http": "auto"}

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        for name, gunicorn_logger in (("uvicorn.error", self.log.error_log), ("uvicorn.access", self.log.access_log)):
            logger = logging.getLogger(name)
            logger.handlers = gunicorn_logger.handlers
            logger.setLevel(gunicorn_logger.level)
            logger.propagate = False
        self.config = Config(**self.config_kwargs())
        self._server: Server | None = None

    def config_kwargs(self) -> dict[str, Any]:
        cfg = self.cfg
        kwargs: dict[str, Any] = {
            "app": None,
            "log_config": None,
            "timeout_keep_alive": cfg.keepalive,
            "timeout_notify": self.timeout,  # gunicorn's worker timeout is half of --timeout
            "callback_notify": self.callback_notify,
            "limit_max_requests": self.max_requests,
            "forwarded_allow_ips": cfg.forwarded_allow_ips,
        }
        if cfg.is_ssl:
            ssl = cfg.ssl_options
            kwargs.update(
                ssl_keyfile=ssl.get("keyfile"),
                ssl_certfile=ssl.get("certfile"),
                ssl_keyfile_password=ssl.get("password"),
                ssl_version=ssl.get("ssl_version"),
                ssl_cert_reqs=ssl.get("cert_reqs"),
                ssl_ca_certs=ssl.get("ca_certs"),
                ssl_ciphers=ssl.get("ciphers"),
            )
        access_format = cfg.settings["access_log_format"]
        if access_format.value != access_format.default:  # gunicorn --access-logformat, given
            kwargs["access_log_format"] = access_format.value
        if cfg.settings["backlog"].value:
            kwargs["backlog"] = cfg.settings["backlog"].value
        kwargs.update(self.CONFIG_KWARGS)
        return kwargs

    def init_signals(self) -> None:
        # Gunicorn's handlers would swallow signals meant for the server (and subprocess exit
        # codes): reset them. Server.serve handles SIGINT and SIGTERM itself while it runs.
        for sig in self.SIGNALS:
            signal.signal(sig, signal.SIG_DFL)
        signal.signal(signal.SIGQUIT, self.handle_quit)
        signal.signal(signal.SIGINT, self.handle_quit)
        signal.signal(signal.SIGABRT, self.handle_abort)
        signal.signal(signal.SIGUSR1, self.handle_usr1)
        # Don't let SIGUSR1 disturb active requests by interrupting system calls.
        signal.siginterrupt(signal.SIGUSR1, False)

    def handle_quit(self, sig: int, frame: FrameType | None) -> None:
        self.alive = False
        self.cfg.worker_int(self)
        server = self._server
        if server is None:  # not serving (yet, or any more): leave now, as gunicorn's workers do
            sys.exit(0)
        server.should_exit = server.force_exit = True

    def handle_abort(self, sig: int, frame: FrameType | None) -> None:
        # The arbiter's timeout: the event loop stopped sending heartbeats. Exit for real: an
        # exception raised here would land in whatever request blocks the loop, where the
        # application or the server's error handling might catch it and carry on.
        self.alive = False
        self.cfg.worker_abort(self)
        for handler in logging.getLogger("uvicorn.error").handlers:
            handler.flush()
        os._exit(1)

    def run(self) -> None:
        self.config.app = self.wsgi
        server = self._server = Server(config=self.config)
        try:
            server.run(sockets=self.sockets)
        except SystemExit:
            if server.started:
                raise
            # e.g. an app, lifespan or configuration error: stop the arbiter from respawning us
            sys.exit(Arbiter.WORKER_BOOT_ERROR)
        finally:
            self._server = None
        if not server.started:
            sys.exit(Arbiter.WORKER_BOOT_ERROR)

    async def callback_notify(self) -> None:
        self.notify()


class CppUvicornH11Worker(CppUvicornWorker):
    """uvicorn-worker's ``UvicornH11Worker`` spelling (pure-asyncio loop); the native core serves HTTP either way."""

    CONFIG_KWARGS = {"loop": "asyncio", "http": "h11"}


UvicornWorker = CppUvicornWorker
UvicornH11Worker = CppUvicornH11Worker
