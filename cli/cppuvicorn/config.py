"""Server configuration: the same constructor and methods as ``uvicorn.Config``."""

from __future__ import annotations

import asyncio
import copy
import importlib
import inspect
import json
import logging
import logging.config
import os
import socket
import ssl
import sys
from collections.abc import Awaitable, Callable
from configparser import RawConfigParser
from pathlib import Path
from typing import IO, Any, Literal

from cppuvicorn.importer import ImportFromStringError, import_from_string
from cppuvicorn.logging import LOGGING_CONFIG, TRACE_LOG_LEVEL, ansi_style

if sys.version_info >= (3, 14):
    from inspect import iscoroutinefunction
else:
    from asyncio import iscoroutinefunction

HTTPProtocolType = Literal["auto", "h11", "httptools", "zttp"]
WSProtocolType = Literal["auto", "none", "websockets", "websockets-sansio", "wsproto"]
LifespanType = Literal["auto", "on", "off"]
LoopFactoryType = Literal["none", "auto", "asyncio", "uvloop", "zuvloop"]
InterfaceType = Literal["auto", "asgi3", "asgi2", "wsgi"]

LOG_LEVELS: dict[str, int] = {
    "critical": logging.CRITICAL,
    "error": logging.ERROR,
    "warning": logging.WARNING,
    "info": logging.INFO,
    "debug": logging.DEBUG,
    "trace": TRACE_LOG_LEVEL,
}
# Protocol names Uvicorn knows; all of them are served by the native core here.
HTTP_PROTOCOLS = ("auto", "h11", "httptools", "zttp")
WS_PROTOCOLS = ("auto", "none", "websockets", "websockets-sansio", "wsproto")
LIFESPAN = ("auto", "on", "off")
LOOP_FACTORIES = ("none", "auto", "asyncio", "uvloop", "zuvloop")
INTERFACES: list[InterfaceType] = ["auto", "asgi3", "asgi2", "wsgi"]

SSL_PROTOCOL_VERSION: int = ssl.PROTOCOL_TLS_SERVER
STARTUP_FAILURE = 3
NOT_IMPLEMENTED = 1
DEFAULT_MAX_HEAD_SIZE = 65536  # request line + headers, when --h11-max-incomplete-event-size is unset
SERVER_HEADER = (b"server", b"cppuvicorn")

logger = logging.getLogger("uvicorn.error")


def _normalize_dirs(dirs: list[str] | str | None) -> list[str]:
    if dirs is None:
        return []
    return [dirs] if isinstance(dirs, str) else list(set(dirs))


def _is_dir(path: Path) -> bool:
    try:
        return path.resolve().is_dir()
    except OSError:
        return False


def _resolve_reload_patterns(patterns: list[str], directories: list[str]) -> tuple[list[str], list[Path]]:
    """Uvicorn's ``resolve_reload_patterns``: the patterns, and the watched directories (the given
    ones plus patterns naming directories, or globs matching some under the current directory),
    resolved, with those nested in another one dropped."""
    dirs: list[Path] = [Path(d) for d in directories]
    cwd = Path.cwd()
    for pattern in patterns:
        if pattern == ".*":  # would match every hidden directory
            continue
        if _is_dir(Path(pattern)):
            dirs.append(Path(pattern))
        else:
            dirs.extend(match for match in cwd.glob(pattern) if _is_dir(match))
    resolved = {d.resolve() for d in dirs}
    resolved = {d for d in resolved if _is_dir(d)}
    nested = {d for d in resolved if any(other in d.parents for other in resolved)}
    return list(set(patterns)), list(resolved - nested)


def _asyncio_loop_factory(use_subprocess: bool) -> Callable[[], asyncio.AbstractEventLoop]:
    if sys.platform == "win32" and not use_subprocess:
        return asyncio.ProactorEventLoop
    return asyncio.SelectorEventLoop


def _is_asgi3(app: Any) -> bool:
    if inspect.isclass(app):
        return hasattr(app, "__await__")
    if inspect.isfunction(app):
        return iscoroutinefunction(app)
    return iscoroutinefunction(getattr(app, "__call__", None))  # noqa: B004 (the method itself)


class Config:
    def __init__(
        self,
        app: Any,
        host: str = "127.0.0.1",
        port: int = 8000,
        uds: str | None = None,
        fd: int | None = None,
        loop: LoopFactoryType | str = "auto",
        http: type[asyncio.Protocol] | HTTPProtocolType | str = "auto",
        http2: bool = False,
        ws: type[asyncio.Protocol] | WSProtocolType | str = "auto",
        ws_max_size: int = 16 * 1024 * 1024,
        ws_max_queue: int = 32,
        ws_ping_interval: float | None = 20.0,
        ws_ping_timeout: float | None = 20.0,
        ws_per_message_deflate: bool = True,
        lifespan: LifespanType = "auto",
        env_file: str | os.PathLike[str] | None = None,
        log_config: dict[str, Any] | str | os.PathLike[str] | RawConfigParser | IO[Any] | None = LOGGING_CONFIG,
        log_level: str | int | None = None,
        access_log: bool = True,
        access_log_format: str | None = None,
        use_colors: bool | None = None,
        interface: InterfaceType = "auto",
        reload: bool = False,
        reload_dirs: list[str] | str | None = None,
        reload_delay: float = 0.25,
        reload_includes: list[str] | str | None = None,
        reload_excludes: list[str] | str | None = None,
        workers: int | None = None,
        proxy_headers: bool = True,
        server_header: bool = True,
        date_header: bool = True,
        forwarded_allow_ips: list[str] | str | None = None,
        root_path: str = "",
        limit_concurrency: int | None = None,
        limit_max_requests: int | None = None,
        limit_max_requests_jitter: int = 0,
        backlog: int = 2048,
        timeout_keep_alive: int = 5,
        timeout_notify: int = 30,
        timeout_graceful_shutdown: int | None = None,
        timeout_drain: float | None = None,
        timeout_worker_healthcheck: int = 5,
        metrics_port: int | None = None,
        metrics_host: str = "127.0.0.1",
        callback_notify: Callable[..., Awaitable[None]] | None = None,
        ssl_keyfile: str | os.PathLike[str] | None = None,
        ssl_certfile: str | os.PathLike[str] | None = None,
        ssl_keyfile_password: str | None = None,
        ssl_version: int = SSL_PROTOCOL_VERSION,
        ssl_cert_reqs: int = ssl.CERT_NONE,
        ssl_ca_certs: str | os.PathLike[str] | None = None,
        ssl_ciphers: str | None = None,
        ssl_context_factory: Callable[[Config, Callable[[], ssl.SSLContext]], ssl.SSLContext] | None = None,
        headers: list[tuple[str, str]] | None = None,
        factory: bool = False,
        h11_max_incomplete_event_size: int | None = None,
        reset_contextvars: bool = False,
        timeout_request_head: float | None = 10.0,
        timeout_body_read: float | None = 30.0,
        limit_request_body: int | None = None,
    ) -> None:
        self.app = app
        self.host = host
        self.port = port
        self.uds = uds
        self.fd = fd
        self.loop = loop
        self.http = http
        self.http2 = http2
        self.ws = ws
        self.ws_max_size = ws_max_size
        self.ws_max_queue = ws_max_queue
        self.ws_ping_interval = ws_ping_interval
        self.ws_ping_timeout = ws_ping_timeout
        self.ws_per_message_deflate = ws_per_message_deflate
        self.lifespan = lifespan
        self.log_config = log_config
        self.log_level = log_level
        self.access_log = access_log
        self.access_log_format = access_log_format
        self.use_colors = use_colors
        self.interface = interface
        self.reload = reload
        self.reload_delay = reload_delay
        self.workers = workers or 1
        self.proxy_headers = proxy_headers
        self.server_header = server_header
        self.date_header = date_header
        self.root_path = root_path
        self.limit_concurrency = limit_concurrency
        self.limit_max_requests = limit_max_requests
        self.limit_max_requests_jitter = limit_max_requests_jitter
        self.backlog = backlog
        self.timeout_keep_alive = timeout_keep_alive
        # cppuvicorn's own (None or 0: off): see SECURITY.md.
        self.timeout_request_head = timeout_request_head
        self.timeout_body_read = timeout_body_read
        self.limit_request_body = limit_request_body
        self.timeout_notify = timeout_notify
        self.timeout_graceful_shutdown = timeout_graceful_shutdown
        self.timeout_drain = timeout_drain
        self.timeout_worker_healthcheck = timeout_worker_healthcheck
        self.metrics_port = metrics_port
        self.metrics_host = metrics_host
        self.callback_notify = callback_notify
        self.ssl_keyfile = ssl_keyfile
        self.ssl_certfile = ssl_certfile
        self.ssl_keyfile_password = ssl_keyfile_password
        self.ssl_version = ssl_version
        self.ssl_cert_reqs = ssl_cert_reqs
        self.ssl_ca_certs = ssl_ca_certs
        self.ssl_ciphers = ssl_ciphers
        self.ssl_context_factory = ssl_context_factory
        self.headers: list[tuple[str, str]] = headers or []
        self.encoded_headers: list[tuple[bytes, bytes]] = []
        self.factory = factory
        self.h11_max_incomplete_event_size = h11_max_incomplete_event_size
        self.reset_contextvars = reset_contextvars

        self.loaded = False
        self.configure_logging()

        # What the reloader (cppuvicorn.reload) watches, resolved as Uvicorn does.
        self.reload_dirs: list[Path] = []
        self.reload_dirs_excludes: list[Path] = []
        self.reload_includes: list[str] = []
        self.reload_excludes: list[str] = []
        if (reload_dirs or reload_includes or reload_excludes) and not self.should_reload:
            logger.warning(
                "Current configuration will not reload as not all conditions are met, please refer to documentation."
            )
        if self.should_reload:
            self._resolve_reload_paths(reload_dirs, reload_includes, reload_excludes)

        if env_file is not None:
            from dotenv import load_dotenv

            logger.info("Loading environment from '%s'", env_file)
            load_dotenv(dotenv_path=env_file)

        if workers is None and "WEB_CONCURRENCY" in os.environ:
            self.workers = int(os.environ["WEB_CONCURRENCY"])

        self.forwarded_allow_ips: list[str] | str = (
            os.environ.get("FORWARDED_ALLOW_IPS", "127.0.0.1,::1")
            if forwarded_allow_ips is None
            else forwarded_allow_ips
        )

        if self.reload and self.workers > 1:
            logger.warning('"workers" flag is ignored when reloading is enabled.')
        if self.reload and self.metrics_port is not None:
            logger.warning('"metrics_port" flag is ignored when reloading is enabled.')

    def _resolve_reload_paths(
        self,
        reload_dirs: list[str] | str | None,
        reload_includes: list[str] | str | None,
        reload_excludes: list[str] | str | None,
    ) -> None:
        """Uvicorn's rules: include/exclude patterns naming directories add/remove watched ones."""
        dirs = _normalize_dirs(reload_dirs)
        self.reload_includes, self.reload_dirs = _resolve_reload_patterns(_normalize_dirs(reload_includes), dirs)
        self.reload_excludes, self.reload_dirs_excludes = _resolve_reload_patterns(
            _normalize_dirs(reload_excludes), []
        )
        for excluded in self.reload_dirs_excludes:
            self.reload_dirs = [d for d in self.reload_dirs if not (excluded == d or excluded in d.parents)]
        self.reload_includes = [p for p in self.reload_includes if p not in self.reload_excludes]
        if not self.reload_dirs:
            if dirs:
                logger.warning(
                    "Provided reload directories %s did not contain valid "
                    + "directories, watching current working directory.",
                    dirs,
                )
            self.reload_dirs = [Path.cwd()]
        logger.info("Will watch for changes in these directories: %s", sorted(map(str, self.reload_dirs)))

    @property
    def asgi_version(self) -> Literal["2.0", "3.0"]:
        return "2.0" if self.interface == "asgi2" else "3.0"

    @property
    def is_ssl(self) -> bool:
        return bool(self.ssl_keyfile or self.ssl_certfile or self.ssl_context_factory)

    @property
    def use_subprocess(self) -> bool:
        return bool(self.reload or self.workers > 1)

    @property
    def should_reload(self) -> bool:
        return isinstance(self.app, str) and self.reload

    def configure_logging(self) -> None:
        logging.addLevelName(TRACE_LOG_LEVEL, "TRACE")

        log_config = self.log_config
        if isinstance(log_config, os.PathLike):
            log_config = self.log_config = os.fspath(log_config)
        if isinstance(log_config, dict):
            if self.access_log_format is not None and log_config is LOGGING_CONFIG:
                # The format makes the whole line, as Gunicorn's access_log_format does.
                log_config = copy.deepcopy(log_config)
                log_config["formatters"]["access"]["fmt"] = "%(message)s"
            if self.use_colors in (True, False):
                log_config = copy.deepcopy(log_config)
                for name in ("default", "access"):
                    if name in log_config.get("formatters", {}):
                        log_config["formatters"][name]["use_colors"] = self.use_colors
            logging.config.dictConfig(log_config)
        elif isinstance(log_config, str) and log_config.endswith(".json"):
            with open(log_config) as file:
                logging.config.dictConfig(json.load(file))
        elif isinstance(log_config, str) and log_config.endswith((".yaml", ".yml")):
            try:
                import yaml
            except ImportError as exc:
                raise ImportError(
                    "Install the PyYAML package or cppuvicorn[standard] to use `--log-config` with YAML files."
                ) from exc
            with open(log_config) as file:
                logging.config.dictConfig(yaml.safe_load(file))
        elif log_config is not None:
            logging.config.fileConfig(log_config, disable_existing_loggers=False)

        if self.log_level is not None:
            level = LOG_LEVELS[self.log_level.lower()] if isinstance(self.log_level, str) else self.log_level
            for name in ("uvicorn.error", "uvicorn.access", "uvicorn.asgi"):
                logging.getLogger(name).setLevel(level)
        if self.access_log is False:
            access_logger = logging.getLogger("uvicorn.access")
            access_logger.handlers = []
            access_logger.propagate = False

    def reject_unsupported(self) -> None:
        """Exit with code 1 for features the native core does not provide (yet), and for TLS
        options it cannot use (checked here, before any worker starts)."""
        problems = []
        if self.http2:
            problems.append("HTTP/2 (--http2)")
        for problem in problems:
            logger.error("%s is not implemented yet in cppuvicorn.", problem)
        if problems:
            sys.exit(NOT_IMPLEMENTED)
        if self.is_ssl:
            self._tls_context = self.create_tls_context()

    def create_tls_context(self) -> Any:
        """The native TLS context (OpenSSL, in the C++ core) from the ``ssl_*`` options, built
        once per server process. Exits with code 1 when they cannot be used, as Uvicorn does
        (Uvicorn with a traceback, here with the reason)."""
        if self.ssl_context_factory is not None:
            # TLS runs in C++ on OpenSSL memory BIOs: a Python ssl.SSLContext cannot be handed to it.
            logger.error(
                "ssl_context_factory is not supported by cppuvicorn: TLS is terminated by OpenSSL in the native "
                "core, which cannot use a Python ssl.SSLContext. Configure it with ssl_certfile, ssl_keyfile, "
                "ssl_keyfile_password, ssl_version, ssl_cert_reqs, ssl_ca_certs and ssl_ciphers instead."
            )
            sys.exit(NOT_IMPLEMENTED)
        from cppuvicorn import _core

        try:
            return _core.TlsContext(
                os.fspath(self.ssl_certfile) if self.ssl_certfile else "",
                keyfile=os.fspath(self.ssl_keyfile) if self.ssl_keyfile else "",
                password=self.ssl_keyfile_password or None,
                version=int(self.ssl_version),
                cert_reqs=int(self.ssl_cert_reqs),
                ca_certs=os.fspath(self.ssl_ca_certs) if self.ssl_ca_certs else "",
                ciphers=self.ssl_ciphers or "",
            )
        except RuntimeError as exc:
            logger.error("Invalid TLS configuration: %s", exc)
            sys.exit(1)

    def __getstate__(self) -> dict[str, Any]:
        # The native TLS context cannot be pickled: each worker builds its own.
        state = dict(self.__dict__)
        state.pop("_tls_context", None)
        if state.get("ssl") is not None:
            state["ssl"] = None
        return state

    def _log_protocol_choices(self) -> None:
        for option, value, known in (("http", self.http, HTTP_PROTOCOLS), ("ws", self.ws, WS_PROTOCOLS)):
            if value == "auto":
                continue
            if isinstance(value, str) and value in known:
                logger.debug("--%s %s: served by the cppuvicorn native core.", option, value)
            else:
                logger.warning(
                    "Custom --%s implementation %r is ignored: the cppuvicorn native core serves it.", option, value
                )

    def load_app(self) -> Any:
        """Import the app and return it. Exits with code 3 on failure."""
        try:
            return import_from_string(self.app)
        except ImportFromStringError as exc:
            logger.error("Error loading ASGI app. %s", exc)
            sys.exit(STARTUP_FAILURE)

    def load(self) -> None:
        assert not self.loaded
        self.reject_unsupported()
        self._log_protocol_choices()
        # Uvicorn's ssl.SSLContext; here the native (OpenSSL) context the core serves TLS with.
        self.ssl: Any = self.__dict__.pop("_tls_context", None)

        encoded = [(name.lower().encode("latin1"), value.encode("latin1")) for name, value in self.headers]
        if self.server_header and b"server" not in dict(encoded):
            encoded.insert(0, SERVER_HEADER)
        self.encoded_headers = encoded

        from cppuvicorn.lifespan import LifespanOff, LifespanOn

        self.lifespan_class = {"auto": LifespanOn, "on": LifespanOn, "off": LifespanOff}[self.lifespan]

        app = self.load_app()
        try:
            app = app()
        except TypeError as exc:
            if self.factory:
                logger.error("Error loading ASGI app factory: %s", exc)
                sys.exit(STARTUP_FAILURE)
        else:
            if not self.factory:
                logger.warning(
                    "ASGI app factory detected. Using it, but please consider setting the --factory flag explicitly."
                )

        if self.interface == "auto":
            self.interface = "asgi3" if _is_asgi3(app) else "asgi2"
        if self.interface == "wsgi":
            from cppuvicorn.middleware.wsgi import WSGIMiddleware

            app = WSGIMiddleware(app)
            self.ws = "none"  # WSGI has no WebSocket: upgrade requests are plain HTTP requests, as in Uvicorn
        elif self.interface == "asgi2":
            from cppuvicorn.middleware.asgi2 import ASGI2Middleware

            app = ASGI2Middleware(app)
        if logger.getEffectiveLevel() <= TRACE_LOG_LEVEL:
            from cppuvicorn.middleware.message_logger import MessageLoggerMiddleware

            app = MessageLoggerMiddleware(app)
        # --proxy-headers is applied natively, before the scope is built (Server.startup passes
        # forwarded_allow_ips to the core): no ProxyHeadersMiddleware here.
        if self.reset_contextvars:
            from cppuvicorn.middleware.reset_context import ResetContextVarsMiddleware

            app = ResetContextVarsMiddleware(app)

        self.loaded_app = app
        self.loaded = True

    def get_loop_factory(self) -> Callable[[], asyncio.AbstractEventLoop] | None:
        """``auto`` is uvloop when importable, else asyncio; ``none`` leaves it to asyncio;
        any other value is an import string naming a loop factory."""
        if self.loop == "none":
            return None
        if self.loop == "auto":
            try:
                import uvloop
            except ImportError:
                return _asyncio_loop_factory(self.use_subprocess)
            return uvloop.new_event_loop
        if self.loop == "asyncio":
            return _asyncio_loop_factory(self.use_subprocess)
        if self.loop in ("uvloop", "zuvloop"):
            return importlib.import_module(self.loop).new_event_loop
        try:
            return import_from_string(self.loop)
        except ImportFromStringError as exc:
            logger.error("Error loading custom loop setup function. %s", exc)
            sys.exit(STARTUP_FAILURE)

    def bind_socket(self) -> socket.socket:
        """Bind the listening socket in this (supervisor) process, for workers to inherit."""
        if self.uds is not None:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                sock.bind(self.uds)
                os.chmod(self.uds, 0o666)
            except OSError as exc:
                logger.error(exc)
                sys.exit(STARTUP_FAILURE)
            message, args = "cppuvicorn running on unix socket %s (Press CTRL+C to quit)", [self.uds]
            color = "cppuvicorn running on " + ansi_style("%s", bold=True) + " (Press CTRL+C to quit)"
        elif self.fd is not None:
            sock = socket.fromfd(self.fd, socket.AF_UNIX, socket.SOCK_STREAM)
            message, args = "cppuvicorn running on socket %s (Press CTRL+C to quit)", [sock.getsockname()]
            color = "cppuvicorn running on " + ansi_style("%s", bold=True) + " (Press CTRL+C to quit)"
        else:
            ipv6 = bool(self.host) and ":" in self.host
            addr_format = "%s://[%s]:%d" if ipv6 else "%s://%s:%d"
            sock = socket.socket(family=socket.AF_INET6 if ipv6 else socket.AF_INET)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind((self.host, self.port))
            except OSError as exc:
                logger.error(exc)
                sys.exit(STARTUP_FAILURE)
            message = f"cppuvicorn running on {addr_format} (Press CTRL+C to quit)"
            color = "cppuvicorn running on " + ansi_style(addr_format, bold=True) + " (Press CTRL+C to quit)"
            args = ["https" if self.is_ssl else "http", self.host, sock.getsockname()[1]]
        logger.info(message, *args, extra={"color_message": color})
        sock.set_inheritable(True)
        return sock
